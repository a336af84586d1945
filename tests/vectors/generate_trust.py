"""Write tests/vectors/trust-v1.json: membership documents and witness cosigns, as bytes.

Fixed seeds and timestamps, deterministic Ed25519: running it again must reproduce the file
byte for byte (tests/test_protocol_trust_vectors.py checks that); docs/protocol.md quotes
the values. Run: `.venv/bin/python tests/vectors/generate_trust.py`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hashlib import sha256

from hashmesh.protocol.batches import build_batch
from hashmesh.protocol.evidence import SignedHeader
from hashmesh.protocol.membership import Anchor, Document, MembershipKind, draft, resolve
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import Registry, Statement, context, sign_statement
from hashmesh.protocol.witness import (
    CosignBody,
    CosignKind,
    HeaderRequest,
    cosign_body,
    encode_header_answer,
    equivocation_evidence,
    prove_head,
    split_views,
)

OUT = Path(__file__).with_name("trust-v1.json")
REGISTRY = Registry([MembershipKind, CosignKind])
TS = 1_700_000_000
COLLECTION = "csam-industry"
STEWARD_SEEDS = [bytes([0x90 + i]) * 32 for i in range(4)]
WRITER_SEED = bytes(range(0x01, 0x21))  # the author of protocol-v1.json
ORG_SEED = bytes([0xA0]) * 32
WITNESS_SEEDS = [bytes([0xB0 + i]) * 32 for i in range(2)]


def _statement(s: Statement) -> dict[str, Any]:
    return {
        "body": s.body_bytes.decode(),
        "id": s.id,
        "signers": sorted(s.signers),
        "context": context(s.kind.name).decode(),  # signed: context || 0x00 || body
        "wire": s.to_wire().decode(),
    }


def build_vectors() -> dict[str, Any]:
    s = [SigningKey(seed) for seed in STEWARD_SEEDS]
    writer = SigningKey(WRITER_SEED).node_id
    org = SigningKey(ORG_SEED).node_id
    anchor = Anchor(COLLECTION, frozenset(k.node_id for k in s[:3]), 2)
    stewards_1 = [k.node_id for k in s[:3]]
    v1 = sign_statement(
        draft(COLLECTION, 1, stewards_1, 2, [writer], [org], None, TS), [s[0], s[1]], REGISTRY
    )
    stewards_2 = [k.node_id for k in s[1:4]]  # s0 leaves, s3 joins
    body_2 = draft(COLLECTION, 2, stewards_2, 2, [org, writer], [], v1.id, TS + 60)
    one_of_three = sign_statement(body_2, [s[0]], REGISTRY)
    v2 = sign_statement(body_2, [s[0], s[2], s[3]], REGISTRY)
    refused = resolve(anchor, [Document.of(v1), Document.of(one_of_three)])
    applied = resolve(anchor, [Document.of(v1), Document.of(v2)])

    w = [SigningKey(seed) for seed in WITNESS_SEEDS]
    head_a, head_b = "a" * 64, "b" * 64
    c1 = sign_statement(
        cosign_body(w[0].node_id, writer, COLLECTION, 7, head_a, TS), [w[0]], REGISTRY
    )
    c2 = sign_statement(
        cosign_body(w[1].node_id, writer, COLLECTION, 7, head_b, TS), [w[1]], REGISTRY
    )
    bodies = [c.body for c in (c1, c2) if isinstance(c.body, CosignBody)]
    views = split_views(bodies, lambda *_: None, "")

    # a witness backs its cosign with the author's signed header (POST /v1/peer/header)
    ops = [{"op": "add", "type": "md5", "value": "0" * 31 + "1", "category": "csam"}]
    batch = build_batch(SigningKey(WRITER_SEED), COLLECTION, 1, None, TS * 1000, ops)
    backed_head = sha256(batch.header_bytes).hexdigest()
    backed = sign_statement(
        cosign_body(w[0].node_id, writer, COLLECTION, 1, backed_head, TS), [w[0]], REGISTRY
    )
    signed = SignedHeader(batch.header_bytes, batch.signature)
    assert isinstance(backed.body, CosignBody)
    prove_head(signed, backed.body)  # the answer proves the cosign
    # the same witness signing a second head at seq 7: its two cosigns, the evidence
    again = sign_statement(
        cosign_body(w[0].node_id, writer, COLLECTION, 7, "c" * 64, TS + 30), [w[0]], REGISTRY
    )
    return {
        "description": "hashmesh trust statements v1: membership and cosign (docs/protocol.md)",
        "steward_seeds_hex": [seed.hex() for seed in STEWARD_SEEDS],
        "stewards": [k.node_id for k in s],
        "writer": writer,
        "org": org,
        "membership": {
            "anchor": {
                "collection": COLLECTION,
                "stewards": sorted(anchor.stewards),
                "threshold": 2,
            },
            "version_1": _statement(v1),
            "version_2_signed_by_one": _statement(one_of_three),
            "version_2_signed_by_one_result": {
                "version_in_force": refused.version,
                "refused_reason": refused.refused[one_of_three.id],
            },
            "version_2": _statement(v2),
            "version_2_result": {
                "version_in_force": applied.version,
                "writers": sorted(applied.writers),
                "readers": sorted(applied.readers),
            },
        },
        "cosign": {
            "witness_seeds_hex": [seed.hex() for seed in WITNESS_SEEDS],
            "first": _statement(c1),
            "first_slot": list(c1.slot or ()),
            "second": _statement(c2),
            "split_views": [v.to_json() for v in views],
        },
        "header_proof": {
            "cosign": _statement(backed),
            "request": HeaderRequest(writer, COLLECTION, 1).to_bytes().decode(),
            "answer": encode_header_answer(signed).decode(),
            "answer_not_held": encode_header_answer(None).decode(),
        },
        "equivocation": {
            "first": _statement(c1),
            "second": _statement(again),
            "evidence": equivocation_evidence(c1.to_json(), again.to_json()).decode(),
        },
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {OUT}")
