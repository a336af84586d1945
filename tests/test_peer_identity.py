"""Peer identity between real node processes (issue 22): a revoked node key is no peer.

A node's peers name it by node id in `[[peers]]`; its requests and responses are signed by
that id's key. A thief with a stolen node.key could pull every collection the peer may
read. Once an org revocation of the key is in force (any collection, any --after), the key
answers for nobody: requests signed by it are refused (403 naming the revocation) and the
node does not call it either, before any operator edits a config.
"""

from __future__ import annotations

import json
import sqlite3
import time
import tomllib
from pathlib import Path

import pytest
from hostile_peer import HostilePeer
from netnodes import NodeProc, NodeSet, later_record_arrives, link, wait_for
from test_key_compromise import MD5, certify, org_key

from hashmesh.node.keys import load_key
from hashmesh.protocol.certificates import CertBody
from hashmesh.protocol.encoding import from_b64url
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.statements import sign_statement
from hashmesh.protocol.sync import decode_page, encode_sync_request


def seed_of(key_file: Path) -> bytes:
    return from_b64url(key_file.read_text().strip().split(":", 1)[1], "seed", 32)


def peer_entry(node, name: str) -> dict:  # type: ignore[no-untyped-def]
    return next(p for p in node.status()["peers"] if p["name"] == name)


def certified_and_synced(a: NodeProc, b: NodeProc, tmp_path: Path) -> Path:
    """a and b running and linked in csam, b's key certified by a's org "o" and co-signed
    (the certificate reached a with both signatures), one add of a's matched on b: the
    org's key file."""
    link(a, b, "csam")
    b.trust(a, "csam")
    _, key_file = org_key(a, tmp_path, "o")
    b.cli("key", "certificate", "add", str(certify(a, key_file, b, tmp_path)))  # co-signed
    for n in (a, b):
        n.start()
    a.cli("add", "md5", MD5 % 1, "-c", "csam")
    wait_for(lambda: b.matches("md5", MD5 % 1))
    wait_for(lambda: len(next(iter(a.status()["certificates"]), {}).get("signers", [])) == 2)
    return key_file


def test_a_revoked_node_key_is_refused_as_a_peer_both_ways(nodes: NodeSet, tmp_path: Path) -> None:
    a, b = nodes.make("a", "b")
    key_file = certified_and_synced(a, b, tmp_path)
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
    assert "IDENTITY REFUSED: key " in a.cli("status").stdout
    wait_for(lambda: "revoked" in peer_entry(b, "a").get("last_error", ""))
    assert not b.matches("md5", MD5 % 2)
    thief.close()


@pytest.mark.slow
def test_identity_rotation_running_and_stopped_needs_no_config_change(
    nodes: NodeSet, tmp_path: Path
) -> None:
    a, b = nodes.make("a", "b")
    link(a, b, "csam")
    b.trust(a, "csam")
    a.trust(b, "csam")
    config = tomllib.loads((b.home / "config.toml").read_text())
    for n in (a, b):
        n.start()
    a.cli("add", "md5", MD5 % 1, "-c", "csam")
    wait_for(lambda: b.matches("md5", MD5 % 1))
    # rotated while running, with the peers syncing every second
    first = json.loads(a.cli("key", "rotate", "--identity", "--json").stdout)
    assert first["previous"] == a.node_id and first["peer_identity"] != a.node_id
    old_file = a.home / f"node.key.old-{a.node_id[8:20]}"
    assert old_file.stat().st_mode & 0o777 == 0o600
    assert (a.home / "node.key").stat().st_mode & 0o777 == 0o600
    a.cli("add", "md5", MD5 % 2, "-c", "csam")  # the same log, the same signing key
    wait_for(lambda: b.matches("md5", MD5 % 2))
    wait_for(lambda: peer_entry(b, "a")["current_id"] == first["peer_identity"])
    # both ways: b's rounds reach a under its new id, a's reach b signed by it
    later_record_arrives(b, a, "csam")
    assert a.status()["peer_identity"] == first["peer_identity"]
    # rotated while stopped: the statement goes out at the next start
    assert a.stop() == 0
    second = json.loads(a.cli("key", "rotate", "--identity", "--json").stdout)
    assert second["previous"] == first["peer_identity"]
    a.start()
    a.cli("add", "md5", MD5 % 3, "-c", "csam")
    wait_for(lambda: b.matches("md5", MD5 % 3))
    wait_for(lambda: peer_entry(b, "a")["current_id"] == second["peer_identity"])
    later_record_arrives(b, a, "csam")
    # no request was refused either way, and b's config still names a by its first id
    assert peer_entry(b, "a")["refused"] == {} and peer_entry(a, "b")["refused"] == {}
    for n in (a, b):  # every failed round, push or gossip is logged with the peer's answer
        logged = (n.home / "run.log").read_text()
        assert "answered 401" not in logged and "answered 403" not in logged, n.name
    after = tomllib.loads((b.home / "config.toml").read_text())
    assert after["trust"] == config["trust"]
    assert [p["node_id"] for p in after["peers"]] == [a.node_id]
    assert f"answers as {second['peer_identity']}" in b.cli("status").stdout
    # an identity key two rotations back answers for nobody (the one just before the
    # current one only for a minute, for requests in flight): a thief with it gets 403
    thief = HostilePeer("thief", b, b.node_id, seed=seed_of(old_file))
    refused = thief.send("/v1/peer/sync", encode_sync_request({}, ["csam"], []))
    assert refused.status == 403 and "handed peer a's identity over to" in refused.error
    thief.close()
    # a remembers that b accepted its current key: a later start introduces nothing again
    # (an old key's push past the minute's grace would be a refusal on b's status)
    assert a.stop() == 0
    with sqlite3.connect(a.home / "hashmesh.db") as db:
        (row,) = db.execute("SELECT value FROM meta WHERE key = 'identity_introduced'")
    assert json.loads(row[0]) == {"key": second["peer_identity"], "peers": [b.node_id]}


@pytest.mark.slow
def test_an_org_replacement_of_a_stolen_key_is_accepted_as_that_peer(
    nodes: NodeSet, tmp_path: Path
) -> None:
    a, b, b2 = nodes.make("a", "b", "b2")
    key_file = certified_and_synced(a, b, tmp_path)
    # b's node.key is stolen: the org revokes it and certifies b2's key as its replacement
    revocation, replacement = tmp_path / "revoke.json", tmp_path / "replace.json"
    a.cli(
        "org", "revoke-key", b.node_id, "--after", "0", "--key-file", str(key_file),
        "--reason", "node key stolen", "--out", str(revocation), home=False,
    )  # fmt: skip
    made = json.loads(
        a.cli(
            "org", "certify", b2.node_id, "--replaces", b.node_id, "--key-file", str(key_file),
            "--out", str(replacement), "--json", home=False,
        ).stdout
    )  # fmt: skip
    assert made["replaces"] == b.node_id
    a.cli("key", "revocation", "add", str(revocation))
    a.cli("key", "certificate", "add", str(replacement))
    entry = wait_for(lambda: (e := peer_entry(a, "b"))["current_id"] == b2.node_id and e)
    assert entry["node_id"] == b.node_id  # a's config is as it was
    # the thief (b's key, still running at b's address) is refused
    thief = HostilePeer("thief", a, a.node_id, seed=b.key_seed())
    assert thief.send("/v1/peer/sync", encode_sync_request({}, ["csam"], [])).status == 403
    thief.close()
    # the new node takes b's place (its address, a fresh home): a accepts it as peer b
    assert b.stop() == 0
    by_thief = peer_entry(a, "b")["refused"]["identity"]  # the thief's requests, refused
    b2._api = b.url  # the replacement listens where b did
    b2.cli("key", "certificate", "add", str(replacement))
    b2.peer(a, "csam")
    b2.trust(a, "csam")
    b2.start()
    wait_for(lambda: b2.matches("md5", MD5 % 1))  # pulled from a, as peer b
    a.cli("add", "md5", MD5 % 2, "-c", "csam")
    wait_for(lambda: b2.matches("md5", MD5 % 2))
    assert peer_entry(a, "b")["refused"] == {"identity": by_thief}  # none of b2's


@pytest.mark.slow
def test_prepared_key_switches_only_with_its_own_valid_certificate(
    nodes: NodeSet, tmp_path: Path
) -> None:
    a, b = nodes.make("a", "b")
    org_id, key_file = org_key(a, tmp_path, "o")
    # nothing prepared yet: refused, exit 2, nothing changed
    cert_a = certify(a, key_file, a, tmp_path)
    none = a.cli("key", "rotate", "--certificate", str(cert_a), check=False)
    assert none.returncode == 2 and "no key is prepared" in none.stderr
    both = a.cli("key", "rotate", "--identity", "--prepare", check=False)
    assert both.returncode == 2 and "give one of them" in both.stderr
    prepared = json.loads(a.cli("key", "rotate", "--prepare", "--json").stdout)["prepared_key"]
    assert (a.home / "signing.key.next").stat().st_mode & 0o777 == 0o600
    again = json.loads(a.cli("key", "rotate", "--prepare", "--json").stdout)
    assert again["prepared_key"] == prepared and again["new"] is False
    # a certificate of another key, and an expired one of the prepared key: exit 2
    wrong = a.cli("key", "rotate", "--certificate", str(cert_a), check=False)
    assert wrong.returncode == 2 and "--certificate: body.key is" in wrong.stderr
    now = int(time.time())
    body = CertBody(
        ts=now, org=org_id, key=prepared, not_before=now - 3 * 86400, not_after=now - 86400
    )
    expired = tmp_path / "expired.json"
    expired.write_bytes(sign_statement(body, [load_key(key_file)], REGISTRY).to_wire())
    old = a.cli("key", "rotate", "--certificate", str(expired), check=False)
    assert old.returncode == 2 and "--certificate: body.not_after" in old.stderr
    assert a.status()["signing_key"] == a.node_id and a.status()["certificates"] == []
    # on a running node, over the admin API: the switch and the certificate in one step,
    # and a peer trusting only the org accepts the next batch with no refusal
    link(a, b, "csam")
    b.cli("trust", "add", org_id, "csam", "--kind", "org")
    a.cli("key", "certificate", "add", str(cert_a))
    for n in (a, b):
        n.start()
    a.cli("add", "md5", MD5 % 1, "-c", "csam")
    wait_for(lambda: b.matches("md5", MD5 % 1))
    # over HTTP the same refusals, and nothing changed
    wrong = a.cli("key", "rotate", "--certificate", str(cert_a), check=False)
    assert wrong.returncode == 2 and "--certificate: body.key is" in wrong.stderr
    old = a.cli("key", "rotate", "--certificate", str(expired), check=False)
    assert old.returncode == 2 and "--certificate: body.not_after" in old.stderr
    assert a.status()["signing_key"] == a.node_id
    good = tmp_path / "good.json"
    a.cli("org", "certify", prepared, "--key-file", str(key_file), "--out", str(good), home=False)
    done = json.loads(a.cli("key", "rotate", "--certificate", str(good), "--json").stdout)
    assert done["signing_key"] == prepared and done["certificate"]
    assert not (a.home / "signing.key.next").exists()
    a.cli("add", "md5", MD5 % 2, "-c", "csam")
    wait_for(lambda: b.matches("md5", MD5 % 2))
    held = {c["key"]: c for c in b.status()["certificates"]}
    assert prepared in held[prepared]["signers"]  # co-signed by the key it certifies
    assert peer_entry(b, "a")["refused"] == {}


@pytest.mark.parametrize("stop_at", ["files", "statement"])
def test_an_identity_rotation_stopped_half_way_is_finished_at_the_next_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop_at: str
) -> None:
    """The chain in the store is the commit point: a node stopped after it (before the key
    files were renamed, or before the statement was stored) finishes both when it opens."""
    from hashmesh.node.config import Home
    from hashmesh.node.service import NodeService, init_home

    init_home(tmp_path / "n", "n", "127.0.0.1:0", None)
    service = NodeService(Home(tmp_path / "n"))
    first = service.key.node_id

    class Stopped(Exception):
        pass

    def stop(*_: object) -> None:
        raise Stopped

    target = "_finish_identity_files" if stop_at == "files" else "_sign_identity_link"
    monkeypatch.setattr(NodeService, target, stop)
    with pytest.raises(Stopped):
        service.key_rotate(identity=True)
    service.close()
    monkeypatch.undo()
    again = NodeService(Home(tmp_path / "n"))
    chain = json.loads(again.store.meta("identity_chain") or "[]")
    assert chain[0] == first and again.key.node_id == chain[1] != first
    assert again.identities.current.resolve(first).current == chain[1]
    assert again.status()["peer_identity"] == chain[1] and again.node_id == first
    assert not (tmp_path / "n" / "node.key.new").exists()
    again.close()


def test_org_certify_replaces_refuses_bad_ids_with_exit_2(nodes: NodeSet, tmp_path: Path) -> None:
    (a,) = nodes.make("a")
    _, key_file = org_key(a, tmp_path, "o")
    out = tmp_path / "r.json"
    base = ("org", "certify", a.node_id, "--key-file", str(key_file), "--out", str(out))
    same = a.cli(*base, "--replaces", a.node_id, home=False, check=False)
    assert same.returncode == 2 and "--replaces: the same key as NODE_ID" in same.stderr
    bad = a.cli(*base, "--replaces", "ed25519:nope", home=False, check=False)
    assert bad.returncode == 2 and "--replaces" in bad.stderr
    assert not out.exists()


def test_after_an_identity_rotation_the_node_cosigns_as_its_new_identity(
    tmp_path: Path,
) -> None:
    """A witness is a node's peer identity: after `key rotate --identity` its cosigns are
    signed by the new key at once, as after the next start, not by the old one until then."""
    from hashmesh.node.config import Home
    from hashmesh.node.service import NodeService, init_home
    from hashmesh.protocol import build_batch
    from hashmesh.protocol.signing import SigningKey

    init_home(tmp_path / "n", "n", "127.0.0.1:0", None)
    service = NodeService(Home(tmp_path / "n"))
    try:
        author = SigningKey(b"\x09" * 32)
        service.trust_add(author.node_id, "csam", "author")
        batch = build_batch(author, "csam", 1, None, 1, [{"op": "add", "type": "md5",
                            "value": MD5 % 7, "category": "csam"}])  # fmt: skip
        assert service.store.ingest(batch, source="peer:x").outcome == "applied"
        first = service.key.node_id
        new = service.key_rotate(identity=True)["peer_identity"]
        assert new != first
        (cosign,) = service.witness.due(10_000.0)
        assert cosign.signers == {new}
    finally:
        service.close()


def test_a_rotation_past_the_chain_bound_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    """Peers follow at most MAX_CHAIN identity links: the rotation after that is refused
    before any key file is made (no signing.key copy, no staged node.key.new)."""
    import json

    from hashmesh.node.config import Home
    from hashmesh.node.errors import NodeError
    from hashmesh.node.service import NodeService, init_home
    from hashmesh.protocol.identity import MAX_CHAIN

    init_home(tmp_path / "n", "n", "127.0.0.1:0", None)
    service = NodeService(Home(tmp_path / "n"))
    try:
        chain = [f"ed25519:{'A' * 42}{n % 10}" for n in range(MAX_CHAIN)] + [service.key.node_id]
        service.store.set_meta("identity_chain", json.dumps(chain))
        before = sorted(p.name for p in (tmp_path / "n").iterdir())
        with pytest.raises(NodeError, match=f"rotated {MAX_CHAIN} times"):
            service.key_rotate(identity=True)
        assert sorted(p.name for p in (tmp_path / "n").iterdir()) == before
        assert json.loads(service.store.meta("identity_chain") or "[]") == chain
    finally:
        service.close()
