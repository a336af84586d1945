"""The per-peer statement budget at its real size, over HTTP to a real node process: a
peer that pushes MAX_STATEMENTS_PER_PEER certificates of throw-away keys gets every further
one refused and its misbehaviour score raised, another peer's certificate still goes in,
and a revocation of a key the node trusts still goes in from the peer that is over its
budget (node/statements.py, REVOCATION_RESERVE)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import author_key
from hostile_peer import HostilePeer
from netnodes import NodeProc, NodeSet, wait_for

from hashmesh.node.config import Home
from hashmesh.node.service import NodeService
from hashmesh.node.statements import MAX_STATEMENTS_PER_PEER
from hashmesh.protocol.certificates import CertBody, KeyRevokeBody
from hashmesh.protocol.encoding import canonical, from_b64url
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.peerauth import H_FROM, H_NONCE, sign_response
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import sign_statement
from hashmesh.protocol.statementsync import (
    MAX_INDEX_PAGE,
    IndexPage,
    decode_push_answer,
    encode_index_page,
    encode_statements,
    parse_fetch,
    parse_index_request,
)

C = "csam"
PUSH = "/v1/peer/statements/push"
ORG, TRUSTED = author_key(60), author_key(61)


def junk(n: int, start: int) -> list[Any]:
    org = SigningKey(b"\x07" * 32)
    out = []
    for i in range(start, start + n):
        key = SigningKey(i.to_bytes(32, "big")).node_id
        body = CertBody(ts=1, org=org.node_id, key=key, not_before=0, not_after=2**40)
        out.append(sign_statement(body, [org], REGISTRY).to_json())
    return out


def push(peer: HostilePeer, statements: list[Any]) -> int:
    reply = peer.send(PUSH, encode_statements(statements))
    assert reply.status == 200, reply.body
    return decode_push_answer(reply.body)


def peer_state(node: NodeProc, peer: HostilePeer) -> dict[str, Any]:
    found: dict[str, Any] = next(p for p in node.status()["peers"] if p["node_id"] == peer.node_id)
    return found


@pytest.mark.slow  # 25,000 statements signed here and verified by the node: 30-60 s
def test_a_peer_past_its_budget_is_refused_and_scored_and_revocations_still_go_in(
    nodes: NodeSet, tmp_path: Path
) -> None:
    (hub,) = nodes.make("hub")
    x = HostilePeer("x", hub, hub.node_id)
    y = HostilePeer("y", hub, hub.node_id)
    for peer in (x, y):
        hub.cli("peer", "add", peer.name, "http://127.0.0.1:9", peer.node_id, "--share", C)
    hub.cli("trust", "add", ORG.node_id, C, "--kind", "org")
    hub.start()

    step = 200  # the most one push carries
    for start in range(0, MAX_STATEMENTS_PER_PEER, step):
        assert push(x, junk(step, start)) == step
    assert peer_state(hub, x)["score"] == 0
    assert push(x, junk(10, MAX_STATEMENTS_PER_PEER)) == 0  # past its budget
    state = peer_state(hub, x)
    assert state["refused"].get("statement_cap") == 1 and state["score"] > 0

    # another peer has its own budget: its certificate of a key we trust goes in
    cert = CertBody(ts=1, org=ORG.node_id, key=TRUSTED.node_id, not_before=0, not_after=2**40)
    assert push(y, [sign_statement(cert, [ORG, TRUSTED], REGISTRY).to_json()]) == 1
    # and the peer over its budget can still tell us that key is revoked
    body = KeyRevokeBody(
        ts=2, org=ORG.node_id, key=TRUSTED.node_id, collection="*", after=3, reason="stolen"
    )
    assert push(x, [sign_statement(body, [ORG], REGISTRY).to_json()]) == 1
    wait_for(
        lambda: any(
            r["key"] == TRUSTED.node_id and r["effective"] for r in hub.status()["revoked_keys"]
        )
    )
    assert peer_state(hub, x)["refused"].get("statement_cap") == 1  # not refused, not scored


class StatementServer:
    """A peer the victim pulls statements from, holding `objects` (wire objects): it
    answers the statement index (pages of 2,000) and fetch routes, each answer signed as
    the peer, and 404 elsewhere (so the victim's batch sync finds nothing)."""

    def __init__(self, peer: HostilePeer, objects: list[Any]) -> None:
        wires = {}
        for obj in objects:
            wire = canonical(obj)
            wires[hashlib.sha256(from_b64url(obj["body"], "body")).hexdigest()] = wire
        self.wires = dict(sorted(wires.items()))
        self.index = [(i, hashlib.sha256(w).hexdigest()) for i, w in self.wires.items()]
        self.fetched = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                status, out = server.answer(self.path, body)
                headers = sign_response(
                    peer.key, self.headers[H_FROM], self.headers[H_NONCE], status, out
                )
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, body: bytes) -> tuple[int, bytes]:
        if path == "/v1/peer/statements/index":
            ask = parse_index_request(body)
            rest = [e for e in self.index if e[0] > ask.after]
            page = IndexPage("0" * 64, False, rest[:MAX_INDEX_PAGE], len(rest) > MAX_INDEX_PAGE)
            return 200, encode_index_page(page)
        if path == "/v1/peer/statements/fetch":
            ids = parse_fetch(body)
            self.fetched += len(ids)
            objects = [json.loads(self.wires[i]) for i in ids if i in self.wires]
            return 200, encode_statements(objects)
        return 404, b'{"error": "not found"}'

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow  # 25,050 statements signed here, then pulled and verified: 40-90 s
def test_a_pull_past_the_budget_is_counted_not_scored(nodes: NodeSet, tmp_path: Path) -> None:
    """A peer holding more statements than one peer may deliver: the hub that pulls from it
    stores MAX_STATEMENTS_PER_PEER of them, counts the refusal (statement_cap), ends that
    peer's statement pull for the round and does not score it (it only answered what the
    hub asked)."""
    (hub,) = nodes.make("hub")
    big = HostilePeer("big", hub, hub.node_id)
    server = StatementServer(big, junk(MAX_STATEMENTS_PER_PEER + 50, 0))
    try:
        hub.cli("peer", "add", "big", server.url, big.node_id, "--share", C)
        hub.start()
        wait_for(lambda: peer_state(hub, big)["refused"].get("statement_cap", 0) >= 1, 300)
        state = peer_state(hub, big)
        assert state["score"] == 0 and not state["cut_off"]
        hub.stop()
    finally:
        server.close()
    held = NodeService(Home(hub.home))
    try:
        assert held.statements.held_from(f"peer:{big.node_id}") == MAX_STATEMENTS_PER_PEER
    finally:
        held.close()
