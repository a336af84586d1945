"""Membership documents in bundles, through the CLI of real node homes (real SQLite, real
signatures): a node that follows a collection's membership exports the chain in force in
the manifest, `verify` reports it, and a fresh node following the same collection (the
same anchor pinned) imports the bundle with the writers the documents name, as on an
air-gapped network. A tampered or forged document refuses the bundle and changes nothing;
a bundle carrying an older version than the importer holds changes nothing."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, HomeFactory, author_key
from netnodes import NodeSet

from hashmesh.node.config import Home
from hashmesh.node.service import NodeService
from hashmesh.protocol.bundles import BUNDLE_MAGIC, MAX_MEMBERSHIP_BYTES, BundleDecoder
from hashmesh.protocol.encoding import b64url, canonical, from_b64url
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.membership import MembershipBody, draft
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import Statement, parse_statement_json, sign_statement

C = "csam"
STEWARDS = [author_key(90 + i) for i in range(3)]
STEWARD_IDS = sorted(k.node_id for k in STEWARDS)
STRANGER = author_key(99)


def node_id(path: Path) -> str:
    return Home(path).load_config().node_id


def document(
    version: int, writers: list[str], prev: Statement | None, *signers: SigningKey
) -> Statement:
    body = draft(
        C, version, STEWARD_IDS, 2, writers, [], None if prev is None else prev.id, 1_700_000_000
    )
    return sign_statement(body, list(signers), REGISTRY)


def setup(home: Path, docs: list[Statement], values: list[str] = ()) -> None:  # type: ignore[assignment]
    """Follow C (2 of the 3 stewards pinned), install `docs`, add md5 `values` to C: in
    process, as the setup of what the CLI is then asked (export, verify, import)."""
    service = NodeService(Home(home))
    try:
        service.membership_follow(C, STEWARD_IDS, 2)
        for doc in docs:
            service.membership_add(doc.to_wire())
        for value in values:
            service.add("md5", value, C)
    finally:
        service.close()


def manifest_of(data: bytes) -> tuple[dict[str, Any], int]:
    """The manifest and where the batch frames start."""
    decoder = BundleDecoder()
    decoder.feed(data[: len(BUNDLE_MAGIC) + 4 + struct.unpack_from(">I", data, 8)[0]])
    assert decoder.manifest is not None
    return decoder.manifest, decoder.offset


def with_manifest(data: bytes, manifest: dict[str, Any]) -> bytes:
    _, body = manifest_of(data)
    encoded = canonical(manifest)
    return BUNDLE_MAGIC + struct.pack(">I", len(encoded)) + encoded + data[body:]


def held(home: Path) -> dict[str, Any]:
    """What a refused import must leave as it was: batches, feed, statements, membership."""
    service = NodeService(Home(home))
    try:
        status = service.status()
        shown = service.membership_show()["memberships"]
        return {
            "batches": status["batches"],
            "feed": status["feed_cursor"],
            "statements": [(s.id, s.to_wire()) for s in service.statements.all()],
            "membership": [(m["version"], m["id"], m["held"], m["signers"]) for m in shown],
        }
    finally:
        service.close()


def writer_with_bundle(
    cli: Cli, home: HomeFactory, tmp_path: Path
) -> tuple[Path, Path, list[Statement]]:
    """Node A follows C, holds versions 1 and 2 (both naming A a writer) and writes to C;
    its bundle of C. Version 2's stewards sign with a third steward, so the chain matters."""
    a = home("A")
    v1 = document(1, [node_id(a)], None, STEWARDS[0], STEWARDS[1])
    v2 = document(2, [node_id(a), STRANGER.node_id], v1, STEWARDS[1], STEWARDS[2])
    setup(a, [v1, v2], ["1" * 32, "2" * 32])
    bundle = tmp_path / "csam.hmb"
    cli("export", "-c", C, bundle, home=a)
    return a, bundle, [v1, v2]


def test_a_followed_collection_travels_with_its_membership(
    cli: Cli, home: HomeFactory, tmp_path: Path
) -> None:
    _, bundle, (v1, v2) = writer_with_bundle(cli, home, tmp_path)
    manifest, _ = manifest_of(bundle.read_bytes())
    assert [m["body"] for m in manifest["membership"]] == [
        b64url(v1.body_bytes),
        b64url(v2.body_bytes),
    ]

    checked = cli.json("verify", bundle)
    assert "membership" not in checked["manifest"]  # reported below, not echoed
    assert [
        (m["version"], m["id"], m["signed_by"], m["threshold"], m["threshold_met"], m["previous"])
        for m in checked["membership"]
    ] == [
        (1, v1.id, sorted([STEWARDS[0].node_id, STEWARDS[1].node_id]), 2, True, "anchor"),
        (2, v2.id, sorted([STEWARDS[1].node_id, STEWARDS[2].node_id]), 2, True, "carried"),
    ]
    text = cli("verify", bundle).stdout
    assert f"membership {C} version 2: 2 of 3 stewards signed, threshold 2 met" in text

    # B: a fresh node on an air-gapped network, following C with the same anchor and no
    # trust entry for A: only the documents in the bundle can make A a writer.
    b = home("B")
    setup(b, [])
    imported = cli.json("import", bundle, home=b)
    assert (imported["batches"], imported["applied"], imported["refused_untrusted"]) == (2, 2, 0)
    assert imported["membership"] == {"carried": 2, "used": True}
    (shown,) = cli.json("membership", "show", home=b)["memberships"]
    assert (shown["version"], shown["id"]) == (2, v2.id)
    assert cli.json("match", "md5", "1" * 32, home=b)["results"][0]["matches"]

    again = cli("import", bundle, home=b).stdout  # importing again changes nothing
    assert "imported 0 batches (2 already held)" in again
    assert "2 membership documents carried, applied first" in again


@pytest.mark.slow  # ~10-20 s on the loaded 2-core machine; the followed case is not slow
def test_a_node_not_following_the_collection_carries_the_documents_unused(
    cli: Cli, home: HomeFactory, tmp_path: Path
) -> None:
    a, bundle, _ = writer_with_bundle(cli, home, tmp_path)
    c = home("C")
    cli("trust", "add", node_id(a), C, home=c)
    plain = cli.json("import", bundle, home=c)
    assert plain["applied"] == 2
    assert plain["membership"] == {"carried": 2, "used": False, "reason": "not followed here"}
    assert cli.json("membership", "show", home=c)["memberships"] == []


def test_a_collection_without_membership_exports_the_manifest_as_before(
    cli: Cli, home: HomeFactory, tmp_path: Path
) -> None:
    a = home("A")
    cli("add", "md5", "3" * 32, "-c", "shared", home=a)
    bundle = tmp_path / "shared.hmb"
    cli("export", "-c", "shared", bundle, home=a)
    manifest, _ = manifest_of(bundle.read_bytes())
    assert sorted(manifest) == ["collection", "created", "exporter", "logs", "v"]
    assert "membership" not in cli.json("verify", bundle)


def test_a_tampered_or_forged_membership_document_refuses_the_bundle(
    cli: Cli, home: HomeFactory, tmp_path: Path
) -> None:
    _, bundle, _ = writer_with_bundle(cli, home, tmp_path)
    data = bundle.read_bytes()
    manifest, _ = manifest_of(data)
    b = home("B")
    setup(b, [])
    before = held(b)

    # one byte of version 2's body changed: its signatures no longer verify
    tampered = json.loads(json.dumps(manifest))
    body = bytearray(from_b64url(tampered["membership"][1]["body"], "body"))
    body[body.index(b'"ts":') + 6] ^= 1
    tampered["membership"][1]["body"] = b64url(bytes(body))
    bad = tmp_path / "tampered.hmb"
    bad.write_bytes(with_manifest(data, tampered))
    result = cli("import", bad, home=b, expect=2)
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        "hashmesh: bundle refused, nothing imported: bundle manifest.membership[1]"
    )
    assert "signature" in line
    cli("verify", bad, expect=2)
    assert held(b) == before

    # a document re-signed by keys that are no stewards: its envelope verifies, but it is
    # not valid from the anchor B pins, so the bundle is refused naming why
    forged = json.loads(json.dumps(manifest))
    fake = document(1, [node_id(b)], None, STRANGER, author_key(98))
    forged["membership"] = [fake.to_json()]
    bad = tmp_path / "forged.hmb"
    bad.write_bytes(with_manifest(data, forged))
    shown = cli.json("verify", bad)["membership"]
    assert [(m["version"], m["signed_by"], m["threshold_met"]) for m in shown] == [(1, [], False)]
    result = cli("import", bad, home=b, expect=2)
    (line,) = result.stderr.splitlines()
    assert "bundle manifest.membership[0]: membership version 1 of csam: signed by 0 of" in line
    assert held(b) == before


def test_a_bundle_with_an_older_version_than_the_importer_holds_changes_nothing(
    cli: Cli, home: HomeFactory, tmp_path: Path
) -> None:
    a = home("A")
    v1 = document(1, [node_id(a)], None, STEWARDS[0], STEWARDS[1])
    setup(a, [v1], ["4" * 32])
    bundle = tmp_path / "old.hmb"
    cli("export", "-c", C, bundle, home=a)

    # B already holds version 2, which no longer names A a writer
    b = home("B")
    v2 = document(2, [STRANGER.node_id], v1, STEWARDS[0], STEWARDS[2])
    setup(b, [v1, v2])
    before = held(b)
    result = cli("import", bundle, home=b, expect=1)
    assert "refused 1 batches" in result.stderr
    assert held(b) == before
    (shown,) = cli.json("membership", "show", home=b)["memberships"]
    assert (shown["version"], shown["writers"]) == (2, [STRANGER.node_id])


def _wide(version: int, prev: Statement | None, writer: str) -> Statement:
    """A document near the largest: 128 writers and 128 readers (~14 KiB of body)."""
    ids = [SigningKey(bytes([version, i]) + b"\x01" * 30).node_id for i in range(255)]
    body = draft(
        C,
        version,
        STEWARD_IDS,
        2,
        [writer, *ids[:127]],
        ids[127:],
        None if prev is None else prev.id,
        1_700_000_000 + version,
    )
    return sign_statement(body, [STEWARDS[0], STEWARDS[1]], REGISTRY)


@pytest.mark.slow  # 20 documents of ~14 KiB signed and checked three times: ~10-20 s
def test_a_chain_over_the_manifest_budget_drops_its_oldest_versions(
    cli: Cli, home: HomeFactory, tmp_path: Path
) -> None:
    """20 versions of ~14 KiB are more than MAX_MEMBERSHIP_BYTES: the newest that fit are
    carried; a follower holding the older ones imports, one holding none is refused
    naming the version it lacks, and nothing changes there."""
    a = home("A")
    chain: list[Statement] = []
    for version in range(1, 21):
        chain.append(_wide(version, chain[-1] if chain else None, node_id(a)))
    setup(a, chain, ["5" * 32])
    bundle = tmp_path / "wide.hmb"
    cli("export", "-c", C, bundle, home=a)
    manifest, _ = manifest_of(bundle.read_bytes())
    carried = [parse_statement_json(m, REGISTRY) for m in manifest["membership"]]
    versions = [s.body.version for s in carried if isinstance(s.body, MembershipBody)]
    assert versions == list(range(versions[0], 21)) and versions[0] > 1
    assert sum(len(s.to_wire()) for s in carried) <= MAX_MEMBERSHIP_BYTES
    assert sum(len(s.to_wire()) for s in chain[versions[0] - 2 :]) > MAX_MEMBERSHIP_BYTES

    b = home("B")
    setup(b, [])
    before = held(b)
    result = cli("import", bundle, home=b, expect=2)
    assert f"its previous version {chain[versions[0] - 2].id} is not held" in result.stderr
    assert held(b) == before

    c = home("C")
    setup(c, chain[: versions[0] - 1])
    imported = cli.json("import", bundle, home=c)
    assert imported["applied"] == 1
    (shown,) = cli.json("membership", "show", home=c)["memberships"]
    assert shown["version"] == 20


@pytest.mark.slow  # two node processes: ~15-25 s on the loaded 2-core machine
def test_running_nodes_carry_the_membership_by_bundle(nodes: NodeSet, tmp_path: Path) -> None:
    """The same through two running node processes that never connect (the CLI talks to
    each node's API): the exporter's documents make the air-gapped node accept the batches;
    a forged document is refused by the running node and changes nothing."""
    a, b = nodes.make("a", "b")
    v1 = document(1, [a.node_id], None, STEWARDS[0], STEWARDS[1])
    doc = tmp_path / "v1.json"
    doc.write_bytes(v1.to_wire())
    follow = ["membership", "follow", C, "--threshold", "2"]
    for steward in STEWARD_IDS:
        follow += ["--steward", steward]
    for n in (a, b):
        n.cli(*follow)
    a.cli("membership", "add", str(doc))
    a.start()
    b.start()
    a.cli("add", "md5", "6" * 32, "-c", C)
    bundle = tmp_path / "running.hmb"
    a.cli("export", "-c", C, str(bundle))

    data = bundle.read_bytes()
    manifest, _ = manifest_of(data)
    forged = dict(manifest)
    forged["membership"] = [document(1, [b.node_id], None, STRANGER, author_key(98)).to_json()]
    bad = tmp_path / "forged.hmb"
    bad.write_bytes(with_manifest(data, forged))
    refused = b.cli("import", str(bad), check=False)
    assert refused.returncode == 2, refused.stderr
    assert "manifest.membership[0]" in refused.stderr
    assert b.status()["batches"] == 0
    assert b.json("membership", "show")["memberships"][0]["version"] == 0

    imported = json.loads(b.cli("import", str(bundle), "--json").stdout)
    assert imported["applied"] == 1 and imported["membership"]["used"] is True
    assert b.matches("md5", "6" * 32)
    assert b.json("membership", "show")["memberships"][0]["id"] == v1.id
