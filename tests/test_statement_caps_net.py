"""The per-peer statement budget at its real size, over HTTP to a real node process: a
peer that pushes MAX_STATEMENTS_PER_PEER certificates of throw-away keys gets every further
one refused and its misbehaviour score raised, another peer's certificate still goes in,
and a revocation of a key the node trusts still goes in from the peer that is over its
budget (node/statements.py, REVOCATION_RESERVE)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import author_key
from hostile_peer import HostilePeer
from netnodes import NodeProc, NodeSet, wait_for

from hashmesh.node.statements import MAX_STATEMENTS_PER_PEER
from hashmesh.protocol.certificates import CertBody, KeyRevokeBody
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import sign_statement
from hashmesh.protocol.statementsync import decode_push_answer, encode_statements

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
