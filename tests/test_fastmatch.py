"""The matcher workers' fast HTTP path (web/fastmatch.py): real node processes over 127.0.0.1.

The same requests (hits, misses, policy verdicts, every kind of bad input, refused tokens)
get the same status and JSON from a worker as from the node matching in its own process
(aiohttp's route and middlewares). A policy set on the node changes the workers' verdict
without a restart. And the HTTP a client may send: pipelined requests answered in order,
other routes handed to aiohttp on the same connection, Expect: 100-continue, chunked
bodies, HTTP/1.0, a refused token answered before the body arrives, bounded heads.
"""

from __future__ import annotations

import io
import json
import random
import socket
import time
from typing import Any

import pytest
from conftest import HomeFactory, NodeFactory, NodeProcess, set_config
from PIL import Image
from test_match_workers import get, pdq_hashes, until

from hashmesh.testing import read_runtime

Exchange = tuple[int, Any]


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> Exchange:
    host, port = url.removeprefix("http://").split(":")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"POST /v1/match HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n"
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request.encode() + body)
        status, _, payload = read_response(sock)
    return status, json.loads(payload)


def read_response(sock: socket.socket, buffer: bytearray | None = None) -> tuple[int, str, bytes]:
    """One HTTP/1.1 response with a Content-Length (as both servers send), from `buffer`
    (what was already read past the previous response) and then the socket."""
    data = buffer if buffer is not None else bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {bytes(data)!r}")
        data += chunk
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value)
    body = bytearray(rest)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed mid-body")
        body += chunk
    data[:] = body[length:]
    return status, head.decode("latin-1"), bytes(body[:length])


def exchanges(token: str, md5: list[str], pdq: list[str]) -> list[tuple[bytes, dict[str, str]]]:
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    miss = "%032x" % random.Random(5).getrandbits(128)

    def body(value: Any) -> bytes:
        return json.dumps(value).encode()

    one = body({"queries": [{"type": "md5", "value": md5[0]}]})
    return [
        (one, auth),
        (body({"queries": [{"type": "md5", "value": miss}]}), auth),
        (body({"queries": [{"type": "md5", "value": v} for v in [*md5[:5], miss]]}), auth),
        (body({"queries": [{"type": "pdq", "value": pdq[0]}], "threshold": 31}), auth),
        (body({"queries": [{"type": "md5", "value": md5[1].upper()}], "threshold": 0}), auth),
        (b"", auth),
        (b"not json", auth),
        (b"[1]", auth),
        (body({}), auth),
        (body({"queries": []}), auth),
        (body({"queries": [{"type": "md5", "value": md5[0]}], "colour": 1}), auth),
        (body({"queries": [{"type": "md5", "value": md5[0]}], "threshold": 99}), auth),
        (body({"queries": [{"type": "md5", "value": md5[0]}], "threshold": "2"}), auth),
        (body({"queries": [{"type": "md5", "value": "xyz"}]}), auth),
        (body({"queries": [{"type": "nope", "value": "abc"}]}), auth),
        (body({"queries": [7]}), auth),
        (body({"queries": [{"type": "md5", "value": md5[0]}] * 1001}), auth),
        (one, {**auth, "Content-Encoding": "gzip"}),
        (one, {**auth, "Authorization": "Basic abc"}),
        (one, {**auth, "Authorization": "Bearer"}),
        (one, {**auth, "Authorization": "Bearer not-a-token"}),
        (one, {"Content-Type": "application/json"}),
    ]


def publish(node: NodeProcess, md5: list[str], pdq: list[str]) -> None:
    signals = [{"type": "md5", "value": v} for v in md5] + [
        {"type": "pdq", "value": v} for v in pdq
    ]
    node.call("POST", "/v1/signals/batch", {"collection": "csam", "signals": signals})


def worker_node(home: HomeFactory, start_node: NodeFactory) -> tuple[NodeProcess, str, list[str]]:
    rng = random.Random(18)
    md5 = ["%032x" % rng.getrandbits(128) for _ in range(20)]
    path = home("F")
    set_config(path, match_workers=1)
    node = start_node(path)
    publish(node, md5, pdq_hashes()[:10])
    runtime = read_runtime(path)
    assert runtime is not None
    url = runtime["match"]
    until("the worker healthy", lambda: get(url + "/healthz")[0] == 200)
    return node, url, md5


def test_fast_path_answers_as_the_node_and_follows_its_policy(
    home: HomeFactory, start_node: NodeFactory
) -> None:
    rng = random.Random(18)
    md5 = ["%032x" % rng.getrandbits(128) for _ in range(20)]
    pdq = pdq_hashes()[:10]
    path = home("A")
    alone = start_node(path)
    publish(alone, md5, pdq)
    # A policy that holds every csam hit back for review: its verdict is in the answers.
    alone.call("PUT", "/v1/admin/policy/csam", {"require_review": True})
    reader = alone.call("POST", "/v1/admin/tokens", {"name": "reader", "scopes": ["read"]})
    cases = exchanges(alone.token, md5, pdq)
    cases.append((cases[0][0], {"Authorization": f"Bearer {reader['token']}"}))
    expected = [raw_post(alone.api, body, headers) for body, headers in cases]
    statuses = [status for status, _ in expected]
    assert statuses[:5] == [200] * 5 and expected[0][1]["review_required"] is True
    assert set(statuses[5:17]) == {400} and statuses[17:] == [415, 401, 401, 401, 401, 403]
    assert alone.stop() == 0

    set_config(path, match_workers=1)
    node = start_node(path)
    runtime = read_runtime(path)
    assert runtime is not None
    url = runtime["match"]
    until("the worker healthy", lambda: get(url + "/healthz")[0] == 200)
    got = [raw_post(url, body, headers) for body, headers in cases]
    for case, want, have in zip(cases, expected, got, strict=True):
        assert have == want, case

    # The node's policy change reaches the worker without a restart: the hit now matches.
    hit = cases[0]
    assert raw_post(url, *hit)[1]["matched"] is False
    node.call("PUT", "/v1/admin/policy/csam", {})
    until("the policy reset on the worker", lambda: raw_post(url, *hit)[1]["matched"] is True)
    node.call("PUT", "/v1/admin/policy/csam", {"require_review": True})
    until("the policy set on the worker", lambda: raw_post(url, *hit)[1]["matched"] is False)


def png() -> bytes:
    rng = random.Random(7)
    image = Image.new("RGB", (64, 64))
    image.putdata(
        [(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(4096)]
    )
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def match_request(token: str, value: str, extra: str = "") -> bytes:
    body = json.dumps({"queries": [{"type": "md5", "value": value}]})
    return (
        f"POST /v1/match HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n{body}"
    ).encode()


def test_fast_path_speaks_http_as_aiohttp_did(home: HomeFactory, start_node: NodeFactory) -> None:
    node, url, md5 = worker_node(home, start_node)
    token = node.token
    health = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    missing = f"GET /nope HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()

    # Pipelined: a hit, a miss, health, a route aiohttp answers, then a match again (on
    # the connection aiohttp now holds): all answered, in order.
    with connect(url) as sock:
        sock.sendall(
            match_request(token, md5[0])
            + match_request(token, "0" * 32)
            + health
            + missing
            + match_request(token, md5[1])
        )
        buffer = bytearray()
        answers = [read_response(sock, buffer) for _ in range(5)]
    assert [a[0] for a in answers] == [200, 200, 200, 404, 200]
    first, second, healthz, nope, last = (json.loads(a[2]) for a in answers)
    assert first["results"][0]["matches"][0]["value"] == md5[0]
    assert second["matched"] is False and healthz["ok"] is True
    assert "error" in nope and last["results"][0]["matches"][0]["value"] == md5[1]

    # /v1/match/file (multipart) goes to aiohttp's handler: the image is hashed.
    image = png()
    part = (
        b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--xx--\r\n"
    )
    with connect(url) as sock:
        sock.sendall(
            f"POST /v1/match/file HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary=xx\r\n"
            f"Content-Length: {len(part)}\r\n\r\n".encode()
            + part
        )
        status, _, payload = read_response(sock)
    assert status == 200 and len(json.loads(payload)["hashes"]["md5"]) == 32

    # Expect: 100-continue, then the body; a chunked body; HTTP/1.0 (aiohttp's).
    body = json.dumps({"queries": [{"type": "md5", "value": md5[2]}]}).encode()
    with connect(url) as sock:
        sock.sendall(
            f"POST /v1/match HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Expect: 100-continue\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        status, _, payload = read_response(sock)
        assert status == 200 and json.loads(payload)["matched"] is True
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        sock.sendall(
            f"POST /v1/match HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Transfer-Encoding: chunked\r\n\r\n".encode()
            + chunked
        )
        status, _, payload = read_response(sock)
        assert status == 200 and json.loads(payload)["matched"] is True
    with connect(url) as sock:
        sock.sendall(match_request(token, md5[3]).replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        status, _, payload = read_response(sock)
        assert status == 200 and json.loads(payload)["matched"] is True

    # A refused token is answered at the head: the 10 MB the head announces never come.
    with connect(url) as sock:
        sock.sendall(
            b"POST /v1/match HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n"
            b"Content-Length: 10000000\r\n\r\n{"
        )
        status, head, payload = read_response(sock)
        assert status == 401 and json.loads(payload)["error"] == "unknown or revoked token"
        assert "Connection: close" in head and sock.recv(10) == b""
        # ... and so is a declared body over the bound, before a byte of it.
    with connect(url) as sock:
        sock.sendall(
            f"POST /v1/match HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {17 << 20}\r\n\r\n".encode()
        )
        status, _, payload = read_response(sock)
        assert status == 413 and json.loads(payload)["error"].startswith("request body: larger")
        assert sock.recv(10) == b""
    # A head larger than 64 KiB is refused and closed; a malformed one too.
    with connect(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 70_000)
        status, _, payload = read_response(sock)
        assert status == 431 and json.loads(payload)["error"].startswith("request head")
    with connect(url) as sock:
        sock.sendall(b"POST /v1/match HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n")
        status, _, payload = read_response(sock)
        assert status == 400 and "malformed HTTP request" in json.loads(payload)["error"]

    # /metrics needs a token with the metrics scope, and counts the answers.
    with connect(url) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 401
    with connect(url) as sock:
        sock.sendall(
            f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        )
        status, head, payload = read_response(sock)
    assert status == 200 and "text/plain" in head
    assert 'hashmesh_matcher_matches_total{outcome="answered"}' in payload.decode()


@pytest.mark.slow
def test_slow_clients_are_dropped_by_the_fast_path(
    home: HomeFactory, start_node: NodeFactory
) -> None:
    """A head that never completes is closed after the keep-alive timeout (15 s); a body
    that trickles gets 408 (net/bodies.py's pace); honest matches go on meanwhile."""
    node, url, md5 = worker_node(home, start_node)
    slow_head = connect(url)
    slow_head.sendall(b"POST /v1/match HTTP/1.1\r\nHost: x\r\n")
    slow_body = connect(url)
    slow_body.sendall(
        f"POST /v1/match HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {node.token}\r\n"
        f"Content-Length: 1000\r\n\r\n{{".encode()
    )
    started = time.monotonic()
    try:
        while time.monotonic() - started < 12:
            slow_head.sendall(b"X-A: b\r\n")
            slow_body.sendall(b" ")
            with connect(url) as sock:
                sock.sendall(match_request(node.token, md5[0]))
                assert read_response(sock)[0] == 200
            time.sleep(1)
        slow_body.settimeout(10)
        status, _, payload = read_response(slow_body)
        assert status == 408 and "arrived too slowly" in json.loads(payload)["error"]
        slow_head.settimeout(10)
        assert slow_head.recv(4096) == b""
        assert time.monotonic() - started < 25
    finally:
        slow_head.close()
        slow_body.close()
