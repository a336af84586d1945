"""`hashmesh matcher --follow URL`: a stand-alone matcher replica, as a process.

It holds a copy of what a node's platforms match against (store/replica.py), kept current
by following the node over HTTP (net/follow.py), and answers POST /v1/match and
/v1/match/file with the node's answers: the same rows, provenance, opinion counts and
collection filters, for the node's own tokens (learnt from its /v1/replica/state).

Freshness is the contract with the load balancer in front: /healthz answers 503, and so
does every match, when the replica is more than `max_lag` cursor steps behind the node's
head, or its answers are more than `max_lag_s` seconds old (the newest head it has applied
was read that long ago: net/follow.py's LagClock), or the node has not answered for
`max_stale` seconds (the replica cannot know what it missed), or no snapshot completed
yet. A replica that says 200 is at most that far
behind; one that is not is taken out of rotation by the health check.

Start-up loads the PDQ index from the replica's own checkpoint (DIR/index, written at
stop and every CHECKPOINT_S while changes arrive), brings it up to the store's cursor from
the rows changed since, and verifies it against the rows (count and key sum) before using
it; a missing, stale or mismatching checkpoint is rebuilt from the rows. SIGTERM stops it
cleanly (a last checkpoint); after SIGKILL the next start resumes from the cursor committed
with the rows, so nothing (a revocation least of all) is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from aiohttp import web

from hashmesh.node.config import parse_listen
from hashmesh.node.errors import NodeError
from hashmesh.node.matching import loading
from hashmesh.node.matching.checkpoint import snapshot as checkpoint_snapshot
from hashmesh.node.matching.freshness import (
    DEFAULT_MAX_LAG,
    DEFAULT_MAX_LAG_S,
    DEFAULT_MAX_STALE_S,
    Freshness,
)
from hashmesh.node.matching.matcher import Matcher, video_index
from hashmesh.node.matching.pdq_index import PDQIndex
from hashmesh.node.matching.policy import policy_set
from hashmesh.node.matching.quarantine import MatchCounter, spiky
from hashmesh.node.net.follow import Follower, ReplicaState, build_index
from hashmesh.node.store.replica import ReplicaStore, private_dir
from hashmesh.node.web import access, matchroutes, matchserver

log = logging.getLogger("hashmesh.replica")

DEFAULT_DATA = "hashmesh-matcher"
DEFAULT_LISTEN = "127.0.0.1:0"
CHECKPOINT_S = 60.0
RUNTIME_FILE = "matcher.json"
KEEPALIVE_TIMEOUT_S = 15.0


@dataclass
class Options:
    follow: str
    token: str
    listen: str = DEFAULT_LISTEN
    data: Path = Path(DEFAULT_DATA)
    max_lag: int = DEFAULT_MAX_LAG
    max_stale: float = DEFAULT_MAX_STALE_S
    max_lag_s: float = DEFAULT_MAX_LAG_S

    def refusal(self, fresh: Freshness) -> str | None:
        """Why a replica this fresh must not answer (matches and /healthz alike), or None."""
        return fresh.refusal(self.max_lag, self.max_stale, self.max_lag_s)


class Replica:
    """The replica process: store, matcher, follower and the match listener."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.data = private_dir(options.data)
        self.index_dir = self.data / "index"
        self.store = ReplicaStore(self.data)
        self.matcher = Matcher()  # source-agnostic: fed by the follower, reads our store
        self.tokens = access.TokenCache(admin_hash="")  # no admin token here: nothing matches it
        self.authors: dict[str, str] = {}
        self.labels: dict[tuple[str, str], tuple[str, str]] = {}
        self.follower = Follower(
            options.follow, options.token, self.store, self.matcher, self._state
        )
        # What this replica answers counts towards the node's quarantine windows.
        self.counter = self.follower.counter = MatchCounter()
        self.runner: web.AppRunner | None = None
        self.url = ""
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.requests = {"answered": 0, "refused_stale": 0}

    # -- state from the node -------------------------------------------------------------

    def _state(self, state: ReplicaState | None) -> None:
        if state is None:  # the node refused our token: nobody's token is good here now
            self.tokens.grants = {}
            return
        self.tokens.grants = state.grants
        self.authors = state.authors
        self.labels = state.labels
        self.store.set_policy_rows([p.row(0) for p in state.policies])
        self.store.set_quarantined(state.quarantined)

    def freshness(self) -> Freshness:
        f = self.follower
        return Freshness(self.store.cursor, f.head, f.behind(), f.stale_s(), f.lag_s())

    # -- start-up ---------------------------------------------------------------------

    def load_index(self) -> str:
        """The index from the checkpoint (brought up to the store's cursor and verified),
        else from the rows; says which."""
        cursor = self.store.cursor
        if cursor is None:
            return "no snapshot yet"
        store = self.store

        def catch_up_from(index: PDQIndex, at: int) -> tuple[int, int]:
            changes = store.pdq_changes_since(at)
            if changes.added:
                index.add_many([k for k, _ in changes.added], [v for _, v in changes.added])
            if changes.removed:
                index.remove_many(changes.removed)
            return len(changes.added), len(changes.removed)

        loaded = loading.verified_checkpoint(
            self.index_dir, cursor, catch_up_from, store.pdq_digest
        )
        index = loaded.index if loaded is not None else build_index(store)
        how = loaded.how if loaded is not None else "rebuilt from rows"
        self.matcher.load(index, cursor, video_index(store.live_vpdq()))
        return how

    async def _write_checkpoint(self) -> None:
        """Capture the index on the event loop, write it on a thread. The follower calls
        `Matcher.apply` only from the loop, and the capture drains what is queued, so
        nothing changes the index while it is captured (milliseconds: segments are
        immutable, only dead masks and the delta are copied); matches go on throughout."""
        held = self.matcher.snapshot_for_checkpoint()
        if held is None:
            return
        captured = checkpoint_snapshot(*held)
        try:
            await asyncio.to_thread(captured.write, self.index_dir)
        except OSError as exc:
            log.error("index checkpoint not written to %s: %s", self.index_dir, exc)

    async def start(self) -> None:
        how = await asyncio.to_thread(self.load_index)
        log.info("replica index: %s", how)
        host, port = parse_listen(self.options.listen)
        self.runner = web.AppRunner(
            build_app(self),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=KEEPALIVE_TIMEOUT_S,
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, shutdown_timeout=5)
        try:
            await site.start()
        except OSError as exc:
            raise NodeError(f"--listen {self.options.listen}: {exc.strerror or exc}") from None
        sockets = getattr(site._server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.url = f"http://{connect_host}:{bound}"
        runtime = self.data / RUNTIME_FILE
        tmp = runtime.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"pid": os.getpid(), "url": self.url, "follow": self.options.follow})
        )
        os.chmod(tmp, 0o600)
        os.replace(tmp, runtime)
        self._tasks.append(asyncio.create_task(self.follower.run()))
        self._tasks.append(asyncio.create_task(self._checkpoints()))

    async def _checkpoints(self) -> None:
        written = self.matcher.cursor
        while True:
            await asyncio.sleep(CHECKPOINT_S)
            if self.matcher.ready and self.matcher.cursor != written:
                written = self.matcher.cursor
                await self._write_checkpoint()

    async def stop(self) -> None:
        self.follower.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.runner is not None:
            await self.runner.cleanup()
        await self._write_checkpoint()
        (self.data / RUNTIME_FILE).unlink(missing_ok=True)
        self.store.close()

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        print(f"hashmesh matcher following {self.options.follow} at {self.url}", flush=True)
        try:
            await self._stopping.wait()
        finally:
            await self.stop()


# -- HTTP: web/matchserver.py's app (the node's match handlers, middlewares, tokens) -------


class _Answers:
    """matchroutes.MatchDeps for the replica: refuse while not current, else answer on a
    thread over the replica's own store, as the request's token may see it."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    async def answer(self, request: web.Request, queries: Any, threshold: int) -> dict[str, Any]:
        replica = self.replica
        fresh = replica.freshness()
        why = replica.options.refusal(fresh)
        if why is not None:
            replica.requests["refused_stale"] += 1
            raise matchroutes.Refused.not_current("replica", why, fresh)
        collections = access.readable(access.grant_of(request), None)
        authors, labels = replica.authors, replica.labels
        store = replica.store

        def work() -> dict[str, Any]:
            # A PDQ query before the index is loaded raises IndexLoading (503, Retry-After).
            return replica.matcher.answer(
                queries,
                threshold,
                collections,
                lambda a: authors.get(a, ""),
                store.reader(),
                labels,
            )

        result = await asyncio.get_running_loop().run_in_executor(None, work)
        replica.requests["answered"] += 1
        replica.counter.count(result, spiky(policy_set(store.policy_rows())))
        return result


def _health(replica: Replica) -> tuple[bool, dict[str, Any]]:
    """200 while the replica may answer (current within its bounds), else 503 with why:
    what a load balancer's health check reads."""
    fresh = replica.freshness()
    why = replica.options.refusal(fresh)
    body = {**fresh.json(), "pdq_ready": replica.matcher.ready}
    if why is not None:
        body["reason"] = why
    return why is None, body


def _metrics_text(replica: Replica) -> str:
    fresh = replica.freshness()
    stats = replica.follower.stats

    def gauge(name: str, what: str, value: float | None, kind: str = "gauge") -> list[str]:
        shown = -1 if value is None or math.isinf(value) else value
        return [f"# HELP {name} {what}", f"# TYPE {name} {kind}", f"{name} {shown}"]

    lines = [
        *gauge("hashmesh_replica_cursor", "Feed cursor this replica has applied.", fresh.applied),
        *gauge("hashmesh_replica_head", "Head cursor the node last reported.", fresh.head),
        *gauge("hashmesh_replica_lag", "Changes this replica is behind the node.", fresh.behind),
        *gauge(
            "hashmesh_replica_lag_seconds",
            "How old this replica's answers are (seconds since the newest head it applied"
            " was read from the node).",
            round(fresh.lag_s, 3),
        ),
        *gauge(
            "hashmesh_replica_stale_seconds", "Seconds since the node last answered.", fresh.stale_s
        ),
        *gauge(
            "hashmesh_replica_bootstraps_total",
            "Snapshots taken from the node.",
            stats.bootstraps,
            "counter",
        ),
        *gauge(
            "hashmesh_replica_reconnects_total",
            "Feed stream reconnections.",
            stats.reconnects,
            "counter",
        ),
        *gauge(
            "hashmesh_replica_refused_total",
            "Node lines or events refused as malformed.",
            stats.refused,
            "counter",
        ),
        "# HELP hashmesh_replica_matches_total Match requests answered or refused as stale.",
        "# TYPE hashmesh_replica_matches_total counter",
        f'hashmesh_replica_matches_total{{outcome="answered"}} {replica.requests["answered"]}',
        f'hashmesh_replica_matches_total{{outcome="stale"}} {replica.requests["refused_stale"]}',
    ]
    return "\n".join(lines) + "\n"


def build_app(replica: Replica) -> web.Application:
    return matchserver.build_app(
        replica.tokens,
        _Answers(replica),
        partial(_health, replica),
        partial(_metrics_text, replica),
    )


def read_token(path: str | Path) -> str:
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise NodeError(f"--token-file {path}: {exc.strerror or exc}") from None
    if not text or not text.isascii() or any(c.isspace() for c in text):
        raise NodeError(f"--token-file {path}: expected one token (the node's token create output)")
    return text


def run(options: Options, level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    sys.setswitchinterval(0.0005)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Replica(options).run_forever())
