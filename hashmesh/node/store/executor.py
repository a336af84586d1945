"""The store thread: the one thread a running node does its SQLite writes on.

A write connection has one owner, and the store's caches take no locks, so every piece of
store work of a running node is queued here while the event loop stays free for requests.
Consumers (API handlers, sync, the status page) are given this object, not the daemon:
"run this on the store thread" is all they need from it.

Two queues, because bulk replication would otherwise sit in front of an operator: a 1M
sync is hundreds of page slices, and an add queued behind them waited for all of them
(publish p99 13-18 s, docs/benchmarks.md). `call` (publishing, revoking, API reads) always
runs before `call_bulk` (peer pages, pushes); a publish then waits at most for the one bulk
call already running, which the sync keeps short (one batch's worth, net/sync.py). Within
a queue calls run in submission order.

A `prelude` runs before each call: the daemon sets it to apply the intake journal
(node/intake.py), so every call sees the adds journalled before it was queued.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_URGENT, _BULK, _STOP = 0, 1, 2
log = logging.getLogger("hashmesh.store")
PRELUDE_LOG_S = 60.0


class StoreThread:
    """Runs functions one at a time on a single named thread, urgent ones first."""

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Any, Future[Any] | None]] = (
            queue.PriorityQueue()
        )
        self._order = itertools.count()
        self._closed = False
        self.prelude: Callable[[], object] | None = None
        self._prelude_logged = -PRELUDE_LOG_S
        self._thread = threading.Thread(target=self._run, name="store", daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` on the store thread; its exception is raised here."""
        return await self._submit(_URGENT, functools.partial(fn, *args, **kwargs))

    async def call_bulk(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Like `call`, behind every queued `call`: for replication work, which may wait."""
        return await self._submit(_BULK, functools.partial(fn, *args, **kwargs))

    async def _submit(self, priority: int, work: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("the store thread is shut down")
        future: Future[T] = Future()
        self._queue.put((priority, next(self._order), work, future))
        return await asyncio.wrap_future(future)

    def _run(self) -> None:
        while True:
            priority, _, work, future = self._queue.get()
            if priority == _STOP:
                return
            assert future is not None
            if not future.set_running_or_notify_cancel():
                continue  # its caller was cancelled before it started
            if self.prelude is not None:
                try:
                    self.prelude()
                except Exception:  # the call runs all the same; the next one retries
                    now = time.monotonic()
                    if now - self._prelude_logged >= PRELUDE_LOG_S:  # once a minute, not per call
                        self._prelude_logged = now
                        log.exception("store thread prelude failed (retried before each call)")
            try:
                result = work()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        """Wait for queued work to finish, then end the thread (after the last `call`)."""
        if self._closed:
            return
        self._closed = True
        self._queue.put((_STOP, next(self._order), None, None))
        self._thread.join()
