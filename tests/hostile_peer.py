"""A peer that speaks the hashmesh protocol and lies: the attacker of tests/test_hostile.py.

It holds a real Ed25519 key that the victim lists as a peer (so its requests authenticate),
and builds on demand everything a misbehaving or compromised node could send: forged
batch signatures, broken chains, forks, replayed requests, stale timestamps, batches for
collections it may not write, oversized and deeply nested bodies, slowloris connections,
request floods, and (as a server the victim pulls from) sync pages that lie.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from hashmesh.protocol.batches import Batch, build_batch
from hashmesh.protocol.peerauth import H_FROM, H_NONCE, sign_request, sign_response
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.sync import encode_page

MD5 = "%032x"


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> str:
        return str(self.json().get("error", ""))


class HasUrl(Protocol):
    @property
    def url(self) -> str: ...


class HostilePeer:
    """One attacking identity aimed at one victim (`url`, `node_id`).

    The victim may be given as a node whose URL is known only once it has started (its
    port is read back then): its identity is needed earlier, for the victim's config."""

    def __init__(
        self, name: str, victim: str | HasUrl, victim_id: str, seed: bytes | None = None
    ) -> None:
        self.name = name
        self.key = SigningKey(seed or os.urandom(32))
        self._victim = victim
        self.victim_id = victim_id
        self._conn: http.client.HTTPConnection | None = None

    @property
    def victim_url(self) -> str:
        return self._victim if isinstance(self._victim, str) else self._victim.url

    @property
    def host(self) -> str:
        return self.victim_url.removeprefix("http://").split(":")[0]

    @property
    def port(self) -> int:
        return int(self.victim_url.rsplit(":", 1)[1])

    @property
    def node_id(self) -> str:
        return self.key.node_id

    # -- requests --------------------------------------------------------------------------

    def headers(
        self,
        path: str,
        body: bytes,
        *,
        ts: int | None = None,
        nonce: bytes | None = None,
        key: SigningKey | None = None,
    ) -> dict[str, str]:
        ts = int(time.time() * 1000) if ts is None else ts
        return sign_request(
            key or self.key, self.victim_id, "POST", path, body, ts, nonce or os.urandom(16)
        )

    def send(
        self, path: str, body: bytes, headers: dict[str, str] | None = None, **sign: Any
    ) -> Reply:
        """POST on one kept-alive connection (floods need it); headers as given if given."""
        if headers is None:
            headers = self.headers(path, body, **sign)
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self._conn.request("POST", path, body=body, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
                return Reply(response.status, data, dict(response.getheaders()))
            except (ConnectionError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- lies ------------------------------------------------------------------------------

    def chain(
        self,
        collection: str,
        values: list[int],
        first_seq: int = 1,
        prev: bytes | None = None,
        key: SigningKey | None = None,
    ) -> list[Batch]:
        """Validly signed consecutive batches, one add each (values -> md5 values)."""
        out = []
        for n, v in enumerate(values):
            ops = [{"op": "add", "type": "md5", "value": MD5 % v, "category": "csam"}]
            batch = build_batch(
                key or self.key, collection, first_seq + n, prev, int(time.time() * 1000), ops
            )
            out.append(batch)
            prev = batch.hash
        return out

    @staticmethod
    def forge_signature(batch: Batch) -> bytes:
        """The frame with one bit of its signature flipped: a forgery of the author."""
        sig = bytearray(batch.signature)
        sig[7] ^= 0x40
        return Batch(
            batch.header,
            batch.header_bytes,
            bytes(sig),
            batch.ops_bytes,
            batch.ops,
            batch.leaf_hashes,
        ).to_bytes()

    @staticmethod
    def swap_ops(batch: Batch, other: Batch) -> bytes:
        """A valid header and signature carrying another batch's ops (Merkle root mismatch)."""
        return Batch(
            batch.header,
            batch.header_bytes,
            batch.signature,
            other.ops_bytes,
            other.ops,
            other.leaf_hashes,
        ).to_bytes()

    @staticmethod
    def nested_json(depth: int) -> bytes:
        return b"[" * depth + b"]" * depth

    # -- slow and many ---------------------------------------------------------------------

    def slowloris(
        self,
        count: int,
        stop: threading.Event,
        body: bool = False,
        path: str = "/v1/peer/batches",
        headers: str = "",
        length: int = 100_000,
    ) -> tuple[list[socket.socket], threading.Thread]:
        """Open `count` connections that each send a few bytes a second and never finish:
        a request head that never ends, or (body=True) a complete head for `path` (with
        extra `headers` lines) whose body trickles."""
        socks = []
        for _ in range(count):
            s = socket.create_connection((self.host, self.port), timeout=5)
            if body:
                if "content-type:" not in headers.lower():
                    headers += "Content-Type: application/octet-stream\r\n"
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{headers}"
                    f"Content-Length: {length}\r\n\r\n"
                )
            else:
                head = f"POST /v1/peer/sync HTTP/1.1\r\nHost: {self.host}\r\nX-Slow: "
            s.sendall(head.encode())
            socks.append(s)

        def trickle() -> None:
            while not stop.wait(1.0):
                for s in socks:
                    try:
                        s.send(b"aa")
                    except OSError:
                        pass

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        return socks, thread

    def flood(self, path: str, body: bytes, count: int) -> Iterator[int]:
        for _ in range(count):
            yield self.send(path, body).status


class LiarServer:
    """The hostile peer as a server the victim pulls from: every sync page it answers is
    validly signed (the response signature verifies) but its content lies.

    mode "more": a page that says more=true for ever, repeating frames the victim already
    holds (a peer that would keep the victim paging without end);
    mode "forged": a page carrying a batch with a forged author signature.
    """

    def __init__(self, peer: HostilePeer, frames: list[bytes], mode: str) -> None:
        self.peer, self.frames, self.mode = peer, frames, mode
        self.requests = 0
        liar = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(length)
                # an older peer: version 1 pages, and no statements
                if self.path == "/v1/peer/reconcile" or "/statements/" in self.path:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                liar.requests += 1
                body = encode_page({}, liar.frames, more=liar.mode == "more")
                headers = sign_response(
                    liar.peer.key, self.headers[H_FROM], self.headers[H_NONCE], 200, body
                )
                self.send_response(200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def raw_post(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str],
    body: bytes,
    *,
    length: int | None = None,
    repeat: int = 1,
    timeout: float = 5.0,
) -> tuple[Reply, bool]:
    """POST over a raw socket: declare `length` bytes (default the whole body) and send
    `body` `repeat` times from a thread while the answer is awaited, so an answer that
    comes before the body is complete can be seen. Returns the reply and whether the whole
    declared body had been sent when the answer came; socket.timeout if none came."""
    length = len(body) * repeat if length is None else length
    head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock = socket.create_connection((host, port), timeout=timeout)
    sent_all = threading.Event()

    def upload() -> None:
        try:
            sock.sendall(head.encode())
            for _ in range(repeat):
                sock.sendall(body)
            if len(body) * repeat >= length:
                sent_all.set()
        except OSError:
            pass

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    try:
        response = http.client.HTTPResponse(sock)
        response.begin()
        complete = sent_all.is_set()
        data = response.read()
        return Reply(response.status, data, dict(response.getheaders())), complete
    finally:
        sock.close()
        thread.join(timeout=timeout)


class ScriptedServer:
    """The hostile peer as a server whose answers a test scripts: `answer(path)` gives the
    status and body, every answer is signed as the peer (so a 200 passes the victim's
    response check), and the requests it saw are kept by path."""

    def __init__(self, peer: HostilePeer, answer: Any) -> None:
        self.peer, self.answer = peer, answer
        self.seen: dict[str, int] = {}
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                scripted.seen[self.path] = scripted.seen.get(self.path, 0) + 1
                status, body = scripted.answer(self.path)
                headers = sign_response(
                    scripted.peer.key, self.headers[H_FROM], self.headers[H_NONCE], status, body
                )
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
