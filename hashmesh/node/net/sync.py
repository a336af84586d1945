"""Replication between nodes: pull with version vectors, push what the peer lacks, eager
push of every new batch, relaying, fork-evidence gossip, and periodic anti-entropy.

Server side (routes under /v1/peer/, every request signed by a configured peer):

    POST /v1/peer/reconcile the digest of our view the caller holds -> nothing, the
                            difference, or our whole view (protocol/sync.py, version 2)
    POST /v1/peer/fetch     the logs the caller lacks -> a page of their batches
    POST /v1/peer/sync      the caller's vector -> a page of batches it lacks + our vector
                            (version 1, for peers without reconcile; answered and used)
    POST /v1/peer/batches   batch frames pushed to us
    POST /v1/peer/evidence  fork evidence gossiped to us
    POST /v1/peer/statements/index  the digest of our statements the caller may see,
                            or a page of their index (protocol/statementsync.py)
    POST /v1/peer/statements/fetch  the statements named -> their wire objects
    POST /v1/peer/statements/push   statements gossiped to us (a key revocation at once)

A round starts with the statements (certificates, hand-overs, key revocations): they
decide which of the round's batches are accepted.

A peer only ever receives batches of collections our policy lets it read; batches of
authors we do not trust for their collection are refused and never stored or relayed.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from hashmesh.node.config import Peer
from hashmesh.node.errors import NodeError, PeerError, fault_of
from hashmesh.node.net.peers import (
    PENALTY_INVALID,
    PENALTY_UNACCEPTED,
    PeerClient,
    Peers,
    PeerTally,
    Refusals,
    RouteMissing,
    clip,
    peer_route,
)
from hashmesh.node.service import NodeService
from hashmesh.node.statements import URGENT_KINDS
from hashmesh.node.store.executor import StoreThread
from hashmesh.protocol.batches import Batch, LogKey, iter_frames, parse_header, verify_parts
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.evidence import ForkEvidence, verify_evidence
from hashmesh.protocol.statements import Statement
from hashmesh.protocol.statementsync import (
    MAX_FETCH_IDS,
    MAX_INDEX_PAGE,
    MAX_REQUEST_BYTES,
    MAX_STATEMENTS_BYTES,
    IndexPage,
    IndexRequest,
    decode_index_page,
    decode_push_answer,
    decode_statements,
    encode_fetch,
    encode_index_page,
    encode_index_request,
    encode_push_answer,
    encode_statements,
    parse_fetch,
    parse_index_request,
)
from hashmesh.protocol.sync import (
    MAX_EVIDENCE_MESSAGE_BYTES,
    MAX_EVIDENCE_PER_MESSAGE,
    MAX_FETCH_REQUEST_BYTES,
    MAX_RECONCILE_REQUEST_BYTES,
    Page,
    PushReply,
    PushResult,
    Reconcile,
    ReconcileRequest,
    Vector,
    decode_evidence_message,
    decode_page,
    decode_push_reply,
    decode_reconcile,
    encode_evidence_message,
    encode_evidence_reply,
    encode_fetch_request,
    encode_page,
    encode_push_reply,
    encode_reconcile,
    encode_reconcile_request,
    encode_sync_request,
    missing,
    parse_fetch_request,
    parse_reconcile_request,
    parse_sync_request,
    reconcile_answer,
    view_after,
    wants,
)

log = logging.getLogger("hashmesh.sync")
#: A push past the pusher's statement budget (node/statements.py MAX_STATEMENTS_PER_PEER):
#: 20 of them cut the peer off, as 4 invalid messages do.
PENALTY_STATEMENT_CAP = 5

PAGE_BATCHES = 200
PAGE_BYTES = 8 * 1024 * 1024
MAX_PAGES_PER_ROUND = 1000
PUSH_BATCHES = 50
# Ops bytes per store-thread call when ingesting a page: about one 5,000-signal batch, so
# an operator's publish (run first, store/executor.py) never waits for a whole 8 MB page.
INGEST_SLICE_BYTES = 512 * 1024
OUTBOX_BYTES = 64 * 1024 * 1024  # frames waiting for one peer; past it, anti-entropy delivers
EVIDENCE_MESSAGE_BYTES = MAX_EVIDENCE_MESSAGE_BYTES  # 100 items of 2 KiB fit
EVIDENCE_PER_MESSAGE = MAX_EVIDENCE_PER_MESSAGE
EVIDENCE_PER_LOG = 8  # one item proves a fork; a few more only cover distinct seqs
EVIDENCE_PER_SENDER = 1000
LAG_ROWS = 100  # shared logs a peer's status lists (all of them are summed up)
V1_RETRY_S = 600.0  # a peer without reconcile is asked again after this (it may upgrade)
# A log whose batches a peer refused as untrusted is not pushed to it again for this long:
# it would be refused every round. Once the peer trusts the author it fetches them itself.
UNTRUSTED_RETRY_S = 600.0
MAX_REFUSED_LOGS = 100_000  # per peer; past it the memory of refusals starts afresh


class Outbox:
    """Frames waiting to be pushed to one peer; `take` returns all of them at once.

    Bounded: while a peer backs off (up to 5 minutes) new batches would pile up here, and
    a dropped frame is not lost, the next anti-entropy round pushes what the peer lacks."""

    def __init__(self, limit: int = OUTBOX_BYTES) -> None:
        self._frames: list[bytes] = []
        self._size = 0
        self.limit = limit
        self._ready = asyncio.Event()

    def put(self, frame: bytes) -> None:
        if self._size + len(frame) > self.limit:
            return
        self._frames.append(frame)
        self._size += len(frame)
        self._ready.set()

    async def take(self) -> list[bytes]:
        await self._ready.wait()
        self._ready.clear()
        frames, self._frames, self._size = self._frames, [], 0
        return frames


def _ignore(*_: Any) -> None:
    return None


def _verify_frames(
    frames: list[tuple[bytes, bytes, bytes]], held: list[bool]
) -> list[Batch | ProtocolError | None]:
    """Each frame verified (its Batch, or the ProtocolError that refuses it); None for a
    frame already held, which needs no second verification. Pure: runs on any thread."""
    out: list[Batch | ProtocolError | None] = []
    for (header, sig, ops), is_held in zip(frames, held, strict=True):
        if is_held:
            out.append(None)
            continue
        try:
            out.append(verify_parts(header, sig, ops))
        except ProtocolError as exc:
            out.append(exc)
    return out


@dataclass(frozen=True)
class SyncObserver:
    """What replication reports to whoever counts it (the metrics, a layer above)."""

    batches_sent: Callable[[int], None] = _ignore  # batches sent to a peer
    round_done: Callable[[str, str], None] = _ignore  # (peer name, "ok" or "failed")


class Replicator:
    def __init__(
        self, service: NodeService, store_thread: StoreThread, observer: SyncObserver
    ) -> None:
        self.service = service
        self.store = service.store
        self.store_thread = store_thread
        self.observer = observer
        # identity keys and peer identities as the service holds them now: a rotation or
        # a revocation takes effect on the next request, with no restart
        self.peers = Peers(lambda: service.own_identity, lambda: service.identities.current)
        self.client: PeerClient | None = None
        self.queue: asyncio.Queue[tuple[list[Batch], list[ForkEvidence], str]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._outboxes: dict[str, Outbox] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._syncing: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.rounds = 0
        self.refusals = Refusals()
        # Reconciliation state, one entry per peer: the view we last sent it (server side)
        # and the evidence in it, the view of it we hold (client side), and until when a
        # peer that lacks the route is synced with version 1.
        self._sent: dict[str, tuple[str, Vector]] = {}
        self._evidence_sent: dict[str, set[bytes]] = {}
        self._held: dict[str, tuple[str, Vector]] = {}
        self._v1_until: dict[str, float] = {}
        # per peer, the trust list and wanted collections of a round that left nothing to
        # fetch: while they and the peer's view stay the same, nothing can be missing
        self._fetched: dict[str, tuple[list[Any], int, frozenset[str], int]] = {}
        # What a round derives from our heads, kept while Store.heads_version stays the
        # same (store thread only): the view built for each peer, with its version and
        # scope; our own collections; and per peer the push check that found nothing.
        # An idle round then reads no vector of all logs at all.
        self._views: dict[str, tuple[tuple[int, frozenset[str], tuple[str, ...]], Vector]] = {}
        self._own: tuple[int, set[str]] = (-1, set())
        self._pushed: dict[str, tuple[int, str, frozenset[str], frozenset[LogKey]]] = {}
        # per peer, the logs it refused as untrusted, until when they are not pushed to it
        self._refused_by: dict[str, dict[LogKey, float]] = {}
        # Statements: per peer the digest of its statements we hold all of, and until when
        # a peer without the statement routes (an older version) is not asked for them.
        self._statements_held: dict[str, str] = {}
        self._no_statements_until: dict[str, float] = {}
        self.statement_queue: asyncio.Queue[tuple[list[Statement], str]] = asyncio.Queue()

    # -- lifecycle -----------------------------------------------------------------------

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/peer/reconcile", peer_route(self.handle_reconcile))
        app.router.add_post("/v1/peer/fetch", peer_route(self.handle_fetch))
        app.router.add_post("/v1/peer/sync", peer_route(self.handle_sync))
        app.router.add_post("/v1/peer/batches", peer_route(self.handle_batches))
        app.router.add_post("/v1/peer/evidence", peer_route(self.handle_evidence))
        app.router.add_post("/v1/peer/statements/index", peer_route(self.handle_statement_index))
        app.router.add_post("/v1/peer/statements/fetch", peer_route(self.handle_statement_fetch))
        app.router.add_post("/v1/peer/statements/push", peer_route(self.handle_statement_push))

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        service = self.service

        async def remember(peer: str, key: str) -> None:
            await self.store_thread.call(service.identity_introduced, peer, key)

        self.client = PeerClient(
            lambda: service.own_identity,
            service.config.tls_ca,
            identities=lambda: service.identities.current,
            remember=remember,
        )

        def on_batches(batches: list[Batch], forks: list[ForkEvidence], source: str) -> None:
            loop.call_soon_threadsafe(self.queue.put_nowait, (batches, forks, source))

        def on_statements(statements: list[Statement], source: str) -> None:
            loop.call_soon_threadsafe(self.statement_queue.put_nowait, (statements, source))

        self.store.batch_listeners.append(on_batches)
        self.service.statements.listeners.append(on_statements)
        self._tasks = [
            asyncio.create_task(self._anti_entropy()),
            asyncio.create_task(self._push_worker()),
            asyncio.create_task(self._statement_worker()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.client is not None:
            await self.client.close()

    def wake(self) -> None:
        """Start an anti-entropy round now (e.g. after a policy change)."""
        self._wake.set()

    # -- server side ---------------------------------------------------------------------

    def _apply(self, peer: Peer, tally: PeerTally) -> None:
        """Apply what a store-thread step learned about a peer, on the event loop; an
        author refused as untrusted is logged once per (sender, author, collection), with
        the command that would accept it."""
        tally.apply_to(self.peers.state(peer.node_id))
        for (author, collection), n in tally.untrusted.items():
            if self.refusals.record(peer.node_id, author, collection, "untrusted", n):
                log.warning(
                    "author %s offered %s in %s via peer %s; not trusted here: %s",
                    author,
                    f"{n} batch" if n == 1 else f"{n} batches",
                    collection,
                    peer.name,
                    trust_fix(author, collection),
                )

    def _refuse(self, peer: Peer, reason: str, message: str) -> PeerError:
        """Score a peer down for invalid data and log it; the caller raises the result."""
        self.peers.state(peer.node_id).penalise(PENALTY_INVALID, reason)
        error = PeerError(message, reason)
        log.log(fault_of(error).log_level, "peer %s sent %s: %s", peer.name, reason, clip(message))
        return error

    @contextmanager
    def from_peer(self, peer: Peer, reason: str, what: str = "") -> Iterator[None]:
        """Parse a peer's bytes: a ProtocolError inside is that peer's fault, scored and
        counted under `reason`; one raised outside such a block is this node's own bug."""
        try:
            yield
        except ProtocolError as exc:
            raise self._refuse(peer, reason, f"{what}: {exc}" if what else str(exc)) from None

    async def handle_sync(self, request: web.Request) -> web.Response:
        config = self.service.config
        peer, auth, body = await self.peers.authenticate(request, config)
        with self.from_peer(peer, "bad_sync_request"):
            sync_request = parse_sync_request(body)
        page, sent, told = await self.store_thread.call_bulk(self._build_page, peer, sync_request)
        state = self.peers.state(peer.node_id)
        state.batches_sent += sent
        state.vector.update(told)  # its heads, as it just told us: lag is current
        self.observer.batches_sent(sent)
        return self.peers.respond(auth, page, "application/octet-stream")

    def _scope(self, peer: Peer, request: Any) -> tuple[set[str], list[str]]:
        """What a caller may hear of: the collections it asked for that it may read, and
        those it offered that it may read and we accept. An offer outside the peer's
        share list must get the same answer as a collection that does not exist:
        accepting it would disclose that we hold it, and our heads."""
        config = self.service.config
        readable = {c for c in request.collections if config.peer_may_read(peer.node_id, c)}
        accept = [
            c
            for c in request.offer
            if config.peer_may_read(peer.node_id, c) and config.accepts_collection(c)
        ]
        return readable, accept

    def _build_page(
        self, peer: Peer, request: Any
    ) -> tuple[bytes, int, dict[tuple[str, str], int]]:
        readable, accept = self._scope(peer, request)
        ours = self.store.vector(readable)
        told = {(k.author, k.collection): request.vector.get(k, 0) for k in ours}
        frames: list[bytes] = []
        size = 0
        more = False
        for log_key, have in sorted(missing(ours, request.vector).items(), key=_log_order):
            for frame in self.store.batch_frames(log_key, after=have, limit=PAGE_BATCHES):
                if len(frames) >= PAGE_BATCHES or (frames and size + len(frame) > PAGE_BYTES):
                    more = True
                    break
                frames.append(frame)
                size += len(frame)
            if more:
                break
        vector = self.store.vector(readable | set(accept))
        evidence = page_evidence(self.store.forks(), readable)
        return encode_page(vector, frames, more, evidence, accept), len(frames), told

    async def handle_reconcile(self, request: web.Request) -> web.Response:
        """A digest first, then only the difference: the view is our heads of what this
        caller may read (and the offers we accept), never more, so neither digest nor
        difference says anything of a collection outside its share list."""
        config = self.service.config
        peer, auth, body = await self.peers.authenticate(
            request, config, MAX_RECONCILE_REQUEST_BYTES
        )
        with self.from_peer(peer, "bad_reconcile_request"):
            ask = parse_reconcile_request(body)
        view, accept, forks = await self.store_thread.call(self._view, peer, ask)
        sent = self._sent.get(peer.node_id)
        # a changed view's digest is tens of ms at 10,000 logs: not on the event loop
        answer = await asyncio.to_thread(reconcile_answer, view, ask.known, sent, accept, [])
        seen = self._evidence_sent.setdefault(peer.node_id, set())
        if answer.full:
            seen.clear()
        evidence = [e for e in forks if e not in seen]
        seen.update(evidence)
        self._sent[peer.node_id] = (answer.digest, view)
        body = encode_reconcile(answer._replace(evidence=evidence))
        return self.peers.respond(auth, body, "application/json")

    def _view(self, peer: Peer, ask: ReconcileRequest) -> tuple[Vector, list[str], list[bytes]]:
        readable, accept = self._scope(peer, ask)
        key = (self.store.heads_version, frozenset(readable), tuple(accept))
        built = self._views.get(peer.node_id)
        if built is not None and built[0] == key:
            vector = built[1]
        else:
            vector = self.store.vector(readable | set(accept))
            self._views[peer.node_id] = (key, vector)
        return vector, accept, page_evidence(self.store.forks(), readable)

    async def handle_fetch(self, request: web.Request) -> web.Response:
        config = self.service.config
        peer, auth, body = await self.peers.authenticate(request, config, MAX_FETCH_REQUEST_BYTES)
        with self.from_peer(peer, "bad_fetch_request"):
            want = parse_fetch_request(body)
        page, sent = await self.store_thread.call_bulk(self._fetch_page, peer, want)
        self.peers.state(peer.node_id).batches_sent += sent
        self.observer.batches_sent(sent)
        return self.peers.respond(auth, page, "application/octet-stream")

    def _fetch_page(self, peer: Peer, want: dict[LogKey, int]) -> tuple[bytes, int]:
        """Batches of the logs asked for, in order; a log the caller may not read gets the
        answer of a log we do not hold (no heads, no batches)."""
        config = self.service.config
        frames: list[bytes] = []
        heads: Vector = {}
        size = 0
        more = False
        for log_key, have in sorted(want.items(), key=_log_order):
            if not config.peer_may_read(peer.node_id, log_key.collection):
                continue
            head = self.store.head(log_key)
            if head:
                heads[log_key] = head
            if more or head <= have:
                continue
            for frame in self.store.batch_frames(log_key, after=have, limit=PAGE_BATCHES):
                if len(frames) >= PAGE_BATCHES or (frames and size + len(frame) > PAGE_BYTES):
                    more = True
                    break
                frames.append(frame)
                size += len(frame)
        return encode_page(heads, frames, more), len(frames)

    async def handle_batches(self, request: web.Request) -> web.Response:
        config = self.service.config
        peer, auth, body = await self.peers.authenticate(request, config)
        with self.from_peer(peer, "bad_frame"):
            frames = iter_frames(body)
        (result, error), tally = await self._ingest_sliced(peer, frames, PeerTally())
        self._apply(peer, tally)
        if error:
            raise PeerError(error, "invalid_batch")  # scored in the tally, batch by batch
        return self.peers.respond(auth, encode_push_reply(result), "application/json")

    async def _ingest_sliced(
        self, peer: Peer, frames: list[tuple[bytes, bytes, bytes]], tally: PeerTally
    ) -> tuple[tuple[PushReply, str], PeerTally]:
        """Ingest frames in slices of about INGEST_SLICE_BYTES, one bulk store-thread call
        and one commit each, so urgent store work runs between them; stops at the first
        invalid batch (the slices before it stay committed, as batches before it in one
        transaction did).

        Each slice's batches are verified on another thread before its store call (the
        next slice's while this one is written): signatures, Merkle roots and op parsing
        are pure and were a third of a slice's time on the store thread, which every
        operator publish waits for (docs/design-notes.md, "Publishing under ingest")."""
        results: list[PushResult] = []
        vector: Vector = {}
        deferred = False
        bounds: list[tuple[int, int]] = []
        start = 0
        while start < len(frames):
            end, size = start, 0
            while end < len(frames) and (end == start or size < INGEST_SLICE_BYTES):
                size += len(frames[end][2])
                end += 1
            bounds.append((start, end))
            start = end
        checking = self._check_slice(frames, *bounds[0]) if bounds else None
        try:
            for n, (start, end) in enumerate(bounds):
                assert checking is not None
                checked = await checking
                if n + 1 < len(bounds):
                    checking = self._check_slice(frames, *bounds[n + 1])
                (reply, error), tally = await self.store_thread.call_bulk(
                    self._ingest_frames, peer, frames[start:end], tally, start, checked
                )
                results += reply.results
                vector.update(reply.vector)
                deferred = deferred or reply.deferred
                if error:
                    return (PushReply(results, vector, deferred), error), tally
        finally:
            if checking is not None:
                checking.cancel()  # the next slice's check, when this one ended the page
        return (PushReply(results, vector, deferred), ""), tally

    def _check_slice(
        self, frames: list[tuple[bytes, bytes, bytes]], start: int, end: int
    ) -> asyncio.Future[list[Batch | ProtocolError | None]]:
        """Verify frames[start:end] off the store thread (None: already held, unverified)."""

        async def check() -> list[Batch | ProtocolError | None]:
            part = frames[start:end]
            held = await self.store_thread.call_bulk(
                lambda: [self._already_held(header) for header, _, _ in part]
            )
            return await asyncio.to_thread(_verify_frames, part, held)

        task = asyncio.ensure_future(check())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved
        return task

    def _ingest_frames(
        self,
        peer: Peer,
        frames: list[tuple[bytes, bytes, bytes]],
        tally: PeerTally | None = None,
        first: int = 0,
        checked: list[Batch | ProtocolError | None] | None = None,
    ) -> tuple[tuple[PushReply, str], PeerTally]:
        """Verify and ingest pushed or pulled frames (store thread), one commit for all;
        the reply, and the first invalid batch's error (then the rest was not read).
        `first` is the position of frames[0] in the page, for that error; `checked`, when
        given, is `_verify_frames`'s verdict on each frame."""
        config = self.service.config
        state = PeerTally() if tally is None else tally
        results: list[PushResult] = []
        touched: set[LogKey] = set()
        deferred = False
        error = ""
        source = f"peer:{peer.node_id}"
        with self.store.bulk(source):
            for n, (header, sig, ops) in enumerate(frames):
                try:
                    verdict = None if checked is None else checked[n]
                    if isinstance(verdict, ProtocolError):
                        raise verdict
                    if verdict is None and (checked is not None or self._already_held(header)):
                        head = parse_header(header)
                        state.holds(head.author, head.collection, head.seq)
                        results.append(
                            PushResult(f"{head.author}/{head.collection}", head.seq, "duplicate")
                        )
                        continue
                    batch = verify_parts(header, sig, ops) if verdict is None else verdict
                except ProtocolError as exc:
                    state.penalise(PENALTY_INVALID, "invalid_batch")
                    log.warning("peer %s sent an invalid batch: %s", peer.name, exc)
                    error = f"batch {first + n}: {exc}"
                    break
                state.holds(batch.header.author, batch.header.collection, batch.seq)
                refusal = self.service.authority.refuses(config, batch.header)
                if refusal is not None:
                    if refusal.code == "untrusted":
                        state.refuse_untrusted(batch.header.author, batch.header.collection)
                    else:
                        # a key the statements refuse: "untrusted" on the wire (an older
                        # peer knows no other refusal), the reason in our log
                        state.refuse(refusal.code)
                        log.warning(
                            "refused batch %s/%d from peer %s: %s",
                            batch.log,
                            batch.seq,
                            peer.name,
                            refusal.reason,
                        )
                    results.append(PushResult(str(batch.log), batch.seq, "untrusted"))
                    continue
                outcome = self.store.ingest(batch, source=source).outcome
                state.received += 1
                deferred = deferred or outcome == "deferred"
                results.append(PushResult(str(batch.log), batch.seq, outcome))
                touched.add(batch.log)
        vector = {k: self.store.head(k) for k in touched}
        return (PushReply(results, vector, deferred), error), state

    def _already_held(self, header: bytes) -> bool:
        """A batch whose exact signed header is stored needs no second verification: relays
        deliver most batches more than once."""
        try:
            head = parse_header(header)
        except ProtocolError:
            return False
        held = self.store.signed_header(LogKey(head.author, head.collection), head.seq)
        return held is not None and held.header_bytes == header

    async def handle_evidence(self, request: web.Request) -> web.Response:
        peer, auth, body = await self.peers.authenticate(request, self.service.config)
        with self.from_peer(peer, "bad_evidence"):
            evidence = [verify_evidence(blob) for blob in decode_evidence_message(body)]
        loop = asyncio.get_running_loop()
        new, tally = await self.store_thread.call(self._store_evidence, evidence, peer, loop)
        self._apply(peer, tally)
        return self.peers.respond(auth, encode_evidence_reply(new), "application/json")

    def _store_evidence(
        self, evidence: list[ForkEvidence], peer: Peer, loop: asyncio.AbstractEventLoop
    ) -> tuple[int, PeerTally]:
        """Store thread: asyncio.Queue is not thread-safe, so the gossip is queued from the
        event loop."""
        tally = PeerTally()
        new = self._admit_evidence(peer, evidence, tally)
        source = f"peer:{peer.node_id}"
        for item in new:
            loop.call_soon_threadsafe(self.queue.put_nowait, ([], [item], source))
        return len(new), tally

    def _admit_evidence(
        self, peer: Peer, evidence: list[ForkEvidence], state: PeerTally
    ) -> list[ForkEvidence]:
        """Store the evidence worth storing; returns the items that were new (to gossip).
        Only logs we accept count: a throw-away key can sign forks without end, and nobody
        here relies on its log. Per-log and per-sender caps bound the rest. Unaccepted
        evidence scores the sender down once per message, by less than invalid data: a
        peer that trusts more authors than we do relays such evidence too."""
        config = self.service.config
        source = f"peer:{peer.node_id}"
        new: list[ForkEvidence] = []
        unaccepted = False
        for item in evidence:
            if not self.service.authority.accepts_log(config, item.log.author, item.log.collection):
                unaccepted = True
                continue
            if (
                self.store.evidence_count(item.log) >= EVIDENCE_PER_LOG
                or self.store.evidence_count_from(source) >= EVIDENCE_PER_SENDER
            ):
                state.refuse("evidence_cap")
                continue
            if self.store.add_evidence(item, source=source):
                new.append(item)
        if unaccepted:
            state.penalise(PENALTY_UNACCEPTED, "unaccepted_evidence")
        return new

    # -- statements (protocol/statementsync.py) --------------------------------------------

    async def handle_statement_index(self, request: web.Request) -> web.Response:
        """The digest of the statements this caller may see (unscoped ones, and those of
        the collections it may read), or a page of their index: never a statement, nor
        its id, of a collection outside its share list."""
        config = self.service.config
        peer, auth, body = await self.peers.authenticate(request, config, MAX_REQUEST_BYTES)
        with self.from_peer(peer, "bad_statement_request"):
            ask = parse_index_request(body)
        page = await self.store_thread.call(self._statement_index, peer, ask)
        return self.peers.respond(auth, encode_index_page(page), "application/json")

    def _statement_index(self, peer: Peer, ask: IndexRequest) -> IndexPage:
        readable = set(peer.share)
        digest = self.store.statements.digest(readable)
        if ask.known == digest and not ask.after:
            return IndexPage(digest, True, [], False)
        rows = self.store.statements.index(readable, ask.after, MAX_INDEX_PAGE + 1)
        return IndexPage(digest, False, rows[:MAX_INDEX_PAGE], len(rows) > MAX_INDEX_PAGE)

    async def handle_statement_fetch(self, request: web.Request) -> web.Response:
        config = self.service.config
        peer, auth, body = await self.peers.authenticate(request, config, MAX_REQUEST_BYTES)
        with self.from_peer(peer, "bad_statement_request"):
            ids = parse_fetch(body)
        book = self.service.statements
        objects = await self.store_thread.call(book.wire_objects, ids, set(peer.share))
        return self.peers.respond(auth, encode_statements(objects), "application/json")

    async def handle_statement_push(self, request: web.Request) -> web.Response:
        """Statements a peer gossips: all verified before any is stored (one bad one and
        nothing changes: 400 naming it)."""
        config = self.service.config
        peer, auth, body = await self.peers.authenticate(request, config, MAX_STATEMENTS_BYTES)
        book = self.service.statements
        with self.from_peer(peer, "bad_statement", "pushed statements"):
            objects = decode_statements(body, "statement push")
            statements = await asyncio.to_thread(book.verify_objects, objects)
        done = await self.store_thread.call(book.admit, statements, f"peer:{peer.node_id}")
        if done.outcomes.get("refused_peer_cap"):
            # unasked for, past what one peer may make us hold: scored, once per push
            self.peers.state(peer.node_id).penalise(PENALTY_STATEMENT_CAP, "statement_cap")
        return self.peers.respond(auth, encode_push_answer(len(done.changed)), "application/json")

    async def _statements_round(self, peer: Peer) -> None:
        """Pull the statements the peer holds and we lack (or hold with other signatures),
        before the round's batches; a peer of an older version is skipped."""
        if time.monotonic() < self._no_statements_until.get(peer.node_id, 0.0):
            return
        try:
            await self._pull_statements(peer)
        except RouteMissing:
            log.info("peer %s has no statement routes: it gets none, and sends none", peer.name)
            self._no_statements_until[peer.node_id] = time.monotonic() + V1_RETRY_S

    async def _pull_statements(self, peer: Peer) -> None:
        assert self.client is not None
        book = self.service.statements
        source = f"peer:{peer.node_id}"
        known = self._statements_held.get(peer.node_id, "")
        after = ""
        digest = ""
        for _ in range(MAX_PAGES_PER_ROUND):
            body = encode_index_request("" if after else known, after)
            data = await self.client.post(
                peer, "/v1/peer/statements/index", body, "application/json"
            )
            what = f"peer {peer.name}: statement index"
            with self.from_peer(peer, "bad_statement_index", what):
                page = decode_index_page(data)
            if page.same:
                return
            digest = digest or page.digest
            theirs = [i for i, _ in page.entries]
            ours = await self.store_thread.call(self.store.statements.hashes, theirs)
            want = [i for i, h in page.entries if ours.get(i) != h]
            for start in range(0, len(want), MAX_FETCH_IDS):
                asked = want[start : start + MAX_FETCH_IDS]
                data = await self.client.post(
                    peer, "/v1/peer/statements/fetch", encode_fetch(asked), "application/json"
                )
                with self.from_peer(peer, "bad_statement", f"peer {peer.name}: statements"):
                    objects = decode_statements(data)
                    statements = await asyncio.to_thread(book.verify_objects, objects)
                    stray = {s.id for s in statements} - set(asked)
                    if stray:
                        raise ProtocolError(f"statement {sorted(stray)[0]} was not asked for")
                done = await self.store_thread.call(book.admit, statements, source)
                if done.outcomes.get("refused_peer_cap"):
                    # what we asked for, so counted but not scored; no more of it this
                    # round (the rest would be refused too), and its digest stays unheld
                    self.peers.state(peer.node_id).refuse("statement_cap")
                    return
            if not page.more or not page.entries:
                break
            after = page.entries[-1][0]
        self._statements_held[peer.node_id] = digest

    async def _statement_worker(self) -> None:
        """Eager gossip of every statement this node newly holds, to every peer that may
        see it but the one it came from; a key revocation, hand-over or certificate also
        starts every peer's round at once."""
        while True:
            statements, source = await self.statement_queue.get()
            try:
                if any(s.kind.name in URGENT_KINDS for s in statements):
                    self.wake()
                exclude = source.removeprefix("peer:") if source.startswith("peer:") else ""
                for peer in self.service.config.peers:
                    if peer.node_id == exclude or self.peers.state(peer.node_id).cut_off:
                        continue
                    if time.monotonic() < self._no_statements_until.get(peer.node_id, 0.0):
                        continue
                    share = set(peer.share)
                    visible = [s for s in statements if s.scope is None or s.scope in share]
                    for start in range(0, len(visible), MAX_FETCH_IDS):
                        part = visible[start : start + MAX_FETCH_IDS]
                        self._track(asyncio.create_task(self._push_statements(peer, part)))
            except Exception:
                log.exception("statement gossip failed")

    async def _push_statements(self, peer: Peer, statements: list[Statement]) -> None:
        assert self.client is not None
        body = encode_statements([s.to_json() for s in statements])
        try:
            data = await self.client.post(
                peer, "/v1/peer/statements/push", body, "application/json"
            )
            with self.from_peer(peer, "bad_statement_reply", f"peer {peer.name}: push reply"):
                decode_push_answer(data)
        except RouteMissing:
            self._no_statements_until[peer.node_id] = time.monotonic() + V1_RETRY_S
        except (TimeoutError, aiohttp.ClientError, OSError, NodeError, PeerError) as exc:
            log.info("statements to %s failed: %s", peer.name, clip(str(exc)))

    # -- client side ---------------------------------------------------------------------

    def _wanted(self) -> set[str]:
        config = self.service.config
        if self._own[0] != self.store.heads_version:
            own = {k.collection for k in self.store.vector() if k.author == config.node_id}
            self._own = (self.store.heads_version, own)
        return config.accepted_collections() | self._own[1]

    def _pull_request(self, peer: Peer) -> bytes:
        wanted = self._wanted()
        return encode_sync_request(
            self.store.vector(wanted), sorted(wanted), sorted(set(peer.share))
        )

    async def _ingest_page(self, peer: Peer, page: Page) -> tuple[tuple[PushReply, str], PeerTally]:
        await self._admit_page_evidence(peer, page.evidence)
        return await self._ingest_sliced(peer, page.frames, PeerTally())

    async def sync_with(self, peer: Peer) -> bool:
        """One anti-entropy exchange with a peer: pull all pages, then push what it lacks."""
        state = self.peers.state(peer.node_id)
        if state.cut_off or time.monotonic() < state.next_attempt or self.client is None:
            return False
        async with self._syncing[peer.node_id]:
            state.last_attempt_ms = int(time.time() * 1000)
            try:
                # A peer whose statement routes fail still syncs batches: each batch is
                # judged by the statements held, and a peer could withhold them anyway.
                # The round then fails with the statements' error, the batches' first.
                statements_failed: Exception | None = None
                try:
                    await self._statements_round(peer)
                except (TimeoutError, aiohttp.ClientError, OSError, NodeError, PeerError) as exc:
                    statements_failed = exc
                if time.monotonic() >= self._v1_until.get(peer.node_id, 0.0):
                    try:
                        await self._reconcile_round(peer)
                    except RouteMissing:
                        log.info(
                            "peer %s has no reconcile route: syncing with version 1", peer.name
                        )
                        self._v1_until[peer.node_id] = time.monotonic() + V1_RETRY_S
                        self._held.pop(peer.node_id, None)
                if time.monotonic() < self._v1_until.get(peer.node_id, 0.0):
                    await self._v1_round(peer)
                if statements_failed is not None:
                    raise statements_failed
            except (TimeoutError, aiohttp.ClientError, OSError, NodeError, PeerError) as exc:
                state.failed(str(exc) or type(exc).__name__)
                log.info("sync with %s failed: %s", peer.name, state.last_error)
                self.observer.round_done(peer.name, "failed")
                return False
            except Exception as exc:  # gather() would swallow it: record it as the peer's
                state.failed(f"sync: internal error ({type(exc).__name__})")
                log.exception("sync with %s failed", peer.name)
                self.observer.round_done(peer.name, "failed")
                return False
            state.succeeded()
            self.rounds += 1
            self.observer.round_done(peer.name, "ok")
            await self.store_thread.call(self.service.clear_restored)
            return True

    async def _v1_round(self, peer: Peer) -> None:
        """Version 1: our whole vector out, a page of batches and the peer's vector back."""
        assert self.client is not None
        state = self.peers.state(peer.node_id)
        page: Page | None = None
        for _ in range(MAX_PAGES_PER_ROUND):
            body = await self.store_thread.call(self._pull_request, peer)
            data = await self.client.post(peer, "/v1/peer/sync", body, "application/json")
            with self.from_peer(peer, "bad_page", f"peer {peer.name}: sync page"):
                page = decode_page(data)
            (result, error), tally = await self._ingest_page(peer, page)
            self._apply(peer, tally)
            if error:
                raise PeerError(f"peer {peer.name} sent invalid data: {error}")
            if not page.more:
                break
            if not any(r.outcome in ("applied", "deferred") for r in result.results):
                # "more" but nothing new: a lying peer could keep us paging for ever.
                state.refuse("empty_page")
                break
        assert page is not None
        state.vector.update({(k.author, k.collection): v for k, v in page.vector.items()})
        await self._push_missing(peer, page.vector, page.accept)

    async def _reconcile_round(self, peer: Peer) -> None:
        """Version 2: the digest of the peer's view we hold; back comes nothing (idle),
        the difference, or its whole view. Then fetch what we lack and would take, and
        push what it lacks and accepts."""
        assert self.client is not None
        wanted = await self.store_thread.call(self._wanted)
        held = self._held.get(peer.node_id)
        answer: Reconcile | None = None
        for known in ([held[0]] if held else []) + [""]:
            body = encode_reconcile_request(sorted(wanted), sorted(set(peer.share)), known)
            data = await self.client.post(peer, "/v1/peer/reconcile", body, "application/json")
            with self.from_peer(peer, "bad_reconcile", f"peer {peer.name}: reconcile answer"):
                answer = decode_reconcile(data)
            try:
                theirs = await asyncio.to_thread(view_after, held if known else None, answer)
                break
            except ProtocolError as exc:
                self._held.pop(peer.node_id, None)
                if not known:  # its whole view, and still not its digest: its fault
                    raise self._refuse(peer, "bad_reconcile", f"peer {peer.name}: {exc}") from None
        assert answer is not None
        self._held[peer.node_id] = (answer.digest, theirs)
        state = self.peers.state(peer.node_id)
        changed = theirs if answer.full else answer.vector
        tally = PeerTally()
        config = self.service.config
        authority = self.service.authority
        before = held[1] if held else {}
        for log_key, seq in changed.items():
            key = (log_key.author, log_key.collection)
            if seq:
                state.vector[key] = seq
                if log_key.collection in wanted and not authority.accepts_log(config, *key):
                    # its batches we will not fetch, counted as refused ones were
                    n = max(1, seq - (0 if answer.full else before.get(log_key, 0)))
                    tally.refused["untrusted"] = tally.refused.get("untrusted", 0) + n
                    tally.untrusted[key] = tally.untrusted.get(key, 0) + n
            else:
                state.vector.pop(key, None)
        self._apply(peer, tally)
        if answer.evidence:
            await self._admit_page_evidence(peer, answer.evidence)
        await self._fetch_missing(peer, theirs, wanted, idle=held is not None and not changed)
        await self._push_missing(peer, theirs, answer.accept, answer.digest)

    async def _admit_page_evidence(self, peer: Peer, blobs: list[bytes]) -> None:
        tally = PeerTally()
        verified: list[ForkEvidence] = []
        for blob in blobs:
            try:
                verified.append(verify_evidence(blob))
            except ProtocolError:
                tally.penalise(PENALTY_INVALID, "bad_evidence")
        if verified:
            await self.store_thread.call_bulk(self._admit_evidence, peer, verified, tally)
        self._apply(peer, tally)

    def _wants(self, theirs: Vector, wanted: set[str]) -> dict[LogKey, int]:
        """Logs the peer is ahead in that we would store: wanted, trusted, not frozen by a
        fork (a frozen log takes nothing more, and asking each round would never end)."""
        config = self.service.config
        ours = self.store.vector(wanted)

        authority = self.service.authority

        def takes(log_key: LogKey) -> bool:
            # nobody may sign its next seq (its key revoked there, no hand-over): the
            # peer's batches would be refused one by one, every round
            return (
                log_key.collection in wanted
                and authority.accepts_log(config, log_key.author, log_key.collection)
                and not self.store.is_forked(log_key)
                and authority.signer_of_next(log_key, ours.get(log_key, 0)) is not None
            )

        return wants(theirs, ours, takes)

    async def _fetch_missing(
        self, peer: Peer, theirs: Vector, wanted: set[str], idle: bool
    ) -> None:
        """Fetch pages of what we lack until nothing is missing or a page brings nothing
        new. `idle`: the peer's view did not change and the last round left nothing to
        fetch, so nothing can be missing now (our heads only grow)."""
        assert self.client is not None
        trust = self.service.config.trust  # held, so its id is never reused
        # a new certificate or hand-over can make a log acceptable: part of the policy
        policy = (trust, len(trust), frozenset(wanted), self.store.statements.version)
        done = self._fetched.pop(peer.node_id, None)
        if idle and done is not None and done[0] is trust and done[1:] == policy[1:]:
            self._fetched[peer.node_id] = done
            return
        for _ in range(MAX_PAGES_PER_ROUND):
            want = await self.store_thread.call(self._wants, theirs, wanted)
            if not want:
                self._fetched[peer.node_id] = policy
                return
            body = encode_fetch_request(want)
            data = await self.client.post(peer, "/v1/peer/fetch", body, "application/json")
            with self.from_peer(peer, "bad_page", f"peer {peer.name}: fetched page"):
                page = decode_page(data)
            (result, error), tally = await self._ingest_sliced(peer, page.frames, PeerTally())
            self._apply(peer, tally)
            if error:
                raise PeerError(f"peer {peer.name} sent invalid data: {error}")
            if not any(r.outcome == "applied" for r in result.results):
                if want:
                    self.peers.state(peer.node_id).refuse("empty_page")
                return

    async def _push_missing(
        self, peer: Peer, theirs: Vector, accept: list[str], digest: str = ""
    ) -> None:
        """Push every batch the peer lacks in collections it may read and accepts.
        `digest`: that of `theirs`, the peer's view, when it is one (reconciliation)."""
        collections = set(peer.share) & set(accept)
        if not collections:
            return
        now = time.monotonic()
        refused = self._refused_by.get(peer.node_id, {})
        for log_key in [k for k, until in refused.items() if until <= now]:
            del refused[log_key]
        lacking = await self.store_thread.call(
            self._lacking, peer.node_id, theirs, frozenset(collections), digest, frozenset(refused)
        )
        for log_key, have in sorted(lacking.items(), key=_log_order):
            after = have
            while True:
                frames = await self.store_thread.call_bulk(self._frames_after, log_key, after)
                if not frames:
                    break
                await self._post_pages(peer, frames)
                after += len(frames)
                if len(frames) < PUSH_BATCHES:
                    break

    def _lacking(
        self,
        node_id: str,
        theirs: Vector,
        collections: frozenset[str],
        digest: str,
        refused: frozenset[LogKey] = frozenset(),
    ) -> dict[LogKey, int]:
        """What the peer lacks of our logs, but for those it refused as untrusted; none,
        without a look at every log, when neither our heads nor its view (by digest) nor
        those refusals changed since a check found none."""
        key = (self.store.heads_version, digest, collections, refused)
        if digest and self._pushed.get(node_id) == key:
            return {}
        ours = self.store.vector(set(collections))
        lacking = {k: v for k, v in missing(ours, theirs).items() if k not in refused}
        if lacking or not digest:
            self._pushed.pop(node_id, None)
        else:
            self._pushed[node_id] = key
        return lacking

    def _frames_after(self, log_key: LogKey, after: int) -> list[bytes]:
        return list(self.store.batch_frames(log_key, after, PUSH_BATCHES))

    async def _post_pages(self, peer: Peer, frames: list[bytes]) -> PushReply:
        """Post frames in requests of at most PAGE_BYTES; the last answer is returned, with
        `deferred` set if any request left batches waiting on the peer."""
        result = PushReply([], {}, False)
        deferred = False
        page: list[bytes] = []
        size = 0
        for frame in [*frames, b""]:
            if page and (not frame or size + len(frame) > PAGE_BYTES):
                result = await self._post_batches(peer, page)
                deferred = deferred or result.deferred
                page, size = [], 0
            if frame:
                page.append(frame)
                size += len(frame)
        return result._replace(deferred=deferred)

    async def _post_batches(self, peer: Peer, frames: list[bytes]) -> PushReply:
        assert self.client is not None
        data = await self.client.post(
            peer, "/v1/peer/batches", b"".join(frames), "application/octet-stream"
        )
        what = f"peer {peer.name}: malformed reply to pushed batches"
        with self.from_peer(peer, "bad_push_reply", what):
            result = decode_push_reply(data)
        state = self.peers.state(peer.node_id)
        state.batches_sent += len(frames)
        untrusted = [r.log for r in result.results if r.outcome == "untrusted"]
        if untrusted:
            refused = self._refused_by.setdefault(peer.node_id, {})
            if len(refused) > MAX_REFUSED_LOGS:
                refused.clear()
            until = time.monotonic() + UNTRUSTED_RETRY_S
            for name in untrusted:
                author, _, collection = name.partition("/")
                refused[LogKey(author, collection)] = until
        for key, seq in result.vector.items():
            state.vector[(key.author, key.collection)] = seq  # its heads after our push
        self.observer.batches_sent(len(frames))
        return result

    async def _anti_entropy(self) -> None:
        await asyncio.sleep(0.2)
        while True:
            self._wake.clear()  # a wake() during the round starts the next one at once
            peers = list(self.service.config.peers)
            if peers:
                await asyncio.gather(*(self.sync_with(p) for p in peers), return_exceptions=True)
            interval = self.service.config.sync_interval_s * random.uniform(0.8, 1.2)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            except TimeoutError:
                pass

    async def _push_worker(self) -> None:
        """Eager push: each new batch goes at once to up to `fanout` peers that may read it.

        Batches are sorted into one outbox per peer, each drained by its own sender, so a
        slow or unreachable peer never delays the others, and batches that arrive together
        travel together (one request, not one per batch).
        """
        while True:
            batches, forks, source = await self.queue.get()
            try:
                self._route(batches, forks, source)
            except Exception:
                log.exception("eager push failed")

    def _route(self, batches: list[Batch], forks: list[ForkEvidence], source: str) -> None:
        config = self.service.config
        exclude = source.removeprefix("peer:") if source.startswith("peer:") else ""
        for batch in batches:
            eligible = [
                p
                for p in config.peers
                if p.node_id != exclude
                and batch.header.collection in p.share
                and not self.peers.state(p.node_id).cut_off
            ]
            for p in random.sample(eligible, min(len(eligible), max(1, config.fanout))):
                self._outbox(p).put(batch.to_bytes())
        for evidence in forks:
            body = encode_evidence_message([evidence.to_bytes()])
            for p in config.peers:
                if p.node_id != exclude and evidence.log.collection in p.share:
                    self._track(asyncio.create_task(self._send_evidence(p, body)))

    def _outbox(self, peer: Peer) -> Outbox:
        box = self._outboxes.get(peer.node_id)
        if box is None:
            box = self._outboxes[peer.node_id] = Outbox()
        sender = self._senders.get(peer.node_id)
        if sender is None or sender.done():
            sender = self._senders[peer.node_id] = asyncio.create_task(
                self._sender(peer.node_id, box)
            )
            self._track(sender)
        return box

    def _track(self, task: asyncio.Task[None]) -> None:
        """Keep a task for stop(), and forget it when done: one evidence task per gossip
        would otherwise stay in the list for the node's lifetime."""
        self._tasks.append(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)

    async def _sender(self, node_id: str, box: Outbox) -> None:
        """Drain one peer's outbox for ever: a failure is that peer's, never the task's end
        (a dead sender stopped eager push to the peer and let its outbox grow)."""
        while True:
            frames = await box.take()
            peer = self.service.config.peer(node_id)
            if peer is None:
                continue
            state = self.peers.state(node_id)
            wait = state.next_attempt - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)  # backing off: deliver when the peer is due again
            try:
                result = await self._post_pages(peer, frames)
                if result.deferred:
                    await self._push_missing(peer, result.vector, list(peer.share))
            except (TimeoutError, aiohttp.ClientError, OSError, NodeError, PeerError) as exc:
                state.failed(str(exc) or type(exc).__name__)
                log.info("push to %s failed: %s", peer.name, state.last_error)
            except Exception as exc:
                state.failed(f"push: internal error ({type(exc).__name__})")
                log.exception("push to %s failed", peer.name)

    async def _send_evidence(self, peer: Peer, body: bytes) -> None:
        assert self.client is not None
        try:
            await self.client.post(peer, "/v1/peer/evidence", body, "application/json")
        except (TimeoutError, aiohttp.ClientError, OSError, NodeError, PeerError) as exc:
            log.info("evidence to %s failed: %s", peer.name, clip(str(exc)))

    # -- status --------------------------------------------------------------------------

    def peer_status(self, peer: Peer, ours: Vector) -> dict[str, Any]:
        """The peer's state, with its lag over every shared log summed up and at most
        LAG_ROWS logs listed (the most behind first, then those it has not told us of):
        listing every shared log made a status of thousands of logs megabytes long."""
        state = self.peers.state(peer.node_id)
        out = state.to_json()
        share = set(peer.share)
        rows: list[tuple[int, int, str, str, int, int | None]] = []
        shared = behind_total = lagging = unknown = 0
        for key, head in ours.items():
            if key.collection not in share:
                continue
            shared += 1
            theirs = state.vector.get((key.author, key.collection))
            behind = None if theirs is None else max(0, head - theirs)
            if behind:
                behind_total += behind
                lagging += 1
            elif behind is None:
                unknown += 1
            rank = 0 if behind else 1 if behind is None else 2
            rows.append((rank, -(behind or 0), key.collection, key.author, head, theirs))
        out["lag"] = [
            {
                "author": author,
                "collection": collection,
                "ours": head,
                "theirs": theirs,
                "behind": None if theirs is None else max(0, head - theirs),
            }
            for _, _, collection, author, head, theirs in heapq.nsmallest(LAG_ROWS, rows)
        ]
        out["lag_summary"] = {
            "logs": shared,
            "behind": behind_total,
            "logs_behind": lagging,
            "logs_unknown": unknown,
        }
        return out

    def refusal_status(self) -> list[dict[str, Any]]:
        """Refusals that still hold under the current policy, newest first, each with the
        command that would end it (an author trusted since is no longer listed)."""
        config = self.service.config
        out = []
        for row in self.refusals.rows():
            if row.reason == "untrusted" and not self.service.authority.still_refuses(
                config, row.author, row.collection, row.last_ms // 1000
            ):
                continue
            sender = config.peer(row.sender)
            out.append(
                {
                    "sender": row.sender,
                    "sender_name": sender.name if sender else "",
                    "author": row.author,
                    "author_name": config.author_name(row.author),
                    "collection": row.collection,
                    "reason": row.reason,
                    "batches": row.batches,
                    "first_ms": row.first_ms,
                    "last_ms": row.last_ms,
                    "fix": trust_fix(row.author, row.collection),
                }
            )
        return out


def trust_fix(author: str, collection: str) -> str:
    return f"hashmesh trust add {author} {collection}"


def page_evidence(forks: list[dict[str, Any]], readable: set[str]) -> list[bytes]:
    """The fork evidence a sync page carries: one item per forked log (one proves the fork),
    newest first, at most EVIDENCE_PER_MESSAGE items and EVIDENCE_MESSAGE_BYTES in all.
    Older forks went out in earlier rounds and with the eager gossip; an unbounded list
    would outgrow what a peer accepts in a page and stop sync with it altogether."""
    out: list[bytes] = []
    seen: set[tuple[str, str]] = set()
    size = 0
    for fork in reversed(forks):
        log = (fork["author"], fork["collection"])
        if fork["collection"] not in readable or log in seen:
            continue
        blob = fork["evidence"].encode("ascii")
        if len(out) >= EVIDENCE_PER_MESSAGE or size + len(blob) > EVIDENCE_MESSAGE_BYTES:
            break
        seen.add(log)
        out.append(blob)
        size += len(blob)
    return out


def _log_order(item: tuple[LogKey, int]) -> tuple[str, str]:
    return (item[0].collection, item[0].author)
