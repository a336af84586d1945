"""Witnessed log heads between real node processes (issue 22): each node cosigns the head it
verified, cosigns gossip to those who may read the collection, and a split view (an author
showing one batch at seq 1 to one peer and a different one to another) is found from the
cosigns alone: both peers hold seq 1, so their version vectors agree and neither would
ever fetch the other's batch."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from hashlib import sha256
from typing import Any

import pytest
from hostile_peer import HostilePeer
from netnodes import NodeSet, wait_for

from hashmesh.protocol.signing import SigningKey

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
        node.peer(other, C)
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
    # an honest log: its witnesses agree with the author's own copy, and no split view
    b.cli("add", "md5", "0" * 31 + "1", "-c", C, "--category", "csam")
    honest = wait_for(lambda: (r := _witnesses(b, b.node_id))["witnesses"] and r, timeout=30)
    assert [(w["witness"], w["agreement"]) for w in honest["witnesses"]] == [(c.node_id, "same")]
    assert honest["split_views"] == []
