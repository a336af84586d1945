"""What a configured peer may learn and make a node keep: a sync answer says nothing about
collections outside the peer's share list, and fork evidence is kept and relayed only about
logs the node accepts (a throw-away key's forks cost the sender score, not our disk)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hostile_peer import HostilePeer
from netnodes import NodeProc, both_ways, wait_for
from test_hostile import api, peer_state

from hashmesh.node.config import Home, Peer, Trust
from hashmesh.protocol.encoding import b64url, canonical
from hashmesh.protocol.evidence import SignedHeader, build_evidence
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.sync import decode_page, encode_sync_request

MD5 = "%032x"
DEAD = "http://127.0.0.1:9"


@dataclass
class Scene:
    victim: NodeProc
    relay: NodeProc
    evil: HostilePeer
    law: SigningKey


@pytest.fixture
def scene(tmp_path: Path) -> Iterator[Scene]:
    """A victim holding `csam` and `le-only` logs, a hostile peer that shares only `csam`,
    and a relay node that would receive any evidence the victim gossips."""
    victim = NodeProc(tmp_path, "victim")
    relay = NodeProc(tmp_path, "relay")
    evil = HostilePeer("evil", victim, victim.node_id)
    law = SigningKey(os.urandom(32))
    home = Home(victim.home)
    config = home.load_config()
    config.add_peer(Peer(name="evil", url=DEAD, node_id=evil.node_id, share=["csam"]))
    config.add_trust(Trust(node_id=evil.node_id, collection="csam"))
    config.add_trust(Trust(node_id=law.node_id, collection="le-only"))
    home.save_config(config)
    victim.peer(relay, "csam")
    relay.peer(victim, "csam")
    relay.cli("trust", "add", evil.node_id, "csam", "--name", "evil")
    victim.start()
    relay.start()
    for collection, n in (("csam", 1), ("le-only", 2)):
        status, body = api(
            victim,
            "POST",
            "/v1/signals",
            {"type": "md5", "value": MD5 % n, "collection": collection},
        )
        assert status == 200, body
    yield Scene(victim, relay, evil, law)
    evil.close()
    victim.kill()
    relay.kill()


def _sync(evil: HostilePeer, collections: list[str], offer: list[str]) -> bytes:
    reply = evil.send("/v1/peer/sync", encode_sync_request({}, collections, offer))
    assert reply.status == 200, reply.body
    return reply.body


def test_sync_answer_about_an_unshared_collection_equals_one_about_none(scene: Scene) -> None:
    base = _sync(scene.evil, ["csam"], ["csam"])
    assert any(k.collection == "csam" for k in decode_page(base).vector)
    for wanted in (["le-only"], ["csam", "le-only"]):
        for offer in ([], ["le-only"], ["csam", "le-only"]):
            asked = _sync(scene.evil, wanted, offer)
            absent = [c.replace("le-only", "no-such") for c in wanted]
            control = _sync(scene.evil, absent, [c.replace("le-only", "no-such") for c in offer])
            assert asked == control, (wanted, offer, decode_page(asked))
            page = decode_page(asked)
            assert "le-only" not in page.accept
            assert not any(k.collection == "le-only" for k in page.vector)


def _fork(key: SigningKey, evil: HostilePeer, collection: str, seq: int = 1) -> str:
    prev = None if seq == 1 else bytes([seq]) * 32
    a = evil.chain(collection, [seq * 10], first_seq=seq, prev=prev, key=key)[0]
    b = evil.chain(collection, [seq * 10 + 1], first_seq=seq, prev=prev, key=key)[0]
    evidence = build_evidence(
        SignedHeader(a.header_bytes, a.signature), SignedHeader(b.header_bytes, b.signature)
    )
    return b64url(evidence.to_bytes())


def _forks(node: NodeProc) -> list[dict[str, Any]]:
    return list(api(node, "GET", "/v1/status")[1]["forks"])


def test_evidence_about_logs_not_accepted_is_dropped_and_scored(scene: Scene) -> None:
    throwaway = SigningKey(os.urandom(32))
    junk = [_fork(throwaway, scene.evil, "csam", seq) for seq in range(1, 6)]
    before = peer_state(scene.victim, "evil")["score"]
    reply = scene.evil.send("/v1/peer/evidence", canonical({"evidence": junk}))
    assert reply.status == 200 and reply.json()["new"] == 0
    assert _forks(scene.victim) == []
    assert peer_state(scene.victim, "evil")["score"] > before
    assert peer_state(scene.victim, "evil")["refused"].get("unaccepted_evidence") == 1

    # Evidence about the trusted author's real fork is still kept and gossiped, and the
    # throw-away key's never follows it to the relay.
    real = _fork(scene.evil.key, scene.evil, "csam")
    reply = scene.evil.send("/v1/peer/evidence", canonical({"evidence": [real]}))
    assert reply.status == 200 and reply.json()["new"] == 1
    assert [f["author"] for f in _forks(scene.victim)] == [scene.evil.node_id]
    wait_for(lambda: len(_forks(scene.relay)) == 1)
    both_ways(scene.victim, scene.relay)  # rounds begun after the relay had the real fork
    assert [f["author"] for f in _forks(scene.relay)] == [scene.evil.node_id]


def test_evidence_is_bounded_per_log_and_per_message(scene: Scene) -> None:
    many = [_fork(scene.evil.key, scene.evil, "csam", seq) for seq in range(1, 21)]
    reply = scene.evil.send("/v1/peer/evidence", canonical({"evidence": many}))
    assert reply.status == 200 and reply.json()["new"] == 8
    assert len(_forks(scene.victim)) == 8
    assert peer_state(scene.victim, "evil")["refused"].get("evidence_cap") == 12
    big = canonical({"evidence": [many[0]] * 101})
    reply = scene.evil.send("/v1/peer/evidence", big)
    assert reply.status == 400 and reply.error.startswith("evidence: ")
