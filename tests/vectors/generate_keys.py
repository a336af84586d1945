"""Write tests/vectors/keys-v1.json: certificates, hand-overs, key revocations, a header
with a signer, and the authority's decisions on them, as bytes.

Fixed seeds and timestamps, deterministic Ed25519: running it again must reproduce the file
byte for byte (tests/test_protocol_vectors.py checks that); docs/protocol.md quotes the
values. Run: `.venv/bin/python tests/vectors/generate_keys.py`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hashmesh.protocol.authority import Authority
from hashmesh.protocol.batches import Batch, build_batch
from hashmesh.protocol.certificates import CertBody, HandoverBody, KeyRevokeBody
from hashmesh.protocol.encoding import b64url, canonical
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.kinds import REGISTRY, parse
from hashmesh.protocol.ops import AddOp
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import Statement, add_signatures, context, sign_statement

OUT = Path(__file__).with_name("keys-v1.json")
TS = 1_700_000_000  # statements: seconds; batch headers: milliseconds
COLLECTION = "csam"
ORG_SEED = bytes([0xC0]) * 32
AUTHOR_SEED = bytes(range(0x01, 0x21))  # the author of protocol-v1.json
NEXT_SEED = bytes([0xC1]) * 32
STRANGER_SEED = bytes([0xC2]) * 32


def statement_vector(s: Statement) -> dict[str, Any]:
    """A statement as the vector files show it (generate_identity.py uses it too)."""
    return {
        "body": s.body_bytes.decode(),
        "id": s.id,
        "context": context(s.kind.name).decode(),  # signed: context || 0x00 || body
        "sigs": [[signer, b64url(sig)] for signer, sig in s.sigs],
        "scope": s.scope,
        "wire": s.to_wire().decode(),
    }


def _batch(b: Batch) -> dict[str, Any]:
    return {
        "header": b.header_bytes.decode(),
        "header_hash_hex": b.hash.hex(),
        "signature_b64url": b64url(b.signature),
        "frame_hex": b.to_bytes().hex(),
    }


def refused_as(wire: bytes) -> str:
    try:
        parse(wire)
    except ProtocolError as exc:
        return f"{type(exc).__name__}: {exc}"
    raise AssertionError("expected a refusal")


def _forged(body: dict[str, Any], signer: SigningKey, kind: str) -> bytes:
    body_bytes = canonical(body)
    sig = signer.sign(context(kind), body_bytes)
    return canonical({"body": b64url(body_bytes), "sigs": [[signer.node_id, b64url(sig)]]})


def build_vectors() -> dict[str, Any]:
    org, author, nxt, stranger = (
        SigningKey(s) for s in (ORG_SEED, AUTHOR_SEED, NEXT_SEED, STRANGER_SEED)
    )

    def cert(key: SigningKey) -> Statement:
        body = CertBody(
            ts=TS,
            org=org.node_id,
            key=key.node_id,
            not_before=TS,
            not_after=TS + 365 * 86400,
            name="Hotline A",
        )
        return add_signatures(sign_statement(body, [org], REGISTRY), [key])

    cert_author, cert_next = cert(author), cert(nxt)
    cert_unaccepted = sign_statement(cert_author.body, [org], REGISTRY)

    ops = [AddOp.create("md5", "d41d8cd98f00b204e9800998ecf8427e", category="csam")]
    first = build_batch(author, COLLECTION, 1, None, (TS + 10) * 1000, ops)
    second = build_batch(
        nxt, COLLECTION, 2, first.hash, (TS + 20) * 1000, ops, author=author.node_id
    )
    handover = sign_statement(
        HandoverBody(
            ts=TS + 15,
            author=author.node_id,
            collection=COLLECTION,
            key=author.node_id,
            next=nxt.node_id,
            seq=1,
            head=first.hash.hex(),
        ),
        [author, nxt],
        REGISTRY,
    )
    lost = sign_statement(
        HandoverBody(
            ts=TS + 15,
            author=author.node_id,
            collection=COLLECTION,
            key=author.node_id,
            next=nxt.node_id,
            seq=1,
            head=first.hash.hex(),
            org=org.node_id,
        ),
        [nxt, org],
        REGISTRY,
    )
    by_org = Authority([cert_author, cert_next, lost])
    revoke = sign_statement(
        KeyRevokeBody(
            ts=TS + 30,
            org=org.node_id,
            key=nxt.node_id,
            collection="*",
            after=2,
            reason="key stolen",
        ),
        [org],
        REGISTRY,
    )
    auth = Authority([cert_author, cert_next, handover, revoke])
    a, c = author.node_id, COLLECTION
    orgs = frozenset({org.node_id})
    decisions = []
    for label, seq, signer, ts, trusted in [
        ("seq 1 by the author", 1, author, TS + 10, None),
        ("seq 2 by the author after the hand-over", 2, author, TS + 20, None),
        ("seq 2 by the next key", 2, nxt, TS + 20, None),
        ("seq 1 by the next key", 1, nxt, TS + 10, None),
        ("seq 3 by the next key after its revocation", 3, nxt, TS + 40, None),
        ("seq 2 by a stranger", 2, stranger, TS + 20, None),
        ("seq 2 by the next key, trusted by org", 2, nxt, TS + 20, orgs),
        ("seq 2 by the next key, certificate expired", 2, nxt, TS + 400 * 86400, orgs),
    ]:
        refusal = auth.decide(a, c, seq, signer.node_id, ts, trusted)
        decisions.append(
            {
                "case": label,
                "log": [a, c],
                "seq": seq,
                "signer": signer.node_id,
                "ts": ts,
                "trusted_orgs": None if trusted is None else sorted(trusted),
                "refusal": None if refusal is None else [refusal.code, refusal.reason],
            }
        )
    revoke_author = sign_statement(
        KeyRevokeBody(
            ts=TS + 30,
            org=org.node_id,
            key=author.node_id,
            collection=COLLECTION,
            after=0,
            reason="an org the key never accepted",
        ),
        [org],
        REGISTRY,
    )
    without_cosign = Authority([cert_unaccepted, revoke_author])
    hb = json.loads(handover.body_bytes)
    refusals = {
        "handover_signed_by_next_only": refused_as(_forged(hb, nxt, "handover")),
        "cert_signed_by_a_stranger": refused_as(
            _forged(json.loads(cert_author.body_bytes), stranger, "cert")
        ),
        "cert_signature_under_the_revoke_context": refused_as(
            canonical(
                {
                    "body": b64url(cert_author.body_bytes),
                    "sigs": [
                        [
                            org.node_id,
                            b64url(org.sign(context("key-revoke"), cert_author.body_bytes)),
                        ]
                    ],
                }
            )
        ),
        "unknown_kind": refused_as(_forged({**hb, "kind": "nope"}, nxt, "nope")),
        "extra_field": refused_as(_forged({**hb, "extra": 1}, nxt, "handover")),
        "revocation_without_cosigned_cert": {
            "statements": [cert_unaccepted.id, revoke_author.id],
            "key_revoke": statement_vector(revoke_author),
            "revocations_in_force": without_cosign.revocations(),
            "seq 1 by the author": without_cosign.check(a, c, 1, author.node_id, TS + 10),
        },
    }
    return {
        "description": "hashmesh key statements v1: cert, handover, key-revoke, header signer "
        "and the authority's decisions (docs/protocol.md)",
        "seeds_hex": {
            "org": ORG_SEED.hex(),
            "author": AUTHOR_SEED.hex(),
            "next": NEXT_SEED.hex(),
            "stranger": STRANGER_SEED.hex(),
        },
        "ids": {
            "org": org.node_id,
            "author": author.node_id,
            "next": nxt.node_id,
            "stranger": stranger.node_id,
        },
        "cert_author": statement_vector(cert_author),
        "cert_author_org_only": statement_vector(cert_unaccepted),
        "cert_next": statement_vector(cert_next),
        "batch_1_by_author": _batch(first),
        "handover": statement_vector(handover),
        "batch_2_by_next": _batch(second),
        "lost_key_handover": statement_vector(lost),
        "lost_key_decision_seq_2_by_next": by_org.check(a, c, 2, nxt.node_id, TS + 20),
        "lost_key_without_cosigned_cert": Authority([cert_unaccepted, cert_next, lost]).check(
            a, c, 2, nxt.node_id, TS + 20
        ),
        "key_revoke": statement_vector(revoke),
        "segments": [[s.first, s.last, s.signer, s.code] for s in auth.segments(a, c)],
        "decisions": decisions,
        "drop_ranges_head_5": [
            [r.first, r.last, r.keep, r.reason] for r in auth.drop_ranges({(a, c): 5})
        ],
        "refusals": refusals,
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {OUT}")
