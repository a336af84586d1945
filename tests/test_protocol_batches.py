"""Batches, Merkle trees, inclusion proofs and fork evidence: tamper with any byte, get refused."""

from __future__ import annotations

import json
from hashlib import sha256

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_helpers import (
    KEYS,
    MD5,
    PDQ,
    PHOTODNA,
    SHA1,
    SHA256,
    add,
    assert_every_flip_rejected,
    chain,
    mth,
    opinion,
    revoke,
)

from hashmesh.protocol.batches import (
    MAX_OPS_PER_BATCH,
    build_batch,
    encode_frame,
    iter_frames,
    verify_batch,
    verify_header,
    verify_parts,
)
from hashmesh.protocol.encoding import b64url, canonical
from hashmesh.protocol.errors import (
    BatchError,
    EncodingError,
    EvidenceError,
    LimitError,
    OpError,
    ProofError,
    ProtocolError,
    ProtocolUsageError,
    SignatureError,
)
from hashmesh.protocol.evidence import SignedHeader, build_evidence, verify_evidence
from hashmesh.protocol.merkle import (
    inclusion_path,
    leaf_hash,
    merkle_root,
    root_from_inclusion_path,
)
from hashmesh.protocol.ops import AddOp, OpId, RevokeOp, op_to_wire
from hashmesh.protocol.proofs import build_proof, verify_proof
from hashmesh.protocol.signing import CONTEXT_BATCH, CONTEXT_PEER_REQUEST, verify

KEY, OTHER = KEYS[0], KEYS[1]


def mixed_batch():  # type: ignore[no-untyped-def]
    first = build_batch(KEY, "csam-industry", 1, None, 1_700_000_000, [add(0), add(1, "sha1")])
    ops = [
        AddOp.create("md5", MD5, category="csam", classification="A1"),
        AddOp.create("sha1", SHA1, category="csam"),
        AddOp.create("sha256", SHA256, category="ncii", ref="case-17"),
        AddOp.create("pdq", PDQ, category="csam", quality=92),
        AddOp.create("photodna", PHOTODNA, category="csam"),
        revoke(first.op_id(0)),
        opinion(OpId(OTHER.node_id, "csam-industry", 1, 0), "dispute"),
    ]
    return first, build_batch(KEY, "csam-industry", 2, first.hash, 1_700_000_100, ops)


def test_batch_round_trip() -> None:
    _, batch = mixed_batch()
    again = verify_batch(batch.to_bytes())
    assert again.ops == batch.ops
    assert again.header == batch.header
    assert iter_frames(batch.to_bytes() * 2)[1] == (
        batch.header_bytes,
        batch.signature,
        batch.ops_bytes,
    )


def test_every_flipped_bit_in_a_frame_is_refused() -> None:
    _, batch = mixed_batch()
    frame = batch.to_bytes()
    tried = assert_every_flip_rejected(frame, verify_batch)
    assert tried == len(frame) * 10


def test_every_flipped_bit_in_a_header_is_refused() -> None:
    _, batch = mixed_batch()
    tried = assert_every_flip_rejected(
        batch.header_bytes, lambda h: verify_header(h, batch.signature)
    )
    assert tried == len(batch.header_bytes) * 10
    assert_every_flip_rejected(batch.signature, lambda s: verify_header(batch.header_bytes, s))


def test_truncated_or_extended_frames_refused() -> None:
    _, batch = mixed_batch()
    frame = batch.to_bytes()
    for cut in range(len(frame)):
        with pytest.raises(ProtocolError):
            verify_batch(frame[:cut])
    with pytest.raises(BatchError, match="trailing bytes"):
        verify_batch(frame + b"\0")


def test_signature_is_domain_separated() -> None:
    _, batch = mixed_batch()
    verify(KEY.node_id, CONTEXT_BATCH, batch.header_bytes, batch.signature)
    with pytest.raises(SignatureError):
        verify(KEY.node_id, CONTEXT_PEER_REQUEST, batch.header_bytes, batch.signature)
    forged = KEY.sign(CONTEXT_PEER_REQUEST, batch.header_bytes)
    with pytest.raises(SignatureError, match="does not verify"):
        verify_parts(batch.header_bytes, forged, batch.ops_bytes)


def test_other_authors_signature_refused() -> None:
    _, batch = mixed_batch()
    sig = OTHER.sign(CONTEXT_BATCH, batch.header_bytes)
    with pytest.raises(SignatureError):
        verify_parts(batch.header_bytes, sig, batch.ops_bytes)


def _signed(header: dict[str, object], ops_bytes: bytes, key=KEY) -> tuple[bytes, bytes, bytes]:  # type: ignore[no-untyped-def]
    header_bytes = canonical(header)
    return header_bytes, key.sign(CONTEXT_BATCH, header_bytes), ops_bytes


def _header_for(ops_bytes: bytes, **changes: object) -> dict[str, object]:
    lines = ops_bytes.split(b"\n")
    header: dict[str, object] = {
        "v": 1,
        "author": KEY.node_id,
        "collection": "c",
        "seq": 1,
        "prev": None,
        "ts": 0,
        "count": len(lines),
        "size": len(ops_bytes),
        "root": merkle_root(lines).hex(),
    }
    header.update(changes)
    return header


def test_validly_signed_but_malformed_batches_refused() -> None:
    good_line = canonical(op_to_wire(add(1)))
    ops_bytes = good_line
    cases: list[tuple[dict[str, object], bytes, type[ProtocolError], str]] = [
        (_header_for(ops_bytes, v=True), ops_bytes, BatchError, "header.v"),
        (_header_for(ops_bytes, v=2), ops_bytes, BatchError, "header.v"),
        (_header_for(ops_bytes, seq=2), ops_bytes, BatchError, "prev"),
        (_header_for(ops_bytes, prev="00" * 32), ops_bytes, BatchError, "prev"),
        (_header_for(ops_bytes, count=2), ops_bytes, BatchError, "header says 2"),
        (_header_for(ops_bytes, size=5), ops_bytes, BatchError, "header says 5"),
        (_header_for(ops_bytes, root="00" * 32), ops_bytes, BatchError, "Merkle root"),
        (_header_for(ops_bytes, extra=1), ops_bytes, BatchError, "extra"),
        (_header_for(ops_bytes, collection="Bad"), ops_bytes, BatchError, "collection"),
    ]
    spaced = good_line.replace(b":", b": ")
    cases.append((_header_for(spaced), spaced, EncodingError, "canonical form"))
    null_op = canonical({**op_to_wire(add(1)), "ref": None})
    cases.append((_header_for(null_op), null_op, OpError, "null is not allowed"))
    floaty = good_line[:-1] + b',"quality":1.5}'
    cases.append((_header_for(floaty), floaty, EncodingError, "floats"))
    dup = good_line[:-1] + b',"type":"md5"}'
    cases.append((_header_for(dup), dup, EncodingError, "duplicate key"))
    for header, ops, error, words in cases:
        with pytest.raises(error, match=words):
            verify_parts(*_signed(header, ops))


def test_an_op_may_not_span_two_lines() -> None:
    """Two lines that only parse when glued together, plus a line holding two ops, keep the
    op count equal to the line count; the batch must still be refused."""
    a = canonical(op_to_wire(add(1)))
    b = canonical(op_to_wire(add(2)))
    t = OpId(KEY.node_id, "c", 1, 0)
    glued = canonical({"op": "revoke", "reason": "},{", "targets": [str(t)]})
    cut = glued.index(b"},{") + 1
    ops_bytes = b"\n".join([a + b"," + b, glued[:cut], glued[cut + 1 :]])
    with pytest.raises(ProtocolError):
        verify_parts(*_signed(_header_for(ops_bytes), ops_bytes))
    member = canonical({"op": "revoke", "reason": "x", "targets": [str(t)]})
    cut = member.index(b',"targets"')
    ops_bytes = b"\n".join([a + b"," + b, member[:cut], member[cut + 1 :]])
    with pytest.raises(ProtocolError):
        verify_parts(*_signed(_header_for(ops_bytes), ops_bytes))


reasons = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@settings(max_examples=150, deadline=None)
@given(reasons, st.sampled_from(["csam", "ncii"]), st.integers(0, 100))
def test_any_canonical_op_text_is_accepted_exactly(reason: str, category: str, q: int) -> None:
    """The fast ingest path and the canonical encoder agree on every string (escapes too)."""
    ops = [
        AddOp.create("pdq", PDQ, category=category, quality=q, ref="r" + str(q)),
        RevokeOp(targets=[str(OpId(KEY.node_id, "c", 1, 0))], reason=reason),
    ]
    batch = build_batch(KEY, "c", 1, None, 0, ops)
    assert batch.ops == ops
    assert batch.ops_bytes == b"\n".join(canonical(op_to_wire(op)) for op in ops)


def test_revoking_another_authors_op_is_refused() -> None:
    # Building one is its author's mistake (ProtocolUsageError, the OpError as its cause);
    # receiving one is bad input (OpError, as test_fuzz and the ingest tests check).
    foreign = OpId(OTHER.node_id, "csam-industry", 1, 0)
    with pytest.raises(ProtocolUsageError, match="may only revoke its own adds") as refused:
        build_batch(KEY, "csam-industry", 2, b"\0" * 32, 0, [revoke(foreign)])
    assert isinstance(refused.value.__cause__, OpError)
    other_collection = OpId(KEY.node_id, "ncii", 1, 0)
    with pytest.raises(ProtocolUsageError, match="may only revoke its own adds"):
        build_batch(KEY, "csam-industry", 2, b"\0" * 32, 0, [revoke(other_collection)])
    later = OpId(KEY.node_id, "csam-industry", 2, 1)
    with pytest.raises(ProtocolUsageError, match="does not precede"):
        build_batch(KEY, "csam-industry", 2, b"\0" * 32, 0, [add(1), revoke(later)])


def test_verification_hands_on_each_revokes_parsed_targets() -> None:
    first, second = mixed_batch()
    received = verify_batch(second.to_bytes())
    revokes = {i: op for i, op in enumerate(received.ops) if isinstance(op, RevokeOp)}
    assert received.revoke_targets == {i: op.target_ids() for i, op in revokes.items()}
    assert received.revoke_targets == {5: [first.op_id(0)]}
    assert verify_batch(first.to_bytes()).revoke_targets == {}  # adds only: nothing to parse


def test_an_op_id_is_checked_whole_after_its_log_was_seen_valid() -> None:
    # OpId.parse remembers (author, collection) pairs it found valid; what it remembers
    # must never let a bad id through: a bad author, collection or number still fails.
    good = OpId(KEY.node_id, "csam-industry", 1, 0)
    assert OpId.parse(str(good)) == good
    with pytest.raises(OpError, match="collection"):
        OpId.parse(f"{KEY.node_id}/Csam!/1/0")
    with pytest.raises(OpError, match="author"):
        OpId.parse(f"{KEY.node_id[:-1]}/csam-industry/1/0")
    for number in ("01", "0", "x", "-1"):
        with pytest.raises(OpError):
            OpId.parse(f"{KEY.node_id}/csam-industry/{number}/0")
    assert OpId.parse(str(good)) == good


def test_limits() -> None:
    # Packing ops into batches is the caller's job: a bad batch is its bug, not bad input.
    with pytest.raises(ProtocolUsageError, match="exceeds"):
        build_batch(KEY, "c", 1, None, 0, [add(0)] * (MAX_OPS_PER_BATCH + 1))
    with pytest.raises(ProtocolUsageError, match="at least one op"):
        build_batch(KEY, "c", 1, None, 0, [])
    long_ops = canonical({"op": "revoke", "reason": "x" * 3000, "targets": ["a"]})
    with pytest.raises(LimitError, match="longer than"):
        verify_parts(*_signed(_header_for(long_ops), long_ops))
    with pytest.raises(LimitError):
        verify_batch(encode_frame(b"x" * 2000, b"\0" * 64, b"{}"))


# Merkle trees


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 300))
def test_iterative_root_equals_rfc6962_mth(n: int) -> None:
    leaves = [i.to_bytes(4, "big") for i in range(n)]
    assert merkle_root(leaves) == mth(leaves)


def test_known_small_roots() -> None:
    a, b, c = b"a", b"b", b"c"
    ab = sha256(b"\x01" + leaf_hash(a) + leaf_hash(b)).digest()
    assert merkle_root([a]) == leaf_hash(a)
    assert merkle_root([a, b]) == ab
    assert merkle_root([a, b, c]) == sha256(b"\x01" + ab + leaf_hash(c)).digest()


def _proves(leaf: bytes, index: int, n: int, path: list[bytes], root: bytes) -> bool:
    try:
        return root_from_inclusion_path(leaf, index, n, path) == root
    except ProofError:
        return False


@pytest.mark.parametrize("n", [*range(1, 34), 63, 64, 65, 100, 255, 256, 257])
def test_inclusion_paths_verify_for_every_index(n: int) -> None:
    leaves = [i.to_bytes(4, "big") for i in range(n)]
    hashes = [leaf_hash(x) for x in leaves]
    root = merkle_root(leaves)
    for index in range(n):
        path = inclusion_path(hashes, index)
        assert _proves(hashes[index], index, n, path, root)
        if n > 1:
            assert not _proves(hashes[index], (index + 1) % n, n, path, root)
            for size in (n - 1, n + 1, 2 * n):
                # Subtrees of equal shape share paths, so a size is wrong only when it
                # changes the path's shape; the signed header pins the real size.
                if index < size:
                    shape = len(inclusion_path([bytes(32)] * size, index))
                    if shape != len(path):
                        assert not _proves(hashes[index], index, size, path, root)
            assert not _proves(hashes[index], index, n, [*path[:-1], bytes(32)], root)
            assert not _proves(hashes[index], index, n, path[::-1], root) or len(set(path)) == 1


def test_inclusion_path_length_must_match_tree() -> None:
    hashes = [leaf_hash(bytes([i])) for i in range(10)]
    path = inclusion_path(hashes, 3)
    with pytest.raises(ProofError, match="shorter"):
        root_from_inclusion_path(hashes[3], 3, 10, path[:-1])
    with pytest.raises(ProofError, match="longer"):
        root_from_inclusion_path(hashes[3], 3, 10, [*path, bytes(32)])
    with pytest.raises(ProofError, match="outside"):
        root_from_inclusion_path(hashes[3], 10, 10, path)
    with pytest.raises(ProofError):
        root_from_inclusion_path(hashes[3], 3, 20, path)


# Inclusion proofs


def test_proof_for_every_op_verifies() -> None:
    _, batch = mixed_batch()
    for index, op in enumerate(batch.ops):
        proven = verify_proof(build_proof(batch, index))
        assert proven.op == op
        assert proven.op_id == batch.op_id(index)
        assert proven.header == batch.header


def test_proof_with_wrong_index_refused() -> None:
    _, batch = mixed_batch()
    value = json.loads(build_proof(batch, 2))
    value["index"] = 3
    with pytest.raises(ProofError, match="does not lead"):
        verify_proof(canonical(value))
    value["index"] = True
    with pytest.raises(ProofError):
        verify_proof(canonical(value))


def test_every_flipped_bit_in_a_proof_is_refused() -> None:
    _, batch = mixed_batch()
    proof = build_proof(batch, 4)
    tried = assert_every_flip_rejected(proof, verify_proof)
    assert tried == len(proof) * 10


# Fork evidence


def _forked_pair() -> tuple[SignedHeader, SignedHeader]:
    a = build_batch(KEY, "c", 1, None, 1, [add(1)])
    b = build_batch(KEY, "c", 1, None, 2, [add(1)])
    return SignedHeader(a.header_bytes, a.signature), SignedHeader(b.header_bytes, b.signature)


def test_same_seq_evidence_verifies_in_either_order() -> None:
    a, b = _forked_pair()
    one, two = build_evidence(a, b), build_evidence(b, a)
    assert one.to_bytes() == two.to_bytes()
    assert verify_evidence(one.to_bytes()).log == one.log


def test_broken_link_evidence_verifies() -> None:
    honest = chain(KEY, "c", [[add(1)], [add(2)]])
    rogue = build_batch(KEY, "c", 2, b"\x11" * 32, 5, [add(3)])
    evidence = build_evidence(
        SignedHeader(honest[0].header_bytes, honest[0].signature),
        SignedHeader(rogue.header_bytes, rogue.signature),
    )
    assert verify_evidence(evidence.to_bytes()).seq == 2


def test_non_conflicting_headers_are_not_evidence() -> None:
    honest = chain(KEY, "c", [[add(1)], [add(2)], [add(3)]])
    signed = [SignedHeader(b.header_bytes, b.signature) for b in honest]
    for a, b in [(signed[0], signed[1]), (signed[0], signed[2]), (signed[1], signed[1])]:
        with pytest.raises(EvidenceError, match="do not conflict"):
            build_evidence(a, b)
    other = build_batch(OTHER, "c", 1, None, 9, [add(1)])
    with pytest.raises(EvidenceError, match="do not conflict"):
        build_evidence(signed[0], SignedHeader(other.header_bytes, other.signature))
    forged = {
        "v": 1,
        "kind": "fork",
        "a": {"header": b64url(honest[0].header_bytes), "sig": b64url(honest[0].signature)},
        "b": {"header": b64url(honest[1].header_bytes), "sig": b64url(honest[1].signature)},
    }
    with pytest.raises(EvidenceError, match="do not conflict"):
        verify_evidence(canonical(forged))


def test_evidence_in_the_wrong_order_is_refused() -> None:
    a, b = _forked_pair()
    value = json.loads(build_evidence(a, b).to_bytes())
    value["a"], value["b"] = value["b"], value["a"]
    with pytest.raises(EvidenceError, match="canonical order"):
        verify_evidence(canonical(value))


def test_every_flipped_bit_in_evidence_is_refused() -> None:
    a, b = _forked_pair()
    data = build_evidence(a, b).to_bytes()
    tried = assert_every_flip_rejected(data, verify_evidence)
    assert tried == len(data) * 10
