"""Portable inclusion proofs: one op, its batch's signed header and a Merkle path.

A platform can hand a proof to anyone (a court, an auditor, another hotline) and they can
check, offline and without the batch, that this author published exactly this op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hashmesh.protocol.batches import Batch, Header, verify_header
from hashmesh.protocol.encoding import b64url, canonical, from_b64url, from_hex, parse_canonical
from hashmesh.protocol.errors import EncodingError, ProofError, ProtocolError
from hashmesh.protocol.merkle import (
    HASH_SIZE,
    MAX_PROOF_LENGTH,
    inclusion_path,
    leaf_hash,
    root_from_inclusion_path,
)
from hashmesh.protocol.ops import MAX_OP_BYTES, AnyOp, OpId, parse_op

MAX_PROOF_BYTES = 8192
_FIELDS = {"v", "header", "sig", "op", "index", "path"}


@dataclass(frozen=True, slots=True)
class ProvenOp:
    header: Header
    op_id: OpId
    op: AnyOp


def build_proof(batch: Batch, index: int) -> bytes:
    path = inclusion_path(batch.leaf_hashes, index)
    return canonical(
        {
            "v": 1,
            "header": b64url(batch.header_bytes),
            "sig": b64url(batch.signature),
            "op": b64url(batch.op_lines()[index]),
            "index": index,
            "path": [p.hex() for p in path],
        }
    )


def verify_proof(data: bytes) -> ProvenOp:
    """Check a proof's signature and path; return the header, op id and op it proves."""
    if len(data) > MAX_PROOF_BYTES:
        raise ProofError(f"proof: {len(data)} bytes exceeds {MAX_PROOF_BYTES}")
    value: Any = parse_canonical(data, "proof")
    if not isinstance(value, dict) or set(value) != _FIELDS:
        raise ProofError(f"proof: must be an object with exactly the fields {sorted(_FIELDS)}")
    if type(value["v"]) is not int or value["v"] != 1:
        raise ProofError("proof.v: unsupported version")
    index, path = value["index"], value["path"]
    if type(index) is not int or not isinstance(path, list) or len(path) > MAX_PROOF_LENGTH:
        raise ProofError("proof: index must be an integer and path a short list")
    try:
        header_bytes = from_b64url(value["header"], "proof.header")
        signature = from_b64url(value["sig"], "proof.sig", 64)
        op_bytes = from_b64url(value["op"], "proof.op")
        hashes = [from_hex(p, "proof.path", HASH_SIZE) for p in path]
    except EncodingError as exc:
        raise ProofError(str(exc)) from None
    if len(op_bytes) > MAX_OP_BYTES:
        raise ProofError(f"proof.op: longer than {MAX_OP_BYTES} bytes")
    header = verify_header(header_bytes, signature)
    root = root_from_inclusion_path(leaf_hash(op_bytes), index, header.count, hashes)
    if root.hex() != header.root:
        raise ProofError("proof: the path does not lead to the signed Merkle root")
    try:
        op = parse_op(parse_canonical(op_bytes, "proof.op"), "proof.op")
    except ProtocolError as exc:
        raise ProofError(str(exc)) from None
    return ProvenOp(header, OpId(header.author, header.collection, header.seq, index), op)
