"""Peer requests are judged by their headers before their bodies: a caller the node cannot
yet authenticate must not make it hold memory (docs/robustness.md, "Authentication before
the body").

Against a real node on 127.0.0.1: unknown senders, stale timestamps and encoded bodies are
answered before the body has been sent, and many large unverifiable bodies at once keep the
node's peak memory bounded (503 with Retry-After past the budget).
"""

from __future__ import annotations

import gzip
import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostile_peer import HostilePeer, Reply, ScriptedServer, raw_post
from netnodes import NodeProc, peak_rss, wait_for

from hashmesh.node.config import Home, Peer
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.sync import encode_page

PATH = "/v1/peer/batches"
DECLARED = 30 * 1024 * 1024
PREFIX = b"\0" * (64 * 1024)


@pytest.fixture
def victim(tmp_path: Path) -> Iterator[tuple[NodeProc, HostilePeer]]:
    node = NodeProc(tmp_path, "victim")
    peer = HostilePeer("known", node, node.node_id)
    home = Home(node.home)
    config = home.load_config()
    config.add_peer(Peer(name="known", url="http://127.0.0.1:9", node_id=peer.node_id, share=[]))
    home.save_config(config)
    node.start()
    yield node, peer
    peer.close()
    node.kill()


def post(node: NodeProc, path: str, headers: dict[str, str], body: bytes, **kw: int) -> Reply:
    """The answer; socket.timeout before the old node's 408 (15 s) would have come."""
    kw.setdefault("timeout", 12)
    reply, _ = raw_post("127.0.0.1", node.port, path, headers, body, **kw)
    return reply


def test_unknown_sender_is_refused_before_its_body(
    victim: tuple[NodeProc, HostilePeer],
) -> None:
    node, _ = victim
    stranger = HostilePeer("stranger", node, node.node_id)
    headers = stranger.headers(PATH, b"")
    started = time.monotonic()
    # 30 MiB declared, 64 KiB sent: the old node waited for the rest (408 after 15 s).
    reply = post(node, PATH, headers, PREFIX, length=DECLARED)
    assert time.monotonic() - started < 8
    assert reply.status == 403 and "not a peer" in reply.error
    assert reply.headers.get("Connection", "").lower() == "close"
    # A request without any peer headers at all: 401, also before the body.
    reply = post(node, PATH, {}, PREFIX, length=DECLARED)
    assert reply.status == 401 and "missing" in reply.error


def test_stale_timestamp_and_cut_off_are_refused_before_the_body(
    victim: tuple[NodeProc, HostilePeer],
) -> None:
    node, peer = victim
    for ts in (int(time.time() * 1000) - 10 * 60_000, int(time.time() * 1000) + 5 * 60_000):
        started = time.monotonic()
        reply = post(node, PATH, peer.headers(PATH, b"", ts=ts), PREFIX, length=DECLARED)
        assert time.monotonic() - started < 8
        assert reply.status == 401 and "timestamp is" in reply.error, reply
    # Still served when its request is fresh and small.
    assert peer.send(PATH, b"").status == 200


def test_encoded_bodies_are_refused_on_every_route(
    victim: tuple[NodeProc, HostilePeer],
) -> None:
    node, peer = victim
    bomb = gzip.compress(b"\0" * (31 * 1024 * 1024))  # about 31 KB that inflate to 31 MiB
    assert len(bomb) < 64 * 1024
    headers = peer.headers(PATH, b"\0" * (31 * 1024 * 1024))
    # (br and zstd without their libraries installed are refused by aiohttp's parser: 400)
    for encoding in ("gzip", "deflate", "GZIP", "gzip, identity", "x-unknown"):
        reply = post(node, PATH, {**headers, "Content-Encoding": encoding}, bomb)
        assert reply.status == 415 and "Content-Encoding" in reply.error, (encoding, reply)
    token = {"Authorization": f"Bearer {node.admin_token()}", "Content-Encoding": "gzip"}
    signal = gzip.compress(
        json.dumps({"type": "md5", "value": "a" * 32, "collection": "csam"}).encode()
    )
    for path, content_type in (
        ("/v1/signals", "application/json"),
        ("/v1/import", "application/octet-stream"),
        ("/v1/match/file", "multipart/form-data; boundary=xx"),
    ):
        reply = post(node, path, {**token, "Content-Type": content_type}, signal)
        assert reply.status == 415 and reply.json()["error"], (path, reply)
    # Identity is fine.
    reply = post(node, PATH, {**peer.headers(PATH, b""), "Content-Encoding": "identity"}, b"")
    assert reply.status == 200, reply


def test_many_large_unverifiable_bodies_keep_memory_bounded(
    victim: tuple[NodeProc, HostilePeer],
) -> None:
    """Bodies in a configured peer's name with fresh timestamps but signatures that do not
    match them: only reading all of each shows that, so the node must bound how many
    bytes of such bodies it holds at once (64 MiB)."""
    node, peer = victim
    assert node.proc is not None
    pid = node.proc.pid
    before = peak_rss(pid)
    body = os.urandom(16 * 1024 * 1024)
    forger = SigningKey(os.urandom(32))
    replies: list[Reply] = []
    errors: list[BaseException] = []

    def attack() -> None:
        headers = peer.headers(PATH, b"not this body", key=forger)
        headers["X-Hashmesh-From"] = peer.node_id
        try:
            replies.append(post(node, PATH, headers, body, timeout=30))
        except OSError as exc:  # refused and closed mid-upload
            errors.append(exc)

    threads = [threading.Thread(target=attack) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    grown_mib = (peak_rss(pid) - before) / 2**20
    statuses = sorted(r.status for r in replies)
    # 24 x 16 MiB read at once was ~400-800 MiB; the budget holds 64 MiB (plus the copy of
    # a completed body while its signature is checked, and aiohttp's buffers).
    assert grown_mib < 220, (grown_mib, statuses, len(errors))
    assert set(statuses) <= {401, 503}, statuses
    busy = [r for r in replies if r.status == 503]
    assert busy and all(r.headers.get("Retry-After") and r.error for r in busy), statuses
    assert all("does not verify" in r.error for r in replies if r.status == 401)
    # And the node still serves its peer.
    assert peer.send(PATH, b"").status == 200


def _victim_with(tmp_path: Path, answer: Any) -> tuple[NodeProc, ScriptedServer]:
    node = NodeProc(tmp_path, "pusher")
    liar = HostilePeer("liar", node, node.node_id)
    server = ScriptedServer(liar, answer)
    home = Home(node.home)
    config = home.load_config()
    config.add_peer(Peer(name="liar", url=server.url, node_id=liar.node_id, share=["csam"]))
    home.save_config(config)
    node.start()
    return node, server


def _publish(node: NodeProc, n: int) -> None:
    request = urllib.request.Request(
        node.url + "/v1/signals",
        method="POST",
        data=json.dumps(
            {"type": "md5", "value": "%032x" % (0xE0 << 64 | n), "collection": "csam"}
        ).encode(),
        headers={
            "Authorization": f"Bearer {node.admin_token()}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def _liar_state(node: NodeProc) -> dict[str, Any]:
    request = urllib.request.Request(
        node.url + "/v1/status", headers={"Authorization": f"Bearer {node.admin_token()}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        peers = json.loads(response.read())["peers"]
    return next(p for p in peers if p["name"] == "liar")


def test_a_peers_huge_error_text_is_clipped(tmp_path: Path) -> None:
    huge = json.dumps({"error": "x" * (5 * 1024 * 1024)}).encode()
    node, server = _victim_with(tmp_path, lambda path: (500, huge))
    try:
        _publish(node, 1)
        wait_for(
            lambda: (
                server.seen.get("/v1/peer/reconcile", 0) >= 2
                and server.seen.get("/v1/peer/batches", 0) >= 1
            )
        )
        wait_for(lambda: "answered 500" in _liar_state(node)["last_error"])
        error = _liar_state(node)["last_error"]
        assert "answered 500" in error and len(error) <= 600, len(error)
        assert (node.home / "run.log").stat().st_size < 1024 * 1024
    finally:
        node.kill()
        server.close()


def test_a_malformed_push_reply_fails_the_push_not_the_sender(tmp_path: Path) -> None:
    """A 200 whose body is not the JSON object a push answer is: before, the sender task
    died on it and eager push to that peer stopped for good."""
    empty_page = encode_page({}, [], more=False)

    def answer(path: str) -> tuple[int, bytes]:
        if path == "/v1/peer/reconcile":
            return (404, b"")  # an older peer: the node pulls version 1 pages from it
        return (200, empty_page) if path == "/v1/peer/sync" else (200, b"[not json")

    node, server = _victim_with(tmp_path, answer)
    try:
        _publish(node, 1)
        wait_for(lambda: server.seen.get("/v1/peer/batches", 0) >= 1)
        _publish(node, 2)  # the sender is still there: it pushes this one too
        wait_for(lambda: server.seen.get("/v1/peer/batches", 0) >= 2, timeout=10)
        text = (node.home / "run.log").read_text(errors="replace")
        assert "Task exception was never retrieved" not in text
    finally:
        node.kill()
        server.close()
