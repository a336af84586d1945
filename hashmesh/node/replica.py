"""`hashmesh matcher --follow URL`: a stand-alone matcher replica, as a process.

It holds a copy of what a node's platforms match against (store/replica.py), kept current
by following the node over HTTP (net/follow.py), and answers POST /v1/match and
/v1/match/file with the node's answers: the same rows, provenance, opinion counts and
collection filters, for the node's own tokens (learnt from its /v1/replica/state).

Freshness is the contract with the load balancer in front: /healthz answers 503, and so
does every match, when the replica is more than `max_lag` cursor steps behind the node's
head, or the node has not answered for `max_stale` seconds (the replica cannot know what
it missed), or no snapshot completed yet. A replica that says 200 is at most that far
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

from aiohttp import BodyPartReader, web

from hashmesh.node.config import parse_listen
from hashmesh.node.errors import NodeError, PayloadTooLarge
from hashmesh.node.hashing.hasher import ImageError, ImageTooLarge, hash_bytes
from hashmesh.node.matching.checkpoint import read_checkpoint
from hashmesh.node.matching.checkpoint import snapshot as checkpoint_snapshot
from hashmesh.node.matching.matcher import Matcher, check_threshold
from hashmesh.node.matching.pdq_index import DEFAULT_THRESHOLD, PDQIndex
from hashmesh.node.net.bodies import BodyPace, encoding_middleware
from hashmesh.node.net.follow import Follower, ReplicaState, build_index
from hashmesh.node.store.replica import ReplicaStore, private_dir
from hashmesh.node.web import access
from hashmesh.node.web.api import auth_middleware, errors_middleware
from hashmesh.node.web.http import read_json

log = logging.getLogger("hashmesh.replica")

DEFAULT_DATA = "hashmesh-matcher"
DEFAULT_LISTEN = "127.0.0.1:0"
DEFAULT_MAX_LAG = 10_000
DEFAULT_MAX_STALE_S = 10.0
CHECKPOINT_S = 60.0
RUNTIME_FILE = "matcher.json"
MAX_UPLOAD = 50 * 1024 * 1024
KEEPALIVE_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Freshness:
    """How current the replica is: the cursor applied, the node's head, how far behind,
    and seconds since the node last answered."""

    applied: int | None
    head: int | None
    behind: int | None
    stale_s: float

    def refusal(self, max_lag: int, max_stale: float) -> str | None:
        """Why this replica must not answer now, or None."""
        if self.applied is None:
            return "the replica has not completed its snapshot of the node yet"
        if self.stale_s > max_stale:
            return f"the node has not answered for {self.stale_s:.1f} s (limit {max_stale:g} s)"
        if self.behind is None:
            return "the node's head cursor is not known yet"
        if self.behind > max_lag:
            return f"{self.behind} changes behind the node (limit {max_lag})"
        return None

    def json(self) -> dict[str, Any]:
        return {
            "cursor": self.applied,
            "head": self.head,
            "behind": self.behind,
            "stale_s": None if math.isinf(self.stale_s) else round(self.stale_s, 3),
        }


@dataclass
class Options:
    follow: str
    token: str
    listen: str = DEFAULT_LISTEN
    data: Path = Path(DEFAULT_DATA)
    max_lag: int = DEFAULT_MAX_LAG
    max_stale: float = DEFAULT_MAX_STALE_S


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
        self.follower = Follower(
            options.follow, options.token, self.store, self.matcher, self._state
        )
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

    def freshness(self) -> Freshness:
        f = self.follower
        return Freshness(self.store.cursor, f.head, f.behind(), f.stale_s())

    # -- start-up ---------------------------------------------------------------------

    def load_index(self) -> str:
        """The index from the checkpoint (brought up to the store's cursor and verified),
        else from the rows; says which."""
        cursor = self.store.cursor
        if cursor is None:
            return "no snapshot yet"
        loaded = read_checkpoint(self.index_dir)
        how = "rebuilt from rows"
        index: PDQIndex | None = None
        if loaded is not None and loaded[1] <= cursor:
            index, at = loaded
            changes = self.store.pdq_changes_since(at)
            if changes.added:
                index.add_many([k for k, _ in changes.added], [v for _, v in changes.added])
            if changes.removed:
                index.remove_many(changes.removed)
            if index.digest() == self.store.pdq_digest():
                how = f"checkpoint at cursor {at}, {len(changes.added)} adds and"
                how += f" {len(changes.removed)} removals since"
            else:
                log.warning("index checkpoint does not match the rows: rebuilding from rows")
                index = None
        if index is None:
            index = build_index(self.store)
        self.matcher.load(index, cursor)
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


# -- HTTP -----------------------------------------------------------------------------------

REPLICA_KEY: web.AppKey[Replica] = web.AppKey("replica")


def _refusal(replica: Replica) -> web.Response | None:
    fresh = replica.freshness()
    why = fresh.refusal(replica.options.max_lag, replica.options.max_stale)
    if why is None:
        return None
    replica.requests["refused_stale"] += 1
    return web.json_response(
        {"error": f"this replica is not current: {why}", **fresh.json()},
        status=503,
        headers={"Retry-After": "1"},
    )


async def _answer(request: web.Request, queries: Any, threshold: int) -> web.Response:
    replica = request.app[REPLICA_KEY]
    refused = _refusal(replica)
    if refused is not None:
        return refused
    collections = access.readable(access.grant_of(request), None)
    authors = replica.authors
    store = replica.store

    def work() -> dict[str, Any]:
        return replica.matcher.answer(
            queries, threshold, collections, lambda a: authors.get(a, ""), store.reader()
        )

    # A PDQ query before the index is loaded raises IndexLoading: 503 with Retry-After.
    result = await asyncio.get_running_loop().run_in_executor(None, work)
    replica.requests["answered"] += 1
    return web.json_response(result)


async def match(request: web.Request) -> web.Response:
    body = await read_json(request)
    if "queries" not in body:
        raise NodeError("queries: required")
    unknown = set(body) - {"queries", "threshold"}
    if unknown:
        raise NodeError(f"{sorted(unknown)[0]}: unknown field")
    threshold = check_threshold(body.get("threshold", DEFAULT_THRESHOLD))
    return await _answer(request, body["queries"], threshold)


async def match_file(request: web.Request) -> web.Response:
    """As the node's /v1/match/file (web/platform.py): the image hashed in memory, never
    stored; parts `file`, `threshold`, `dihedral`."""
    if not request.content_type.startswith("multipart/"):
        raise NodeError("upload: expected multipart/form-data with a 'file' part")
    reader = await request.multipart()
    data = b""
    threshold = DEFAULT_THRESHOLD
    dihedral = False
    pace = BodyPace("upload")

    async def small_part(part: BodyPartReader, refusal: str) -> str:
        raw = b""
        while chunk := await pace.next(part.read_chunk(64)):
            raw += chunk
            if len(raw) > 16:
                raise NodeError(refusal)
        return raw.decode("ascii", "replace").strip()

    try:
        while (part := await pace.next(reader.next())) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "threshold":
                text = await small_part(part, "threshold: must be an integer")
                if not text.isdigit() or len(text) > 6:
                    raise NodeError("threshold: must be an integer")
                threshold = check_threshold(int(text))
            elif part.name == "dihedral":
                text = await small_part(part, "dihedral: must be true or false")
                if text not in ("true", "false"):
                    raise NodeError("dihedral: must be true or false")
                dihedral = text == "true"
            elif part.name == "file":
                chunks, size = [], 0
                while chunk := await pace.next(part.read_chunk(1 << 16)):
                    size += len(chunk)
                    if size > MAX_UPLOAD:
                        raise PayloadTooLarge(f"upload: larger than {MAX_UPLOAD >> 20} MiB")
                    chunks.append(chunk)
                data = b"".join(chunks)
    except ValueError as exc:
        raise NodeError(f"upload: malformed multipart body ({exc})") from None
    if not data:
        raise NodeError("upload: no 'file' part, or it is empty")
    loop = asyncio.get_running_loop()
    try:
        hashes = await loop.run_in_executor(None, partial(hash_bytes, data, dihedral=dihedral))
    except ImageTooLarge as exc:
        raise PayloadTooLarge(f"upload: {exc}") from None
    except ImageError as exc:
        raise NodeError(f"upload: {exc}") from None
    variants = hashes.pdq_dihedral or {"original": hashes.pdq or ""}
    queries = [
        {"type": "md5", "value": hashes.md5},
        {"type": "sha256", "value": hashes.sha256},
        *({"type": "pdq", "value": value} for value in variants.values()),
    ]
    response = await _answer(request, queries, threshold)
    if response.status != 200 or response.body is None:
        return response
    result = json.loads(bytes(response.body))  # type: ignore[arg-type]
    for entry, name in zip(result["results"][2:], variants, strict=True):
        entry["variant"] = name
    result["hashes"] = {
        "md5": hashes.md5,
        "sha256": hashes.sha256,
        "pdq": hashes.pdq,
        "quality": hashes.quality,
    }
    if hashes.pdq_dihedral is not None:
        result["hashes"]["pdq_dihedral"] = hashes.pdq_dihedral
    return web.json_response(result)


async def healthz(request: web.Request) -> web.Response:
    """200 while the replica may answer (current within its bounds), else 503 with why:
    what a load balancer's health check reads."""
    replica = request.app[REPLICA_KEY]
    fresh = replica.freshness()
    why = fresh.refusal(replica.options.max_lag, replica.options.max_stale)
    body = {"ok": why is None, **fresh.json(), "pdq_ready": replica.matcher.ready}
    if why is not None:
        body["reason"] = why
    return web.json_response(body, status=200 if why is None else 503)


async def metrics(request: web.Request) -> web.Response:
    replica = request.app[REPLICA_KEY]
    fresh = replica.freshness()
    stats = replica.follower.stats
    lines = [
        "# HELP hashmesh_replica_cursor Feed cursor this replica has applied.",
        "# TYPE hashmesh_replica_cursor gauge",
        f"hashmesh_replica_cursor {fresh.applied if fresh.applied is not None else -1}",
        "# HELP hashmesh_replica_head Head cursor the node last reported.",
        "# TYPE hashmesh_replica_head gauge",
        f"hashmesh_replica_head {fresh.head if fresh.head is not None else -1}",
        "# HELP hashmesh_replica_lag Changes this replica is behind the node.",
        "# TYPE hashmesh_replica_lag gauge",
        f"hashmesh_replica_lag {fresh.behind if fresh.behind is not None else -1}",
        "# HELP hashmesh_replica_stale_seconds Seconds since the node last answered.",
        "# TYPE hashmesh_replica_stale_seconds gauge",
        f"hashmesh_replica_stale_seconds {fresh.stale_s if not math.isinf(fresh.stale_s) else -1}",
        "# HELP hashmesh_replica_bootstraps_total Snapshots taken from the node.",
        "# TYPE hashmesh_replica_bootstraps_total counter",
        f"hashmesh_replica_bootstraps_total {stats.bootstraps}",
        "# HELP hashmesh_replica_reconnects_total Feed stream reconnections.",
        "# TYPE hashmesh_replica_reconnects_total counter",
        f"hashmesh_replica_reconnects_total {stats.reconnects}",
        "# HELP hashmesh_replica_refused_total Node lines or events refused as malformed.",
        "# TYPE hashmesh_replica_refused_total counter",
        f"hashmesh_replica_refused_total {stats.refused}",
        "# HELP hashmesh_replica_matches_total Match requests answered or refused as stale.",
        "# TYPE hashmesh_replica_matches_total counter",
        f'hashmesh_replica_matches_total{{outcome="answered"}} {replica.requests["answered"]}',
        f'hashmesh_replica_matches_total{{outcome="stale"}} {replica.requests["refused_stale"]}',
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


def build_app(replica: Replica) -> web.Application:
    """The node's own error, auth and body middlewares, so a refusal reads as the node's."""
    app = web.Application(
        client_max_size=MAX_UPLOAD + (1 << 20),
        middlewares=[errors_middleware, auth_middleware, encoding_middleware],
    )
    app[access.TOKENS_KEY] = replica.tokens
    app[REPLICA_KEY] = replica
    app.router.add_post("/v1/match", match)
    app.router.add_post("/v1/match/file", match_file)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


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
