"""Bounds on the feed's long-lived responses: a revoked token's stream ends at once, open
streams are capped per token, and a snapshot whose client stops reading is cut off (a
stalled reader would otherwise hold its read transaction and grow the WAL without bound).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netnodes import NodeProc
from platform_util import SSE, ok_json, request

from hashmesh.node.web.platform import MAX_STREAMS_PER_TOKEN, SNAPSHOT_IDLE_S, STREAM_RETRY_AFTER_S


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    n = NodeProc(tmp_path_factory.mktemp("bounds"), "hotline")
    n.cli("add", "md5", f"{7:032x}", "-c", "csam", "--category", "csam")
    n.start()
    yield n
    assert n.stop() == 0


def read_token(node: NodeProc, name: str) -> str:
    return node.cli("token", "create", name, "--scope", "read").stdout.strip()


def test_revoking_a_token_ends_its_open_stream(node: NodeProc) -> None:
    token = read_token(node, "revoked-reader")
    stream = SSE(node.url, token, "?heartbeat=300")
    assert stream.status == 200
    assert stream.next_event()[1]["value"] == f"{7:032x}"
    node.cli("token", "revoke", "revoked-reader")
    started = time.monotonic()
    with pytest.raises(EOFError):
        while True:
            stream.next_event(timeout=5)
    assert time.monotonic() - started < 5
    stream.close()
    again = SSE(node.url, token)
    assert again.status == 401
    again.close()


def test_open_streams_are_capped_per_token(node: NodeProc) -> None:
    token = read_token(node, "greedy-reader")
    streams = [SSE(node.url, token, "?heartbeat=300") for _ in range(MAX_STREAMS_PER_TOKEN)]
    try:
        assert [s.status for s in streams] == [200] * MAX_STREAMS_PER_TOKEN
        over = SSE(node.url, token, "?heartbeat=300")
        assert over.status == 429
        assert over.response.getheader("Retry-After") == str(STREAM_RETRY_AFTER_S)
        body = json.loads(over.response.read())
        assert body["limit"] == MAX_STREAMS_PER_TOKEN and body["limit_scope"] == "per_token"
        assert f"limit {MAX_STREAMS_PER_TOKEN}" in body["error"]
        over.close()
        other = SSE(node.url, node.admin_token(), "?heartbeat=300")
        assert other.status == 200
        other.close()
        streams.pop().close()
        deadline = time.monotonic() + 5
        while True:
            retry = SSE(node.url, token, "?heartbeat=300")
            if retry.status == 200 or time.monotonic() > deadline:
                break
            retry.close()
            time.sleep(0.2)
        assert retry.status == 200
        streams.append(retry)
    finally:
        for s in streams:
            s.close()
    assert ok_json(node.url + "/v1/feed", token=token)["entries"]


STALL_SIGNALS = 40_000


@pytest.mark.slow  # waits out the 30 s idle bound: make test-slow
def test_a_snapshot_whose_client_stops_reading_is_cut_off(tmp_path: Path) -> None:
    n = NodeProc(tmp_path, "big")
    lines = tmp_path / "list.txt"
    lines.write_text("".join(f"md5 {i:032x}\n" for i in range(STALL_SIGNALS)))
    n.cli("import-list", "pytx", str(lines), "-c", "csam", "--category", "csam")
    n.start()
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", n.port))
        sock.sendall(
            f"GET /v1/snapshot HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {n.admin_token()}"
            "\r\n\r\n".encode()
        )
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
        time.sleep(SNAPSHOT_IDLE_S + 3)
        sock.settimeout(10)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 20):
                received += chunk
        sock.close()
        assert b'{"end": true' not in received
        assert len(received) < STALL_SIGNALS * 100
        status, data = request(n.url + "/v1/snapshot", token=n.admin_token())
        assert status == 200 and data.rstrip().endswith(b"}")
        assert json.loads(data.splitlines()[-1]) == {"end": True, "count": STALL_SIGNALS}
    finally:
        assert n.stop() == 0
