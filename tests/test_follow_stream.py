"""The follower's stream over real HTTP (an aiohttp server on 127.0.0.1 playing the node):
pages are applied on a thread while the next is parsed, in feed order, and what the node
sent before a bad event lands before the follower gives up on that stream."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

from aiohttp import web

from hashmesh.node.matching.matcher import Matcher
from hashmesh.node.matching.pdq_index import PDQIndex
from hashmesh.node.net.follow import MAX_PAGE_EVENTS, Follower
from hashmesh.node.store.replica import ReplicaStore
from hashmesh.protocol import SigningKey

AUTHOR = SigningKey(bytes([5]) * 32).node_id
GOOD = 2 * MAX_PAGE_EVENTS + 500  # three pages, the last one partial


def _event(cursor: int, entry: dict[str, object]) -> bytes:
    return f"id: {cursor}\ndata: {json.dumps({'cursor': cursor, **entry})}\n\n".encode()


def _stream_body(values: list[str]) -> bytes:
    out = [b"retry: 1000\n\n"]
    for n, value in enumerate(values, 1):
        add = {
            "kind": "add",
            "collection": "csam",
            "op_id": f"{AUTHOR}/csam/{n}/0",
            "author": AUTHOR,
            "type": "pdq",
            "value": value,
            "quality": 100,
            "category": "csam",
            "stances": [],
        }
        out.append(_event(n, add))
    revoke = {
        "kind": "revoke",
        "collection": "csam",
        "op_id": f"{AUTHOR}/csam/{GOOD + 1}/0",
        "author": AUTHOR,
        "target": f"{AUTHOR}/csam/1/0",
        "reason": "",
    }
    out.append(_event(GOOD + 1, revoke))
    out.append(f"id: {GOOD + 2}\ndata: {{not json\n\n".encode())
    return b"".join(out)


async def test_pages_before_a_bad_event_land_in_order(tmp_path: Path) -> None:
    rng = random.Random(7)
    values = [f"{rng.getrandbits(256):064x}" for _ in range(GOOD)]
    body = _stream_body(values)
    streams = 0

    async def state(request: web.Request) -> web.Response:
        return web.json_response({"cursor": GOOD + 2, "grants": [], "authors": {}})

    async def stream(request: web.Request) -> web.StreamResponse:
        nonlocal streams
        streams += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if streams == 1:
            for at in range(0, len(body), 50_000):  # in pieces, as a socket brings them
                await response.write(body[at : at + 50_000])
        else:
            await response.write(b": heartbeat\n\n")
            await asyncio.sleep(30)
        return response

    app = web.Application()
    app.router.add_get("/v1/replica/state", state)
    app.router.add_get("/v1/feed/stream", stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}"

    store = ReplicaStore(tmp_path / "replica")
    follower = Follower(url, "hm_token", store, Matcher(), lambda _: None)
    store.begin_snapshot(url, follower.token_hash, 0)
    store.end_snapshot(0)
    matcher = follower.matcher
    assert isinstance(matcher, Matcher)
    matcher.load(PDQIndex(), 0)
    task = asyncio.create_task(follower.run())
    try:
        for _ in range(600):
            if follower.stats.refused:
                break
            await asyncio.sleep(0.05)
        assert follower.stats.refused == 1, follower.stats
        assert "not JSON" in follower.stats.last_error
        # Everything up to the revocation before the bad event, and nothing after it.
        assert store.cursor == GOOD + 1
        assert matcher.cursor == GOOD + 1
        index = matcher.pdq
        assert len(index) == GOOD - 1
        assert index.query(values[0], 0) == []
        assert [k for k, _ in index.query(values[-1], 0)] != []
        assert store.counts() == {"live": GOOD - 1, "revoked": 1}
    finally:
        follower.stop()
        await asyncio.wait_for(task, timeout=30)
        await runner.cleanup()
        store.close()
