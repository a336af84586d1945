"""Write tests/vectors/bundle-v1.json: a bundle whose manifest carries membership documents.

A bundle of collection csam-industry by the writer of protocol-v1.json, one batch, with the
chain of membership versions 1 and 2 in `manifest.membership` (docs/protocol.md, "Bundles").
Fixed seeds and timestamps, deterministic Ed25519: running it again must reproduce the file
byte for byte (tests/test_protocol_bundle_vectors.py checks that). Run:
`.venv/bin/python tests/vectors/generate_bundle.py`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hashmesh.protocol.batches import build_batch
from hashmesh.protocol.bundles import encode_bundle_header
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.membership import Anchor, Document, describe, draft, resolve
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import sign_statement

OUT = Path(__file__).with_name("bundle-v1.json")
TS = 1_700_000_000
COLLECTION = "csam-industry"
STEWARD_SEEDS = [bytes([0x90 + i]) * 32 for i in range(4)]  # as in trust-v1.json
WRITER_SEED = bytes(range(0x01, 0x21))  # the author of protocol-v1.json


def build_vectors() -> dict[str, Any]:
    s = [SigningKey(seed) for seed in STEWARD_SEEDS]
    writer = SigningKey(WRITER_SEED)
    anchor = Anchor(COLLECTION, frozenset(k.node_id for k in s[:3]), 2)
    v1 = sign_statement(
        draft(COLLECTION, 1, [k.node_id for k in s[:3]], 2, [writer.node_id], [], None, TS),
        [s[0], s[1]],
        REGISTRY,
    )
    body_2 = draft(
        COLLECTION, 2, [k.node_id for k in s[1:4]], 2, [writer.node_id], [], v1.id, TS + 60
    )
    v2 = sign_statement(body_2, [s[0], s[2], s[3]], REGISTRY)  # s0 leaves, s3 joins
    ops = [{"op": "add", "type": "md5", "value": "0" * 31 + "1", "category": "csam"}]
    batch = build_batch(writer, COLLECTION, 1, None, TS * 1000, ops)
    manifest = {
        "v": 1,
        "collection": COLLECTION,
        "exporter": writer.node_id,
        "created": TS * 1000,
        "logs": [{"author": writer.node_id, "collection": COLLECTION, "head": 1}],
        "membership": [v1.to_json(), v2.to_json()],
    }
    bundle = encode_bundle_header(manifest) + batch.to_bytes()
    in_force = resolve(anchor, [Document.of(v1), Document.of(v2)])
    return {
        "description": "hashmesh bundle v1 with manifest.membership (docs/protocol.md, Bundles)",
        "anchor": {
            "collection": COLLECTION,
            "stewards": sorted(anchor.stewards),
            "threshold": anchor.threshold,
        },
        "manifest": json.loads(json.dumps(manifest)),
        "bundle_hex": bundle.hex(),
        "membership_ids": [v1.id, v2.id],
        "verify_reports": describe([Document.of(v1), Document.of(v2)]),
        "in_force": {"version": in_force.version, "writers": sorted(in_force.writers)},
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {OUT}")
