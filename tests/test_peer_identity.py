"""Peer identity between real node processes (issue 22): a revoked node key is no peer.

A node's peers name it by node id in `[[peers]]`; its requests and responses are signed by
that id's key. A thief with a stolen node.key could pull every collection the peer may
read. Once an org revocation of the key is in force (any collection, any --after), the key
answers for nobody: requests signed by it are refused (403 naming the revocation) and the
node does not call it either, before any operator edits a config.
"""

from __future__ import annotations

import json
from pathlib import Path

from hostile_peer import HostilePeer
from netnodes import NodeSet, link, wait_for
from test_key_compromise import MD5, certify, org_key

from hashmesh.protocol.sync import decode_page, encode_sync_request


def peer_entry(node, name: str) -> dict:  # type: ignore[no-untyped-def]
    return next(p for p in node.status()["peers"] if p["name"] == name)


def test_a_revoked_node_key_is_refused_as_a_peer_both_ways(nodes: NodeSet, tmp_path: Path) -> None:
    a, b = nodes.make("a", "b")
    link(a, b, "csam")
    b.trust(a, "csam")
    _, key_file = org_key(a, tmp_path, "o")
    b.cli("key", "certificate", "add", str(certify(a, key_file, b, tmp_path)))  # co-signed
    for n in (a, b):
        n.start()
    a.cli("add", "md5", MD5 % 1, "-c", "csam")
    wait_for(lambda: b.matches("md5", MD5 % 1))
    wait_for(lambda: len(next(iter(a.status()["certificates"]), {}).get("signers", [])) == 2)
    # the thief holds b's node.key: before the revocation it pulls what b may read
    thief = HostilePeer("thief", a, a.node_id, seed=b.key_seed())
    ask = encode_sync_request({}, ["csam"], [])
    before = thief.send("/v1/peer/sync", ask)
    assert before.status == 200 and len(decode_page(before.body).frames) == 1
    revocation = tmp_path / "revoke.json"
    a.cli(
        "org", "revoke-key", b.node_id, "--after", "0", "--key-file", str(key_file),
        "--collection", "other", "--reason", "node key stolen", "--out", str(revocation),
        home=False,
    )  # fmt: skip
    out = json.loads(a.cli("key", "revocation", "add", str(revocation), "--json").stdout)
    assert out["effective"]
    # a revocation in another collection, after seq 0: still no peer identity any more
    after = thief.send("/v1/peer/sync", ask)
    assert after.status == 403, after.body
    assert "revoked" in after.error and "node key stolen" in after.error
    for path in ("/v1/peer/reconcile", "/v1/peer/statements/index", "/v1/peer/fetch"):
        assert thief.send(path, b"{}").status == 403
    # and a does not call b any more (no push of its batches, no pull): its status says why
    a.cli("add", "md5", MD5 % 2, "-c", "csam")
    entry = wait_for(lambda: (e := peer_entry(a, "b")).get("last_error") and e)
    assert "not called" in entry["last_error"] and "revoked" in entry["last_error"]
    assert entry["current_id"] is None and "node key stolen" in entry["identity_refused"]
    wait_for(lambda: "revoked" in peer_entry(b, "a").get("last_error", ""))
    assert not b.matches("md5", MD5 % 2)
    thief.close()
