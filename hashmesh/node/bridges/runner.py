"""The running node's bridges: one loop per configured bridge, started by `hashmesh run`
and kept in step with config.toml (a bridge added, changed or removed there starts,
restarts or stops within seconds, without a restart of the node).

A loop fetches a page on a thread of its own (the clients block), bounded by the
bridge's timeout_s, and applies it on the store thread in one transaction
(apply.py); it fetches again at once until the upstream says it is caught up, then waits
`interval_s`. A failed call (HTTP error, timeout, bad answer) is recorded and backs off
exponentially, 2 s doubling up to MAX_BACKOFF_S (never beyond the interval), so an outage
costs the upstream a few calls an hour, and shows in `bridge show` and the status page.

Feedback: every FEEDBACK_POLL_S the loop reads the opinions that reached this node after
its cursor; a confirm or dispute of a bridged add is queued once per (add, verdict) and
forwarded through the client. A call is marked `sending` before it goes out and `sent`
after: one the node died during is never sent again (`unknown`), so no opinion reaches
the upstream twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from hashmesh.node.bridges.apply import apply_page
from hashmesh.node.bridges.kinds import kind_of
from hashmesh.node.bridges.upstream import (
    Page,
    Upstream,
    UpstreamRefused,
    read_credentials,
)
from hashmesh.node.config import Bridge
from hashmesh.node.service import NodeService
from hashmesh.node.store.executor import StoreThread

log = logging.getLogger("hashmesh.bridges")
_QUERY = re.compile(r"\?[^\s'\")]*")
T = TypeVar("T")

FIRST_BACKOFF_S = 2.0
MAX_BACKOFF_S = 900.0
FEEDBACK_POLL_S = 1.0
FEEDBACK_BATCH = 500
FORWARDED = ("confirm", "dispute")


def backoff_s(failures: int, interval_s: float) -> float:
    """Bounded exponential backoff with 10% jitter."""
    if failures <= 0:
        return 0.0
    base = min(FIRST_BACKOFF_S * 2 ** min(failures - 1, 20), MAX_BACKOFF_S, interval_s)
    return float(max(base, 1.0) * random.uniform(0.9, 1.1))


def describe_error(exc: BaseException, timeout_s: float = 0) -> str:
    """One line for an upstream failure: the HTTP status when there was one. URLs lose
    their query: it can hold a credential (the Graph API's access_token), and this line
    is stored, logged and shown on the status page."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    line = _QUERY.sub("?...", str(exc).splitlines()[0]) if str(exc) else ""
    text = line[:300] if line else type(exc).__name__
    return f"HTTP {status}: {text}" if status else f"{type(exc).__name__}: {text}"


def _permanent(exc: BaseException) -> bool:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(exc, UpstreamRefused) or (
        isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)
    )


class BridgeRunner:
    """One bridge's loop in the running node."""

    def __init__(
        self,
        service: NodeService,
        store_thread: StoreThread,
        home: Path,
        bridge: Bridge,
    ) -> None:
        self.service = service
        self.store_thread = store_thread
        self.home = home
        self.bridge = bridge
        self.call_timeout_s = bridge.timeout_s
        self.upstream: Upstream | None = None
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"bridge-{bridge.name}")
        self._tasks: list[asyncio.Task[None]] = []
        self.state = "starting"
        self.retry_at_ms: int | None = None
        self.failures = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._fetch_loop(), name=f"bridge {self.bridge.name}"),
            asyncio.create_task(self._feedback_loop(), name=f"bridge {self.bridge.name} feedback"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "retry_at_ms": self.retry_at_ms, "failures": self.failures}

    async def _call(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(
            loop.run_in_executor(self._pool, fn, *args), self.call_timeout_s
        )

    def _connect(self) -> Upstream:
        if self.upstream is None:
            secret = read_credentials(self.bridge, self.home)
            self.upstream = kind_of(self.bridge.kind)(self.bridge, secret)
        return self.upstream

    async def _failed(self, exc: BaseException, what: str) -> None:
        text = describe_error(exc, self.call_timeout_s)
        at = int(time.time() * 1000)
        self.failures = await self.store_thread.call(self._record_error, f"{what}: {text}", at)
        delay = backoff_s(self.failures, self.bridge.interval_s)
        self.state = "backing off"
        self.retry_at_ms = at + int(delay * 1000)
        log.warning(
            "bridge %s: %s failed (%s); failure %d in a row, next try in %.0f s",
            self.bridge.name,
            what,
            text,
            self.failures,
            delay,
        )
        await asyncio.sleep(delay)

    def _record_error(self, text: str, at: int) -> int:
        table = self.service.store.bridges
        table.ensure(self.bridge.name, self.bridge.kind)
        return table.record_error(self.bridge.name, text, at)

    def _checkpoint(self) -> dict[str, Any]:
        table = self.service.store.bridges
        table.ensure(self.bridge.name, self.bridge.kind)
        return table.progress(self.bridge.name)[0]

    async def _fetch_loop(self) -> None:
        name = self.bridge.name
        while True:
            try:
                upstream = self._connect()
            except Exception as exc:
                await self._failed(exc, "credentials")
                continue
            checkpoint = await self.store_thread.call(self._checkpoint)
            self.state = "fetching"
            try:
                page: Page = await self._call(upstream.fetch, checkpoint, int(time.time()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.upstream = None  # the next try reads the credentials again (a fixed file)
                await self._failed(exc, "fetch")
                continue
            try:
                applied = await self.store_thread.call_bulk(
                    apply_page, self.service, self.bridge, upstream, page
                )
            except Exception as exc:
                log.exception("bridge %s: page not applied", name)
                await self._failed(exc, "publish")
                continue
            self.failures, self.retry_at_ms = 0, None
            if applied.added or applied.revoked:
                log.info(
                    "bridge %s: %d entries, %d added, %d revoked",
                    name,
                    applied.entries,
                    applied.added,
                    applied.revoked,
                )
            if page.caught_up:
                self.state = "caught up"
                await asyncio.sleep(self.bridge.interval_s)

    # -- feedback ----------------------------------------------------------------------

    async def _feedback_loop(self) -> None:
        await self.store_thread.call(self._recover_feedback)
        while True:
            await asyncio.sleep(FEEDBACK_POLL_S)
            try:
                await self.store_thread.call(self._queue_feedback)
                due = await self.store_thread.call(self._due)
                if due:
                    await self._send(due)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bridge %s: feedback round failed", self.bridge.name)

    def _recover_feedback(self) -> None:
        table = self.service.store.bridges
        table.ensure(self.bridge.name, self.bridge.kind)
        with self.service.store.bulk(source="local"):
            lost = table.feedback_interrupted(self.bridge.name, int(time.time() * 1000))
        if lost:
            log.warning(
                "bridge %s: %d feedback call(s) were out when the node stopped; not resent",
                self.bridge.name,
                lost,
            )

    def _queue_feedback(self) -> None:
        """Opinions on this bridge's adds that arrived since the cursor, queued once each;
        the cursor moves in the same transaction (to the feed's head when the rows run
        out: everything up to it was read, on this thread, so nothing slips between)."""
        store = self.service.store
        table = store.bridges
        cursor = table.progress(self.bridge.name)[2]
        rows = table.opinions_after(cursor, self.service.node_id, FEEDBACK_BATCH)
        head = rows[-1][0] if len(rows) == FEEDBACK_BATCH else table.feed_head()
        if head == cursor:
            return
        at = int(time.time() * 1000)
        ours = table.item_by_op([target for _, target, _, _, _ in rows])
        with store.bulk(source="local"):
            for _, target, verdict, author, reason in rows:
                found = ours.get(target)
                if verdict in FORWARDED and found is not None and found[0] == self.bridge.name:
                    table.queue_feedback(self.bridge.name, target, verdict, author, reason, at)
            table.set_feedback_cursor(self.bridge.name, head)

    def _due(self) -> list[tuple[str, str, str | None, Any]]:
        table = self.service.store.bridges
        due = table.feedback_due(self.bridge.name, 50)
        if not due:
            return []
        items = table.item_by_op([t for t, _, _, _ in due])
        return [(t, v, r, items.get(t)) for t, v, r, _ in due]

    def _mark(self, target: str, verdict: str, state: str, **fields: Any) -> None:
        store = self.service.store
        with store.bulk(source="local"):
            store.bridges.mark_feedback(
                self.bridge.name, target, verdict, state, int(time.time() * 1000), **fields
            )

    async def _send(self, due: list[tuple[str, str, str | None, Any]]) -> None:
        try:
            upstream = self._connect()
        except Exception:
            return  # the fetch loop reports what is wrong with the credentials
        for target, verdict, reason, found in due:
            if found is None:
                await self.store_thread.call(
                    self._mark, target, verdict, "refused", error="the add was revoked since"
                )
                continue
            await self.store_thread.call(self._mark, target, verdict, "sending")
            try:
                sent = await self._call(upstream.send_feedback, found[1], verdict, reason)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                state = "refused" if _permanent(exc) else "queued"
                await self.store_thread.call(
                    self._mark, target, verdict, state, error=describe_error(exc)
                )
                if state == "queued":  # upstream down: the rest waits for the next round
                    await asyncio.sleep(backoff_s(1, self.bridge.interval_s))
                    return
                continue
            await self.store_thread.call(
                self._mark, target, verdict, "sent", sent=json.dumps(sent, sort_keys=True)
            )
            log.info("bridge %s: %s on %s sent upstream", self.bridge.name, verdict, target)


class Bridges:
    """Every configured bridge of the running node, kept in step with the config."""

    def __init__(self, service: NodeService, store_thread: StoreThread, home: Path) -> None:
        self.service = service
        self.store_thread = store_thread
        self.home = home
        self.running: dict[str, BridgeRunner] = {}

    async def reconcile(self) -> None:
        wanted = {b.name: b for b in self.service.config.bridges}
        for name in list(self.running):
            if name not in wanted or wanted[name] != self.running[name].bridge:
                await self.running.pop(name).stop()
        for name, bridge in wanted.items():
            if name not in self.running:
                runner = BridgeRunner(self.service, self.store_thread, self.home, bridge)
                self.running[name] = runner
                runner.start()

    async def stop(self) -> None:
        for runner in self.running.values():
            await runner.stop()
        self.running.clear()

    async def status(self) -> list[dict[str, Any]]:
        from hashmesh.node.bridges.manage import bridge_json

        out = []
        for bridge in self.service.config.bridges:
            state = await self.store_thread.call(self.service.store.bridges.state, bridge.name)
            entry = bridge_json(bridge, state)
            runner = self.running.get(bridge.name)
            entry["running"] = runner.status() if runner else None
            out.append(entry)
        return out
