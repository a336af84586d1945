"""The statement envelope and the key kinds: what verifies, and each way one is refused."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_helpers import KEYS, add

from hashmesh.protocol.batches import build_batch, header_hash, parse_header, verify_parts
from hashmesh.protocol.certificates import CertBody, HandoverBody, KeyRevokeBody
from hashmesh.protocol.encoding import b64url, canonical
from hashmesh.protocol.errors import (
    BatchError,
    EncodingError,
    LimitError,
    ProtocolError,
    ProtocolUsageError,
    SignatureError,
    StatementError,
)
from hashmesh.protocol.kinds import REGISTRY, parse
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import (
    MAX_SIGS,
    MAX_WIRE_BYTES,
    add_signatures,
    context,
    merge,
    parse_statement_json,
    sign_statement,
)

ORG, NODE, NEXT, OTHER = KEYS
TS = 1_700_000_000


def cert(**over: Any) -> CertBody:
    fields: dict[str, Any] = {
        "ts": TS,
        "org": ORG.node_id,
        "key": NODE.node_id,
        "not_before": TS,
        "not_after": TS + 86400,
    }
    fields.update(over)
    return CertBody(**fields)


def handover(**over: Any) -> HandoverBody:
    fields: dict[str, Any] = {
        "ts": TS,
        "author": NODE.node_id,
        "collection": "csam",
        "key": NODE.node_id,
        "next": NEXT.node_id,
        "seq": 3,
        "head": "ab" * 32,
    }
    fields.update(over)
    return HandoverBody(**fields)


def wire_of(body: dict[str, Any], signers: list[SigningKey], kind: str) -> bytes:
    body_bytes = canonical(body)
    sigs = sorted((k.node_id, b64url(k.sign(context(kind), body_bytes))) for k in signers)
    return canonical({"body": b64url(body_bytes), "sigs": [list(s) for s in sigs]})


def cert_dict(**over: Any) -> dict[str, Any]:
    value = cert().model_dump(exclude_none=True)
    value.update(over)
    return value


def test_cert_round_trip_and_id() -> None:
    st = sign_statement(cert(name="Hotline A"), [ORG], REGISTRY)
    again = parse(st.to_wire())
    assert again.id == st.id == hashlib.sha256(st.body_bytes).hexdigest()
    assert again.body == st.body and again.signers == {ORG.node_id}
    assert again.scope is None and again.slot is None
    # name absent when not given: one byte form
    assert b"name" not in sign_statement(cert(), [ORG], REGISTRY).body_bytes


def test_the_certified_key_may_cosign_its_certificate() -> None:
    st = sign_statement(cert(), [ORG], REGISTRY)
    both = add_signatures(st, [NODE])
    assert both.id == st.id and parse(both.to_wire()).signers == {ORG.node_id, NODE.node_id}
    with pytest.raises(StatementError, match="must be signed by its org"):
        parse(wire_of(cert_dict(), [NODE], "cert"))


def test_signature_by_wrong_key_is_refused() -> None:
    body = cert_dict()
    with pytest.raises(StatementError, match=r"sigs\[0\].*does not sign a cert"):
        parse(wire_of(body, [OTHER], "cert"))
    # right signer, but a signature over another kind's context
    body_bytes = canonical(body)
    bad = canonical(
        {
            "body": b64url(body_bytes),
            "sigs": [[ORG.node_id, b64url(ORG.sign(context("key-revoke"), body_bytes))]],
        }
    )
    with pytest.raises(SignatureError, match=r"sigs\[0\].*does not verify"):
        parse(bad)


def test_hostile_envelopes() -> None:
    good = sign_statement(cert(), [ORG], REGISTRY).to_json()
    cases: list[tuple[Any, type[ProtocolError], str]] = [
        ([], StatementError, "must be a JSON object"),
        ({**good, "x": 1}, StatementError, r"statement\.x: unknown field"),
        ({"sigs": good["sigs"]}, StatementError, r"statement\.body: missing"),
        ({"body": good["body"]}, StatementError, r"statement\.sigs: missing"),
        ({**good, "sigs": []}, StatementError, "at least one signature"),
        ({**good, "sigs": [good["sigs"][0]] * 2}, StatementError, "duplicate signer"),
        ({**good, "sigs": [good["sigs"][0]] * (MAX_SIGS + 1)}, LimitError, "exceeds 16"),
        ({**good, "sigs": [[ORG.node_id]]}, StatementError, r"sigs\[0\]: must be"),
        ({**good, "sigs": [["nope", "AA"]]}, SignatureError, r"sigs\[0\] signer"),
        ({**good, "body": 5}, StatementError, r"statement\.body: must be a base64url"),
        ({**good, "body": "A" * 30_000}, LimitError, r"statement\.body: more than 16384"),
        ({**good, "body": "!!"}, EncodingError, r"statement\.body"),
    ]
    for value, exc, pattern in cases:
        with pytest.raises(exc, match=pattern):
            parse_statement_json(value, REGISTRY)
    with pytest.raises(LimitError, match="exceeds 32768"):
        parse(b" " * (MAX_WIRE_BYTES + 1))


@pytest.mark.parametrize(
    ("over", "pattern"),
    [
        ({"kind": "nope"}, r"body\.kind: unknown kind 'nope'"),
        ({"kind": 1}, r"body\.kind: must be a string"),
        ({"v": 2}, r"body\.v: must be the integer 1"),
        ({"v": True}, r"body\.v: must be the integer 1"),
        ({"extra": 1}, r"body\.extra: Extra inputs"),
        ({"ts": "1"}, r"body\.ts"),
        ({"ts": -1}, r"body\.ts"),
        ({"not_after": 2**53}, r"integer .* outside"),
        ({"not_after": TS - 1}, r"body\.not_after: before not_before"),
        ({"name": None}, r"body\.name: absent when not given"),
        ({"name": "x" * 129}, r"body\.name"),
        ({"key": "ed25519:AAAA"}, r"body\.key"),
        ({"key": ORG.node_id}, r"body\.key: an org key does not certify itself"),
    ],
)
def test_hostile_cert_bodies(over: dict[str, Any], pattern: str) -> None:
    with pytest.raises(ProtocolError, match=pattern):
        parse(wire_of(cert_dict(**over), [ORG], "cert"))


def test_huge_body_refused_before_parsing() -> None:
    body = cert_dict(name="x" * 20_000)
    with pytest.raises(LimitError):
        parse_statement_json(
            {"body": b64url(canonical(body)), "sigs": [[ORG.node_id, "A" * 86]]}, REGISTRY
        )


def test_handover_needs_next_and_another_signer() -> None:
    st = sign_statement(handover(), [NODE, NEXT], REGISTRY)
    body = json.loads(st.body_bytes)
    assert "org" not in body and parse(st.to_wire()).scope == "csam"
    with pytest.raises(StatementError, match="signed by its next key"):
        parse(wire_of(body, [NODE], "handover"))
    with pytest.raises(StatementError, match="also be signed by its key"):
        parse(wire_of(body, [NEXT], "handover"))
    # nobody else signs: a junk signature cannot take one of the 16 places
    with pytest.raises(StatementError, match=r"sigs\[\d\]: .* does not sign a handover"):
        parse(wire_of(body, [NODE, NEXT, OTHER], "handover"))
    with pytest.raises(StatementError, match="does not sign a handover"):
        parse(wire_of(body, [NEXT, ORG], "handover"))
    # the lost-key path: next and the org the body names (whether it may: the authority)
    lost = {**body, "org": ORG.node_id}
    assert parse(wire_of(lost, [NEXT, ORG], "handover")).signers == {NEXT.node_id, ORG.node_id}
    with pytest.raises(StatementError, match=r"body\.org: the org signs for another key"):
        parse(wire_of({**body, "org": NEXT.node_id}, [NEXT, NODE], "handover"))
    with pytest.raises(StatementError, match=r"body\.org: absent when not given"):
        parse(wire_of({**body, "org": None}, [NEXT, NODE], "handover"))
    with pytest.raises(ProtocolUsageError, match="refusing to sign"):
        sign_statement(handover(), [NEXT], REGISTRY)
    with pytest.raises(StatementError, match=r"body\.next: the same key"):
        parse(wire_of({**body, "next": NODE.node_id}, [NODE], "handover"))
    with pytest.raises(ProtocolError, match=r"body\.head"):
        parse(wire_of({**body, "head": "AB" * 32}, [NODE, NEXT], "handover"))
    with pytest.raises(ProtocolError, match=r"body\.seq"):
        parse(wire_of({**body, "seq": 0}, [NODE, NEXT], "handover"))


def test_revoke_scope_and_signer() -> None:
    body = KeyRevokeBody(
        ts=TS, org=ORG.node_id, key=NODE.node_id, collection="*", after=5, reason="stolen"
    )
    st = sign_statement(body, [ORG], REGISTRY)
    assert st.scope is None
    scoped = sign_statement(body.model_copy(update={"collection": "csam"}), [ORG], REGISTRY)
    assert scoped.scope == "csam"
    with pytest.raises(ProtocolError, match=r"body\.collection"):
        parse(wire_of({**body.model_dump(), "collection": "**"}, [ORG], "key-revoke"))


def test_cosigning_keeps_the_id_and_merge_is_a_union() -> None:
    a = sign_statement(handover(org=ORG.node_id), [NODE, NEXT], REGISTRY)
    with_org = add_signatures(a, [ORG])
    assert with_org.id == a.id and with_org.signers == {NODE.node_id, NEXT.node_id, ORG.node_id}
    assert [s for s, _ in with_org.sigs] == sorted(with_org.signers)
    only_org_copy = parse(wire_of(json.loads(a.body_bytes), [NEXT, ORG], "handover"))
    assert merge(a, only_org_copy).to_wire() == merge(only_org_copy, a).to_wire()
    assert merge(a, only_org_copy).signers == with_org.signers
    assert parse(merge(a, only_org_copy).to_wire()).id == a.id
    with pytest.raises(ProtocolUsageError):
        merge(a, sign_statement(cert(), [ORG], REGISTRY))
    with pytest.raises(ProtocolUsageError, match="does not sign a cert"):
        add_signatures(sign_statement(cert(), [ORG], REGISTRY), [OTHER])


def test_header_signer() -> None:
    old = build_batch(NODE, "csam", 1, None, TS, [add(1)])
    assert b"signer" not in old.header_bytes and old.header.signer is None
    continued = build_batch(NEXT, "csam", 2, old.hash, TS, [add(2)], author=NODE.node_id)
    assert continued.header.author == NODE.node_id
    assert continued.header.signer == NEXT.node_id == continued.header.signed_by
    assert continued.op_id(0).author == NODE.node_id  # op ids name the log, not the key
    verify_parts(continued.header_bytes, continued.signature, continued.ops_bytes)
    # author signing its own log with author= given: no signer field
    same = build_batch(NODE, "csam", 1, None, TS, [add(1)], author=NODE.node_id)
    assert same.header_bytes == old.header_bytes
    # the signature is checked against the signer, not the author
    forged = NODE.sign(b"hashmesh/batch/v1", continued.header_bytes)
    with pytest.raises(SignatureError):
        verify_parts(continued.header_bytes, forged, continued.ops_bytes)
    value = json.loads(old.header_bytes)
    for signer, pattern in [
        (None, "never null"),
        (NODE.node_id, "absent when the author signs"),
        ("ed25519:AAAA", r"batch header\.signer"),
        (5, r"batch header\.signer"),
    ]:
        with pytest.raises(ProtocolError, match=pattern):
            parse_header(canonical({**value, "signer": signer}))
    assert header_hash(old.header_bytes) == old.hash
    assert isinstance(BatchError("x"), ProtocolError)


_SEED_WIRES = [
    sign_statement(cert(name="Hotline A"), [ORG], REGISTRY).to_wire(),
    add_signatures(
        sign_statement(handover(org=ORG.node_id), [NODE, NEXT], REGISTRY), [ORG]
    ).to_wire(),
]


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(_SEED_WIRES),
    st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1, max_size=4),
)
def test_mutated_wire_bytes_give_only_protocol_errors(wire: bytes, edits: list[Any]) -> None:
    data = bytearray(wire)
    for pos, byte in edits:
        data[pos % len(data)] = byte
    try:
        parse(bytes(data))
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["kind", "v", "ts", "org", "key", "not_before", "not_after", "name", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**60), 2**60),
            st.text(max_size=80),
            st.just(ORG.node_id),
            st.just("cert"),
            st.lists(st.integers(), max_size=3),
        ),
    )
)
def test_hostile_bodies_give_only_protocol_errors(body: dict[str, Any]) -> None:
    try:
        wire = wire_of(body, [ORG], "cert")
    except ProtocolError:
        return  # not even encodable (a huge integer)
    try:
        statement = parse(wire)
    except ProtocolError:
        return
    assert isinstance(statement.body, CertBody)  # it parsed: then it is a whole certificate
