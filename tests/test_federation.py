"""Federation between real node processes: relaying, access control, peer authentication,
catch-up after restart, out-of-order delivery, forks, and cutting off misbehaving peers."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc, NodeSet, both_ways, link, wait_for

from hashmesh.protocol.batches import build_batch, header_hash
from hashmesh.protocol.ops import AddOp
from hashmesh.protocol.peerauth import sign_request
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.sync import decode_page, encode_sync_request

MD5 = "%032x"


def signed_post(
    caller: SigningKey,
    callee: NodeProc,
    path: str,
    body: bytes,
    *,
    ts: int | None = None,
    nonce: bytes | None = None,
    tamper: bool = False,
) -> tuple[int, bytes, dict[str, str]]:
    ts = int(time.time() * 1000) if ts is None else ts
    headers = sign_request(caller, callee.node_id, "POST", path, body, ts, nonce or os.urandom(16))
    if tamper:
        body = body + b" "
    request = urllib.request.Request(callee.url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_line_of_four_converges_and_revocation_follows(nodes: NodeSet, tmp_path: Path) -> None:
    a, b, c, d = nodes.make("ncmec", "childfocus", "relay", "platform")
    link(a, b, "csam")
    link(b, c, "csam")
    link(c, d, "csam")
    for n in (b, c, d):
        n.trust(a, "csam")
    for n in (a, b, c, d):
        n.start()
    op_id = a.cli("add", "md5", MD5 % 1, "-c", "csam", "--category", "csam").stdout.strip()
    wait_for(lambda: d.matches("md5", MD5 % 1))
    # D holds A's signed batches and verifies them itself, offline.
    bundle = tmp_path / "d.bundle"
    d.cli("export", "-c", "csam", str(bundle))
    verified = json.loads(a.cli("verify", str(bundle), "--json", home=False).stdout)
    assert [log["author"] for log in verified["logs"]] == [a.node_id]
    a.cli("revoke", op_id, "--reason", "mistake")
    wait_for(lambda: not d.matches("md5", MD5 % 1))
    for n in (a, b, c, d):
        assert n.stop() == 0


def test_collection_never_reaches_a_peer_that_may_not_read_it(
    nodes: NodeSet, tmp_path: Path
) -> None:
    ncmec, police, platform = nodes.make("ncmec", "police", "platform")
    link(ncmec, police, "le-only")
    police.cli("peer", "share", "ncmec", "csam")  # peer add would refuse the existing peer
    ncmec.cli("peer", "share", "police", "csam")
    link(ncmec, platform, "csam")
    ncmec.trust(police, "le-only")
    ncmec.trust(police, "csam")
    platform.trust(police, "csam")
    platform.trust(police, "le-only")  # even a willing receiver must not get it
    for n in (ncmec, police, platform):
        n.start()
    police.cli("add", "sha256", "%064x" % 7, "-c", "le-only")
    police.cli("add", "sha256", "%064x" % 8, "-c", "csam")
    wait_for(lambda: platform.matches("sha256", "%064x" % 8))
    wait_for(lambda: ncmec.matches("sha256", "%064x" % 7))
    both_ways(ncmec, platform)  # rounds begun after ncmec held it
    assert not platform.matches("sha256", "%064x" % 7)
    # Asking for it explicitly, with a validly signed request, gives nothing either.
    key = SigningKey(platform.key_seed())
    body = encode_sync_request({}, ["le-only", "csam"], [])
    status, data, _ = signed_post(key, ncmec, "/v1/peer/sync", body)
    assert status == 200
    page = decode_page(data)
    assert {json.loads(h)["collection"] for h, _, _ in page.frames} == {"csam"}
    assert all(k.collection != "le-only" for k in page.vector)


def test_untrusted_author_is_refused_and_not_relayed(nodes: NodeSet, tmp_path: Path) -> None:
    a, b, c = nodes.make("a", "b", "c")
    link(a, b, "csam")
    link(b, c, "csam")
    c.trust(a, "csam")  # c would accept a, but b (the only path) does not trust a
    for n in (a, b, c):
        n.start()
    a.cli("add", "md5", MD5 % 5, "-c", "csam")
    wait_for(lambda: b.status()["peers"][0].get("refused", {}).get("untrusted", 0) > 0)
    assert not b.matches("md5", MD5 % 5)
    both_ways(b, c)  # rounds begun after b refused it
    assert not c.matches("md5", MD5 % 5)
    assert b.status()["batches"] == 0


def test_peer_authentication_refusals(nodes: NodeSet, tmp_path: Path) -> None:
    a, b = nodes.make("a", "b")
    link(a, b, "csam")
    a.start()
    body = encode_sync_request({}, ["csam"], [])
    path = "/v1/peer/sync"

    def plain(headers: dict[str, str]) -> tuple[int, Any]:
        request = urllib.request.Request(a.url + path, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, error = plain({})
    assert status == 401 and "missing" in error["error"]
    stranger = SigningKey(bytes(range(32)))
    status, data, _ = signed_post(stranger, a, path, body)
    assert status == 403 and b"not a peer" in data
    key = SigningKey(b.key_seed())
    status, data, _ = signed_post(key, a, path, body, ts=int(time.time() * 1000) - 600_000)
    assert status == 401 and b"timestamp" in data
    status, data, _ = signed_post(key, a, path, body, tamper=True)
    assert status == 401 and b"does not verify" in data
    nonce = os.urandom(16)
    status, _, headers = signed_post(key, a, path, body, nonce=nonce)
    assert status == 200 and "X-Hashmesh-Signature" in headers
    status, data, _ = signed_post(key, a, path, body, nonce=nonce)
    assert status == 401 and b"replayed" in data
    # The operator API refuses a peer signature: it wants the admin token.
    status, error = plain({"Authorization": "Bearer wrong"})
    assert status == 200 or status == 401  # peer path ignores bearer tokens entirely
    request = urllib.request.Request(a.url + "/v1/status")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=5)
    assert info.value.code == 401


def test_restarted_node_catches_up(nodes: NodeSet, tmp_path: Path) -> None:
    a, b = nodes.make("a", "b")
    link(a, b, "csam")
    b.trust(a, "csam")
    a.start()
    b.start()
    a.cli("add", "md5", MD5 % 10, "-c", "csam")
    wait_for(lambda: b.matches("md5", MD5 % 10))
    assert b.stop() == 0
    for i in range(11, 16):
        a.cli("add", "md5", MD5 % i, "-c", "csam")
    # While b is down, a backs off and reports it unreachable.
    wait_for(lambda: a.status()["peers"][0]["failures"] >= 1)
    assert a.status()["peers"][0]["reachable"] is False
    b.start()
    wait_for(lambda: all(b.matches("md5", MD5 % i) for i in range(11, 16)), timeout=30)
    log = next(x for x in b.status()["logs"] if x["author"] == a.node_id)
    assert log["head"] == 6 and log["live"] == 6


def _author_batches(key: SigningKey, collection: str, values: list[int]) -> list[Any]:
    batches = []
    prev = None
    for seq, v in enumerate(values, start=1):
        op = AddOp.create("md5", MD5 % v, category="csam")
        batch = build_batch(key, collection, seq, prev, 1_700_000_000_000 + seq, [op])
        prev = header_hash(batch.header_bytes)
        batches.append(batch)
    return batches


def test_out_of_order_push_waits_then_applies(nodes: NodeSet, tmp_path: Path) -> None:
    a, b = nodes.make("a", "b")
    b.peer(a)  # a may push to b; b shares nothing with a
    b.trust(a, "csam")
    b.start()
    key = SigningKey(a.key_seed())
    one, two, three = _author_batches(key, "csam", [20, 21, 22])
    status, data, _ = signed_post(key, b, "/v1/peer/batches", three.to_bytes() + two.to_bytes())
    assert status == 200
    assert [r["outcome"] for r in json.loads(data)["results"]] == ["deferred", "deferred"]
    assert not b.matches("md5", MD5 % 22)
    assert b.status()["pending_batches"] == 2
    status, data, _ = signed_post(key, b, "/v1/peer/batches", one.to_bytes())
    assert status == 200 and json.loads(data)["results"][0]["outcome"] == "applied"
    assert all(b.matches("md5", MD5 % v) for v in (20, 21, 22))
    assert b.status()["pending_batches"] == 0


def test_fork_is_detected_stored_gossiped_and_freezes_the_log(
    nodes: NodeSet, tmp_path: Path
) -> None:
    evil, b, c = nodes.make("evil", "b", "c")
    b.peer(evil)
    link(b, c, "csam")
    b.trust(evil, "csam")
    c.trust(evil, "csam")
    b.start()
    c.start()
    key = SigningKey(evil.key_seed())
    honest = _author_batches(key, "csam", [30, 31])
    rival = _author_batches(key, "csam", [30, 99])
    status, _, _ = signed_post(
        key, b, "/v1/peer/batches", honest[0].to_bytes() + honest[1].to_bytes()
    )
    assert status == 200
    wait_for(lambda: c.matches("md5", MD5 % 31))
    status, data, _ = signed_post(key, b, "/v1/peer/batches", rival[1].to_bytes())
    assert json.loads(data)["results"][0]["outcome"] == "fork"
    forks = b.status()["forks"]
    assert len(forks) == 1 and forks[0]["author"] == evil.node_id and forks[0]["seq"] == 2
    assert not b.matches("md5", MD5 % 99)
    wait_for(lambda: len(c.status()["forks"]) == 1)  # gossiped
    shown = c.cli("status").stdout
    assert f"FORK    {evil.node_id} in csam at seq 2" in shown and "FORKED" in shown
    # The log is frozen: a further valid batch of that author is not accepted.
    more = build_batch(
        key,
        "csam",
        3,
        header_hash(honest[1].header_bytes),
        1,
        [AddOp.create("md5", MD5 % 32, category="csam")],
    )
    status, data, _ = signed_post(key, b, "/v1/peer/batches", more.to_bytes())
    assert json.loads(data)["results"][0]["outcome"] == "frozen"
    assert not b.matches("md5", MD5 % 32)


def test_peer_sending_invalid_data_is_cut_off(nodes: NodeSet, tmp_path: Path) -> None:
    bad, b = nodes.make("bad", "b")
    b.peer(bad)
    b.trust(bad, "csam")
    b.start()
    key = SigningKey(bad.key_seed())
    good = _author_batches(key, "csam", [40])[0].to_bytes()
    forged = bytearray(good)
    forged[-5] ^= 0x01  # flips a byte of the ops: the Merkle root no longer matches
    statuses = []
    for _ in range(6):
        status, data, _ = signed_post(key, b, "/v1/peer/batches", bytes(forged))
        statuses.append(status)
        assert json.loads(data)["error"]
    assert statuses[0] == 400
    assert statuses[-1] == 403  # cut off after repeated invalid data
    status, data, _ = signed_post(key, b, "/v1/peer/batches", good)
    assert status == 403
    peer = b.status()["peers"][0]
    assert peer["cut_off"] is True and peer["refused"]["invalid_batch"] >= 4


def test_policy_change_takes_effect_without_restart(nodes: NodeSet, tmp_path: Path) -> None:
    a, b = nodes.make("a", "b")
    a.start()
    b.start()
    a.cli("add", "md5", MD5 % 50, "-c", "csam")
    link(a, b, "csam")
    both_ways(a, b)  # rounds begun after the link: b had its chance to take it
    assert not b.matches("md5", MD5 % 50)  # not trusted yet
    b.trust(a, "csam")
    wait_for(lambda: b.matches("md5", MD5 % 50))


def test_oversized_and_malformed_peer_requests_are_refused(nodes: NodeSet, tmp_path: Path) -> None:
    a, b = nodes.make("a", "b")
    link(a, b, "csam")
    a.start()
    key = SigningKey(b.key_seed())
    status, data, _ = signed_post(key, a, "/v1/peer/sync", b'{"vector": 1}')
    assert status == 400 and json.loads(data)["error"]
    status, data, _ = signed_post(key, a, "/v1/peer/batches", b"HMB1\xff\xff")
    assert status == 400 and json.loads(data)["error"]
    big = b"x" * (33 * 1024 * 1024)
    status, data, _ = signed_post(key, a, "/v1/peer/batches", big)
    assert status == 413
    assert a.cli("status").returncode == 0  # still alive


def test_partition_heals_in_both_directions(nodes: NodeSet, tmp_path: Path) -> None:
    a, b = nodes.make("a", "b")
    dead = "http://127.0.0.1:9"  # nothing listens there: the link is cut
    a.cli("peer", "add", "b", dead, b.node_id, "--share", "csam")
    b.cli("peer", "add", "a", dead, a.node_id, "--share", "csam")
    a.trust(b, "csam")
    b.trust(a, "csam")
    a.start()
    b.start()
    a.cli("add", "md5", MD5 % 60, "-c", "csam")
    b.cli("add", "md5", MD5 % 61, "-c", "csam")
    wait_for(lambda: a.status()["peers"][0]["failures"] >= 1)
    assert not b.matches("md5", MD5 % 60) and not a.matches("md5", MD5 % 61)
    # the partition heals: real addresses, applied without restart
    a.cli("peer", "update", "b", "--url", b.url)
    b.cli("peer", "update", "a", "--url", a.url)
    wait_for(lambda: b.matches("md5", MD5 % 60) and a.matches("md5", MD5 % 61), timeout=30)


def test_broken_chain_link_is_evidence_of_a_fork(nodes: NodeSet, tmp_path: Path) -> None:
    evil, b = nodes.make("evil", "b")
    b.peer(evil)
    b.trust(evil, "csam")
    b.start()
    key = SigningKey(evil.key_seed())
    first = _author_batches(key, "csam", [70])[0]
    wrong_prev = build_batch(
        key, "csam", 2, bytes(32), 1, [AddOp.create("md5", MD5 % 71, category="csam")]
    )
    status, data, _ = signed_post(
        key, b, "/v1/peer/batches", first.to_bytes() + wrong_prev.to_bytes()
    )
    assert status == 200
    assert [r["outcome"] for r in json.loads(data)["results"]] == ["applied", "fork"]
    assert b.status()["forks"][0]["seq"] == 2
    assert not b.matches("md5", MD5 % 71)


def test_malformed_json_sync_request_is_refused(nodes: NodeSet, tmp_path: Path) -> None:
    a, b = nodes.make("a", "b")
    link(a, b, "csam")
    a.start()
    key = SigningKey(b.key_seed())
    for body in (b"{not json", b'{"vector":[],"collections":["csam"],"offer":[],"x":1}', b""):
        status, data, _ = signed_post(key, a, "/v1/peer/sync", body)
        assert status == 400, body
        assert "sync request" in json.loads(data)["error"]
    assert a.cli("status").returncode == 0


def _self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_peers_sync_over_tls(nodes: NodeSet, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    a, b = nodes.make("a", "b")
    for n in (a, b):
        config = n.home / "config.toml"
        text = config.read_text().replace('cert = ""', f'cert = "{cert}"')
        text = text.replace('key = ""', f'key = "{key}"').replace('ca = ""', f'ca = "{cert}"')
        config.write_text(text)
    link(a, b, "csam")
    b.trust(a, "csam")
    for n in (a, b):
        n.start()
    assert a.url.startswith("https://") and b.url.startswith("https://")
    a.cli("add", "md5", MD5 % 80, "-c", "csam")
    wait_for(lambda: b.matches("md5", MD5 % 80))
    assert b.status()["peers"][0]["reachable"] is True
