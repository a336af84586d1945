"""A node judging witnesses (node/witness.py) in process, with real signatures: a split
view backed by the author's signed header becomes fork evidence and freezes the log; one
the witness cannot back is "unproven" with the witness the suspect, and freezes nothing; a
witness signing two heads at one seq is convicted (both signed cosigns kept) and its word
counts for nothing after; cosigns are bounded apart from the other statements, so a flood
of them never crowds out a certificate."""

from __future__ import annotations

from hashlib import sha256

import pytest
from conftest import HomeFactory, author_key

from hashmesh.node import statements as node_statements
from hashmesh.node import witness as node_witness
from hashmesh.node.config import Home
from hashmesh.node.service import NodeService
from hashmesh.protocol.batches import Batch, LogKey, build_batch
from hashmesh.protocol.certificates import CertBody
from hashmesh.protocol.encoding import parse_canonical
from hashmesh.protocol.evidence import SignedHeader, verify_evidence
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.statements import Statement, parse_statement_json, sign_statement
from hashmesh.protocol.witness import CosignBody, cosign_body

C = "csam"
AUTHOR = author_key(90)
WITNESS = author_key(91)  # a configured peer of the node
OTHER = author_key(92)  # another configured peer
TS = 1_700_000_000


def _batch(value: int, key=AUTHOR) -> Batch:  # type: ignore[no-untyped-def]
    ops = [{"op": "add", "type": "md5", "value": "%032x" % value, "category": "csam"}]
    return build_batch(key, C, 1, None, TS * 1000, ops)


def _cosign(witness, head: str, seq: int = 1, ts: int = TS, author=AUTHOR) -> Statement:  # type: ignore[no-untyped-def]
    body = cosign_body(witness.node_id, author.node_id, C, seq, head, ts)
    return sign_statement(body, [witness], REGISTRY)


def _service(home: HomeFactory) -> NodeService:
    service = NodeService(Home(home("A")))
    service.trust_add(AUTHOR.node_id, C, "author")
    service.peer_add("witness", "http://127.0.0.1:9", WITNESS.node_id, [C])
    service.peer_add("other", "http://127.0.0.1:9", OTHER.node_id, [C])
    return service


def _signed(batch: Batch) -> SignedHeader:
    return SignedHeader(batch.header_bytes, batch.signature)


def test_a_split_view_backed_by_the_authors_header_freezes_the_log(home: HomeFactory) -> None:
    service = _service(home)
    try:
        ours, theirs = _batch(1), _batch(2)
        assert service.store.ingest(ours, source="test").outcome == "applied"
        service.statements.admit([_cosign(WITNESS, theirs.hash.hex())], f"peer:{WITNESS.node_id}")
        tasks = service.witness.to_prove(TS)
        assert len(tasks) == 1
        task = tasks[0]
        assert task.ours == _signed(ours)
        assert list(task.claims) == [theirs.hash.hex()]
        assert task.claims[theirs.hash.hex()][2] == (WITNESS.node_id,)  # whom to ask
        evidence = service.witness.settle(
            task, {theirs.hash.hex(): {WITNESS.node_id: _signed(theirs)}}, TS
        )
        assert evidence is not None
        assert verify_evidence(evidence.to_bytes()) == evidence
        log_key = LogKey(AUTHOR.node_id, C)
        assert service.store.is_forked(log_key)
        fork = service.store.forks()[0]
        assert fork["source"] == f"witness:{WITNESS.node_id}"
        view = service.status()["witness"]["split_views"][0]
        assert view["proof"] == "fork" and view["suspects"] == []
        assert service.witness.to_prove(TS + 100) == []  # settled: nothing more to ask
        # frozen as a fork found in sync: the log takes no more batches
        op = {"op": "add", "type": "md5", "value": "%032x" % 9, "category": "csam"}
        later = build_batch(AUTHOR, C, 2, ours.hash, TS * 1000, [op])
        assert service.store.ingest(later, source="test").outcome == "frozen"
    finally:
        service.close()


@pytest.mark.parametrize("answer", ["forged", "absent", "wrong head"])
def test_a_cosign_its_witness_cannot_back_is_unproven_and_freezes_nothing(
    home: HomeFactory, answer: str
) -> None:
    service = _service(home)
    try:
        ours = _batch(1)
        service.store.ingest(ours, source="test")
        fake = sha256(b"a head nobody signed").hexdigest()
        service.statements.admit([_cosign(WITNESS, fake)], f"peer:{WITNESS.node_id}")
        (task,) = service.witness.to_prove(TS)
        given: object = {
            # a header of the right log and seq, signed by the witness, not the author
            "forged": _signed(_batch(3, key=WITNESS)),
            "absent": "holds no such header (404)",
            # the author's real header, but not the one the witness cosigned
            "wrong head": _signed(ours),
        }[answer]
        assert service.witness.settle(task, {fake: {WITNESS.node_id: given}}, TS) is None  # type: ignore[dict-item]
        assert not service.store.is_forked(LogKey(AUTHOR.node_id, C))
        assert service.store.forks() == []
        view = service.status()["witness"]["split_views"][0]
        assert view["proof"] == "unproven"
        assert view["suspects"] == [WITNESS.node_id]
        assert service.witness.to_prove(TS + 100) == []  # not asked again
    finally:
        service.close()


def test_an_unreachable_witness_is_asked_again_later(home: HomeFactory) -> None:
    service = _service(home)
    try:
        service.store.ingest(_batch(1), source="test")
        theirs = _batch(2)
        service.statements.admit([_cosign(WITNESS, theirs.hash.hex())], f"peer:{WITNESS.node_id}")
        (task,) = service.witness.to_prove(TS)
        down = {theirs.hash.hex(): {WITNESS.node_id: "unreachable: connection refused"}}
        assert service.witness.settle(task, down, TS) is None
        assert service.status()["witness"]["split_views"][0]["proof"] == "pending"
        assert service.witness.to_prove(TS + 1) == []
        assert len(service.witness.to_prove(TS + node_witness.PROOF_RETRY_S + 1)) == 1
    finally:
        service.close()


def test_a_witness_signing_two_heads_at_one_seq_is_convicted(home: HomeFactory) -> None:
    service = _service(home)
    try:
        ours = _batch(1)
        service.store.ingest(ours, source="test")
        first = _cosign(OTHER, sha256(b"one").hexdigest())
        second = _cosign(OTHER, sha256(b"two").hexdigest(), ts=TS + 5)
        done = service.statements.admit([first], f"peer:{OTHER.node_id}")
        assert done.changed == [first]
        assert len(service.witness.split_views()) == 1  # its word against our header
        done = service.statements.admit([second], f"peer:{OTHER.node_id}")
        assert second.id in done.refused and "two heads" in done.refused[second.id]
        # both signed cosigns kept as evidence, each verifying on its own
        (caught,) = service.witness.equivocations()
        assert caught["witness"] == OTHER.node_id and caught["seq"] == 1
        record = parse_canonical(caught["evidence"].encode(), "evidence")
        assert record["kind"] == "cosign-equivocation"
        bodies = {parse_statement_json(record[k], REGISTRY).body for k in ("a", "b")}
        assert {b.head for b in bodies if isinstance(b, CosignBody)} == {
            first.body.head,  # type: ignore[attr-defined]
            second.body.head,  # type: ignore[attr-defined]
        }
        # flagged, and its cosigns count for nothing in split-view decisions
        status = service.status()["witness"]
        assert [e["witness"] for e in status["equivocating_witnesses"]] == [OTHER.node_id]
        assert status["split_views"] == []
        report = service.log_witnesses(AUTHOR.node_id, C)
        assert report["equivocating_witnesses"] == [OTHER.node_id]
        assert [w["equivocating"] for w in report["witnesses"]] == [True]
        later = _cosign(OTHER, sha256(b"three").hexdigest(), seq=2, ts=TS + 9)
        assert later.id in service.statements.admit([later], f"peer:{OTHER.node_id}").refused
    finally:
        service.close()
    again = NodeService(service.home)
    try:
        assert again.witness.convicted == {OTHER.node_id}  # kept across a restart
    finally:
        again.close()


def test_cosigns_are_bounded_apart_and_never_crowd_out_a_certificate(
    home: HomeFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_statements, "MAX_STATEMENTS", 3)
    monkeypatch.setattr(node_witness, "UNKNOWN_WITNESS_COSIGNS", 4)
    monkeypatch.setattr(node_witness, "COSIGN_LOG_SLACK", 2)
    service = _service(home)
    try:
        service.store.ingest(_batch(1), source="test")  # one log held
        source = f"peer:{WITNESS.node_id}"
        # a known witness (a peer): one slot per log held, and the slack
        known = [_cosign(WITNESS, "1" * 64, author=author_key(100 + n)) for n in range(4)]
        done = service.statements.admit(known, source)
        assert len(done.changed) == 3  # 1 log + 2 slack
        assert "one per log held" in done.refused[known[3].id]
        # unknown witnesses: a small budget for all of them together
        strangers = [_cosign(author_key(120 + n), "2" * 64) for n in range(6)]
        done = service.statements.admit(strangers, source)
        assert len(done.changed) == 4
        assert all("unknown witnesses hold 4" in why for why in done.refused.values())
        # 7 cosigns held, over MAX_STATEMENTS = 3: a certificate still gets in
        org = author_key(130)
        body = CertBody(ts=TS, org=org.node_id, key=AUTHOR.node_id, not_before=TS, not_after=TS * 2)
        cert = sign_statement(body, [org], REGISTRY)
        done = service.statements.admit([cert], source)
        assert done.changed == [cert]
    finally:
        service.close()


def test_a_log_not_accepted_is_not_proven_until_it_is(home: HomeFactory) -> None:
    service = NodeService(Home(home("A")))
    try:
        service.peer_add("witness", "http://127.0.0.1:9", WITNESS.node_id, [C])
        service.peer_add("other", "http://127.0.0.1:9", OTHER.node_id, [C])
        one, two = _batch(1), _batch(2)
        source = f"peer:{WITNESS.node_id}"
        service.statements.admit([_cosign(WITNESS, one.hash.hex())], source)
        service.statements.admit([_cosign(OTHER, two.hash.hex())], f"peer:{OTHER.node_id}")
        assert service.witness.to_prove(TS) == []  # nothing to freeze: not accepted here
        assert service.status()["witness"]["split_views"][0]["proof"] == "unfollowed"
        service.trust_add(AUTHOR.node_id, C, "author")
        (task,) = service.witness.to_prove(TS)
        assert task.ours is None and set(task.claims) == {one.hash.hex(), two.hash.hex()}
        answers = {
            one.hash.hex(): {WITNESS.node_id: _signed(one)},
            two.hash.hex(): {OTHER.node_id: _signed(two)},
        }
        assert service.witness.settle(task, answers, TS) is not None  # two fetched headers
        assert service.store.is_forked(LogKey(AUTHOR.node_id, C))
    finally:
        service.close()
