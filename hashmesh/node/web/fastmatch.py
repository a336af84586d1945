"""The matcher processes' HTTP server: httptools on an asyncio.Protocol for the hot routes,
aiohttp (web/matchserver.py's app) for everything else.

Why not aiohttp for all of it: on this project's 2-core machine a bare aiohttp hello world
answers about 8,000 requests/s with uvloop, below issue 18's 12,000 exact matches/s before
any matching is done; a bare httptools protocol answers about 22,000 (docs/benchmarks.md,
"Exact matches over HTTP"). So POST /v1/match, GET /healthz, /v1/healthz and /metrics are
answered here, without a Request object, a task, the router or the middleware chain: an
exact-only match is answered inside `data_received`. Any other request (another route or
method, /v1/match/file's multipart, HTTP/1.0, an upgrade, an unusual Expect) is handed with
its bytes to an aiohttp protocol of the same app, which keeps the connection from then on.

What the node's middlewares and handler do, this does the same, and through the same code
where it can (access.bearer_grant, matchroutes.match_fields, the match deps, the errors'
fault table): the bearer token is checked when the head is complete, before a byte of the
body is kept; a declared or received body over MAX_JSON_BODY is 413, an encoded one 415;
a body must keep the pace of net/bodies.py (GRACE_S, then MIN_RATE) or gets 408; a head
must be complete within `keepalive_s` of the connection going idle or the connection is
closed (slowloris); heads are bounded in bytes; responses are written in request order
(pipelining), and reading pauses while the client does not read what it is sent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import httptools

from hashmesh.node.errors import (
    INTERNAL,
    INTERNAL_MESSAGE,
    HashmeshError,
    NodeError,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedEncoding,
    fault_of,
)
from hashmesh.node.net.bodies import GRACE_S, MAX_JSON_BODY, MIN_RATE, parse_json_object
from hashmesh.node.tokens import Grant
from hashmesh.node.web import access, matchroutes

log = logging.getLogger("hashmesh.api")

#: An answer now (exact queries, inline) or one to await (PDQ, on a thread).
Answer = Callable[[Grant, Any, int], "dict[str, Any] | Awaitable[dict[str, Any]]"]
Health = Callable[[], tuple[bool, dict[str, Any]]]

MAX_HEAD = 64 * 1024  # aiohttp's own bounds are 8,190 bytes a line or field
MAX_PIPELINE = 16  # answers queued on one connection before its reading pauses
DISCARD_LIMIT = 64 * 1024  # a refused body read past this closes the connection
SWEEP_S = 0.5
MAX_GRANTED = 1024

MATCH, HEALTH, METRICS = 1, 2, 3
ROUTES = {
    (b"POST", b"/v1/match"): MATCH,
    (b"GET", b"/healthz"): HEALTH,
    (b"GET", b"/v1/healthz"): HEALTH,
    (b"GET", b"/metrics"): METRICS,
}
JSON = b"application/json; charset=utf-8"
TEXT = b"text/plain; charset=utf-8"
_dumps = json.JSONEncoder().encode  # json.dumps's defaults, as aiohttp's json_response


def status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode()


class _Handoff(Exception):
    """Raised inside the parser's callback to stop it: the connection goes to aiohttp."""


class FastServer:
    """What every connection shares: the deps, the cached Date header, the open
    connections (for the timeout sweep and shutdown) and the aiohttp fallback."""

    def __init__(
        self,
        tokens: access.TokenCache,
        answer: Answer,
        health: Health,
        metrics_text: Callable[[], str],
        fallback: Callable[[], asyncio.Protocol],
        keepalive_s: float,
    ) -> None:
        self.tokens = tokens
        self.answer = answer
        self.health = health
        self.metrics_text = metrics_text
        self.fallback = fallback
        self.keepalive_s = keepalive_s
        self.connections: set[MatchProtocol] = set()
        # Authorization headers already accepted, by route: a SHA-256 a request saved. The
        # token rows are replaced whole on every change (worker.py, replica.py), so a new
        # `tokens.grants` object empties it.
        self._granted: dict[tuple[int, bytes], Grant] = {}
        self._granted_of: object = None
        self.date = b""
        self._tick()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def _tick(self) -> None:
        self.date = formatdate(usegmt=True).encode()

    def grant(self, route: int, header: bytes) -> Grant | tuple[int, str]:
        if self._granted_of is not self.tokens.grants or len(self._granted) > MAX_GRANTED:
            self._granted = {}
            self._granted_of = self.tokens.grants
        grant = self._granted.get((route, header))
        if grant is not None:
            return grant
        path = "/v1/match" if route == MATCH else "/metrics"
        found = access.bearer_grant(self.tokens, path, header.decode("utf-8", "surrogateescape"))
        if isinstance(found, Grant):
            self._granted[route, header] = found
        return found

    def protocol(self) -> MatchProtocol:
        return MatchProtocol(self)

    async def start(self, **listen: Any) -> asyncio.AbstractServer:
        """Listen (`sock=` or `host=`, `port=`, as loop.create_server takes them)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.protocol, **listen)
        self._sweeper = asyncio.create_task(self._sweep())
        return self._server

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SWEEP_S)
            self._tick()
            now = loop.time()
            for conn in list(self.connections):
                conn.check(now)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let answers under way be written (up to `grace_s`), close."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace_s
        while any(c.busy for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)


# Connection states.
HEAD, BODY, DISCARD, GONE = 0, 1, 2, 3


class MatchProtocol(asyncio.Protocol):
    """One client connection, until it closes or is handed to aiohttp."""

    def __init__(self, server: FastServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.state = HEAD
        self.loop = asyncio.get_running_loop()
        self.idle_since = self.loop.time()
        self.head_bytes = 0
        # Answers not yet written, in request order: [bytes | None, close after].
        self.slots: deque[list[Any]] = deque()
        self.tasks: set[asyncio.Future[Any]] = set()
        self.paused_write = False
        self.paused_read = False
        self.closing = False
        self.handing: bytes | None = None
        self.fresh = True
        self.chunk = b""
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.auth: bytes | None = None
        self.encoding: bytes | None = None
        self.expect: bytes | None = None
        self.declared: bytes | None = None
        self.chunked = False
        self.host = False
        self.route = 0
        self.grant: Grant | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.body_start = 0.0
        self.raw: list[bytes] | None = None  # this request's bytes, while it may be handed off
        self.raw_at: int | None = 0

    @property
    def busy(self) -> bool:
        return bool(self.slots) or self.state == BODY

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = GONE
        self.server.connections.discard(self)
        for task in self.tasks:
            task.cancel()

    def pause_writing(self) -> None:
        self.paused_write = True
        self._reading()

    def resume_writing(self) -> None:
        self.paused_write = False
        self._reading()

    def data_received(self, data: bytes) -> None:
        if self.state == GONE or self.closing:
            return
        if self.handing is not None:  # arrived before reading paused: goes along
            self.handing += data
            return
        if self.raw is not None:
            self.raw.append(data)
        self.fresh = True  # no message has ended in this chunk yet
        self.chunk = data
        in_head = self.state == HEAD
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Handoff):
                self._handoff()
            elif self.state != GONE:
                log.error("fast match path failed", exc_info=exc.__context__ or exc)
                self._fail(500, INTERNAL_MESSAGE)
            return
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(400, f"malformed HTTP request ({exc})")
            return
        if in_head and self.state == HEAD and self.raw is not None:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD:
                self._fail(431, f"request head: larger than {MAX_HEAD} bytes")

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._reset()
        self.head_bytes = 0
        self.raw = [self.chunk]
        self.raw_at = 0 if self.fresh else None  # None: after another request in this chunk

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"authorization":
            if self.auth is None:
                self.auth = value
        elif name == b"content-encoding":
            if self.encoding is None:
                self.encoding = value
        elif name == b"content-length":
            self.declared = value
        elif name == b"transfer-encoding":
            self.chunked = True
        elif name == b"expect":
            self.expect = value
        elif name == b"host":
            self.host = True

    def on_headers_complete(self) -> None:
        parser = self.parser
        route = ROUTES.get((parser.get_method(), self.url.partition(b"?")[0]), 0)
        if (
            not route
            or not self.host  # aiohttp's 400
            or parser.get_http_version() != "1.1"
            or parser.should_upgrade()
            or (self.expect is not None and self.expect.strip().lower() != b"100-continue")
            or (route != MATCH and (self.chunked or self.declared not in (None, b"0")))
        ):
            raise _Handoff
        self.route = route
        self.raw = None
        self.state = BODY
        self.body_start = self.loop.time()
        if route == HEALTH:
            return
        grant = self.server.grant(route, self.auth or b"")
        if isinstance(grant, tuple):
            self._refuse(*grant)
            return
        self.grant = grant
        if route != MATCH:
            return
        try:
            encoding = (self.encoding or b"").decode("latin-1").strip().lower()
            if encoding not in ("", "identity"):
                raise UnsupportedEncoding(
                    f"Content-Encoding {encoding[:40]!r} is not accepted;"
                    " send the body uncompressed"
                )
            if self.declared is not None and int(self.declared) > MAX_JSON_BODY:
                raise PayloadTooLarge(f"request body: larger than {MAX_JSON_BODY} bytes")
        except HashmeshError as exc:
            self._refuse(exc.status, str(exc), exc)
            return
        if self.expect is not None:
            self._queue(b"HTTP/1.1 100 Continue\r\n\r\n", False)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.state == DISCARD:
            if self.size > DISCARD_LIMIT:
                self._close_after_answers()
            return
        if self.size > MAX_JSON_BODY:
            exc = PayloadTooLarge(f"request body: larger than {MAX_JSON_BODY} bytes")
            self._refuse(exc.status, str(exc), exc, close=True)
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.fresh = False
        keep = self.parser.should_keep_alive()
        state, route, self.state = self.state, self.route, HEAD
        self.idle_since = self.loop.time()
        self.raw = None
        if state == DISCARD or self.closing:
            if not keep:
                self._close_after_answers()
            return
        if route == MATCH:
            self._match(keep)
        elif route == HEALTH:
            ok, body = self.server.health()
            self._respond(200 if ok else 503, _dumps({"ok": ok, **body}).encode(), keep)
        else:
            self._respond(200, self.server.metrics_text().encode(), keep, TEXT)
        if len(self.slots) >= MAX_PIPELINE:
            self._reading()

    # -- answering -------------------------------------------------------------------------

    def _match(self, keep: bool) -> None:
        assert self.grant is not None
        raw = b"".join(self.body)
        self.body = []
        try:
            if not raw:
                raise NodeError("request body: empty; expected a JSON object")
            queries, threshold = matchroutes.match_fields(parse_json_object(raw))
            result = self.server.answer(self.grant, queries, threshold)
        except Exception as exc:
            self._error(exc, keep)
            return
        if isinstance(result, dict):
            self._respond(200, _dumps(result).encode(), keep)
            return
        slot = self._queue(None, not keep)
        task = asyncio.ensure_future(result)
        self.tasks.add(task)
        task.add_done_callback(lambda t: self._answered(t, slot, keep))

    def _answered(self, task: asyncio.Future[Any], slot: list[Any], keep: bool) -> None:
        self.tasks.discard(task)
        if self.state == GONE or task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            slot[0] = self._bytes(200, _dumps(task.result()).encode(), keep)
        else:
            slot[0] = self._error_bytes(exc, keep)
        self._flush()

    def _error(self, exc: BaseException, keep: bool) -> None:
        self._queue(self._error_bytes(exc, keep), not keep)

    def _error_bytes(self, exc: BaseException, keep: bool) -> bytes:
        """The errors middleware's answer (web/api.py errors_middleware), as bytes."""
        if isinstance(exc, matchroutes.Refused):
            r = exc.response
            extra = b"".join(
                f"{k}: {v}\r\n".encode("latin-1")
                for k, v in r.headers.items()
                if k.lower() not in ("content-type", "content-length")
            )
            body = r.body if isinstance(r.body, bytes) else b""
            return self._bytes(r.status, body, keep, JSON, extra)
        fault = fault_of(exc)
        if fault.private or not isinstance(exc, HashmeshError):
            log.log(fault.log_level, "%s error on POST /v1/match", fault.family, exc_info=exc)
            return self._bytes(INTERNAL.status, _dumps({"error": INTERNAL_MESSAGE}).encode(), keep)
        log.log(fault.log_level, "refused POST /v1/match: %s", exc)
        extra = b""
        if exc.retry_after_s is not None:
            extra = f"Retry-After: {exc.retry_after_s}\r\n".encode()
        return self._bytes(exc.status, _dumps({"error": str(exc)}).encode(), keep, JSON, extra)

    def _refuse(
        self, status: int, message: str, exc: HashmeshError | None = None, close: bool = False
    ) -> None:
        """Answer now, at the head (or mid-body), and read no more of the body than
        DISCARD_LIMIT: a connection whose refused body goes on is closed."""
        close = close or self.chunked or int(self.declared or 0) > DISCARD_LIMIT
        extra = b""
        if exc is not None and exc.retry_after_s is not None:
            extra = f"Retry-After: {exc.retry_after_s}\r\n".encode()
        if exc is not None:
            log.log(fault_of(exc).log_level, "refused POST /v1/match: %s", exc)
        self.state = DISCARD
        self.body = []
        body = _dumps({"error": message}).encode()
        self._queue(self._bytes(status, body, not close, JSON, extra))
        if close:
            self._close_after_answers()

    def _bytes(
        self, status: int, body: bytes, keep: bool, kind: bytes = JSON, extra: bytes = b""
    ) -> bytes:
        return b"".join(
            (
                status_line(status) if status != 200 else b"HTTP/1.1 200 OK\r\n",
                b"Content-Type: ",
                kind,
                b"\r\nContent-Length: ",
                str(len(body)).encode(),
                b"\r\nDate: ",
                self.server.date,
                b"\r\n",
                extra,
                b"\r\n" if keep else b"Connection: close\r\n\r\n",
                body,
            )
        )

    def _respond(
        self, status: int, body: bytes, keep: bool, kind: bytes = JSON, extra: bytes = b""
    ) -> None:
        self._queue(self._bytes(status, body, keep, kind, extra), not keep)

    def _queue(self, data: bytes | None, close: bool = False) -> list[Any]:
        slot = [data, close]
        if data is not None and not self.slots and self.transport is not None:
            self.transport.write(data)  # the usual case: nothing ahead of it
            if close:
                self.close()
            return slot
        self.slots.append(slot)
        self._flush()
        return slot

    def _flush(self) -> None:
        transport = self.transport
        while self.slots and self.slots[0][0] is not None and transport is not None:
            data, close = self.slots.popleft()
            transport.write(data)
            if close:
                self.close()
                return
        if not self.slots:
            self.idle_since = self.loop.time()
            if self.closing:
                self.close()
            elif self.handing is not None:
                self._handoff()
                return
        self._reading()

    def _close_after_answers(self) -> None:
        self.closing = True
        self.state = DISCARD
        if not self.slots:
            self.close()
        else:
            self._reading()

    def _fail(self, status: int, message: str) -> None:
        """A connection that cannot go on: answer after what is queued, then close."""
        self.closing = True
        self.state = DISCARD
        self.slots.append([self._bytes(status, _dumps({"error": message}).encode(), False), True])
        self._flush()

    def close(self) -> None:
        if self.state != GONE and self.transport is not None:
            self.state = GONE
            self.transport.close()
        self.server.connections.discard(self)

    def _reading(self) -> None:
        """Read while the client reads its answers and few are queued, else pause."""
        if self.transport is None or self.state == GONE:
            return
        pause = (
            self.paused_write
            or len(self.slots) >= MAX_PIPELINE
            or self.closing
            or self.handing is not None
        )
        if pause != self.paused_read:
            self.paused_read = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # -- timeouts ----------------------------------------------------------------------

    def check(self, now: float) -> None:
        """The sweep: a head not complete `keepalive_s` after the connection went idle is
        closed; a body behind its pace (net/bodies.py BodyPace) gets 408 and is closed."""
        if self.state == HEAD and not self.slots and self.handing is None:
            if now - self.idle_since > self.server.keepalive_s:
                self.close()
        elif self.state in (BODY, DISCARD) and not self.closing:
            if now <= self.body_start + GRACE_S + self.size / MIN_RATE:
                return
            if self.state == DISCARD:
                self._close_after_answers()
                return
            exc = RequestTimeout(
                f"request body: arrived too slowly (a body must start within"
                f" {GRACE_S:.0f} s and keep up {MIN_RATE // 1024} KiB/s)"
            )
            self._fail(exc.status, str(exc))

    # -- the rest: aiohttp ---------------------------------------------------------------

    def _handoff(self) -> None:
        """Give the connection, and this request's bytes so far, to an aiohttp protocol of
        the same app; once what is queued here is written."""
        if self.handing is None:
            raw = b"".join(self.raw or [self.chunk])
            if self.raw_at is None:  # it began after another request in the same chunk
                at = raw.find(self.parser.get_method() + b" " + self.url)
                raw = raw[max(at, 0) :]
            self.handing = raw
            self.raw = None
        if self.slots:
            self._reading()  # paused until the answers ahead of it are written
            return
        transport = self.transport
        assert transport is not None
        raw, self.handing = self.handing, None
        self.state = GONE
        self.server.connections.discard(self)
        proto = self.server.fallback()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        if raw:
            proto.data_received(raw)
        if self.paused_read:
            transport.resume_reading()
