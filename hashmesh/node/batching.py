"""The running node's publisher: single adds that arrive close together share one batch.

The offline CLI publishes each add at once (NodeService.add); a running node takes adds
from many HTTP requests at a time, and one signature over many adds is what keeps
verification cheap downstream. Both end in the same `NodeService.publish`, on the store
thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from hashmesh.node.service import NodeService
from hashmesh.node.store.executor import StoreThread
from hashmesh.protocol.ops import AnyOp


@dataclass
class _Waiting:
    collection: str
    ops: list[AnyOp] = field(default_factory=list)
    futures: list[asyncio.Future[str]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class BatchingPublisher:
    """A lone add waits at most batch_delay_ms; a burst is cut at batch_size ops. An add
    of a signal already live, or already on its way, returns that op id (`new: false`)."""

    def __init__(self, service: NodeService, store_thread: StoreThread) -> None:
        self.service = service
        self.store_thread = store_thread
        self._waiting: dict[str, _Waiting] = {}
        self._unsettled: dict[tuple[str, str, str], asyncio.Future[str]] = {}

    async def add(self, type: str, value: str, collection: str, **labels: Any) -> dict[str, Any]:
        service = self.service
        op = await self.store_thread.call(service.prepare_add, type, value, collection, **labels)
        key = (collection, op.type, op.value)
        if key in self._unsettled:  # the same signal is already on its way: one op, not two
            op_id = await asyncio.shield(self._unsettled[key])
            return {"op_id": op_id, "type": op.type, "value": op.value, "new": False}
        held = await self.store_thread.call(service.held_add, collection, op)
        if held is not None:
            return {"op_id": held, "type": op.type, "value": op.value, "new": False}
        if key in self._unsettled:  # queued by another request while we looked
            op_id = await asyncio.shield(self._unsettled[key])
            return {"op_id": op_id, "type": op.type, "value": op.value, "new": False}
        waiting = self._waiting.get(collection)
        if waiting is None:
            waiting = self._waiting[collection] = _Waiting(collection)
            delay = service.config.batch_delay_ms / 1000
            waiting.timer = asyncio.get_running_loop().call_later(
                delay, lambda: asyncio.ensure_future(self.flush(collection))
            )
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._unsettled[key] = future
        future.add_done_callback(lambda _: self._unsettled.pop(key, None))
        waiting.ops.append(op)
        waiting.futures.append(future)
        if len(waiting.ops) >= service.config.batch_size:
            await self.flush(collection)
        op_id = await future
        return {"op_id": op_id, "type": op.type, "value": op.value, "new": True}

    async def flush(self, collection: str) -> None:
        waiting = self._waiting.pop(collection, None)
        if waiting is None:
            return
        if waiting.timer is not None:
            waiting.timer.cancel()
        try:
            op_ids, _ = await self.store_thread.call(self.service.publish, collection, waiting.ops)
        except Exception as exc:
            for future in waiting.futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, op_id in zip(waiting.futures, op_ids, strict=True):
            if not future.done():
                future.set_result(str(op_id))

    async def flush_all(self) -> None:
        for collection in list(self._waiting):
            await self.flush(collection)
