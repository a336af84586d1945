"""Request parsing shared by the operator routes (api.py) and the platform routes
(platform.py), kept below both so neither has to import the other."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hashmesh.node.errors import NodeError
from hashmesh.node.net.bodies import MAX_JSON_BODY, parse_json_object, request_body


async def read_json(request: web.Request) -> dict[str, Any]:
    raw = await request_body(request, MAX_JSON_BODY)
    if not raw:
        raise NodeError("request body: empty; expected a JSON object")
    return parse_json_object(raw)
