"""Reading request and response bodies within a size limit and a pace, and JSON objects.

`StreamReader.read(n)` returns whatever chunk has arrived, not the whole body, so a body
split across TCP segments would be cut short; every bounded read goes through here.

Why a pace and not a fixed deadline: aiohttp bounds how long a request head may take
(the keep-alive timeout) but not its body, so a client that sends a head and then a byte
every few seconds held a connection and its handler for ever (slowloris). A fixed deadline
would also cut off a large upload on a slow but honest line. So a body has `GRACE_S` to
get going and must then keep arriving at `MIN_RATE` bytes a second on average; a stalled
or trickling body gets 408 and its connection is closed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any, TypeVar

import aiohttp
from aiohttp import web

from hashmesh.node.errors import (
    RETRY_AFTER_S,
    HashmeshError,
    NodeError,
    PayloadTooLarge,
    RequestTimeout,
    ServiceBusy,
    UnsupportedEncoding,
)

MAX_JSON_BODY = 16 * 1024 * 1024  # the operator API's JSON requests
GRACE_S = 15.0
MIN_RATE = 64 * 1024  # bytes per second, averaged from the start of the body
_BODY_KEY: web.RequestKey[bytes] = web.RequestKey("hashmesh.body", bytes)
T = TypeVar("T")


def refuse_encoded(request: web.Request) -> None:
    """No client of this node compresses request bodies, and aiohttp would inflate them as
    they arrive: a 31 KB gzip body is 31 MB in memory. So only identity is accepted."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedEncoding(
            f"Content-Encoding {encoding[:40]!r} is not accepted; send the body uncompressed"
        )


def error_json(request: web.Request, exc: HashmeshError) -> web.Response:
    """The JSON error for a refusal; the connection is closed if the body was left unread,
    so aiohttp does not spend its lingering time draining it."""
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    response = web.json_response({"error": str(exc)}, status=exc.status, headers=headers)
    if not request.content.is_eof():
        response.force_close()
    return response


@web.middleware
async def encoding_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every route refuses encoded request bodies (415) before its handler reads a byte."""
    if request.body_exists:
        try:
            refuse_encoded(request)
        except UnsupportedEncoding as exc:
            return error_json(request, exc)
    return await handler(request)


class ByteBudget:
    """Bytes that bodies not yet authenticated may hold, summed over all requests.

    A body's signature can only be checked once all of it is read, so each body is charged
    as its chunks arrive and released once it is verified or refused: the memory that
    unauthenticated callers can make the node hold is this limit, however many connect."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def hold(self) -> BudgetHold:
        return BudgetHold(self)


class BudgetHold:
    """One request's share of a ByteBudget; a context manager that gives it back on exit."""

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.held = 0

    def take(self, size: int) -> None:
        self.check(size)
        self.budget.used += size
        self.held += size

    def check(self, size: int) -> None:
        """Refuse now a body that cannot fit, rather than after reading part of it."""
        if self.budget.used + size > self.budget.limit:
            raise ServiceBusy(
                f"too many unauthenticated request bytes in flight (limit "
                f"{self.budget.limit // (1024 * 1024)} MiB); retry in {RETRY_AFTER_S} s"
            )

    def release(self) -> None:
        self.budget.used -= self.held
        self.held = 0

    def __enter__(self) -> BudgetHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class BodyPace:
    """The deadline of a body that is read in pieces: `GRACE_S + received / MIN_RATE`."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.start = time.monotonic()
        self.received = 0

    async def next(self, read: Awaitable[T]) -> T:
        """Await one piece of the body (bytes, or a multipart part) within its pace."""
        budget = self.start + GRACE_S + self.received / MIN_RATE - time.monotonic()
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                piece = await read
        except TimeoutError:
            raise RequestTimeout(
                f"{self.what}: arrived too slowly (a body must start within {GRACE_S:.0f} s"
                f" and keep up {MIN_RATE // 1024} KiB/s)"
            ) from None
        if isinstance(piece, bytes | bytearray):
            self.received += len(piece)
        return piece


async def read_limited(
    stream: aiohttp.StreamReader,
    limit: int,
    what: str,
    too_large: type[NodeError] = PayloadTooLarge,
    hold: BudgetHold | None = None,
) -> bytes:
    """The whole body, refused with `too_large` as soon as it passes `limit` (or with 503
    when `hold`'s budget runs out)."""
    pace = BodyPace(what)
    chunks: list[bytes] = []
    size = 0
    while chunk := await pace.next(stream.readany()):
        size += len(chunk)
        if size > limit:
            raise too_large(f"{what}: larger than {limit} bytes")
        if hold is not None:
            hold.take(len(chunk))
        chunks.append(chunk)
    return b"".join(chunks)


async def request_body(
    request: web.Request,
    limit: int,
    what: str = "request body",
    too_large: type[NodeError] = PayloadTooLarge,
    hold: BudgetHold | None = None,
) -> bytes:
    """The request's body, read once (paced and bounded) and kept for whoever asks next.

    A declared Content-Length over `limit`, or one that `hold`'s budget cannot take now,
    and an encoded body are refused before a byte is read."""
    cached: bytes | None = request.get(_BODY_KEY)
    if cached is None:
        refuse_encoded(request)
        declared = request.content_length
        if declared is not None and declared > limit:
            raise too_large(f"{what}: larger than {limit} bytes")
        if hold is not None and declared is not None:
            hold.check(declared)
        cached = await read_limited(request.content, limit, what, too_large, hold)
        request[_BODY_KEY] = cached
    return cached


async def spool_body(
    request: web.Request,
    spool: IO[bytes],
    limit: int,
    what: str,
    too_large: type[NodeError] = PayloadTooLarge,
) -> int:
    """Copy the request's body to `spool` (paced, bounded, never encoded) and rewind it:
    for bodies too large to hold in memory, parsed from disk afterwards. An empty body is
    refused: every route that spools expects content."""
    refuse_encoded(request)
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(f"{what}: larger than {limit} bytes")
    size = 0
    pace = BodyPace(what)
    while chunk := await pace.next(request.content.readany()):
        size += len(chunk)
        if size > limit:
            raise too_large(f"{what}: larger than {limit} bytes")
        spool.write(chunk)
    if size == 0:
        raise NodeError(f"{what}: empty")
    spool.seek(0)
    return size


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise NodeError("request body: not valid JSON") from None
    if not isinstance(value, dict):
        raise NodeError("request body: expected a JSON object")
    return value
