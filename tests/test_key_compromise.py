"""Org keys and key compromise between real node processes (issue 22).

An org key (`hashmesh org init`, kept outside every node home) certifies node keys; a node
trusting the org (`trust add ORG --kind org`) accepts the batches of keys it certified for
the period certified, and refuses others. A key revocation (`org revoke-key KEY --after N`)
installed on one node reaches every node before the batches it decides on: the key's held
batches after N stop matching (a feed consumer sees their removal) and later ones are
refused everywhere, including on a node that was offline while it spread.
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest
from netnodes import NodeProc, NodeSet, link, wait_for

from hashmesh.node.keys import load_key
from hashmesh.protocol.certificates import CertBody
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.statements import sign_statement

MD5 = "%032x"


def org_key(node: NodeProc, tmp_path: Path, name: str) -> tuple[str, Path]:
    key_file = tmp_path / f"{name}.orgkey"
    out = json.loads(
        node.cli("org", "init", "--key-file", str(key_file), "--json", home=False).stdout
    )
    return out["org_id"], key_file


def certify(node: NodeProc, key_file: Path, subject: NodeProc, tmp_path: Path) -> Path:
    out = tmp_path / f"cert-{subject.name}.json"
    node.cli(
        "org", "certify", subject.node_id, "--key-file", str(key_file), "--out", str(out),
        home=False,
    )  # fmt: skip
    return out


def refused(node: NodeProc, peer: NodeProc, reason: str) -> int:
    """How many batches `node` refused from `peer` for `reason` (its status, running)."""
    for p in node.status()["peers"]:
        if p["node_id"] == peer.node_id:
            return int(p.get("refused", {}).get(reason, 0))
    return 0


def _peer(node: NodeProc, name: str) -> dict[str, object]:
    return dict(next(p for p in node.status()["peers"] if p["name"] == name))


def test_org_init_refuses_a_node_home_and_an_existing_file(nodes: NodeSet, tmp_path: Path) -> None:
    (a,) = nodes.make("a")
    inside = a.cli("org", "init", "--key-file", str(a.home / "org.key"), home=False, check=False)
    assert inside.returncode == 2 and "inside the node home" in inside.stderr
    assert not (a.home / "org.key").exists()
    org_id, key_file = org_key(a, tmp_path, "o")
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert load_key(key_file).node_id == org_id
    again = a.cli("org", "init", "--key-file", str(key_file), home=False, check=False)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_bad_certificate_file_exits_2_and_changes_nothing(nodes: NodeSet, tmp_path: Path) -> None:
    (a,) = nodes.make("a")
    _, key_file = org_key(a, tmp_path, "o")
    cert = certify(a, key_file, a, tmp_path)
    tampered = tmp_path / "bad.json"
    tampered.write_text(cert.read_text().replace('"sigs":[["', '"sigs":[["x'))
    bad = a.cli("key", "certificate", "add", str(tampered), check=False)
    assert bad.returncode == 2 and "statement sigs[0]" in bad.stderr
    wrong = a.cli("key", "revocation", "add", str(cert), check=False)
    assert wrong.returncode == 2 and "a cert statement, not a key-revoke" in wrong.stderr
    assert a.status()["certificates"] == []
    added = json.loads(a.cli("key", "certificate", "add", str(cert), "--json").stdout)
    assert added["outcome"] == "new"
    assert [c["key"] for c in a.status()["certificates"]] == [a.node_id]


@pytest.mark.slow
def test_org_trust_accepts_a_certified_key_and_refuses_others(
    nodes: NodeSet, tmp_path: Path
) -> None:
    hotline, other, expired, platform = nodes.make("hotline", "other", "expired", "platform")
    for n in (hotline, other, expired):
        link(n, platform, "csam")
    org_id, key_file = org_key(platform, tmp_path, "o")
    platform.cli("trust", "add", org_id, "csam", "--kind", "org", "--name", "the-org")
    # hotline's certificate is installed on hotline only: it reaches the platform by gossip
    hotline.cli("key", "certificate", "add", str(certify(platform, key_file, hotline, tmp_path)))
    # expired's certificate ended yesterday
    now = int(time.time())
    body = CertBody(
        ts=now, org=org_id, key=expired.node_id, not_before=now - 3 * 86400,
        not_after=now - 86400,
    )  # fmt: skip
    old = tmp_path / "old-cert.json"
    old.write_bytes(sign_statement(body, [load_key(key_file)], REGISTRY).to_wire())
    expired.cli("key", "certificate", "add", str(old))
    for n in (hotline, other, expired, platform):
        n.start()
    for n, value in ((other, 2), (expired, 3), (hotline, 1)):
        n.cli("add", "md5", MD5 % value, "-c", "csam")
    wait_for(lambda: platform.matches("md5", MD5 % 1))
    # never certified: its log is not wanted; certified, but expired at the header's time:
    # fetched and refused batch by batch
    wait_for(lambda: "other" in {r["sender_name"] for r in platform.status()["refusals"]})
    wait_for(lambda: refused(platform, expired, "certificate-expired") > 0)
    assert not platform.matches("md5", MD5 % 2)
    assert not platform.matches("md5", MD5 % 3)
    certs = platform.status()["certificates"]
    assert {c["key"] for c in certs} == {hotline.node_id, expired.node_id}


@pytest.mark.slow
def test_a_revoked_key_is_refused_everywhere_even_by_a_node_offline_meanwhile(
    nodes: NodeSet, tmp_path: Path
) -> None:
    a, b, c, d = nodes.make("a", "b", "c", "d")
    link(a, b, "csam")
    link(b, c, "csam")
    link(c, d, "csam")
    link(a, d, "csam")  # so that d, back online, is offered the thief's later batch
    for n in (b, c, d):
        n.trust(a, "csam")
    _, key_file = org_key(b, tmp_path, "o")
    a.cli("key", "certificate", "add", str(certify(b, key_file, a, tmp_path)))
    for n in (a, b, c, d):
        n.start()
    a.cli("add", "md5", MD5 % 1, "-c", "csam")  # seq 1: before the theft
    a.cli("add", "md5", MD5 % 2, "-c", "csam")  # seq 2: the thief's
    wait_for(lambda: d.matches("md5", MD5 % 2))
    assert d.stop() == 0
    revocation = tmp_path / "revoke.json"
    b.cli(
        "org", "revoke-key", a.node_id, "--after", "1", "--key-file", str(key_file),
        "--reason", "key stolen", "--out", str(revocation), home=False,
    )  # fmt: skip
    out = json.loads(b.cli("key", "revocation", "add", str(revocation), "--json").stdout)
    assert out["effective"] and out["withdrawn"] == 1
    for n in (b, c):
        wait_for(lambda n=n: not n.matches("md5", MD5 % 2))
        assert n.matches("md5", MD5 % 1)  # before the bound: still the author's word
    # the revoked key is no peer identity either (tests/test_peer_identity.py): b neither
    # calls the thief's node nor answers it, so its later batch has no way in through b
    a.cli("add", "md5", MD5 % 3, "-c", "csam")  # seq 3, after the revocation
    wait_for(lambda: "revoked" in _peer(a, "b").get("last_error", ""))
    assert _peer(b, "a")["current_id"] is None
    d.start()
    wait_for(lambda: not d.matches("md5", MD5 % 2))
    assert d.matches("md5", MD5 % 1)
    revoked = d.status()["revoked_keys"]
    assert [(r["key"], r["after"], r["effective"]) for r in revoked] == [(a.node_id, 1, True)]
    # whatever d took from a before the revocation reached it, a's seq 3 is not d's word
    wait_for(lambda: "revoked" in (_peer(d, "a").get("identity_refused") or ""))
    shown = d.cli("status").stdout
    assert f"REVOKED {a.node_id} in * after seq 1: key stolen" in shown
    # a bundle of d's logs carries the revocation: a node that imports it withdraws too
    bundle = tmp_path / "d.hmb"
    d.cli("export", "-c", "csam", str(bundle))
    verified = json.loads(d.cli("verify", str(bundle), "--json", home=False).stdout)
    assert verified["statements"] == {"cert": 1, "key-revoke": 1}
    for n in (b, c, d):
        assert not n.matches("md5", MD5 % 3)
    for n in (b, c):
        assert [log["head"] for log in n.status()["logs"]] == [2]


@pytest.mark.slow
def test_rotation_mid_stream_needs_no_config_change_and_old_batches_verify(
    nodes: NodeSet, tmp_path: Path
) -> None:
    a, b = nodes.make("a", "b")
    link(a, b, "csam")
    b.trust(a, "csam")
    config = tomllib.loads((b.home / "config.toml").read_text())
    for n in (a, b):
        n.start()
    a.cli("add", "md5", MD5 % 1, "-c", "csam")
    wait_for(lambda: b.matches("md5", MD5 % 1))
    rotated = json.loads(a.cli("key", "rotate", "--json").stdout)
    assert rotated["previous"] == a.node_id
    assert [h["log"] for h in rotated["handovers"]] == [f"{a.node_id}/csam"]
    assert (a.home / "signing.key").stat().st_mode & 0o777 == 0o600
    a.cli("add", "md5", MD5 % 2, "-c", "csam")  # signed by the new key, in a's log
    wait_for(lambda: b.matches("md5", MD5 % 2))
    a.stop()
    a.start()  # the new key is the one it signs with after a restart too
    a.cli("add", "md5", MD5 % 3, "-c", "csam")
    wait_for(lambda: b.matches("md5", MD5 % 3))
    after = tomllib.loads((b.home / "config.toml").read_text())
    # the same trust and the same peer node id (the harness rewrote a's URL: a new port)
    assert after["trust"] == config["trust"]
    assert [p["node_id"] for p in after["peers"]] == [p["node_id"] for p in config["peers"]]
    peer = next(p for p in b.status()["peers"] if p["name"] == "a")
    assert peer["refused"] == {}
    status = b.status()
    assert [log["head"] for log in status["logs"]] == [3]
    assert [(h["key"], h["next"], h["seq"]) for h in status["handovers"]] == [
        (a.node_id, rotated["signing_key"], 1)
    ]
    # the log, its first batch by the old key and the rest by the new, verifies offline
    bundle = tmp_path / "b.hmb"
    b.cli("export", "-c", "csam", str(bundle))
    verified = json.loads(b.cli("verify", str(bundle), "--json", home=False).stdout)
    assert verified["valid"] and verified["batches"] == 3
    assert verified["statements"] == {"handover": 1}


def test_a_certificate_installed_on_one_node_gossips_to_its_peer_only_once(
    nodes: NodeSet, tmp_path: Path
) -> None:
    a, b = nodes.make("a", "b")
    link(a, b, "csam")
    for n in (a, b):
        n.start()
    _, key_file = org_key(a, tmp_path, "o")
    out = json.loads(
        a.cli("key", "certificate", "add", str(certify(a, key_file, a, tmp_path)), "--json").stdout
    )
    wait_for(lambda: [c["id"] for c in b.status()["certificates"]] == [out["id"]])
    (cert,) = b.status()["certificates"]
    assert sorted(cert["signers"]) == sorted([a.node_id, cert["org"]])  # a's co-signature came too
    # installing it again on b changes nothing: the same statement, the same signatures
    again = b.cli("key", "certificate", "add", str(tmp_path / "cert-a.json"), "--json")
    assert json.loads(again.stdout)["outcome"] == "same"
