"""Write tests/vectors/protocol-v1.json: fixed inputs and the exact bytes they must produce.

Deterministic (Ed25519 signatures are deterministic), so running it again must reproduce the
file byte for byte; tests/test_protocol_vectors.py checks that, and docs/protocol.md quotes
the values. Run: `.venv/bin/python tests/vectors/generate.py`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hashmesh.protocol.batches import build_batch, header_hash
from hashmesh.protocol.evidence import SignedHeader, build_evidence
from hashmesh.protocol.ops import AddOp, OpId, OpinionOp, RevokeOp
from hashmesh.protocol.proofs import build_proof
from hashmesh.protocol.signing import SigningKey

OUT = Path(__file__).with_name("protocol-v1.json")
SEED = bytes(range(0x01, 0x21))
OTHER_SEED = bytes(range(0x21, 0x41))
COLLECTION = "csam-industry"
TS = 1_700_000_000
PHOTODNA_LIST = ",".join(str((i * 37 + 11) % 256) for i in range(144))

INPUT_OPS: list[dict[str, Any]] = [
    {
        "op": "add",
        "type": "md5",
        "value": " D41D8CD98F00B204E9800998ECF8427E ",
        "category": "csam",
        "classification": "A1",
    },
    {
        "op": "add",
        "type": "sha1",
        "value": "da39a3ee5e6b4b0d3255bfef95601890afd80709",
        "category": "csam",
    },
    {
        "op": "add",
        "type": "sha256",
        "value": "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
        "category": "ncii",
        "ref": "case-2024-0001",
    },
    {
        "op": "add",
        "type": "pdq",
        "value": "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22",
        "category": "csam",
        "quality": 90,
    },
    {"op": "add", "type": "photodna", "value": PHOTODNA_LIST, "category": "csam"},
    {"op": "revoke", "targets": ["<self>/1/0"], "reason": "test vector"},
    {"op": "opinion", "target": "<other>/1/0", "opinion": "dispute"},
]


def make_ops(key: SigningKey, other: SigningKey) -> list[AddOp | RevokeOp | OpinionOp]:
    ops: list[AddOp | RevokeOp | OpinionOp] = []
    for spec in INPUT_OPS:
        if spec["op"] == "add":
            ops.append(
                AddOp.create(
                    spec["type"],
                    spec["value"],
                    category=spec["category"],
                    quality=spec.get("quality"),
                    classification=spec.get("classification"),
                    ref=spec.get("ref"),
                )
            )
        elif spec["op"] == "revoke":
            ops.append(
                RevokeOp(targets=[str(OpId(key.node_id, COLLECTION, 1, 0))], reason=spec["reason"])
            )
        else:
            ops.append(
                OpinionOp(
                    target=str(OpId(other.node_id, COLLECTION, 1, 0)), opinion=spec["opinion"]
                )
            )
    return ops


# Opinions with the optional `reason` (a code, then free text), in batch seq 2: the v1
# vector above does not change, and an opinion without a reason keeps its exact bytes.
REASON_OPS: list[dict[str, Any]] = [
    {"op": "opinion", "target": "<other>/1/0", "opinion": "dispute", "reason": "match-spike"},
    {"op": "opinion", "target": "<other>/1/0", "opinion": "confirm", "reason": "reviewed: A1"},
]


def reason_vectors(key: SigningKey, other: SigningKey, prev: bytes) -> dict[str, Any]:
    target = str(OpId(other.node_id, COLLECTION, 1, 0))
    ops: list[AddOp | RevokeOp | OpinionOp] = [
        OpinionOp(target=target, opinion=spec["opinion"], reason=spec["reason"])
        for spec in REASON_OPS
    ]
    batch = build_batch(key, COLLECTION, 2, prev, TS + 2, ops)
    return {
        "seq": 2,
        "prev": prev.hex(),
        "ts": TS + 2,
        "input_ops": REASON_OPS,
        "op_lines": [line.decode() for line in batch.op_lines()],
        "leaf_hashes_hex": [h.hex() for h in batch.leaf_hashes],
        "merkle_root_hex": batch.header.root,
        "header": batch.header_bytes.decode(),
        "signature_hex": batch.signature.hex(),
        "frame_hex": batch.to_bytes().hex(),
    }


def build_vectors() -> dict[str, Any]:
    key, other = SigningKey(SEED), SigningKey(OTHER_SEED)
    batch = build_batch(key, COLLECTION, 1, None, TS, make_ops(key, other))
    rival = build_batch(key, COLLECTION, 1, None, TS + 1, make_ops(key, other)[:1])
    evidence = build_evidence(
        SignedHeader(batch.header_bytes, batch.signature),
        SignedHeader(rival.header_bytes, rival.signature),
    )
    proof_index = 3
    return {
        "description": "hashmesh protocol v1 test vectors; see docs/protocol.md",
        "key": {
            "seed_hex": SEED.hex(),
            "public_key_hex": key.public_bytes.hex(),
            "node_id": key.node_id,
        },
        "other_key": {"seed_hex": OTHER_SEED.hex(), "node_id": other.node_id},
        "batch": {
            "collection": COLLECTION,
            "seq": 1,
            "prev": None,
            "ts": TS,
            "input_ops": INPUT_OPS,
            "op_lines": [line.decode() for line in batch.op_lines()],
            "leaf_hashes_hex": [h.hex() for h in batch.leaf_hashes],
            "merkle_root_hex": batch.header.root,
            "header": batch.header_bytes.decode(),
            "header_hex": batch.header_bytes.hex(),
            "header_hash_hex": header_hash(batch.header_bytes).hex(),
            "signed_message_hex": (b"hashmesh/batch/v1\x00" + batch.header_bytes).hex(),
            "signature_hex": batch.signature.hex(),
            "ops_hex": batch.ops_bytes.hex(),
            "frame_hex": batch.to_bytes().hex(),
        },
        "proof": {"index": proof_index, "json": build_proof(batch, proof_index).decode()},
        "fork": {
            "rival_ts": TS + 1,
            "rival_frame_hex": rival.to_bytes().hex(),
            "evidence_json": evidence.to_bytes().decode(),
            "evidence_id": evidence.id,
        },
        "opinion_reason": reason_vectors(key, other, header_hash(batch.header_bytes)),
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {OUT}")
