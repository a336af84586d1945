"""The stored test vectors pin the wire format: same inputs, same bytes, and they verify."""

from __future__ import annotations

import importlib.util
import json
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest

from hashmesh.protocol.batches import header_hash, verify_batch
from hashmesh.protocol.encoding import b64url
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.evidence import verify_evidence
from hashmesh.protocol.merkle import leaf_hash, merkle_root
from hashmesh.protocol.proofs import verify_proof
from hashmesh.protocol.signing import CONTEXT_BATCH, SigningKey, verify
from hashmesh.protocol.state import Fork, State

VECTORS = Path(__file__).with_name("vectors")
STORED: dict[str, Any] = json.loads((VECTORS / "protocol-v1.json").read_text(encoding="utf-8"))


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("vectors_generate", VECTORS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regenerating_gives_the_stored_file_byte_for_byte() -> None:
    gen = _generator()
    stored_text = (VECTORS / "protocol-v1.json").read_text(encoding="utf-8")
    assert gen.render(gen.build_vectors()) == stored_text


def test_key_and_node_id() -> None:
    key = SigningKey(bytes.fromhex(STORED["key"]["seed_hex"]))
    assert key.public_bytes.hex() == STORED["key"]["public_key_hex"]
    assert key.node_id == "ed25519:" + b64url(key.public_bytes) == STORED["key"]["node_id"]


def test_stored_frame_verifies_and_has_the_documented_layout() -> None:
    b = STORED["batch"]
    frame = bytes.fromhex(b["frame_hex"])
    header, sig, ops = (bytes.fromhex(b[k]) for k in ("header_hex", "signature_hex", "ops_hex"))
    assert frame == (
        b"HMB1" + len(header).to_bytes(2, "big") + header + sig + len(ops).to_bytes(4, "big") + ops
    )
    batch = verify_batch(frame)
    assert batch.header_bytes == header == b["header"].encode()
    assert header_hash(header).hex() == b["header_hash_hex"] == sha256(header).hexdigest()
    assert bytes.fromhex(b["signed_message_hex"]) == CONTEXT_BATCH + b"\x00" + header
    verify(STORED["key"]["node_id"], CONTEXT_BATCH, header, sig)
    lines = [line.encode() for line in b["op_lines"]]
    assert ops == b"\n".join(lines)
    assert [leaf_hash(line).hex() for line in lines] == b["leaf_hashes_hex"]
    assert merkle_root(lines).hex() == b["merkle_root_hex"] == batch.header.root
    assert [op.op for op in batch.ops] == ["add"] * 5 + ["revoke", "opinion"]


def test_stored_proof_verifies() -> None:
    proven = verify_proof(STORED["proof"]["json"].encode())
    assert proven.op_id.index == STORED["proof"]["index"]
    assert proven.op.op == "add" and proven.op.type == "pdq"  # type: ignore[union-attr]


def test_stored_evidence_verifies_and_state_builds_the_same() -> None:
    evidence = verify_evidence(STORED["fork"]["evidence_json"].encode())
    assert evidence.id == STORED["fork"]["evidence_id"]
    state = State()
    state.receive(verify_batch(bytes.fromhex(STORED["batch"]["frame_hex"])))
    (decision,) = state.receive(verify_batch(bytes.fromhex(STORED["fork"]["rival_frame_hex"])))
    assert isinstance(decision, Fork)
    assert decision.evidence.to_bytes() == STORED["fork"]["evidence_json"].encode()


@pytest.mark.parametrize("field", ["header_hex", "ops_hex", "signature_hex"])
def test_a_changed_stored_byte_is_refused(field: str) -> None:
    b = STORED["batch"]
    frame = bytearray.fromhex(b["frame_hex"])
    offset = bytes(frame).index(bytes.fromhex(b[field]))
    frame[offset + 5] ^= 0x01
    with pytest.raises(ProtocolError):
        verify_batch(bytes(frame))


def test_opinion_reason_vector_verifies_and_follows_batch_one() -> None:
    r = STORED["opinion_reason"]
    batch = verify_batch(bytes.fromhex(r["frame_hex"]))
    assert batch.header_bytes == r["header"].encode()
    assert batch.header.prev == header_hash(STORED["batch"]["header"].encode()).hex() == r["prev"]
    assert [line.decode() for line in batch.op_lines()] == r["op_lines"]
    assert [op.reason for op in batch.ops] == ["match-spike", "reviewed: A1"]  # type: ignore[union-attr]
    state = State()
    state.receive(verify_batch(bytes.fromhex(STORED["batch"]["frame_hex"])))
    (decision,) = state.receive(batch)
    assert type(decision).__name__ == "Apply"


def test_an_opinion_without_reason_keeps_its_v1_bytes() -> None:
    from hashmesh.protocol.encoding import canonical
    from hashmesh.protocol.ops import parse_op_lines

    line = STORED["batch"]["op_lines"][6].encode()
    (op,) = parse_op_lines(line, [line])
    assert op.reason is None  # type: ignore[union-attr]
    assert canonical(op.model_dump(exclude_none=True)) == line


@pytest.mark.parametrize(
    ("reason", "why"),
    [
        ("", "1-256 characters"),
        ("a\nb", "none of them a control character"),
        ("x" * 257, "1-256 characters"),
    ],
)
def test_an_opinion_reason_out_of_bounds_is_refused_naming_the_field(reason: str, why: str) -> None:
    from hashmesh.protocol.ops import parse_op

    op = {"op": "opinion", "opinion": "dispute", "reason": reason, "target": "x"}
    with pytest.raises(ProtocolError, match=f"op\\[0\\].reason: must be .*{why}"):
        parse_op(op)
