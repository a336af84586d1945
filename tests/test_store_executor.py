"""The store thread's two queues (store/executor.py): an operator's call runs before every
queued replication call, calls in one queue keep their order, errors and cancellation reach
the caller, and shutdown drains what was queued."""

from __future__ import annotations

import asyncio
import threading

import pytest

from hashmesh.node.store.executor import StoreThread


def test_urgent_calls_overtake_queued_bulk_calls() -> None:
    async def scenario() -> list[str]:
        thread = StoreThread()
        ran: list[str] = []
        started, release = threading.Event(), threading.Event()

        def blocking() -> None:
            started.set()
            release.wait(10)
            ran.append("bulk-0")

        first = asyncio.ensure_future(thread.call_bulk(blocking))
        await asyncio.to_thread(started.wait, 10)
        queued = [asyncio.ensure_future(thread.call_bulk(ran.append, f"bulk-{n}")) for n in (1, 2)]
        urgent = [asyncio.ensure_future(thread.call(ran.append, f"urgent-{n}")) for n in (1, 2)]
        await asyncio.sleep(0)  # every call is queued before the running one ends
        release.set()
        await asyncio.gather(first, *queued, *urgent)
        thread.shutdown()
        return ran

    assert asyncio.run(scenario()) == ["bulk-0", "urgent-1", "urgent-2", "bulk-1", "bulk-2"]


def test_errors_cancellation_and_shutdown() -> None:
    async def scenario() -> list[str]:
        thread = StoreThread()
        ran: list[str] = []

        def fail() -> None:
            raise ValueError("refused")

        with pytest.raises(ValueError, match="refused"):
            await thread.call(fail)
        gate = threading.Event()
        running = asyncio.ensure_future(thread.call(gate.wait, 10))
        cancelled = asyncio.ensure_future(thread.call_bulk(ran.append, "cancelled"))
        pending = asyncio.ensure_future(thread.call_bulk(ran.append, "kept"))
        await asyncio.sleep(0.05)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled  # the cancellation has reached the queued call
        gate.set()
        await running
        await pending
        thread.shutdown()
        with pytest.raises(RuntimeError, match="shut down"):
            await thread.call(ran.append, "late")
        return ran

    assert asyncio.run(scenario()) == ["kept"]


def test_the_prelude_runs_before_each_call_and_a_failing_one_does_not_stop_it() -> None:
    async def scenario() -> list[str]:
        thread = StoreThread()
        ran: list[str] = []
        failures = iter([True, False])

        def prelude() -> None:
            ran.append("prelude")
            if next(failures, False):
                raise OSError("disk full")

        thread.prelude = prelude
        await thread.call(ran.append, "first")
        await thread.call_bulk(ran.append, "second")
        thread.shutdown()
        return ran

    assert asyncio.run(scenario()) == ["prelude", "first", "prelude", "second"]
