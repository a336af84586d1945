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


# -- keys-v1.json: certificates, hand-overs, key revocations, the header signer ------------

KEYS_STORED: dict[str, Any] = json.loads((VECTORS / "keys-v1.json").read_text(encoding="utf-8"))


def _keys_generator() -> Any:
    spec = importlib.util.spec_from_file_location("keys_generate", VECTORS / "generate_keys.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_key_statement_vectors_regenerate_byte_for_byte() -> None:
    gen = _keys_generator()
    assert gen.render(gen.build_vectors()) == (VECTORS / "keys-v1.json").read_text("utf-8")


def _key_statements() -> dict[str, Any]:
    from hashmesh.protocol.kinds import parse

    out = {}
    for name in ("cert_author", "cert_author_org_only", "cert_next", "handover", "key_revoke"):
        entry = KEYS_STORED[name]
        body = entry["body"].encode()
        # each signature checked by the framing alone (context || 0x00 || body)
        for signer, sig in entry["sigs"]:
            verify(signer, entry["context"].encode(), body, base64url_decode(sig))
        statement = parse(entry["wire"].encode())
        assert statement.id == entry["id"] == sha256(body).hexdigest()
        assert statement.body_bytes == body and statement.scope == entry["scope"]
        out[name] = statement
    return out


def base64url_decode(text: str) -> bytes:
    from hashmesh.protocol.encoding import from_b64url

    return from_b64url(text, "vector")


def test_stored_batch_with_a_signer_verifies_under_the_next_key() -> None:
    ids = KEYS_STORED["ids"]
    second = verify_batch(bytes.fromhex(KEYS_STORED["batch_2_by_next"]["frame_hex"]))
    assert second.header.author == ids["author"] and second.header.signer == ids["next"]
    first = verify_batch(bytes.fromhex(KEYS_STORED["batch_1_by_author"]["frame_hex"]))
    assert b"signer" not in first.header_bytes
    assert (
        second.header.prev
        == first.hash.hex()
        == KEYS_STORED["batch_1_by_author"]["header_hash_hex"]
    )
    handover = json.loads(KEYS_STORED["handover"]["body"])
    assert handover["head"] == first.hash.hex()


def test_stored_key_statements_give_the_stored_decisions() -> None:
    from hashmesh.protocol.authority import Authority
    from hashmesh.protocol.kinds import parse

    st = _key_statements()
    auth = Authority([st["cert_author"], st["cert_next"], st["handover"], st["key_revoke"]])
    for case in KEYS_STORED["decisions"]:
        trusted = case["trusted_orgs"]
        refusal = auth.decide(
            *case["log"],
            case["seq"],
            case["signer"],
            case["ts"],
            None if trusted is None else frozenset(trusted),
        )
        got = None if refusal is None else [refusal.code, refusal.reason]
        assert got == case["refusal"], case["case"]
    a, c = KEYS_STORED["decisions"][0]["log"]
    assert [[s.first, s.last, s.signer, s.code] for s in auth.segments(a, c)] == KEYS_STORED[
        "segments"
    ]
    held = auth.drop_ranges({(a, c): 5})
    assert [[r.first, r.last, r.keep, r.reason] for r in held] == KEYS_STORED["drop_ranges_head_5"]
    first = KEYS_STORED["batch_1_by_author"]["header_hash_hex"]
    assert auth.check_head(a, c, 1, first) is None
    lost = parse(KEYS_STORED["lost_key_handover"]["wire"].encode())
    assert lost.id == KEYS_STORED["lost_key_handover"]["id"]
    by_org = Authority([st["cert_author"], st["cert_next"], lost])
    nxt = KEYS_STORED["ids"]["next"]
    assert by_org.check(a, c, 2, nxt, 0) is KEYS_STORED["lost_key_decision_seq_2_by_next"] is None
    unaccepted = Authority([st["cert_author_org_only"], st["cert_next"], lost])
    assert unaccepted.check(a, c, 2, nxt, 0) == KEYS_STORED["lost_key_without_cosigned_cert"]
    assert "not handed over" in KEYS_STORED["lost_key_without_cosigned_cert"]
    assert auth.check_head(a, c, 1, "00" * 32) is not None


def test_stored_key_refusals() -> None:
    from hashmesh.protocol.authority import Authority
    from hashmesh.protocol.kinds import parse

    refusals = KEYS_STORED["refusals"]
    unaccepted = refusals["revocation_without_cosigned_cert"]
    st = _key_statements()
    revoke = parse(unaccepted["key_revoke"]["wire"].encode())
    auth = Authority([st["cert_author_org_only"], revoke])
    assert auth.revocations() == unaccepted["revocations_in_force"] == []
    a = KEYS_STORED["ids"]["author"]
    assert auth.check(a, "csam", 1, a, 0) is None
    # the refused envelopes are rebuilt by the generator; their messages are pinned here
    gen = _keys_generator().build_vectors()["refusals"]
    for name in (
        "handover_signed_by_next_only",
        "cert_signed_by_a_stranger",
        "cert_signature_under_the_revoke_context",
        "unknown_kind",
        "extra_field",
    ):
        assert gen[name] == refusals[name]
        assert refusals[name].split(":")[0] in {"StatementError", "SignatureError", "UnknownKind"}
    with pytest.raises(ProtocolError):
        parse(b64url(b"x").encode())


def test_protocol_md_quotes_the_stored_key_statements() -> None:
    doc = (VECTORS.parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    for name in ("cert_author", "handover", "key_revoke"):
        assert KEYS_STORED[name]["id"] in doc and KEYS_STORED[name]["body"] in doc
        for _, sig in KEYS_STORED[name]["sigs"]:
            assert sig in doc
    assert KEYS_STORED["batch_2_by_next"]["header"] in doc
    for case in KEYS_STORED["decisions"]:
        assert f"| {case['case']} | {case['seq']} |" in doc


# -- identity-v1.json: peer identity successions and replacement certificates -----------

IDENTITY_STORED: dict[str, Any] = json.loads(
    (VECTORS / "identity-v1.json").read_text(encoding="utf-8")
)


def test_identity_vectors_regenerate_byte_for_byte() -> None:
    spec = importlib.util.spec_from_file_location("identity_gen", VECTORS / "generate_identity.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.render(gen.build_vectors()) == (VECTORS / "identity-v1.json").read_text("utf-8")


def test_stored_identity_statements_lead_where_stored() -> None:
    from hashmesh.protocol.identity import Identities
    from hashmesh.protocol.kinds import parse

    st = {
        name: parse(IDENTITY_STORED[name]["wire"].encode())
        for name in ("identity", "identity_by_thief", "cert_old", "replacement_cert", "revoke_old")
    }
    for name, statement in st.items():
        entry = IDENTITY_STORED[name]
        for signer, sig in entry["sigs"]:
            verify(signer, entry["context"].encode(), entry["body"].encode(), base64url_decode(sig))
        assert statement.id == entry["id"]
    old = IDENTITY_STORED["ids"]["old"]
    got = Identities([st["identity"]]).resolve(old)
    assert got.current == IDENTITY_STORED["ids"]["new"]
    stored = IDENTITY_STORED["resolutions"]
    assert [got.current, list(got.chain)] == [
        stored["succession"]["current"],
        stored["succession"]["chain"],
    ]
    settled = Identities(
        [st["identity"], st["identity_by_thief"], st["cert_old"], st["replacement_cert"]]
    )
    assert settled.resolve(old).current == stored["org_settles_two_successors"]["current"]
    revoked = Identities([st["cert_old"], st["revoke_old"]]).resolve(old)
    assert revoked.current is None and revoked.why == stored["revoked_without_replacement"]["why"]
