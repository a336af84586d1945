"""Reading request and response bodies within a size limit, and JSON objects from them.

`StreamReader.read(n)` returns whatever chunk has arrived, not the whole body, so a body
split across TCP segments would be cut short; every bounded read goes through here.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from .errors import NodeError, PayloadTooLarge


async def read_limited(
    stream: aiohttp.StreamReader,
    limit: int,
    what: str,
    too_large: type[NodeError] = PayloadTooLarge,
) -> bytes:
    """The whole body, refused with `too_large` as soon as it passes `limit`."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large(f"{what}: larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise NodeError("request body: not valid JSON") from None
    if not isinstance(value, dict):
        raise NodeError("request body: expected a JSON object")
    return value
