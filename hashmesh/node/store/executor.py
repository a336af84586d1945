"""The store thread: the one thread a running node does its SQLite writes on.

A write connection has one owner, and the store's caches take no locks, so every piece of
store work of a running node is queued here, in order, while the event loop stays free
for requests. Consumers (API handlers, sync, the status page) are given this object, not
the daemon: "run this on the store thread" is all they need from it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class StoreThread:
    """Runs functions one at a time, in submission order, on a single named thread."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn(*args, **kwargs)` on the store thread; its exception is raised here."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def shutdown(self) -> None:
        """Wait for queued work to finish, then end the thread (after the last `call`)."""
        self._pool.shutdown(wait=True)
