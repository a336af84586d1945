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
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from .errors import NodeError, PayloadTooLarge, RequestTimeout

MAX_JSON_BODY = 16 * 1024 * 1024  # the operator API's JSON requests
GRACE_S = 15.0
MIN_RATE = 64 * 1024  # bytes per second, averaged from the start of the body
_BODY_KEY = "hashmesh.body"
T = TypeVar("T")


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
) -> bytes:
    """The whole body, refused with `too_large` as soon as it passes `limit`."""
    pace = BodyPace(what)
    chunks: list[bytes] = []
    size = 0
    while chunk := await pace.next(stream.readany()):
        size += len(chunk)
        if size > limit:
            raise too_large(f"{what}: larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def request_body(
    request: web.Request,
    limit: int,
    what: str = "request body",
    too_large: type[NodeError] = PayloadTooLarge,
) -> bytes:
    """The request's body, read once (paced and bounded) and kept for whoever asks next.

    A declared Content-Length over `limit` is refused before a byte is read."""
    cached: bytes | None = request.get(_BODY_KEY)
    if cached is None:
        if request.content_length is not None and request.content_length > limit:
            raise too_large(f"{what}: larger than {limit} bytes")
        cached = await read_limited(request.content, limit, what, too_large)
        request[_BODY_KEY] = cached
    return cached


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise NodeError("request body: not valid JSON") from None
    if not isinstance(value, dict):
        raise NodeError("request body: expected a JSON object")
    return value
