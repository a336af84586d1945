"""Operator API routes for platforms: matching (handlers in matchroutes.py), the change
feed, its live stream, snapshots, token administration and list imports. The daemon
registers them on the app `api.build_app` made (whose auth middleware and token cache they
rely on); scopes are enforced by the auth middleware (see access.py), collection filters here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from hashmesh.node.errors import NodeError
from hashmesh.node.keys import hash_token
from hashmesh.node.lists.feed import DEFAULT_PAGE, MAX_PAGE, FeedHub, FeedReader
from hashmesh.node.lists.importers import formats
from hashmesh.node.lists.listfiles import apply_import, import_file
from hashmesh.node.matching.matcher import MAX_QUERIES, exact_only
from hashmesh.node.matching.pdq_index import DEFAULT_THRESHOLD
from hashmesh.node.matching.policy import (
    MATCH,
    NEGATIVE,
    QUARANTINED,
    SUPPRESSED,
    PolicySet,
    policy_set,
)
from hashmesh.node.matching.quarantine import Hit, Spike, SpikeDetector, spiky
from hashmesh.node.net.bodies import (
    MAX_JSON_BODY,
    parse_json_object,
    request_body,
    spool_body,
)
from hashmesh.node.service import NodeService
from hashmesh.node.store.core import ReaderPool
from hashmesh.node.store.executor import StoreThread
from hashmesh.node.tokens import Grant, TokenStore
from hashmesh.node.web import access, matchroutes
from hashmesh.node.web.http import read_json
from hashmesh.protocol.ops import OpId

log = logging.getLogger("hashmesh.platform")

HEARTBEAT_S = 15.0
MAX_UPLOAD = matchroutes.MAX_UPLOAD  # /v1/match/file (matchroutes.py)
INLINE_QUERIES = 32
MAX_IMPORT_BODY = 1 << 30  # a list file, parsed from disk as it is read
MAX_IMPORT_PLAN_BODY = MAX_JSON_BODY  # a JSON plan, parsed whole in memory
STREAM_PAGE = 1_000
# Each open stream costs a feed query per wake-up: unbounded streams starved /v1/feed.
MAX_STREAMS_PER_TOKEN = 4
MAX_STREAMS = 64
STREAM_RETRY_AFTER_S = 5
# How often an idle stream re-checks its token and its connection: a revoked token's
# stream ends within this, whatever heartbeat the client asked for.
STREAM_CHECK_S = 1.0
# A snapshot holds one read transaction; a client that stops reading would pin the WAL.
SNAPSHOT_IDLE_S = 30.0
SNAPSHOT_WRITE = 1 << 16


@dataclass(frozen=True)
class PlatformDeps:
    """What the platform routes use, wired once by the daemon (docs/design-notes.md,
    "Wiring")."""

    service: NodeService  # the matcher, the config, the store (tokens, list imports)
    store_thread: StoreThread  # every store write runs here
    spool_dir: Path  # uploaded list files are spooled here (the node's home)
    # The matcher workers' address (match_workers > 0): /v1/match is forwarded there.
    match_url: str = ""


PLATFORM_KEY: web.AppKey[PlatformDeps] = web.AppKey("platform")
READERS_KEY: web.AppKey[ReaderPool] = web.AppKey("readers")


@dataclass
class StreamSlots:
    """Open streams per token digest and in total, so no one token (nor all of them) can
    hold enough streams to starve the feed's thread pool."""

    per_token: dict[str, int] = field(default_factory=dict)
    total: int = 0

    def refusal(self, key: str) -> web.Response | None:
        """A 429 naming the limit that is full, or None after taking a slot."""
        if self.per_token.get(key, 0) >= MAX_STREAMS_PER_TOKEN:
            message = f"too many open feed streams for this token (limit {MAX_STREAMS_PER_TOKEN})"
            limit, scope = MAX_STREAMS_PER_TOKEN, "per_token"
        elif self.total >= MAX_STREAMS:
            message = f"too many open feed streams on this node (limit {MAX_STREAMS})"
            limit, scope = MAX_STREAMS, "total"
        else:
            self.per_token[key] = self.per_token.get(key, 0) + 1
            self.total += 1
            return None
        return web.json_response(
            {"error": message, "limit": limit, "limit_scope": scope},
            status=429,
            headers={"Retry-After": str(STREAM_RETRY_AFTER_S)},
        )

    def release(self, key: str) -> None:
        left = self.per_token.get(key, 0) - 1
        if left > 0:
            self.per_token[key] = left
        else:
            self.per_token.pop(key, None)
        self.total -= 1


@dataclass
class FeedState:
    """Set up when the app starts (the reader and hub need the running loop and store)."""

    reader: FeedReader | None = None
    hub: FeedHub | None = None
    streams: StreamSlots = field(default_factory=StreamSlots)


FEED_KEY: web.AppKey[FeedState] = web.AppKey("feed", FeedState)


def _feed(request: web.Request) -> tuple[FeedReader, FeedHub]:
    state = request.app[FEED_KEY]
    if state.reader is None or state.hub is None:
        raise NodeError("the feed is not ready yet")
    return state.reader, state.hub


def _int_param(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise NodeError(f"{name}: expected an integer, got {raw[:20]!r}") from None
    if not low <= value <= high:
        raise NodeError(f"{name}: must be {low}-{high}")
    return value


def _collections(request: web.Request) -> frozenset[str] | None:
    grant = access.grant_of(request)
    return access.readable(grant, request.query.get("collection") or None)


async def feed(request: web.Request) -> web.Response:
    collections = _collections(request)
    after = _int_param(request, "after", 0, 0, 1 << 62)
    limit = _int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    reader, _ = _feed(request)
    body = await reader.run(reader.page, after, limit, collections)
    return web.Response(body=body, content_type="application/json")


def _bearer(request: web.Request) -> str:
    return request.headers.get("Authorization", "").partition(" ")[2].strip()


def _live_grant(request: web.Request, token: str) -> Grant | None:
    """The token's grant as of now, or None once it is revoked or lost the `read` scope.

    The auth middleware checked the grant when the response began; a response that lasts
    minutes must not outlive the token (or a narrower grant) that allowed it.
    """
    grant = request.app[access.TOKENS_KEY].lookup(token)
    if grant is None or not grant.allows("read"):
        return None
    return grant


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def feed_stream(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one event per change, `id` = cursor, resumable by Last-Event-ID."""
    collections = _collections(request)
    only = request.query.get("collection") or None
    after = _int_param(request, "after", 0, 0, 1 << 62)
    last_id = request.headers.get("Last-Event-ID", "").strip()
    if last_id:
        if not (last_id.isascii() and last_id.isdigit()) or len(last_id) > 18:
            raise NodeError("Last-Event-ID: expected a feed cursor")
        after = int(last_id)
    heartbeat = _int_param(request, "heartbeat", int(HEARTBEAT_S), 1, 300)
    reader, hub = _feed(request)
    token = _bearer(request)
    slots = request.app[FEED_KEY].streams
    key = hash_token(token)
    refused = slots.refusal(key)
    if refused is not None:
        return refused
    try:
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        response.force_close()  # a stream that ends is over; its client reconnects anew
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            await response.write(b"retry: 1000\n\n")
            beat_at = time.monotonic() + heartbeat
            while not hub.closed and not _gone(request):
                grant = _live_grant(request, token)
                if grant is None:
                    break
                try:
                    collections = access.readable(grant, only)
                except NodeError:
                    break
                woken = hub.current
                chunk, after = await reader.run(reader.events, after, STREAM_PAGE, collections)
                if chunk:
                    await response.write(chunk)
                    continue
                wait = min(STREAM_CHECK_S, max(0.0, beat_at - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), timeout=wait)
                if time.monotonic() >= beat_at:
                    await response.write(b": heartbeat\n\n")
                    beat_at = time.monotonic() + heartbeat
        return response
    finally:
        slots.release(key)


async def snapshot(request: web.Request) -> web.StreamResponse:
    """JSON lines: a header with the cursor, one line per live signal, an end line."""
    collections = _collections(request)
    only = request.query.get("collection") or None
    token = _bearer(request)
    reader, _ = _feed(request)
    snap = await reader.run(reader.snapshot, collections)
    try:
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", "X-Hashmesh-Cursor": str(snap.cursor)}
        )
        await response.prepare(request)

        async def send(data: bytes) -> None:
            # In small pieces, so the timeout means "no progress", not "a slow client".
            view = memoryview(data)
            for at in range(0, len(view), SNAPSHOT_WRITE):
                piece = view[at : at + SNAPSHOT_WRITE]
                await asyncio.wait_for(response.write(piece), timeout=SNAPSHOT_IDLE_S)

        try:
            header = {"cursor": snap.cursor, "collections": snap.collections}
            await send(json.dumps(header).encode() + b"\n")
            count = 0
            while True:
                grant = _live_grant(request, token)
                if grant is None or access.readable(grant, only) != collections:
                    raise ConnectionAbortedError("the token's grant changed")
                rows = await reader.run(snap.rows)
                if not rows:
                    break
                count += len(rows)
                await send(
                    "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows).encode()
                )
            await send(json.dumps({"end": True, "count": count}).encode() + b"\n")
            await response.write_eof()
        except (TimeoutError, ConnectionError, NodeError):
            # Cut short: closing the connection is the only way to tell the client the
            # snapshot is incomplete (it never sees the end line).
            if request.transport is not None:
                request.transport.abort()
        return response
    finally:
        await reader.run(snap.close)


# -- matching -------------------------------------------------------------------------------
# The handlers are web/matchroutes.py's (shared with the matcher workers and replicas);
# here is where the node's answers come from.


class NodeMatch:
    """`MatchDeps` matching in the node process (match_workers = 0)."""

    def __init__(self, service: NodeService, readers: ReaderPool) -> None:
        self.service = service
        self.readers = readers

    async def answer(self, request: web.Request, queries: Any, threshold: int) -> dict[str, Any]:
        """Bounded, de-duplicated, and drawn only from the collections the token may read:
        matches and the opinions counted on them alike. Never on the store thread: rows
        come from a read-only connection of the answering thread's own, so no match,
        however large, delays publishing, ingest or a revocation."""
        collections = access.readable(access.grant_of(request), None)
        matcher = self.service.matcher
        readers = self.readers
        config = self.service.config
        author_name, labels = config.author_name, config.trust_labels()

        def work() -> dict[str, Any]:
            return matcher.answer(
                queries, threshold, collections, author_name, readers.get(), labels
            )

        if exact_only(queries) and len(queries) <= INLINE_QUERIES:
            return work()  # a few indexed lookups: cheaper than a thread hop
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, work)


class SpikeWatch:
    """`MatchDeps` around the node's own matching: counts every answer's hits per signal
    (matching/quarantine.py) and quarantines, on the store thread and after the answer, a
    signal whose collection's spike rule it crosses. Matches answered elsewhere arrive as
    counts (`reported`): the matcher workers' (every answer of theirs, forwarded by the
    node or sent to their address, over a pipe: node/workers.py) and replicas' (POST
    /v1/replica/matches over their follow token: web/replicas.py), into the same windows."""

    NOT_COUNTED = frozenset({NEGATIVE, SUPPRESSED, QUARANTINED})
    POLICY_TTL_S = 1.0

    def __init__(
        self,
        inner: matchroutes.MatchDeps,
        service: NodeService,
        store_thread: StoreThread,
        readers: ReaderPool,
    ) -> None:
        self.inner = inner
        self.service = service
        self.store_thread = store_thread
        self.readers = readers
        self.detector = SpikeDetector()
        self._policies: tuple[float, PolicySet] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _current(self, now: float) -> PolicySet:
        if self._policies is None or now - self._policies[0] > self.POLICY_TTL_S:
            self._policies = (now, policy_set(self.readers.get().policy_rows()))
        return self._policies[1]

    async def answer(self, request: web.Request, queries: Any, threshold: int) -> dict[str, Any]:
        result = await self.inner.answer(request, queries, threshold)
        now = time.monotonic()
        policies = self._current(now)
        counting = policies.spiky
        if counting:  # only hits the detector counts become Hits (one each per query)
            hits = [
                Hit(m["op_id"], m["collection"], m["type"], m["value"], m["author"])
                for r in result.get("results", ())
                for m in r.get("matches", ())
                if m["collection"] in counting and m.get("verdict") not in self.NOT_COUNTED
            ]
            self._spiked(self.detector.observe(now, hits, policies))
        return result

    async def reported(
        self, pairs: list[tuple[OpId, int]], collections: frozenset[str] | None
    ) -> int:
        """Count matches answered elsewhere: `pairs` of (op id, matches) as a worker or a
        replica reported them (matching/quarantine.py parse_report), each counted only if
        it is a live add here in a collection `collections` allows and whose policy has a
        spike rule; the row a quarantine keeps is this node's, never the reporter's word.
        Returns how many signals were counted."""
        now = time.monotonic()
        policies = self._current(now)
        counting = spiky(policies)
        keys = [
            (op, n)
            for op, n in pairs
            if op.collection in counting and (collections is None or op.collection in collections)
        ]
        if not keys:
            return 0
        readers = self.readers
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(
            None,
            lambda: readers.get().live_adds(
                [(op.author, op.collection, op.seq, op.index) for op, _ in keys]
            ),
        )
        counted = [(Hit(str(op), *rows[str(op)]), n) for op, n in keys if str(op) in rows]
        self._spiked(self.detector.observe_counted(now, counted, policies))
        return len(counted)

    def _spiked(self, spikes: list[Spike]) -> None:
        if spikes:
            task = asyncio.create_task(self._quarantine(spikes))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _quarantine(self, spikes: list[Spike]) -> None:
        try:
            await self.store_thread.call(self.service.quarantine_add, spikes)
        except Exception:  # the match was answered; the spike is counted again later
            log.exception("quarantine of %d signals not recorded", len(spikes))
            self.detector.unforget(s.hit.op_id for s in spikes)


SPIKES_KEY: web.AppKey[SpikeWatch] = web.AppKey("spikes", SpikeWatch)


class FeedMarks:
    """Marks the adds of a /v1/feed page (and opinion entries, which carry their add
    whole) that this node's match policy holds back: `"policy": {"verdict", "reasons"}`,
    as a match of the add's own signal would answer it now. Consumers (the pytx
    extension, HMA) are told, not kept in the dark: nothing is left out of the feed.

    A page costs one policy read and one quarantine lookup; only when some collection
    has a policy or a signal of the page is quarantined is the page matched, its
    distinct signals in requests of MAX_QUERIES (a PDQ page waits for the index: 503
    while it loads, rather than go out unmarked)."""

    def __init__(self, service: NodeService, readers: ReaderPool) -> None:
        self.service = service
        self.readers = readers

    def __call__(self, entries: list[dict[str, Any]], collections: frozenset[str] | None) -> None:
        targets = [
            (e, e["op_id"] if e["kind"] == "add" else e["target"])
            for e in entries
            if (e["kind"] == "add" or e.get("target_live") is True) and "value" in e
        ]
        if not targets:
            return
        reader = self.readers.get()
        if not policy_set(reader.policy_rows()).active and not reader.quarantined(
            [op for _, op in targets]
        ):
            return
        queries = list({(e["type"], e["value"]): None for e, _ in targets})
        config = self.service.config
        verdicts: dict[str, dict[str, Any]] = {}
        for at in range(0, len(queries), MAX_QUERIES):
            chunk = [{"type": t, "value": v} for t, v in queries[at : at + MAX_QUERIES]]
            answer = self.service.matcher.answer(
                chunk,
                DEFAULT_THRESHOLD,
                collections,
                config.author_name,
                reader,
                config.trust_labels(),
            )
            for result in answer["results"]:
                for hit in result["matches"]:
                    if hit["verdict"] != MATCH:
                        verdicts[hit["op_id"]] = {
                            "verdict": hit["verdict"],
                            "reasons": hit.get("reasons", []),
                        }
        for entry, op_id in targets:
            held = verdicts.get(op_id)
            if held is not None:
                entry["policy"] = held


# -- tokens ---------------------------------------------------------------------------------


async def _reload_tokens(app: web.Application) -> None:
    deps = app[PLATFORM_KEY]
    grants = await deps.store_thread.call(lambda: TokenStore(deps.service.store).grants())
    app[access.TOKENS_KEY].grants = grants
    hub = app[FEED_KEY].hub
    if hub is not None:
        hub.wake()


async def token_create(request: web.Request) -> web.Response:
    deps = request.app[PLATFORM_KEY]
    body = await read_json(request)
    unknown = set(body) - {"name", "scopes", "collections"}
    if unknown:
        raise NodeError(f"{sorted(unknown)[0]}: unknown field")
    scopes = body.get("scopes")
    collections = body.get("collections")
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise NodeError("scopes: expected a list of scope names")
    if collections is not None and (
        not isinstance(collections, list) or not all(isinstance(c, str) for c in collections)
    ):
        raise NodeError("collections: expected a list of collection names")
    result = await deps.store_thread.call(
        lambda: TokenStore(deps.service.store).create(body.get("name", ""), scopes, collections)
    )
    await _reload_tokens(request.app)
    return web.json_response(result)


async def token_list(request: web.Request) -> web.Response:
    deps = request.app[PLATFORM_KEY]
    tokens = await deps.store_thread.call(lambda: TokenStore(deps.service.store).list())
    return web.json_response({"tokens": tokens})


async def token_revoke(request: web.Request) -> web.Response:
    deps = request.app[PLATFORM_KEY]
    key = request.match_info["token"]
    result = await deps.store_thread.call(lambda: TokenStore(deps.service.store).revoke(key))
    await _reload_tokens(request.app)
    return web.json_response(result)


# -- list import ----------------------------------------------------------------------------


async def lists_import(request: web.Request) -> web.Response:
    """A list file as the raw body (`?format=&collection=`), or a plan as a JSON object."""
    if "format" in request.query:
        return await _lists_import_file(request)
    deps = request.app[PLATFORM_KEY]
    body: Any = parse_json_object(await request_body(request, MAX_IMPORT_PLAN_BODY))
    if not isinstance(body, dict) or not isinstance(body.get("collection"), str):
        raise NodeError("request body: expected an object with a collection")
    unknown = set(body) - {"collection", "adds", "revoke_signals", "revoke_refs"}
    if unknown:
        raise NodeError(f"{sorted(unknown)[0]}: unknown field")
    for name in ("adds", "revoke_signals", "revoke_refs"):
        if not isinstance(body.get(name, []), list):
            raise NodeError(f"{name}: expected a list")
    access.require_collection(access.grant_of(request), body["collection"])
    result = await deps.store_thread.call(
        apply_import,
        deps.service,
        body["collection"],
        body.get("adds", []),
        body.get("revoke_signals", []),
        body.get("revoke_refs", []),
    )
    return web.json_response(result)


async def _lists_import_file(request: web.Request) -> web.Response:
    """Spool the body to an anonymous file and parse it from there: a JSON body is held
    and parsed whole (about 23 times its size), a list file is read record by record."""
    deps = request.app[PLATFORM_KEY]
    query = request.query
    unknown = set(query) - {"format", "collection", "category", "on_error"}
    if unknown:
        raise NodeError(f"{sorted(unknown)[0]}: unknown query parameter")
    collection = query.get("collection")
    if not collection:
        raise NodeError("collection: required in the query string")
    list_format = query["format"]
    if list_format not in formats():
        raise NodeError(f"format {list_format[:40]!r}: expected one of {', '.join(formats())}")
    access.require_collection(access.grant_of(request), collection)
    with tempfile.TemporaryFile(dir=deps.spool_dir) as spool:
        await spool_body(request, spool, MAX_IMPORT_BODY, "request body")
        result = await deps.store_thread.call(
            import_file,
            deps.service,
            collection,
            list_format,
            spool,
            query.get("category") or None,
            query.get("on_error", "abort"),
        )
    return web.json_response(result)


# -- wiring ---------------------------------------------------------------------------------


async def _start(app: web.Application) -> None:
    deps = app[PLATFORM_KEY]
    service = deps.service
    state = app[FEED_KEY]
    state.reader = FeedReader(
        service.store.path,
        lambda author: service.config.author_name(author),
        mark=FeedMarks(service, app[READERS_KEY]),
    )
    state.hub = FeedHub(asyncio.get_running_loop())
    await deps.store_thread.call(service.store.batch_listeners.append, state.hub.notify)
    await _reload_tokens(app)


async def _shutdown(app: web.Application) -> None:
    hub = app[FEED_KEY].hub
    if hub is not None:
        hub.close()


async def _cleanup(app: web.Application) -> None:
    state = app[FEED_KEY]
    deps = app[PLATFORM_KEY]
    if state.hub is not None:
        notify = state.hub.notify
        listeners = deps.service.store.batch_listeners

        def unsubscribe() -> None:
            if notify in listeners:
                listeners.remove(notify)

        await deps.store_thread.call(unsubscribe)
    if state.reader is not None:
        state.reader.close()


def register(app: web.Application, deps: PlatformDeps) -> None:
    app[PLATFORM_KEY] = deps
    app[READERS_KEY] = ReaderPool(deps.service.store.path)
    app[FEED_KEY] = FeedState()
    local = NodeMatch(deps.service, app[READERS_KEY])
    # The node counts what it answers itself; its workers count theirs and report them.
    watch = SpikeWatch(local, deps.service, deps.store_thread, app[READERS_KEY])
    forward = matchroutes.Forward(deps.match_url, watch) if deps.match_url else None
    app[SPIKES_KEY] = watch
    matchroutes.register(app, forward or watch)
    if forward is not None:
        watching: list[asyncio.Task[None]] = []

        async def watch_forward(_app: web.Application) -> None:
            watching.append(asyncio.create_task(forward.watch()))

        async def close_forward(_app: web.Application) -> None:
            for task in watching:
                task.cancel()
            await asyncio.gather(*watching, return_exceptions=True)
            await forward.close()

        app.on_startup.append(watch_forward)
        app.on_cleanup.append(close_forward)
    app.router.add_get("/v1/feed", feed)
    app.router.add_get("/v1/feed/stream", feed_stream)
    app.router.add_get("/v1/snapshot", snapshot)
    app.router.add_post("/v1/lists/import", lists_import)
    app.router.add_get("/v1/admin/tokens", token_list)
    app.router.add_post("/v1/admin/tokens", token_create)
    app.router.add_delete("/v1/admin/tokens/{token}", token_revoke)
    app.on_startup.append(_start)
    app.on_shutdown.append(_shutdown)
    app.on_cleanup.append(_cleanup)
