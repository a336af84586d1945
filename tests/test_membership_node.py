"""A node following a collection's membership (node/membership.py, config [[membership]]),
in process and through the CLI without a running node: the anchor round-trips through
config.toml, a bad one is refused naming the field, a followed collection is closed until a
valid document is held, the document's writers and readers drive the accept and read
decisions (local trust and share lists narrow them), and a cosign is scoped to its
collection."""

from __future__ import annotations

import tomllib
from pathlib import Path

from conftest import Cli, HomeFactory, author_key

from hashmesh.node.config import Follow, Home
from hashmesh.node.service import NodeService
from hashmesh.protocol.batches import LogKey, build_batch
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.membership import draft
from hashmesh.protocol.statements import sign_statement

C = "csam"
STEWARDS = [author_key(70 + i) for i in range(3)]
STEWARD_IDS = [k.node_id for k in STEWARDS]
WRITER = author_key(80)
READER = author_key(81)
OTHER = author_key(82)


def _document(version: int, writers: list[str], readers: list[str], prev: str | None, *signers):  # type: ignore[no-untyped-def]
    body = draft(C, version, STEWARD_IDS, 2, writers, readers, prev, 1_700_000_000)
    return sign_statement(body, list(signers), REGISTRY)


def test_follow_round_trips_and_bad_anchors_name_the_field(cli: Cli, home: HomeFactory) -> None:
    a = home("A")
    args = ["membership", "follow", C, "--threshold", "2"]
    for s in STEWARD_IDS:
        args += ["--steward", s]
    out = cli.json(*args, home=a)
    assert out == {"collection": C, "stewards": sorted(STEWARD_IDS), "threshold": 2}
    entry = tomllib.loads((a / "config.toml").read_text())["membership"][0]
    assert entry == {"collection": C, "stewards": sorted(STEWARD_IDS), "threshold": 2}
    config = Home(a).load_config()
    assert config.follows(C) == Follow(C, sorted(STEWARD_IDS), 2)
    bad = cli(*args[:4], "4", *args[5:], home=a, expect=2)
    assert "threshold: 4 must be 1-3" in bad.stderr
    bad = cli(
        "membership", "follow", C, "--steward", "ed25519:nope", "--threshold", "1", home=a, expect=2
    )
    assert "node id" in bad.stderr
    assert Home(a).load_config().follows(C) == Follow(C, sorted(STEWARD_IDS), 2)  # unchanged


def test_a_followed_collection_is_closed_until_a_document_and_then_follows_it(
    cli: Cli, home: HomeFactory
) -> None:
    a = home("A")
    service = NodeService(Home(a))
    try:
        service.membership_follow(C, STEWARD_IDS, 2)
        service.peer_add("reader", "http://127.0.0.1:9", READER.node_id, [C])
        service.peer_add("other", "http://127.0.0.1:9", OTHER.node_id, [C])
        config = service.config
        assert not config.peer_may_read(READER.node_id, C)  # closed: no document yet
        assert service.authority.refuses(config, _header(WRITER)) is not None

        v1 = _document(1, [WRITER.node_id], [READER.node_id], None, STEWARDS[0], STEWARDS[1])
        service.membership_add(v1.to_wire())
        config = service.config
        assert config.peer_may_read(READER.node_id, C)
        assert not config.peer_may_read(OTHER.node_id, C)  # shared, but not a reader
        assert service.authority.refuses(config, _header(WRITER)) is None
        assert service.authority.refuses(config, _header(OTHER)) is not None

        # local trust narrows: with an entry for C, the document's writer needs one too
        service.trust_add(OTHER.node_id, C, "other")
        config = service.config
        assert service.authority.refuses(config, _header(WRITER)) is not None
        assert service.authority.refuses(config, _header(OTHER)) is not None  # not listed
        service.trust_add(WRITER.node_id, C, "writer")
        assert service.authority.refuses(service.config, _header(WRITER)) is None
        # and the share list narrows reads: unshared, the document's reader reads nothing
        service.peer_share("reader", C, False)
        assert not service.config.peer_may_read(READER.node_id, C)
    finally:
        service.close()


def test_a_document_survives_a_restart_and_gossiped_copies_are_trimmed(
    cli: Cli, home: HomeFactory
) -> None:
    a = home("A")
    service = NodeService(Home(a))
    try:
        service.membership_follow(C, STEWARD_IDS, 2)
        noisy = _document(1, [WRITER.node_id], [], None, STEWARDS[0], STEWARDS[1], OTHER)
        done = service.statements.admit([noisy], "peer:x")
        assert not done.refused
        held = service.statements.held(noisy.id)
        assert held is not None and OTHER.node_id not in held.signers
    finally:
        service.close()
    again = NodeService(Home(a))
    try:
        shown = again.membership_show()["memberships"][0]
        assert shown["version"] == 1 and shown["writers"] == [WRITER.node_id]
    finally:
        again.close()


def test_a_cosign_is_scoped_to_its_collection(cli: Cli, home: HomeFactory) -> None:
    a = home("A")
    service = NodeService(Home(a))
    try:
        service.trust_add(WRITER.node_id, C, "writer")
        batch = build_batch(WRITER, C, 1, None, 1_700_000_000_000, [_add(1)])
        assert service.store.ingest(batch, source="test").outcome == "applied"
        assert service.witness_tick(now=1_700_000_100.0) == 1
        rows = service.store.statements.visible(None, kinds=["cosign"])
        assert len(rows) == 1 and rows[0].scope == C
        assert service.store.statements.visible({"other"}, kinds=["cosign"]) == []
        assert len(service.store.statements.visible({C}, kinds=["cosign"])) == 1
        # nothing moved: the next tick signs nothing; our head is what the cosign says
        assert service.witness_tick(now=1_700_000_200.0) == 0
        report = service.log_witnesses(WRITER.node_id, C)
        assert report["witnesses"][0]["agreement"] == "same"
        assert (
            report["head"]
            == batch.hash.hex()
            == service.witness.head_hash(LogKey(WRITER.node_id, C), 1)
        )
    finally:
        service.close()


def _add(n: int) -> dict[str, str]:
    return {"op": "add", "type": "md5", "value": "%032x" % n, "category": "csam"}


def _header(key):  # type: ignore[no-untyped-def]
    return build_batch(key, C, 1, None, 1_700_000_000_000, [_add(7)]).header


_ = Path
