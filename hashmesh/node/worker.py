"""`python -m hashmesh.node.worker --home H --fd N`: one of the node's matcher workers.

Started by the node (node/workers.py) with the match listening socket as descriptor N. It
matches so the node process does not: no match request holds the node's GIL, event loop
or store thread. What it holds, and how it stays current:

- the node's database, opened read-only (WAL: it sees each commit whole, never blocks the
  node's writer): rows, opinions and tokens are read from it at match time;
- the PDQ index from the node's latest checkpoint in Home.index_dir (memory-mapped, so N
  workers share one copy of its segments in the page cache), brought up to the feed's head
  and checked against the rows (live count and key sum) before it answers; without a
  checkpoint, or when the check fails, an index built from the rows;
- then the `feed` table from that cursor, every POLL_S: adds of PDQ signals go into the
  index, revocations are removed from it, in cursor order (the one writer assigns cursors
  in commit order, so a page read in one transaction has no gap);
- a newer checkpoint, once the node has written one covering REMAP_CHANGES more of the
  feed: mapped and verified on a thread of its own while the old index answers, brought
  up to the feed's head on the follower's thread and swapped in, so what the worker added
  in private memory since it started goes back to the shared page cache;
- the tokens table every TOKENS_S (a revoked token stops working here within that) and
  author names from config.toml when it changes.

Every REPORT_S it writes the hits it answered, counted per signal, as one JSON line to
the node's pipe (`--report-fd`, node/workers.py): the node's quarantine counts them as
it counts its own answers, whether a match came forwarded by the node or straight to
the workers' address.

Freshness (cursor applied against the feed's head, seconds since the last successful read)
is on /healthz and /metrics; past DEFAULT_MAX_LAG changes or DEFAULT_MAX_STALE_S seconds it
answers 503 to matches and health checks alike. It exits on SIGTERM, and by itself when
its parent (the node) is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from hashmesh.node.config import Config, Home
from hashmesh.node.errors import HomeError
from hashmesh.node.keys import hash_token, read_secret
from hashmesh.node.matching import loading
from hashmesh.node.matching.checkpoint import checkpoint_cursor
from hashmesh.node.matching.freshness import (
    DEFAULT_MAX_LAG_S,
    DEFAULT_MAX_STALE_S,
    Freshness,
    LagClock,
)
from hashmesh.node.matching.matcher import Matcher, exact_only
from hashmesh.node.matching.policy import policy_set
from hashmesh.node.matching.quarantine import REPORT_S, MatchCounter, spiky
from hashmesh.node.runtime import release_free_memory, tune_gc
from hashmesh.node.store import feed
from hashmesh.node.store.core import StoreReader
from hashmesh.node.store.policies import PolicyRow, policy_rows
from hashmesh.node.store.tokens import TokenTable
from hashmesh.node.tokens import Grant
from hashmesh.node.web import access, fastmatch, matchroutes, matchserver

try:  # a dependency (pyproject.toml); the stock loop still serves if it cannot load
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]

log = logging.getLogger("hashmesh.worker")
T = TypeVar("T")

POLL_S = 0.05
TOKENS_S = 0.25
CONFIG_S = 1.0
INLINE_QUERIES = 32
REMAP_CHECK_S = 2.0
REMAP_CHANGES = 1_000
KEEPALIVE_TIMEOUT_S = 15.0
# "aiohttp": serve every route through aiohttp on the stock loop, as before web/fastmatch.py
# (bench/http_match.py measures both); anything else: the fast path on uvloop.
SERVER = os.environ.get("HASHMESH_MATCH_SERVER", "fast")


class _Reader(StoreReader):
    """The worker's read-only connection, with the match policy rows its follower keeps:
    read once per feed page instead of once per match request."""

    def __init__(self, path: Path, cached: Callable[[], list[PolicyRow] | None]) -> None:
        super().__init__(path)
        self._cached = cached

    def policy_rows(self) -> list[PolicyRow]:
        rows = self._cached()
        return super().policy_rows() if rows is None else rows


class Worker:
    def __init__(self, home: Home, fd: int, report_fd: int | None = None) -> None:
        self.home = home
        self.fd = fd
        self.report_fd = report_fd
        self.counter = MatchCounter()
        self.parent = os.getppid()
        self.config: Config = home.load_config()
        self._config_mtime = home.config_mtime()
        admin = hash_token(read_secret(home.admin_token_path, "admin token"))
        self.tokens = access.TokenCache(admin)
        self._token_rows: list[Any] = []
        self.matcher = Matcher()
        self._readers = threading.local()
        self.policy_rows: list[PolicyRow] = []  # read with each feed page (_poll_once)
        self.conn = feed.connect_reader(home.db_path)
        # The feed follower's own thread: on the default pool (where matches run) a poll
        # waits behind every queued match, and under a flood the index falls behind.
        self._follow_thread = ThreadPoolExecutor(1, thread_name_prefix="follow")
        self.head: int | None = None
        self.last_read = float("-inf")
        self.lag = LagClock()
        self.max_lag = math.inf  # the node's workers are bounded in seconds (freshness.py)
        self.max_lag_s = DEFAULT_MAX_LAG_S
        self.max_stale = DEFAULT_MAX_STALE_S
        self.counts = {"answered": 0, "refused": 0, "remapped": 0}
        self.mapped_at: int | None = None  # cursor of the checkpoint the index came from
        self._remap_tried: int | None = None
        self.stopping = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.fast: fastmatch.FastServer | None = None

    # -- freshness and health --------------------------------------------------------------

    def freshness(self) -> Freshness:
        applied = self.matcher.cursor if self.matcher.ready else None
        behind = None if applied is None or self.head is None else max(0, self.head - applied)
        now = time.monotonic()
        return Freshness(applied, self.head, behind, now - self.last_read, self.lag.lag_s(now))

    def health(self) -> tuple[bool, dict[str, Any]]:
        fresh = self.freshness()
        why = fresh.refusal(self.max_lag, self.max_stale, self.max_lag_s)
        body: dict[str, Any] = {**fresh.json(), "pid": os.getpid(), "pdq_ready": self.matcher.ready}
        if why is not None:
            body["reason"] = why
        return why is None, body

    def metrics_text(self) -> str:
        fresh = self.freshness()

        def num(value: float | None) -> str:
            return "-1" if value is None or value == float("inf") else f"{value:g}"

        lines = [
            "# HELP hashmesh_matcher_cursor Feed cursor this matcher has applied.",
            "# TYPE hashmesh_matcher_cursor gauge",
            f"hashmesh_matcher_cursor {num(fresh.applied)}",
            "# HELP hashmesh_matcher_head The feed's newest cursor when last read.",
            "# TYPE hashmesh_matcher_head gauge",
            f"hashmesh_matcher_head {num(fresh.head)}",
            "# HELP hashmesh_matcher_lag Feed changes this matcher is behind.",
            "# TYPE hashmesh_matcher_lag gauge",
            f"hashmesh_matcher_lag {num(fresh.behind)}",
            "# HELP hashmesh_matcher_lag_seconds How old this matcher's answers are.",
            "# TYPE hashmesh_matcher_lag_seconds gauge",
            f"hashmesh_matcher_lag_seconds {num(round(fresh.lag_s, 3))}",
            "# HELP hashmesh_matcher_stale_seconds Seconds since the feed was last read.",
            "# TYPE hashmesh_matcher_stale_seconds gauge",
            f"hashmesh_matcher_stale_seconds {num(round(fresh.stale_s, 3))}",
            "# HELP hashmesh_matcher_matches_total Match requests answered or refused as stale.",
            "# TYPE hashmesh_matcher_matches_total counter",
            f'hashmesh_matcher_matches_total{{outcome="answered"}} {self.counts["answered"]}',
            f'hashmesh_matcher_matches_total{{outcome="stale"}} {self.counts["refused"]}',
            "# HELP hashmesh_matcher_checkpoint_cursor Cursor of the checkpoint mapped (-1: none).",
            "# TYPE hashmesh_matcher_checkpoint_cursor gauge",
            f"hashmesh_matcher_checkpoint_cursor {num(self.mapped_at)}",
            "# HELP hashmesh_matcher_remaps_total Newer checkpoints mapped in place of the index.",
            "# TYPE hashmesh_matcher_remaps_total counter",
            f"hashmesh_matcher_remaps_total {self.counts['remapped']}",
        ]
        return "\n".join(lines) + "\n"

    # -- MatchDeps ---------------------------------------------------------------------------

    async def answer(self, request: web.Request, queries: Any, threshold: int) -> dict[str, Any]:
        result = self.answer_now(access.grant_of(request), queries, threshold)
        return result if isinstance(result, dict) else await result

    def answer_now(
        self, grant: Grant, queries: Any, threshold: int
    ) -> dict[str, Any] | Awaitable[dict[str, Any]]:
        """Exact-only requests read the database, current at every commit: they answer even
        while the index loads or lags, inline (a few indexed lookups: no thread hop, and
        web/fastmatch.py writes the answer from the same call). Anything with a PDQ query
        needs a fresh index, and is answered on a thread."""
        exact = exact_only(queries)
        if not exact:
            fresh = self.freshness()
            why = fresh.refusal(self.max_lag, self.max_stale, self.max_lag_s)
            if why is not None:
                self.counts["refused"] += 1
                raise matchroutes.Refused.not_current("matcher", why, fresh)
        collections = access.readable(grant, None)
        author_name, labels = self.config.author_name, self.config.trust_labels()
        readers, matcher = self._reader, self.matcher

        def work() -> dict[str, Any]:
            return matcher.answer(queries, threshold, collections, author_name, readers(), labels)

        if exact and len(queries) <= INLINE_QUERIES:
            result = work()
            self._answered(result)
            return result
        return self._on_thread(work)

    async def _on_thread(self, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        result = await asyncio.get_running_loop().run_in_executor(None, work)
        self._answered(result)
        return result

    def _answered(self, result: dict[str, Any]) -> None:
        self.counts["answered"] += 1
        self.counter.count(result, spiky(policy_set(self.policy_rows)))

    def _write_report(self, line: bytes) -> None:
        assert self.report_fd is not None
        view = memoryview(line)
        while view:
            view = view[os.write(self.report_fd, view) :]

    async def report(self) -> None:
        """Every REPORT_S, the hits counted since the last report, to the node's pipe."""
        while True:
            await asyncio.sleep(REPORT_S)
            if len(self.counter):
                pairs = self.counter.drain()
                line = json.dumps({"matches": [[op, n] for op, n in pairs]}).encode() + b"\n"
                try:
                    await asyncio.to_thread(self._write_report, line)
                except OSError as exc:  # the node is gone: the follower notices and stops
                    log.warning("match report not written: %s", exc)
                    return

    def _reader(self) -> _Reader:
        reader: _Reader | None = getattr(self._readers, "reader", None)
        if reader is None:
            reader = self._readers.reader = _Reader(self.home.db_path, self._cached_policies)
        return reader

    def _cached_policies(self) -> list[PolicyRow] | None:
        """The match policy rows the follower read with its last feed page (as fresh as the
        index), or None (read them now) when the follower has not read for max_stale."""
        if time.monotonic() - self.last_read > self.max_stale:
            return None
        return self.policy_rows

    # -- following the node ------------------------------------------------------------------

    def _poll_once(self) -> bool:
        """Apply one page of the feed; True when there may be more right away."""
        read_at = time.monotonic()
        self.conn.execute("BEGIN")
        try:
            head = feed.feed_head(self.conn)
            page = feed.index_changes(self.conn, self.matcher.cursor)
            rows = policy_rows(self.conn)
        finally:
            self.conn.execute("COMMIT")
        full = len(page) >= feed.INDEX_PAGE
        # A short page saw every row up to `head` (one transaction): opinions in between
        # move the cursor too, so lag is not counted for rows that change no index.
        cursor = page[-1][0] if full else max(head, self.matcher.cursor)
        added, removed = loading.changes(page)
        videos, videos_removed = loading.video_changes(page)
        self.lag.read(head, read_at)
        self.matcher.apply(added, removed + videos_removed, cursor, videos)
        self.lag.applied(cursor)
        self.head = head
        if rows != self.policy_rows:
            self.policy_rows = rows
        self.last_read = time.monotonic()
        return full

    def _reload_tokens(self) -> None:
        rows = TokenTable(self.conn).live()
        if rows == self._token_rows:
            return
        grants: dict[str, Grant] = {}
        for name, digest, scopes, collections in rows:
            grants[digest] = Grant(
                name,
                frozenset(scopes.split(",")),
                frozenset(collections.split(",")) if collections else None,
            )
        self.tokens.grants = grants
        self._token_rows = rows

    def _reload_config(self) -> None:
        mtime = self.home.config_mtime()
        if mtime != self._config_mtime:
            try:
                self.config = self.home.load_config()
            except HomeError as exc:
                log.error("config not reloaded: %s", exc)
            self._config_mtime = mtime

    def _map_newer(self) -> loading.Loaded | None:
        """A thread of its own, while the old index answers and the follower goes on: the
        newer checkpoint mapped and verified on a connection of its own, or None."""
        at = checkpoint_cursor(self.home.index_dir)
        if at is None or at == self._remap_tried:
            return None
        if self.mapped_at is not None and at - self.mapped_at < REMAP_CHANGES:
            return None
        self._remap_tried = at  # one that does not verify is not read again
        conn = feed.connect_reader(self.home.db_path)
        try:
            return loading.from_checkpoint(conn, self.home.index_dir)
        finally:
            conn.close()

    def _swap(self, loaded: loading.Loaded) -> None:
        """The follower's thread, so no feed page interleaves: bring the mapped index from
        its cursor to the head (it is never behind the old one after this) and swap."""
        self.conn.execute("BEGIN")
        try:
            head = feed.feed_head(self.conn)
            loading.catch_up(loaded.index, self.conn, loaded.cursor)
        finally:
            self.conn.execute("COMMIT")
        cursor = max(head, self.matcher.cursor)
        self.matcher.load(loaded.index, cursor)
        self.head = head
        self.mapped_at = loaded.checkpoint
        self.counts["remapped"] += 1
        release_free_memory()  # the index it replaced, and what the feed's pages freed
        log.info(
            "matcher worker %d remapped the PDQ index from the %s (%d live)",
            os.getpid(),
            loaded.how,
            len(loaded.index),
        )

    async def remap(self) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(REMAP_CHECK_S)
            try:
                loaded = await asyncio.to_thread(self._map_newer)
                if loaded is not None:
                    await self._on_follow_thread(functools.partial(self._swap, loaded))
            except sqlite3.Error as exc:
                log.warning("newer PDQ index checkpoint not mapped: %s", exc)

    async def _on_follow_thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._follow_thread, fn)

    async def follow(self) -> None:
        tokens_at = config_at = 0.0
        while not self.stopping.is_set():
            if os.getppid() != self.parent:
                log.warning("the node (pid %d) is gone: worker exiting", self.parent)
                self.stopping.set()
                return
            more = False
            try:
                more = await self._on_follow_thread(self._poll_once)
                now = time.monotonic()
                if now - tokens_at >= TOKENS_S:
                    await self._on_follow_thread(self._reload_tokens)
                    tokens_at = now
                if now - config_at >= CONFIG_S:
                    self._reload_config()
                    config_at = now
            except sqlite3.Error as exc:
                log.warning("feed not read: %s", exc)
            if not more:
                await asyncio.sleep(POLL_S)

    # -- lifecycle ------------------------------------------------------------------------

    def lower_priority(self, nice: int) -> None:
        """Matching yields the CPU to the node; following it does not. On Linux a nice
        value belongs to a thread and a new thread inherits its creator's, so the follower's
        thread starts first, at the node's priority (as does the merge thread it starts),
        and only then do this thread (the event loop) and the match threads it creates take
        `nice`: under CPU pressure matches wait, the index does not fall behind (a
        revocation still stops matching on time)."""
        self._follow_thread.submit(lambda: None).result()
        os.nice(nice)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        # Serve at once (health says "loading", exact matches answer): the index loads after.
        sock = socket.socket(fileno=self.fd)
        app = matchserver.build_app(self.tokens, self, self.health, self.metrics_text)
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_TIMEOUT_S
        )
        await self.runner.setup()
        await self._on_follow_thread(self._reload_tokens)
        if SERVER == "aiohttp":  # the old path, kept for bench/http_match.py's comparison
            await web.SockSite(self.runner, sock, shutdown_timeout=5).start()
        else:
            fallback = self.runner.server
            assert fallback is not None
            self.fast = fastmatch.FastServer(
                self.tokens,
                self.answer_now,
                self.health,
                self.metrics_text,
                fallback,
                KEEPALIVE_TIMEOUT_S,
            )
            await self.fast.start(sock=sock)
        loaded = await self._on_follow_thread(lambda: loading.load(self.conn, self.home.index_dir))
        self.matcher.load(loaded.index, loaded.cursor, loaded.videos)
        self.mapped_at = loaded.checkpoint
        log.info(
            "matcher worker %d ready: PDQ index from %s (%d live)",
            os.getpid(),
            loaded.how,
            len(loaded.index),
        )
        del loaded  # held here for the worker's life, a remapped index could never be freed
        tasks = [asyncio.create_task(self.follow()), asyncio.create_task(self.remap())]
        if self.report_fd is not None:
            tasks.append(asyncio.create_task(self.report()))
        try:
            await self.stopping.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.fast is not None:
                await self.fast.stop()
            await self.runner.cleanup()
            self._follow_thread.shutdown(wait=True)
            self.conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hashmesh.node.worker")
    parser.add_argument("--home", required=True)
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--report-fd", type=int, default=None)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    sys.setswitchinterval(0.0005)
    tune_gc()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=args.log_level, handlers=[handler], force=True)
    worker = Worker(Home(args.home), args.fd, args.report_fd)
    if worker.config.match_worker_nice:  # read once: a process cannot lower it back
        worker.lower_priority(worker.config.match_worker_nice)
    with contextlib.suppress(KeyboardInterrupt):
        if uvloop is not None and SERVER != "aiohttp":
            uvloop.run(worker.run())
        else:
            asyncio.run(worker.run())


if __name__ == "__main__":
    main()
