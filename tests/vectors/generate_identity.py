"""Write tests/vectors/identity-v1.json: peer identity statements (an identity succession,
an org's replacement certificate) and where a configured peer id leads with them.

Fixed seeds and timestamps, deterministic Ed25519: running it again must reproduce the file
byte for byte (tests/test_protocol_vectors.py checks that); docs/protocol.md quotes the
values. Run: `.venv/bin/python tests/vectors/generate_identity.py`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate_keys import refused_as, statement_vector

from hashmesh.protocol.certificates import CertBody, KeyRevokeBody
from hashmesh.protocol.encoding import b64url, canonical
from hashmesh.protocol.identity import Identities, IdentityBody, Resolution
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import add_signatures, context, sign_statement

OUT = Path(__file__).with_name("identity-v1.json")
TS = 1_700_000_000
ORG_SEED = bytes([0xD0]) * 32
OLD_SEED = bytes([0xD1]) * 32
NEW_SEED = bytes([0xD2]) * 32
THIEF_SEED = bytes([0xD3]) * 32


def _resolved(r: Resolution) -> dict[str, Any]:
    return {"current": r.current, "chain": list(r.chain), "previous": r.previous, "why": r.why}


def build_vectors() -> dict[str, Any]:
    org, old, new, thief = (SigningKey(s) for s in (ORG_SEED, OLD_SEED, NEW_SEED, THIEF_SEED))
    succession = sign_statement(
        IdentityBody(ts=TS, key=old.node_id, next=new.node_id), [old, new], REGISTRY
    )
    cert_old = add_signatures(
        sign_statement(
            CertBody(ts=TS, org=org.node_id, key=old.node_id, not_before=TS, not_after=TS + 86400),
            [org],
            REGISTRY,
        ),
        [old],
    )
    replacement = sign_statement(
        CertBody(
            ts=TS + 60,
            org=org.node_id,
            key=new.node_id,
            not_before=TS + 60,
            not_after=TS + 86400,
            replaces=old.node_id,
        ),
        [org],
        REGISTRY,
    )
    revoke_old = sign_statement(
        KeyRevokeBody(
            ts=TS + 60,
            org=org.node_id,
            key=old.node_id,
            collection="*",
            after=0,
            reason="node key stolen",
        ),
        [org],
        REGISTRY,
    )
    by_thief = sign_statement(
        IdentityBody(ts=TS + 30, key=old.node_id, next=thief.node_id), [old, thief], REGISTRY
    )
    body = json.loads(succession.body_bytes)
    old_only = canonical(
        {
            "body": b64url(succession.body_bytes),
            "sigs": [[old.node_id, b64url(old.sign(context("identity"), succession.body_bytes))]],
        }
    )
    same = dict(body, next=old.node_id)
    same_bytes = canonical(same)
    same_wire = canonical(
        {
            "body": b64url(same_bytes),
            "sigs": [[old.node_id, b64url(old.sign(context("identity"), same_bytes))]],
        }
    )
    o = old.node_id
    cases = {
        "succession": Identities([succession]).resolve(o),
        "succession_then_revoked": Identities([succession, cert_old, revoke_old]).resolve(o),
        "revoked_without_replacement": Identities([cert_old, revoke_old]).resolve(o),
        "replaced_by_org_after_revocation": Identities([cert_old, revoke_old, replacement]).resolve(
            o
        ),
        "replacement_without_cosigned_cert": Identities(
            [sign_statement(cert_old.body, [org], REGISTRY), revoke_old, replacement]
        ).resolve(o),
        "two_successors": Identities([succession, by_thief]).resolve(o),
        "org_settles_two_successors": Identities(
            [succession, by_thief, cert_old, replacement]
        ).resolve(o),
    }
    return {
        "description": "hashmesh peer identity v1: identity statement, replacement "
        "certificate, and where a configured peer id leads (docs/protocol.md)",
        "seeds_hex": {
            "org": ORG_SEED.hex(),
            "old": OLD_SEED.hex(),
            "new": NEW_SEED.hex(),
            "thief": THIEF_SEED.hex(),
        },
        "ids": {
            "org": org.node_id,
            "old": old.node_id,
            "new": new.node_id,
            "thief": thief.node_id,
        },
        "identity": statement_vector(succession),
        "identity_by_thief": statement_vector(by_thief),
        "cert_old": statement_vector(cert_old),
        "replacement_cert": statement_vector(replacement),
        "revoke_old": statement_vector(revoke_old),
        "resolutions": {name: _resolved(r) for name, r in cases.items()},
        "refusals": {
            "identity_signed_by_old_key_only": refused_as(old_only),
            "identity_to_the_same_key": refused_as(same_wire),
        },
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {OUT}")
