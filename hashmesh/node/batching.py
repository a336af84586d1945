"""The running node's publisher: single adds that arrive close together share one batch,
and no add waits for the store thread.

The offline CLI publishes each add at once (NodeService.add); a running node takes adds
from many HTTP requests at a time, and one signature over many adds is what keeps
verification cheap downstream. Adds are signed and journalled on the intake thread
(node/intake.py), never behind a peer transaction on the store thread; the answer then
waits for the store to apply them up to `publish.apply_wait_ms` and says whether it did
(`"applied"`): a match on this node right after an applied add finds it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hashmesh.node.intake import NotPrimed
from hashmesh.node.service import NodeService
from hashmesh.node.store.executor import StoreThread
from hashmesh.protocol.ops import AnyOp

log = logging.getLogger("hashmesh.publish")
T = TypeVar("T")
_Settled = tuple[str, bool]  # op id, applied


@dataclass
class _Waiting:
    collection: str
    ops: list[AnyOp] = field(default_factory=list)
    futures: list[asyncio.Future[_Settled]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class BatchingPublisher:
    """A lone add waits at most batch_delay_ms; a burst is cut at batch_size ops. An add
    of a signal already live, or already on its way, returns that op id (`new: false`)."""

    def __init__(self, service: NodeService, store_thread: StoreThread) -> None:
        assert service.intake.journal is not None, "NodeService.open_intake comes first"
        self.service = service
        self.store_thread = store_thread
        self._waiting: dict[str, _Waiting] = {}
        self._unsettled: dict[tuple[str, str, str], asyncio.Future[_Settled]] = {}
        self._intake = ThreadPoolExecutor(1, thread_name_prefix="intake")

    async def add(self, type: str, value: str, collection: str, **labels: Any) -> dict[str, Any]:
        service = self.service
        op = service.prepare_add(type, value, collection, **labels)  # pure: no store
        key = (collection, op.type, op.value)
        if key in self._unsettled:  # the same signal is already on its way: one op, not two
            op_id, _ = await asyncio.shield(self._unsettled[key])
            return {"op_id": op_id, "type": op.type, "value": op.value, "new": False}
        held = await self._on_intake(service.journal_held, collection, op)
        if held is not None:
            return {"op_id": held, "type": op.type, "value": op.value, "new": False}
        if key in self._unsettled:  # queued by another request while we looked
            op_id, _ = await asyncio.shield(self._unsettled[key])
            return {"op_id": op_id, "type": op.type, "value": op.value, "new": False}
        waiting = self._waiting.get(collection)
        if waiting is None:
            waiting = self._waiting[collection] = _Waiting(collection)
            delay = service.config.batch_delay_ms / 1000
            waiting.timer = asyncio.get_running_loop().call_later(
                delay, lambda: asyncio.ensure_future(self.flush(collection))
            )
        future: asyncio.Future[_Settled] = asyncio.get_running_loop().create_future()
        self._unsettled[key] = future
        future.add_done_callback(lambda _: self._unsettled.pop(key, None))
        waiting.ops.append(op)
        waiting.futures.append(future)
        if len(waiting.ops) >= service.config.batch_size:
            await self.flush(collection)
        op_id, applied = await future
        return {"op_id": op_id, "type": op.type, "value": op.value, "new": True, "applied": applied}

    async def add_many(self, collection: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        """`POST /v1/signals/batch`: published at once, through the journal."""
        out, frames = await self._on_intake(self.service.journal_add_many, collection, items)
        out["applied"] = await self._applied(frames)
        return out

    async def flush(self, collection: str) -> None:
        waiting = self._waiting.pop(collection, None)
        if waiting is None:
            return
        if waiting.timer is not None:
            waiting.timer.cancel()
        try:
            op_ids, frames = await self._on_intake(
                self.service.journal_publish, collection, waiting.ops
            )
            applied = await self._applied(frames)
        except Exception as exc:
            for future in waiting.futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, op_id in zip(waiting.futures, op_ids, strict=True):
            if not future.done():
                future.set_result((str(op_id), applied))

    async def flush_all(self) -> None:
        for collection in list(self._waiting):
            await self.flush(collection)
        await self.store_thread.call(self.service.apply_intake)

    async def close(self) -> None:
        """After the listener closed: the last adds published and stored, the intake
        thread ended."""
        await self.flush_all()
        self._intake.shutdown(wait=True)

    async def _on_intake(self, fn: Callable[..., T], collection: str, *args: Any) -> T:
        """`fn(collection, *args)` on the intake thread; a collection the intake holds no
        tip for yet is primed once on the store thread first."""
        loop = asyncio.get_running_loop()
        call = functools.partial(fn, collection, *args)
        try:
            return await loop.run_in_executor(self._intake, call)
        except NotPrimed:
            await self.store_thread.call(self.service.prime_intake, collection)
            return await loop.run_in_executor(self._intake, call)

    async def _applied(self, frames: list[int]) -> bool:
        """Wait up to apply_wait_ms for the store to hold `frames`: True when it does.
        Past the bound the frames stay journalled and are applied all the same."""
        if not frames:
            return True
        apply = asyncio.ensure_future(self.store_thread.call(self.service.apply_intake))
        apply.add_done_callback(_log_failure)
        bound = self.service.config.apply_wait_ms / 1000
        try:
            await asyncio.wait_for(asyncio.shield(apply), bound)
        except TimeoutError:
            pass
        except Exception:  # logged by _log_failure; the frames wait for the next apply
            pass
        return self.service.intake.outcome(frames)


def _log_failure(future: asyncio.Future[int]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("journalled adds not applied yet: %s", future.exception())
