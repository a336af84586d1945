"""Peers: authenticating their requests, signing ours, and keeping score of how they behave.

Every request between nodes is signed (protocol.peerauth); this module is the I/O around
those pure functions: the clock, random nonces, the replay cache, per-peer rate limits,
exponential back-off for unreachable peers, and a misbehaviour score that cuts a peer off
when it keeps sending invalid data.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import random
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from hashmesh.node.config import Config, Peer
from hashmesh.node.errors import (
    Forbidden,
    NodeError,
    PeerError,
    RequestTimeout,
    TooManyRequests,
    Unauthorized,
)
from hashmesh.node.identity import OwnIdentity
from hashmesh.node.limits import RateLimiter
from hashmesh.node.net.bodies import (
    ByteBudget,
    error_json,
    read_limited,
    refuse_encoded,
    request_body,
)
from hashmesh.node.store.core import now_ms
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.identity import Identities, Resolution
from hashmesh.protocol.peerauth import (
    DEFAULT_WINDOW_MS,
    PeerAuthError,
    RequestAuth,
    check_freshness,
    read_claim,
    sign_request,
    sign_response,
    verify_request,
    verify_response,
)
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statementsync import decode_push_answer, encode_statements

log = logging.getLogger("hashmesh.peers")
MAX_PEER_BODY = 32 * 1024 * 1024
UNVERIFIED_BYTES = 2 * MAX_PEER_BODY  # bodies read but not yet verified, all peers together
ATTRIBUTABLE_BODY = 64 * 1024  # read before a stale/cut-off refusal, to learn who signed it
MAX_ERROR_TEXT = 500  # characters of a peer's error text that are stored or logged
BODY_TIMEOUT_S = 15.0  # a peer request body must arrive within this (slowloris)
CLIENT_KEEPALIVE_S = 5.0  # below the server's keep-alive timeout (hashmesh/node/daemon.py)
RATE_PER_SECOND = 50
RATE_BURST = 200  # at most this many requests from one peer in any RATE_BURST/RATE_PER_SECOND s
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 300.0
CUTOFF_SCORE = 100
ANY_AGE_MS = 2**53  # verify_request's window when only the signature is checked
CUTOFF_SECONDS = 600.0
PENALTY_INVALID = 25
PENALTY_FLOOD = 1
PENALTY_UNACCEPTED = 10  # evidence about logs we do not accept, once per message
#: A rotated peer's previous identity key is accepted this long after we learned of its
#: successor: its requests signed before it switched may still be on their way.
IDENTITY_GRACE_MS = DEFAULT_WINDOW_MS
#: After an introduction no key of ours got through, calls sign with the current key this
#: long before introducing again (a peer that lists none of our ids refuses them all).
INTRODUCTION_RETRY_S = 60.0


class RouteMissing(NodeError):
    """The peer answered 404: it runs a version without this route (sync falls back)."""


class NonceCache:
    """Nonces seen within the timestamp window; a replay inside the window is refused and
    one outside it is refused by the timestamp check, so the cache stays bounded."""

    def __init__(self, window_ms: int = DEFAULT_WINDOW_MS, limit: int = 200_000) -> None:
        self.window_ms = window_ms
        self.limit = limit
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()

    def check_and_add(self, caller: str, nonce: str, now: int) -> bool:
        while self._seen:
            _key, seen_at = next(iter(self._seen.items()))
            if now - seen_at <= 2 * self.window_ms and len(self._seen) < self.limit:
                break
            self._seen.popitem(last=False)
        if (caller, nonce) in self._seen:
            return False
        self._seen[(caller, nonce)] = now
        return True


@dataclass
class PeerTally:
    """What a store-thread step learned about a peer. `PeerState` belongs to the event
    loop alone (status and the sync scheduler read it there, unlocked), so work done on
    the store thread records here and the loop applies the tally when the step returns."""

    refused: dict[str, int] = field(default_factory=dict)
    penalties: list[tuple[int, str]] = field(default_factory=list)
    received: int = 0
    sent: int = 0
    #: batches refused as untrusted, by (author, collection): shown with their fix
    untrusted: dict[tuple[str, str], int] = field(default_factory=dict)
    #: the highest seq the peer sent us per (author, collection): it holds at least that
    held: dict[tuple[str, str], int] = field(default_factory=dict)

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def refuse_untrusted(self, author: str, collection: str) -> None:
        self.refuse("untrusted")
        key = (author, collection)
        self.untrusted[key] = self.untrusted.get(key, 0) + 1

    def holds(self, author: str, collection: str, seq: int) -> None:
        key = (author, collection)
        self.held[key] = max(seq, self.held.get(key, 0))

    def penalise(self, points: int, reason: str) -> None:
        self.penalties.append((points, reason))

    def apply_to(self, state: PeerState) -> None:
        for reason, n in self.refused.items():
            state.refused[reason] = state.refused.get(reason, 0) + n
        for points, reason in self.penalties:
            state.penalise(points, reason)
        state.batches_received += self.received
        state.batches_sent += self.sent
        for key, seq in self.held.items():
            state.vector[key] = max(seq, state.vector.get(key, 0))


MAX_REFUSALS = 1000  # (sender, author, collection, reason) rows kept; peers choose them


@dataclass
class Refusal:
    sender: str
    author: str
    collection: str
    reason: str
    batches: int
    first_ms: int
    last_ms: int


class Refusals:
    """Batches refused by why, so that missing trust is seen rather than read as "no
    match". Bounded: peers choose the authors (a throw-away key per batch costs nothing),
    so past `limit` rows the one least recently refused goes."""

    def __init__(self, limit: int = MAX_REFUSALS) -> None:
        self.limit = limit
        self.dropped = 0
        self._rows: OrderedDict[tuple[str, str, str, str], Refusal] = OrderedDict()

    def record(self, sender: str, author: str, collection: str, reason: str, n: int) -> bool:
        """Count `n` refused batches; True when this (sender, author, collection, reason)
        is new here (the caller logs it once, not once per batch)."""
        key = (sender, author, collection, reason)
        now = now_ms()
        row = self._rows.get(key)
        if row is not None:
            row.batches += n
            row.last_ms = now
            self._rows.move_to_end(key)
            return False
        self._rows[key] = Refusal(sender, author, collection, reason, n, now, now)
        while len(self._rows) > self.limit:
            self._rows.popitem(last=False)
            self.dropped += 1
        return True

    def rows(self) -> list[Refusal]:
        """Newest first."""
        return list(reversed(self._rows.values()))


@dataclass
class PeerState:
    """What this node knows of one peer at run time (shown by `status`)."""

    node_id: str
    failures: int = 0
    next_attempt: float = 0.0
    last_ok_ms: int | None = None
    last_attempt_ms: int | None = None
    last_error: str = ""
    score: int = 0
    cut_off_until: float = 0.0
    vector: dict[tuple[str, str], int] = field(default_factory=dict)
    batches_received: int = 0
    batches_sent: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def succeeded(self) -> None:
        self.failures = 0
        self.next_attempt = 0.0
        self.last_ok_ms = now_ms()
        self.last_error = ""

    def failed(self, error: str) -> None:
        self.failures += 1
        delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (self.failures - 1))
        self.next_attempt = time.monotonic() + delay * random.uniform(0.8, 1.2)
        self.last_error = clip(error)

    def refuse(self, reason: str) -> None:
        """Count a refused request or batch without scoring the peer down: for refusals a
        third party could cause in its name (a replayed captured request) or that honest
        peers cause too (relaying authors we do not trust)."""
        self.refused[reason] = self.refused.get(reason, 0) + 1

    def penalise(self, points: int, reason: str) -> None:
        self.score += points
        self.refuse(reason)
        if self.score >= CUTOFF_SCORE:
            self.cut_off_until = time.monotonic() + CUTOFF_SECONDS

    @property
    def cut_off(self) -> bool:
        if self.cut_off_until and time.monotonic() >= self.cut_off_until:
            self.cut_off_until = 0.0
            self.score = CUTOFF_SCORE // 2
        return self.cut_off_until > 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "reachable": self.failures == 0 and self.last_ok_ms is not None,
            "last_sync_ms": self.last_ok_ms,
            "last_attempt_ms": self.last_attempt_ms,
            "failures": self.failures,
            "last_error": self.last_error,
            "score": self.score,
            "cut_off": self.cut_off,
            "batches_received": self.batches_received,
            "batches_sent": self.batches_sent,
            "refused": dict(self.refused),
        }


Own = Callable[[], OwnIdentity]
Known = Callable[[], Identities]


def _fixed(key: SigningKey) -> Own:
    own = OwnIdentity(key)
    return lambda: own


def identity_refusal(peer: Peer, caller: str, found: Resolution) -> str:
    """Why `caller` does not answer for `peer` (configured as found.configured)."""
    if found.current is None:
        return f"node {caller} is not peer {peer.name}'s identity: {found.why}"
    return f"node {caller} handed peer {peer.name}'s identity over to {found.current}"


class Peers:
    """Run-time state of all peers, and authentication of incoming peer requests.

    A peer is known by the node id of its `[[peers]]` entry, and answers by the key its
    identity leads to now (protocol/identity.py): the configured key itself, a successor
    it handed over to, or an org's replacement of a stolen key; a revoked key answers for
    nobody. Run-time state stays under the configured id."""

    def __init__(self, key: SigningKey | Own, identities: Known = Identities) -> None:
        self.own = _fixed(key) if isinstance(key, SigningKey) else key
        self.identities = identities
        self._aliases: tuple[Config | None, Identities | None, dict[str, Peer]] = (None, None, {})
        self.nonces = NonceCache()
        self.states: dict[str, PeerState] = {}
        self.unverified = ByteBudget(UNVERIFIED_BYTES)
        self.rate: RateLimiter[str] = RateLimiter(RATE_BURST, RATE_BURST / RATE_PER_SECOND)

    def state(self, node_id: str) -> PeerState:
        st = self.states.get(node_id)
        if st is None:
            st = self.states[node_id] = PeerState(node_id)
        return st

    @property
    def key(self) -> SigningKey:
        return self.own().key

    def _alias(self, config: Config, known: Identities) -> dict[str, Peer]:
        """The configured peers by every other id that may answer for them now."""
        held_config, held_known, aliases = self._aliases
        if held_config is config and held_known is known:
            return aliases
        aliases = {}
        for peer in config.peers:
            found = known.resolve(peer.node_id)
            for other in (found.current, found.previous):
                if other is not None and other != peer.node_id:
                    aliases.setdefault(other, peer)
        self._aliases = (config, known, aliases)
        return aliases

    def peer_of(self, config: Config, caller: str) -> Peer:
        """The configured peer `caller` answers for now, or Forbidden naming why not."""
        known = self.identities()
        peer = config.peer(caller) or self._alias(config, known).get(caller)
        if peer is None:
            raise Forbidden(f"node {caller} is not a peer of this node")
        found = known.resolve(peer.node_id)
        if found.current == caller:
            return peer
        if (
            found.current is not None
            and caller == found.previous
            and found.since_ms is not None
            and now_ms() - found.since_ms <= IDENTITY_GRACE_MS
        ):
            return peer  # a request it signed before it switched to its new key
        self.state(peer.node_id).refuse("identity")
        raise Forbidden(identity_refusal(peer, caller, found))

    async def authenticate(
        self, request: web.Request, config: Config, limit: int = MAX_PEER_BODY
    ) -> tuple[Peer, RequestAuth, bytes]:
        """Check a peer request: signature, audience, freshness, nonce, known peer, limits.

        What the headers alone can settle (form, a configured peer, no encoding, and for a
        body that is not small a fresh timestamp and no cut-off) is refused before a byte
        of the body is read. A small body is read first so that a stale or cut-off request
        is counted against the peer that really signed it, never a name someone typed."""
        now = now_ms()
        own = self.own()
        try:
            claim = read_claim(request.headers, request.path_qs, own.ids)
        except PeerAuthError as exc:
            raise Unauthorized(str(exc)) from None
        peer = self.peer_of(config, claim.caller)
        refuse_encoded(request)
        declared = request.content_length
        if declared is None or declared > ATTRIBUTABLE_BODY:
            try:
                check_freshness(claim.ts, now)
            except PeerAuthError as exc:
                raise Unauthorized(str(exc)) from None
            known = self.states.get(peer.node_id)
            if known is not None and known.cut_off:
                raise Forbidden("this peer is cut off for sending invalid data; try later")
        with self.unverified.hold() as hold:
            try:
                async with asyncio.timeout(BODY_TIMEOUT_S):
                    body = await request_body(request, limit, hold=hold)
            except TimeoutError:
                raise RequestTimeout(
                    f"request body: not received within {BODY_TIMEOUT_S:g} s"
                ) from None
            try:
                # The signature first (any age), so that a stale request is counted against
                # the peer that really signed it, never against a name someone typed.
                auth = verify_request(
                    request.headers,
                    request.method,
                    request.path_qs,
                    body,
                    own.ids,
                    now,
                    window_ms=ANY_AGE_MS,
                )
            except PeerAuthError as exc:
                raise Unauthorized(str(exc)) from None
        state = self.state(peer.node_id)
        if abs(now - auth.ts) > DEFAULT_WINDOW_MS:
            state.refuse("stale_timestamp")
            raise Unauthorized(
                f"peer auth: timestamp is {abs(now - auth.ts) // 1000} s off (window "
                f"{DEFAULT_WINDOW_MS // 1000} s); check the clocks"
            )
        if state.cut_off:
            state.refuse("cut_off")
            raise Forbidden("this peer is cut off for sending invalid data; try later")
        if not self.nonces.check_and_add(auth.caller, auth.nonce, now):
            state.refuse("replayed_nonce")
            raise Unauthorized("peer auth: nonce replayed")
        if not self.rate.hit(auth.caller):
            state.penalise(PENALTY_FLOOD, "rate_limited")
            raise TooManyRequests("too many requests from this peer; slow down")
        return peer, auth, body

    def respond(
        self, auth: RequestAuth, body: bytes, content_type: str, status: int = 200
    ) -> web.Response:
        # signed by the id the caller addressed: a peer that does not know our new identity
        # yet can still check the answer (and learn the new one from our statements)
        own = self.own()
        key = own.by_id(auth.callee) or own.key
        headers = sign_response(key, auth.caller, auth.nonce, status, body)
        headers["Content-Type"] = content_type
        return web.Response(body=body, status=status, headers=headers)


class PeerClient:
    """Signed requests to peers, with responses verified against the peer's node id: the
    id its identity leads to now (a revoked one is not called at all). After this node
    rotated its identity, a peer that has not heard of the new key from us is first sent
    the introduction (the identity statements), signed by the old key it knows."""

    def __init__(
        self,
        key: SigningKey | Own,
        ca_file: str = "",
        timeout_s: float = 30.0,
        identities: Known = Identities,
        remember: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.own = _fixed(key) if isinstance(key, SigningKey) else key
        self.identities = identities
        #: told (peer's configured id, our key id) when a peer accepted our introduction,
        #: so that the next start does not introduce the same key to it again
        self.remember = remember
        # per peer (configured id): the identity of ours it has accepted, or until when
        # an introduction that failed is not tried again
        self._introduced: dict[str, tuple[OwnIdentity, float]] = {}
        self._introducing: dict[str, asyncio.Lock] = {}
        ssl_context = ssl.create_default_context(cafile=ca_file or None)
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout_s, connect=5.0),
            connector=aiohttp.TCPConnector(ssl=ssl_context, keepalive_timeout=CLIENT_KEEPALIVE_S),
            auto_decompress=True,
        )

    async def close(self) -> None:
        await self.session.close()

    @property
    def key(self) -> SigningKey:
        return self.own().key

    def target(self, peer: Peer) -> str:
        """The id that answers for `peer` now; NodeError when none does (revoked)."""
        found = self.identities().resolve(peer.node_id)
        if found.current is None:
            raise NodeError(f"peer {peer.name} not called: {found.why}")
        return found.current

    async def post(self, peer: Peer, path: str, body: bytes, content_type: str) -> bytes:
        target = self.target(peer)
        try:
            key = await self._signer(peer, target)
            return await self._post(peer, target, key, path, body, content_type)
        except aiohttp.ClientError as exc:
            raise NodeError(f"cannot reach peer {peer.name} at {peer.url}: {_reach(exc)}") from None

    async def _signer(self, peer: Peer, target: str) -> SigningKey:
        """Our key to sign for `peer` with: the current one, once the peer knows it."""
        own = self.own()
        if not own.previous:
            return own.key
        lock = self._introducing.setdefault(peer.node_id, asyncio.Lock())
        async with lock:
            held = self._introduced.get(peer.node_id)
            if held is not None and (held[0] is own or time.monotonic() < held[1]):
                return own.key
            if peer.node_id in own.introduced:
                self._introduced[peer.node_id] = (own, 0.0)
                return own.key
            body = encode_statements([s.to_json() for s in own.introduction])
            last: NodeError | None = None
            # the old ids first, newest first: the peer hears of the new key from the one
            # it knows (the new one last: it may have learned it by gossip)
            for key in (*own.previous, own.key):
                try:
                    data = await self._post(
                        peer, target, key, "/v1/peer/statements/push", body, "application/json"
                    )
                    decode_push_answer(data)
                except RouteMissing:
                    break
                except NodeError as exc:
                    last = exc
                    continue
                except ProtocolError as exc:
                    last = NodeError(f"peer {peer.name}: introduction answer: {exc}")
                    continue
                self._introduced[peer.node_id] = (own, 0.0)
                if self.remember is not None:
                    await self.remember(peer.node_id, own.key.node_id)
                return own.key
            self._introduced[peer.node_id] = (
                OwnIdentity(own.key),
                time.monotonic() + INTRODUCTION_RETRY_S,
            )
            if last is not None:
                log.info("introduction to %s failed: %s", peer.name, clip(str(last)))
            return own.key

    async def _post(
        self,
        peer: Peer,
        target: str,
        key: SigningKey,
        path: str,
        body: bytes,
        content_type: str,
    ) -> bytes:
        nonce = os.urandom(16)
        headers = sign_request(key, target, "POST", path, body, now_ms(), nonce)
        headers["Content-Type"] = content_type
        async with self.session.post(peer.url + path, data=body, headers=headers) as response:
            data = await read_limited(
                response.content, MAX_PEER_BODY, f"peer {peer.name}: response"
            )
            if response.status == 404:
                raise RouteMissing(f"peer {peer.name} does not serve {path} (an older version)")
            if response.status != 200:
                raise NodeError(f"peer {peer.name} answered {response.status}: {_error(data)}")
            try:
                verify_response(
                    response.headers,
                    response.status,
                    data,
                    target,
                    key.node_id,
                    headers["X-Hashmesh-Nonce"],
                )
            except PeerAuthError as exc:
                raise NodeError(f"peer {peer.name}: {exc}") from None
            return data


def _reach(exc: aiohttp.ClientError) -> str:
    """Why a peer could not be reached, without aiohttp's internals (its text names its
    connector, as "ssl:default", even for plain http)."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return (
            f"its TLS certificate was refused ({exc.certificate_error}; "
            "set [tls] ca in config.toml if the peer uses a private CA)"
        )
    if isinstance(exc, aiohttp.ClientSSLError):
        return "the TLS handshake failed (is the peer's url https:// and is it serving TLS?)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if os_error.errno == errno.ECONNREFUSED:
            return "connection refused (is the peer's node running, and is its url right?)"
        if isinstance(os_error, socket.gaierror):
            return f"unknown host {exc.host!r} (check the peer's url)"
        return (os_error.strerror or str(os_error) or type(os_error).__name__).lower()
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the peer closed the connection without answering"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "the peer's answer was cut off"
    if isinstance(exc, aiohttp.InvalidURL):
        return "not a valid url (check the peer's url)"
    return type(exc).__name__


PeerHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def peer_route(handler: PeerHandler) -> PeerHandler:
    """Refusals of peer requests as JSON with their headers (Retry-After on 503), closing
    the connection when the body was refused unread."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (NodeError, PeerError) as exc:  # the peer is the caller here: it hears why
            return error_json(request, exc)

    return wrapped


def clip(text: str) -> str:
    """A peer's text fit to store and log: a peer chooses its error messages, and one
    answered 5 MB a round; control characters would forge log lines."""
    text = text[:MAX_ERROR_TEXT]
    return "".join(c if c.isprintable() else "\ufffd" for c in text)


def _error(data: bytes) -> str:
    try:
        return clip(str(json.loads(data)["error"]))
    except (ValueError, KeyError, TypeError, RecursionError):
        return clip(data[:MAX_ERROR_TEXT].decode("utf-8", "replace"))
