"""Witnessed log heads between real node processes (issue 22): each node cosigns the head it
verified, cosigns gossip to those who may read the collection, and a split view (an author
showing one batch at seq 1 to one peer and a different one to another) is found from the
cosigns alone: both peers hold seq 1, so their version vectors agree and neither would
ever fetch the other's batch."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from hashlib import sha256
from typing import Any

import pytest
from hostile_peer import HostilePeer, ScriptedServer
from netnodes import NodeSet, later_record_arrives, wait_for

from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import sign_statement
from hashmesh.protocol.statementsync import encode_statements
from hashmesh.protocol.witness import cosign_body

C = "csam"


def together(*calls: Callable[[], object]) -> None:
    """Run independent setup steps (CLI processes, node starts) at once: each is a
    process start, and one after another they were most of a test's time."""
    with ThreadPoolExecutor(len(calls)) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


def _witnesses(node: Any, author: str) -> dict[str, Any]:
    result: dict[str, Any] = node.json("log", "witnesses", author, C)
    return result


@pytest.mark.slow  # 17-23 s with two node processes on the loaded 2-core machine
def test_a_split_view_is_detected_through_cosigns(nodes: NodeSet) -> None:
    b, c = nodes.make("bnode", "cnode")
    seed = os.urandom(32)
    author = SigningKey(seed).node_id

    def setup(node: Any, other: Any) -> None:
        node.cli("peer", "add", "liar", "http://127.0.0.1:9", author)
        node.cli("trust", "add", author, C, "--name", "liar")
        node.trust(other, C)

    together(lambda: setup(b, c), lambda: setup(c, b))
    together(b.start, c.start)
    to_b = HostilePeer("liar", b, b.node_id, seed)
    to_c = HostilePeer("liar", c, c.node_id, seed)
    shown_b = to_b.chain(C, [1])[0]
    shown_c = to_c.chain(C, [2])[0]
    assert shown_b.seq == shown_c.seq == 1 and shown_b.hash != shown_c.hash
    for peer, batch in ((to_b, shown_b), (to_c, shown_c)):
        reply = peer.send("/v1/peer/batches", batch.to_bytes())
        assert reply.status == 200, reply.body
    # peers only once each holds its history: linked before, b's eager push of its batch
    # could reach c ahead of the liar's, and c would find the fork in sync instead
    together(lambda: b.peer(c, C), lambda: c.peer(b, C))
    head_b, head_c = shown_b.hash.hex(), shown_c.hash.hex()

    def split(node: Any) -> list[dict[str, Any]]:
        views: list[dict[str, Any]] = _witnesses(node, author)["split_views"]
        return views

    views = wait_for(lambda: split(b), timeout=30)
    assert views[0]["seq"] == 1
    heads = {h["head"]: h["witnesses"] for h in views[0]["heads"]}
    assert heads == {head_b: [b.node_id], head_c: [c.node_id]}
    report = _witnesses(b, author)
    assert report["head"] == head_b
    assert {(w["witness"], w["agreement"]) for w in report["witnesses"]} >= {
        (c.node_id, "different")
    }
    # the other side sees it too, and both show it on the status page's data
    wait_for(lambda: split(c), timeout=30)
    status = b.status()
    assert status["witness"]["split_views_total"] >= 1
    assert {h["head"] for h in status["witness"]["split_views"][0]["heads"]} == {head_b, head_c}
    assert sha256(shown_b.header_bytes).hexdigest() == head_b
    # and the split view is proven: c's header fetched from c (or c's proof gossiped)
    (fork,) = wait_for(lambda: _forks_of(b, author), timeout=30)
    assert fork["source"] in (f"witness:{c.node_id}", f"peer:{c.node_id}")
    # an honest log: its witnesses agree with the author's own copy, and no split view
    b.cli("add", "md5", "0" * 31 + "1", "-c", C, "--category", "csam")
    honest = wait_for(lambda: (r := _witnesses(b, b.node_id))["witnesses"] and r, timeout=30)
    assert [(w["witness"], w["agreement"]) for w in honest["witnesses"]] == [(c.node_id, "same")]
    assert honest["split_views"] == []


def _forks_of(node: Any, author: str) -> list[dict[str, Any]]:
    return [f for f in node.status()["forks"] if f["author"] == author]


def _view_of(node: Any, author: str) -> dict[str, Any] | None:
    views = node.status()["witness"]["split_views"]
    return next((v for v in views if v["author"] == author), None)


@pytest.mark.slow  # three node processes and a scripted witness: 25-45 s on the 2-core machine
def test_a_split_view_seen_only_through_cosigns_is_proven_and_freezes_the_log(
    nodes: NodeSet,
) -> None:
    """d never hears the liar: it holds b's history, fetched from b; c, who holds the
    other, becomes d's peer only then, so no batch of c's ever reaches d (at seq 1 both,
    their vectors agree) and d shares nothing with b or c, so neither of them finds the
    fork. d compares c's cosign with its copy, fetches c's header from c, and freezes the
    log on that evidence alone. A witness that pushes a fake cosign about an honest log,
    and cannot back it, freezes nothing: the view is unproven, the witness the suspect."""
    b, c, d = nodes.make("bnode", "cnode", "dnode")
    seed = os.urandom(32)
    author = SigningKey(seed).node_id

    def heard(node: Any) -> None:
        node.cli("peer", "add", "liar", "http://127.0.0.1:9", author)
        node.cli("trust", "add", author, C, "--name", "liar")

    liar_witness = HostilePeer("wit", d, d.node_id)

    def script(path: str) -> tuple[int, bytes]:
        if path == "/v1/peer/header":  # this version's route: it holds no such header
            return 200, b'{"held":false,"v":1}'
        return 404, b'{"error": "no such route"}'

    server = ScriptedServer(liar_witness, script)
    try:

        def third() -> None:
            d.cli("trust", "add", author, C, "--name", "liar")
            d.trust(b, C)
            d.cli("peer", "add", "wit", server.url, liar_witness.node_id, "--share", C)

        together(lambda: heard(b), lambda: heard(c), third)
        b.peer(d, C)  # d may read C from b
        d.peer(b)  # no share: d tells b (and later c) nothing, evidence included
        b.start()  # first: d's start tells the running b its address
        together(c.start, d.start)
        to_b = HostilePeer("liar", b, b.node_id, seed)
        to_c = HostilePeer("liar", c, c.node_id, seed)
        shown_b, shown_c = to_b.chain(C, [1])[0], to_c.chain(C, [2])[0]
        for peer, batch in ((to_b, shown_b), (to_c, shown_c)):
            reply = peer.send("/v1/peer/batches", batch.to_bytes())
            assert reply.status == 200, reply.body
        wait_for(lambda: d.json("log", "witnesses", author, C)["seq"] == 1, timeout=30)
        c.peer(d, C)  # now c's cosign reaches d; its batch never will (both at seq 1)
        d.peer(c)

        (fork,) = wait_for(lambda: _forks_of(d, author), timeout=60)
        assert fork["seq"] == 1
        assert fork["source"] == f"witness:{c.node_id}"  # c's header, fetched from c
        view = _view_of(d, author)
        assert view is not None and view["proof"] == "fork"
        assert {h["head"] for h in view["heads"]} == {shown_b.hash.hex(), shown_c.hash.hex()}
        assert "FORK" in d.cli("status").stdout

        # the lying witness: a cosign of b's honest log at seq 1 with a head nobody signed
        later_record_arrives(b, d, C)  # d holds b's log from seq 1
        fake = sha256(b"a head b never signed").hexdigest()
        body = cosign_body(liar_witness.node_id, b.node_id, C, 1, fake, int(time.time()))
        lie = sign_statement(body, [liar_witness.key], REGISTRY)
        reply = liar_witness.send("/v1/peer/statements/push", encode_statements([lie.to_json()]))
        assert reply.status == 200, reply.body
        unproven = wait_for(
            lambda: (v := _view_of(d, b.node_id)) and v["proof"] == "unproven" and v, timeout=60
        )
        assert unproven["suspects"] == [liar_witness.node_id]
        assert server.seen.get("/v1/peer/header", 0) >= 1  # it was asked, and had nothing
        assert _forks_of(d, b.node_id) == []
        later_record_arrives(b, d, C)  # b's log still takes batches on d
        assert _forks_of(d, b.node_id) == []
        text = d.cli("status").stdout
        assert "UNPROVEN" in text and liar_witness.node_id in text
    finally:
        server.close()
