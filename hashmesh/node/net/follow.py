"""The HTTP follower of a matcher replica: the node's snapshot, then its live change feed,
into the replica's own store (store/replica.py) and PDQ index; and the node's replica
state (grants, author names, head cursor), polled.

Never skipping a change is the one rule that matters (a missed revocation keeps matching
a withdrawn hash): the stream resumes from the cursor committed with the rows, with
Last-Event-ID, and an event this cannot understand stops the stream there (it is retried
after a pause) rather than being passed over. A node whose head falls below what this
replica already applied has lost changes (restored from a backup): the replica then takes
a new snapshot instead of serving rows the node no longer holds.

Everything the node sends is bounded (a line, an event, a snapshot row, the state body and
its counts) and validated field by field, so a hostile or broken node can make a replica
stale (and so refuse to answer, see hashmesh/node/replica.py) but cannot crash it, grow its
memory without bound, or plant rows of a shape the node would never send.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from pydantic import ValidationError

from hashmesh.node.config import Trust, check_trust_labels
from hashmesh.node.errors import NodeError
from hashmesh.node.keys import hash_token
from hashmesh.node.matching.freshness import LagClock
from hashmesh.node.matching.matcher import video_index
from hashmesh.node.matching.pdq_index import PDQIndex
from hashmesh.node.matching.policy import MAX_POLICIES, CollectionPolicy, parse_policy
from hashmesh.node.matching.quarantine import REPORT_S, MatchCounter
from hashmesh.node.matching.vpdq_index import VPDQIndex
from hashmesh.node.store.replica import Add, Applied, Page, ReplicaStore, StanceRow
from hashmesh.node.tokens import Grant
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.names import validate_node_id
from hashmesh.protocol.ops import MAX_REASON, AddOp, OpId, validate_collection

log = logging.getLogger("hashmesh.follow")

POLL_S = 0.25
POLL_TIMEOUT_S = 5.0
HEARTBEAT_S = 5  # asked of the node; a stream silent for 3 of them is reconnected
STREAM_IDLE_S = 3 * HEARTBEAT_S
SNAPSHOT_IDLE_S = 60.0
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 5.0

MAX_LINE = 1 << 20  # one SSE line or snapshot row; a signal's JSON is well under 8 KiB
MAX_EVENT = 1 << 20
MAX_PAGE_EVENTS = 1000  # events applied in one transaction
SNAPSHOT_CHUNK = 5000
MAX_STANCES = 10_000  # per target: authors x opinion collections
MAX_STATE_BODY = 16 << 20
MAX_GRANTS = 100_000
MAX_AUTHORS = 100_000
MAX_QUARANTINED = 100_000
MAX_NAME = 256
MAX_CURSOR = 1 << 62

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_TOKEN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class NodeDataError(Exception):
    """What the node sent is not what a hashmesh node sends (the field and why)."""


class IndexSink(Protocol):
    """The matcher the follower keeps current (hashmesh/node/matching/matcher.py)."""

    def load(self, index: PDQIndex, cursor: int, videos: VPDQIndex | None = None) -> None: ...

    def apply(
        self,
        added: list[tuple[int, str]],
        removed: list[int],
        cursor: int | None = None,
        videos: Sequence[tuple[int, str]] = (),
    ) -> None: ...


def build_index(store: ReplicaStore) -> PDQIndex:
    """The PDQ index of the store's live rows (blocking: run it on a thread)."""
    index = PDQIndex()
    for rows in store.live_pdq():
        index.add_many([k for k, _ in rows], [v for _, v in rows])
    return index


# -- validation -----------------------------------------------------------------------------


def _int(value: Any, what: str, low: int = 0, high: int = MAX_CURSOR) -> int:
    if type(value) is not int or not low <= value <= high:
        raise NodeDataError(f"{what}: expected an integer {low}-{high}")
    return value


def _str(value: Any, what: str, limit: int = MAX_NAME) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise NodeDataError(f"{what}: expected a string of at most {limit} characters")
    return value


def _collection(value: Any, what: str) -> str:
    text = _str(value, what)
    try:
        validate_collection(text)
    except ProtocolError as exc:
        raise NodeDataError(f"{what}: {exc}") from None
    return text


def _node_id(value: Any, what: str) -> str:
    try:
        return validate_node_id(_str(value, what), what)
    except ProtocolError as exc:
        raise NodeDataError(str(exc)) from None


# "author/collection" prefixes OpId.parse has accepted: checking a node id (an Ed25519
# point) is half the cost of an op id, and a snapshot names a few logs millions of times.
_LOGS_SEEN: dict[str, tuple[str, str]] = {}
_MAX_LOGS_SEEN = 10_000


def _op_id(value: Any, what: str) -> OpId:
    text = _str(value, what)
    log_part, _, rest = text.rpartition("/")
    log_part, _, seq_text = log_part.rpartition("/")
    known = _LOGS_SEEN.get(log_part)
    if known is not None and seq_text.isdigit() and rest.isdigit() and len(text) <= 200:
        seq, index = int(seq_text), int(rest)
        # Only the canonical spelling takes the short cut; anything else is parsed in full.
        if str(seq) == seq_text and str(index) == rest and 1 <= seq < 2**53 and index < 2**53:
            return OpId(known[0], known[1], seq, index)
    try:
        op = OpId.parse(text, what)
    except ProtocolError as exc:
        raise NodeDataError(str(exc)) from None
    if len(_LOGS_SEEN) >= _MAX_LOGS_SEEN:
        _LOGS_SEEN.clear()
    _LOGS_SEEN[f"{op.author}/{op.collection}"] = (op.author, op.collection)
    return op


def parse_add(entry: dict[str, Any], what: str) -> Add:
    """An add of a snapshot line or feed event, checked as the protocol checks an add op."""
    op = _op_id(entry.get("op_id"), f"{what}.op_id")
    if entry.get("author") != op.author or entry.get("collection") != op.collection:
        raise NodeDataError(f"{what}: author and collection must be those of its op_id")
    try:
        add = AddOp(
            type=entry.get("type"),
            value=entry.get("value"),
            quality=entry.get("quality"),
            category=entry.get("category"),
            classification=entry.get("classification"),
            ref=entry.get("ref"),
        )
        add.check_signal()
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise NodeDataError(f"{what}.{loc}: {first['msg']}") from None
    except ProtocolError as exc:
        raise NodeDataError(f"{what}: {exc}") from None
    return Add(
        op_id=str(op),
        author=op.author,
        collection=op.collection,
        seq=op.seq,
        idx=op.index,
        type=add.type,
        value=add.value,
        quality=add.quality,
        category=add.category,
        classification=add.classification,
        ref=add.ref,
    )


def _entries(value: Any, what: str, limit: int, noun: str) -> Iterator[tuple[str, Any]]:
    """Each entry of a bounded list with the name an error about it gives."""
    if not isinstance(value, list) or len(value) > limit:
        raise NodeDataError(f"{what}: expected a list of at most {limit} {noun}")
    for n, entry in enumerate(value):
        yield f"{what}[{n}]", entry


def _objects(value: Any, what: str, limit: int, noun: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Each object of a bounded list of objects, as `_entries`."""
    for where, entry in _entries(value, what, limit, noun):
        if not isinstance(entry, dict):
            raise NodeDataError(f"{where}: expected an object")
        yield where, entry


def parse_stances(value: Any, what: str) -> list[StanceRow]:
    out = []
    for where, s in _objects(value, what, MAX_STANCES, "stances"):
        author = _node_id(s.get("author"), f"{where}.author")
        verdict = s.get("verdict")
        if verdict not in (None, "confirm", "dispute"):
            raise NodeDataError(f"{where}.verdict: expected confirm, dispute or null")
        seen = s.get("seen")
        if type(seen) is not bool:
            raise NodeDataError(f"{where}.seen: expected true or false")
        out.append(
            StanceRow(
                author, _collection(s.get("collection"), f"{where}.collection"), verdict, seen
            )
        )
    return out


def parse_event(event_id: str, data: str, after: int) -> tuple[int, dict[str, Any]]:
    """A feed event's cursor and entry; its cursor must follow `after`."""
    try:
        cursor = int(event_id) if event_id.isascii() and event_id.isdigit() else -1
    except ValueError:
        cursor = -1
    if not 0 < cursor <= MAX_CURSOR or len(event_id) > 19:
        raise NodeDataError(f"event id {event_id[:40]!r}: expected a feed cursor")
    if cursor <= after:
        raise NodeDataError(f"event id {cursor}: not after the cursor applied ({after})")
    try:
        entry = json.loads(data)
    except (ValueError, RecursionError):
        raise NodeDataError(f"event {cursor}: data is not JSON") from None
    if not isinstance(entry, dict):
        raise NodeDataError(f"event {cursor}: expected a JSON object")
    if entry.get("cursor") != cursor:
        raise NodeDataError(f"event {cursor}: its cursor field differs from its id")
    return cursor, entry


def add_event(page: Page, cursor: int, entry: dict[str, Any]) -> None:
    """Fold one feed entry into `page` (validated; NodeDataError names what is wrong)."""
    what = f"event {cursor}"
    kind = entry.get("kind")
    collection = _collection(entry.get("collection"), f"{what}.collection")
    if kind == "add":
        add = parse_add(entry, what)
        if add.collection != collection:
            raise NodeDataError(f"{what}: collection differs from its op_id's")
        page.order.append(("add", len(page.adds)))
        page.adds.append(add)
        page.stances[add.op_id] = parse_stances(entry.get("stances", []), f"{what}.stances")
    elif kind == "revoke":
        by = _op_id(entry.get("op_id"), f"{what}.op_id")
        target = _op_id(entry.get("target"), f"{what}.target")
        if target.collection != collection or by.collection != collection:
            raise NodeDataError(f"{what}: a revocation withdraws adds of its own collection")
        reason = _str(entry.get("reason", ""), f"{what}.reason", MAX_REASON)
        page.order.append(("revoke", len(page.revokes)))
        page.revokes.append((str(target), str(by), reason))
    elif kind == "opinion":
        target = _op_id(entry.get("target"), f"{what}.target")
        page.stances[str(target)] = parse_stances(entry.get("stances", []), f"{what}.stances")
    else:
        raise NodeDataError(f"{what}.kind: expected add, revoke or opinion")
    page.cursor = cursor


@dataclass(frozen=True)
class ReplicaState:
    """The node's answer at /v1/replica/state."""

    head: int
    grants: dict[str, Grant]
    authors: dict[str, str]
    policies: list[CollectionPolicy] = field(default_factory=list)
    quarantined: frozenset[str] = frozenset()
    labels: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)


def _labels(body: dict[str, Any]) -> dict[tuple[str, str], tuple[str, str]]:
    """The node's trust labels (org, country) per author and collection we follow, for
    quorums counted by them; each checked as the node checks its config's."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    labels = body.get("labels", [])
    for where, entry in _entries(labels, "replica state.labels", MAX_AUTHORS, "labels"):
        if not isinstance(entry, list) or len(entry) != 4:
            raise NodeDataError(f"{where}: expected [author, collection, org, country]")
        author = _node_id(entry[0], f"{where}[0]")
        collection = _collection(entry[1], f"{where}[1]")
        org, country = _str(entry[2], f"{where}[2]", 64), _str(entry[3], f"{where}[3]", 2)
        try:
            check_trust_labels(Trust(author, collection, org=org, country=country))
        except NodeError as exc:
            raise NodeDataError(f"{where}: {exc}") from None
        out[(author, collection)] = (org, country)
    return out


def _quarantined(body: dict[str, Any]) -> frozenset[str]:
    """The op ids the node holds under quarantine in the collections we follow."""
    raw = body.get("quarantined", [])
    out = []
    for where, op_id in _entries(raw, "replica state.quarantined", MAX_QUARANTINED, "op ids"):
        try:
            out.append(str(OpId.parse(_str(op_id, where))))
        except ProtocolError as exc:
            raise NodeDataError(f"{where}: {exc}") from None
    return frozenset(out)


def _policies(body: dict[str, Any]) -> list[CollectionPolicy]:
    """The node's match policy for the collections we follow (absent from a node older
    than policy: none); each checked as the node checks an operator's."""
    raw = body.get("policies", [])
    out = []
    for where, entry in _objects(raw, "replica state.policies", MAX_POLICIES, "policies"):
        fields = dict(entry)
        collection = _collection(fields.pop("collection", None), f"{where}.collection")
        try:
            out.append(parse_policy(collection, fields))
        except NodeError as exc:
            raise NodeDataError(f"{where}.{exc}") from None
    return out


def parse_state(body: Any) -> ReplicaState:
    if not isinstance(body, dict):
        raise NodeDataError("replica state: expected a JSON object")
    head = _int(body.get("cursor"), "replica state.cursor")
    grants: dict[str, Grant] = {}
    for where, g in _objects(body.get("grants"), "replica state.grants", MAX_GRANTS, "grants"):
        digest = _str(g.get("hash"), f"{where}.hash")
        if not _HEX64.match(digest):
            raise NodeDataError(f"{where}.hash: expected a SHA-256 in hex")
        name = _str(g.get("name"), f"{where}.name")
        if not _TOKEN_NAME.match(name):
            raise NodeDataError(f"{where}.name: not a token name")
        scopes = g.get("scopes")
        if not isinstance(scopes, list) or not scopes or not set(scopes) <= {"match", "metrics"}:
            raise NodeDataError(f"{where}.scopes: expected a list of match and metrics")
        collections = g.get("collections")
        chosen: frozenset[str] | None = None
        if collections is not None:
            if not isinstance(collections, list) or not collections or len(collections) > 10_000:
                raise NodeDataError(f"{where}.collections: expected null or a non-empty list")
            chosen = frozenset(
                _collection(c, f"{where}.collections[{i}]") for i, c in enumerate(collections)
            )
        grants[digest] = Grant(name, frozenset(scopes), chosen)
    authors_in = body.get("authors")
    if not isinstance(authors_in, dict) or len(authors_in) > MAX_AUTHORS:
        raise NodeDataError(f"replica state.authors: expected an object of at most {MAX_AUTHORS}")
    authors: dict[str, str] = {}
    for node_id, name in authors_in.items():
        _node_id(node_id, "replica state.authors: a key")
        authors[node_id] = _str(name, f"replica state.authors[{node_id}]")
    return ReplicaState(head, grants, authors, _policies(body), _quarantined(body), _labels(body))


# -- reading bounded lines --------------------------------------------------------------------


async def _lines(response: aiohttp.ClientResponse, idle: float) -> AsyncIterator[list[str]]:
    """The body's lines (without their ending), as many as each read brings; a line longer
    than MAX_LINE, or a body silent for `idle` seconds, is an error."""
    buffer = b""
    while True:
        try:
            chunk = await asyncio.wait_for(response.content.readany(), timeout=idle)
        except TimeoutError:
            raise NodeDataError(f"the node sent nothing for {idle:.0f} s") from None
        if not chunk:
            if buffer:
                raise NodeDataError("the body ended inside a line")
            return
        buffer += chunk
        if b"\n" not in chunk:
            if len(buffer) > MAX_LINE:
                raise NodeDataError(f"a line longer than {MAX_LINE} bytes")
            continue
        *complete, buffer = buffer.split(b"\n")
        if len(buffer) > MAX_LINE or any(len(line) > MAX_LINE for line in complete):
            raise NodeDataError(f"a line longer than {MAX_LINE} bytes")
        try:
            yield [line.decode("utf-8").rstrip("\r") for line in complete]
        except UnicodeDecodeError:
            raise NodeDataError("a line that is not UTF-8") from None


class _Events:
    """Server-sent events out of a stream's lines: (id, data) of each complete event,
    comments and other fields skipped, an event's data bounded by MAX_EVENT."""

    def __init__(self) -> None:
        self.event_id = ""
        self.data: list[str] = []
        self.size = 0

    def feed(self, lines: list[str]) -> Iterator[tuple[str, str]]:
        for line in lines:
            if line == "":
                if self.data:
                    yield self.event_id, "\n".join(self.data)
                self.event_id, self.data, self.size = "", [], 0
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "id":
                    self.event_id = value
                elif name == "data":
                    self.size += len(value)
                    if self.size > MAX_EVENT:
                        raise NodeDataError(f"an event larger than {MAX_EVENT} bytes")
                    self.data.append(value)


# -- the follower -------------------------------------------------------------------------------


@dataclass
class FollowStats:
    """What /healthz and /metrics of the replica report besides the freshness."""

    bootstraps: int = 0
    reconnects: int = 0
    events: int = 0  # feed events received and validated
    refused: int = 0  # events or lines refused as malformed (the stream stopped there)
    last_error: str = ""
    errors_by_kind: dict[str, int] = field(default_factory=dict)


class Follower:
    """Follows one node for one replica store; `run()` until `stop()`."""

    def __init__(
        self,
        url: str,
        token: str,
        store: ReplicaStore,
        matcher: IndexSink,
        on_state: Callable[[ReplicaState | None], None],
        poll_s: float = POLL_S,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.token_hash = hash_token(token)
        self.store = store
        self.matcher = matcher
        self.on_state = on_state
        self.poll_s = poll_s
        self.head: int | None = None
        self.last_answer: float | None = None  # monotonic time of the node's last answer
        # How old this replica's answers are in seconds: heads as read by the state poll,
        # against the cursor the stream has applied (matching/freshness.py).
        self.lag = LagClock()
        self.started = time.monotonic()
        self.stats = FollowStats()
        self._stopping = asyncio.Event()
        self._rebootstrap = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._etag = ""
        # Hits this replica answered, reported to the node's quarantine (POST
        # /v1/replica/matches) every REPORT_S; None reports nothing.
        self.counter: MatchCounter | None = None

    # -- freshness ---------------------------------------------------------------------

    @property
    def applied(self) -> int | None:
        return self.store.cursor

    def behind(self) -> int | None:
        applied = self.applied
        if applied is None or self.head is None:
            return None
        return max(0, self.head - applied)

    def lag_s(self) -> float:
        """Seconds since the newest head this replica has applied was read from the node
        (0 while it has applied every head it has read)."""
        applied = self.store.cursor
        if applied is not None:
            self.lag.applied(applied)
        return self.lag.lag_s(time.monotonic())

    def stale_s(self) -> float:
        """Seconds since the node last answered the state poll (inf before it ever did)."""
        if self.last_answer is None:
            return math.inf
        return max(0.0, time.monotonic() - self.last_answer)

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            self._session = session
            tasks = [asyncio.create_task(self._poll_loop())]
            if self.counter is not None:
                tasks.append(asyncio.create_task(self._report_loop(self.counter)))
            try:
                await self._follow_loop()
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if self.counter is not None:
                    await self._report_once(self.counter)
                self._session = None

    def stop(self) -> None:
        self._stopping.set()

    def _error(self, kind: str, message: str) -> None:
        self.stats.errors_by_kind[kind] = self.stats.errors_by_kind.get(kind, 0) + 1
        if message != self.stats.last_error:
            log.warning("following %s: %s", self.url, message)
        self.stats.last_error = message

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)
        except TimeoutError:
            pass

    # -- the state poll ----------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.poll_once()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._error("state", f"replica state: {exc.__class__.__name__}: {exc}")
            except NodeDataError as exc:
                self._error("state", str(exc))
            await self._pause(self.poll_s)

    async def _report_loop(self, counter: MatchCounter) -> None:
        while not self._stopping.is_set():
            await self._pause(REPORT_S)
            await self._report_once(counter)

    async def _report_once(self, counter: MatchCounter) -> None:
        """One report of the hits counted since the last; kept for the next try when the
        node cannot be reached, dropped when it refuses them (it would again)."""
        if not len(counter) or self._session is None:
            return
        pairs = counter.drain()
        body = {"matches": [[op_id, n] for op_id, n in pairs]}
        timeout = aiohttp.ClientTimeout(total=POLL_TIMEOUT_S)
        try:
            async with self._session.post(
                self.url + "/v1/replica/matches", json=body, timeout=timeout
            ) as response:
                text = (await response.content.read(4096)).decode("utf-8", "replace")
                if response.status >= 500:
                    counter.restore(pairs)
                if response.status != 200:
                    self._error("report", f"match report: HTTP {response.status} {text[:200]}")
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            counter.restore(pairs)
            self._error("report", f"match report: {exc.__class__.__name__}: {exc}")

    async def poll_once(self) -> ReplicaState | None:
        """One GET /v1/replica/state; the state when it changed."""
        assert self._session is not None
        floor = self.store.floor()  # read before asking: the head answered is newer
        headers = {"If-None-Match": self._etag} if self._etag else {}
        timeout = aiohttp.ClientTimeout(total=POLL_TIMEOUT_S)
        async with self._session.get(
            self.url + "/v1/replica/state", headers=headers, timeout=timeout
        ) as response:
            if response.status == 304:
                self.last_answer = time.monotonic()
                if self.head is not None:  # the state, head included, has not changed
                    self.lag.read(self.head, self.last_answer)
                return None
            if response.status in (401, 403):
                # The follow token is revoked (or lost a scope): nobody may match here.
                self.on_state(None)
                self._etag = ""
                text = (await response.content.read(4096)).decode("utf-8", "replace")
                raise NodeDataError(f"replica state: the node refused the token ({text[:200]})")
            if response.status != 200:
                raise NodeDataError(f"replica state: HTTP {response.status}")
            body = await response.content.read(MAX_STATE_BODY + 1)
            if len(body) > MAX_STATE_BODY:
                raise NodeDataError(f"replica state: larger than {MAX_STATE_BODY} bytes")
            try:
                state = parse_state(json.loads(body))
            except (ValueError, RecursionError):
                raise NodeDataError("replica state: not JSON") from None
            self._etag = response.headers.get("ETag", "")[:100]
        self.last_answer = time.monotonic()
        self.head = state.head
        self.lag.read(state.head, self.last_answer)
        self.on_state(state)
        if state.head < floor and self.store.cursor is not None:
            log.warning(
                "node %s reports head %d below cursor %d this replica applied: it lost"
                " changes (restored?); taking a new snapshot",
                self.url,
                state.head,
                floor,
            )
            self._rebootstrap.set()
        return state

    # -- snapshot and stream -----------------------------------------------------------

    def _needs_snapshot(self) -> bool:
        if self.store.cursor is None:
            return True
        source = self.store.source()
        return source.get("url") != self.url or source.get("token_hash") != self.token_hash

    async def _follow_loop(self) -> None:
        backoff = BACKOFF_FIRST_S
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                if self._needs_snapshot() or self._rebootstrap.is_set():
                    self._rebootstrap.clear()
                    await self.bootstrap()
                await self.stream()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._error("connect", f"{exc.__class__.__name__}: {exc}")
            except NodeDataError as exc:
                self.stats.refused += 1
                self._error("data", str(exc))
            if self._stopping.is_set():
                break
            self.stats.reconnects += 1
            if time.monotonic() - began > 10:
                backoff = BACKOFF_FIRST_S
            await self._pause(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    async def bootstrap(self) -> None:
        """All live signals from /v1/snapshot, then the index built from them."""
        assert self._session is not None
        state = await self.poll_once()
        floor = state.head if state is not None else (self.head or 0)
        await asyncio.to_thread(self.store.begin_snapshot, self.url, self.token_hash, floor)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with self._session.get(self.url + "/v1/snapshot", timeout=timeout) as response:
            if response.status != 200:
                raise NodeDataError(f"snapshot: HTTP {response.status}")
            header_cursor = response.headers.get("X-Hashmesh-Cursor", "")
            cursor: int | None = None
            count = 0
            ended = False
            chunk: list[Add] = []
            stances: dict[str, list[StanceRow]] = {}
            async for lines in _lines(response, SNAPSHOT_IDLE_S):
                for line in lines:
                    if ended:
                        raise NodeDataError("snapshot: data after its end line")
                    try:
                        row = json.loads(line)
                    except (ValueError, RecursionError):
                        raise NodeDataError(f"snapshot line {count + 2}: not JSON") from None
                    if not isinstance(row, dict):
                        raise NodeDataError(f"snapshot line {count + 2}: expected an object")
                    if cursor is None:
                        cursor = _int(row.get("cursor"), "snapshot header.cursor")
                        if str(cursor) != header_cursor:
                            raise NodeDataError(
                                "snapshot: header cursor differs from X-Hashmesh-Cursor"
                            )
                        continue
                    if row.get("end") is True:
                        if row.get("count") != count:
                            raise NodeDataError(
                                f"snapshot: end line says {row.get('count')!r} rows, sent {count}"
                            )
                        ended = True
                        continue
                    add = parse_add(row, f"snapshot row {count}")
                    chunk.append(add)
                    stances[add.op_id] = parse_stances(
                        row.get("stances", []), f"snapshot row {count}.stances"
                    )
                    count += 1
                    if len(chunk) >= SNAPSHOT_CHUNK:
                        await asyncio.to_thread(self.store.snapshot_rows, chunk, stances, cursor)
                        chunk, stances = [], {}
                if self._stopping.is_set():
                    return
            if cursor is None or not ended:
                raise NodeDataError("snapshot: cut short (no end line)")
            if chunk:
                await asyncio.to_thread(self.store.snapshot_rows, chunk, stances, cursor)
        index = await asyncio.to_thread(build_index, self.store)
        videos = await asyncio.to_thread(lambda: video_index(self.store.live_vpdq()))
        await asyncio.to_thread(self.store.end_snapshot, cursor)
        self.matcher.load(index, cursor, videos)
        self.stats.bootstraps += 1
        log.info(
            "replica bootstrapped from %s: %d live signals at cursor %d", self.url, count, cursor
        )

    async def stream(self) -> None:
        """/v1/feed/stream from the applied cursor until it ends, fails or we stop."""
        assert self._session is not None
        after = self.store.cursor
        assert after is not None
        headers = {"Last-Event-ID": str(after), "Accept": "text/event-stream"}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with self._session.get(
            self.url + f"/v1/feed/stream?after={after}&heartbeat={HEARTBEAT_S}",
            headers=headers,
            timeout=timeout,
        ) as response:
            if response.status == 429:
                retry = response.headers.get("Retry-After", "5")
                await self._pause(min(60.0, float(retry) if retry.isdigit() else 5.0))
                raise NodeDataError("feed stream: the node refused (429, too many streams)")
            if response.status != 200:
                raise NodeDataError(f"feed stream: HTTP {response.status}")
            events = _Events()
            stop = asyncio.ensure_future(self._stopping.wait())
            rebootstrap = asyncio.ensure_future(self._rebootstrap.wait())
            # One page is applied (on a thread, SQLite mostly without the GIL) while the
            # next is parsed here; pages still commit one after another, in feed order.
            applying: asyncio.Future[None] | None = None

            async def hand_over(page: Page) -> None:
                nonlocal applying
                if applying is not None:
                    await asyncio.shield(applying)
                applying = asyncio.ensure_future(self._apply(page))

            try:
                async for lines in _lines(response, STREAM_IDLE_S):
                    page = Page(cursor=after)
                    try:
                        for event_id, data in events.feed(lines):
                            cursor, entry = parse_event(event_id, data, page.cursor)
                            add_event(page, cursor, entry)
                            self.stats.events += 1
                            if (
                                len(page.order) >= MAX_PAGE_EVENTS
                                or len(page.stances) >= MAX_PAGE_EVENTS
                            ):
                                await hand_over(page)
                                after = page.cursor
                                page = Page(cursor=after)
                    except NodeDataError:
                        if page.cursor > after:  # the events accepted before the bad one
                            await hand_over(page)
                        raise
                    if page.cursor > after:
                        await hand_over(page)
                        after = page.cursor
                    if stop.done() or rebootstrap.done():
                        return
            finally:
                stop.cancel()
                rebootstrap.cancel()
                if applying is not None:
                    # What was parsed and accepted before a bad event or a stop still
                    # lands (its own error, if any, is raised from here).
                    await asyncio.shield(applying)

    async def _apply(self, page: Page) -> None:
        applied: Applied = await asyncio.to_thread(self.store.apply, page)
        self.matcher.apply(applied.added, applied.removed, page.cursor, applied.videos)
