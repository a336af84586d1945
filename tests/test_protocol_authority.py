"""The authority: which key may sign which seq of a log, from certificates, hand-overs and
key revocations, whatever order they arrive in."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_helpers import add

from hashmesh.protocol.authority import Authority, DropRange, Segment
from hashmesh.protocol.batches import build_batch
from hashmesh.protocol.certificates import CertBody, HandoverBody, KeyRevokeBody
from hashmesh.protocol.errors import ProtocolUsageError
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import Statement, add_signatures, merge, sign_statement

K = [SigningKey(bytes([i + 1]) * 32) for i in range(8)]
ORG, EVIL, A, B, C, X = K[0], K[1], K[2], K[3], K[4], K[5]
TS = 1_700_000_000
HEAD = "cd" * 32
ORGS = frozenset({ORG.node_id})


def cert(key: SigningKey, org: SigningKey = ORG, cosign: bool = True, **over: Any) -> Statement:
    fields: dict[str, Any] = {
        "ts": TS,
        "org": org.node_id,
        "key": key.node_id,
        "not_before": TS,
        "not_after": TS + 1000,
    }
    fields.update(over)
    statement = sign_statement(CertBody(**fields), [org], REGISTRY)
    return add_signatures(statement, [key]) if cosign else statement


def handover(
    key: SigningKey, nxt: SigningKey, seq: int, signers: list[SigningKey], **over: Any
) -> Statement:
    fields: dict[str, Any] = {
        "ts": TS,
        "author": A.node_id,
        "collection": "csam",
        "key": key.node_id,
        "next": nxt.node_id,
        "seq": seq,
        "head": HEAD,
    }
    fields.update(over)
    return sign_statement(HandoverBody(**fields), signers, REGISTRY)


def revoke(key: SigningKey, after: int, org: SigningKey = ORG, coll: str = "*") -> Statement:
    body = KeyRevokeBody(
        ts=TS, org=org.node_id, key=key.node_id, collection=coll, after=after, reason="stolen"
    )
    return sign_statement(body, [org], REGISTRY)


def code(auth: Authority, seq: int, signer: SigningKey, **kw: Any) -> str | None:
    refusal = auth.decide(A.node_id, "csam", seq, signer.node_id, TS + 10, **kw)
    return None if refusal is None else refusal.code


def test_no_statements_the_author_signs_everything() -> None:
    auth = Authority()
    with pytest.raises(ProtocolUsageError):
        auth.signer_for(A.node_id, "csam", 0)
    assert code(auth, 1, A) is None and code(auth, 10**9, A) is None
    assert code(auth, 1, B) == "not-handed-over"
    assert auth.segments(A.node_id, "csam") == [Segment(1, None, A.node_id)]
    assert auth.drop_ranges({(A.node_id, "csam"): 5}) == []


def test_certificates_against_the_header_time() -> None:
    auth = Authority([cert(A)])
    assert auth.vouchers(A.node_id, TS) == ORGS
    assert auth.vouchers(A.node_id, TS + 1000) == ORGS
    assert auth.vouchers(A.node_id, TS + 1001) == frozenset()
    assert auth.vouchers(A.node_id, TS - 1) == frozenset()

    def at(ts: int, orgs: frozenset[str] = ORGS) -> str | None:
        r = auth.decide(A.node_id, "csam", 1, A.node_id, ts, orgs)
        return None if r is None else r.code

    assert at(TS + 500) is None
    assert at(TS + 1001) == "certificate-expired"
    assert at(TS - 1) == "certificate-not-yet-valid"
    assert at(TS, frozenset({EVIL.node_id})) == "not-certified"
    # a header's ts is in milliseconds
    batch = build_batch(A, "csam", 1, None, (TS + 2000) * 1000, [add(1)])
    refusal = auth.check_header(batch.header, ORGS)
    assert refusal is not None and refusal.code == "certificate-expired"
    assert "expired at 1700001000" in refusal.reason


def test_revocation_needs_an_accepted_certificate() -> None:
    # never certified by the revoking org: no effect
    assert code(Authority([revoke(A, 3, org=EVIL)]), 4, A) is None
    # certified by the org, but the key never co-signed: any org could do that to any key
    assert code(Authority([cert(A, EVIL, cosign=False), revoke(A, 3, org=EVIL)]), 4, A) is None
    auth = Authority([cert(A), revoke(A, 3)])
    assert code(auth, 3, A) is None and code(auth, 4, A) == "revoked"
    assert auth.revocations() == [(A.node_id, "*", 3, revoke(A, 3).id)]
    refusal = auth.decide(A.node_id, "csam", 4, A.node_id, TS)
    assert refusal is not None and "revoked after seq 3" in refusal.reason


def test_lowest_revocation_bound_wins_and_scope() -> None:
    auth = Authority([cert(A), revoke(A, 9, coll="csam"), revoke(A, 5, coll="csam")])
    assert code(auth, 5, A) is None and code(auth, 6, A) == "revoked"
    auth.add(revoke(A, 2))  # "*" covers csam too, and is lower
    assert code(auth, 3, A) == "revoked"
    other = Authority([cert(A), revoke(A, 1, coll="other")])
    assert code(other, 5, A) is None
    assert other.revoked(A.node_id, "other", 2) is not None


def test_rotation_chain() -> None:
    auth = Authority([handover(A, B, 10, [A, B]), handover(B, C, 20, [B, C])])
    assert [code(auth, s, k) for s, k in [(10, A), (11, B), (20, B), (21, C)]] == [None] * 4
    assert code(auth, 11, A) == "handed-over"
    assert code(auth, 10, B) == "not-handed-over"
    assert code(auth, 21, B) == "handed-over"
    assert code(auth, 15, X) == "not-handed-over"
    assert auth.handovers(A.node_id, "csam") == [
        (A.node_id, 10, B.node_id),
        (B.node_id, 20, C.node_id),
    ]
    # another collection's log of the same author is untouched
    assert auth.decide(A.node_id, "other", 11, A.node_id, TS) is None
    # a hand-over naming a seq below the key's own first seq is void
    auth.add(handover(B, X, 5, [B, X]))
    assert code(auth, 21, C) is None and auth.conflicts() == []


def test_handover_signed_only_by_next_and_a_stranger_is_void() -> None:
    # an org that certified both keys but whose certificate of A was never co-signed
    auth = Authority(
        [cert(A, EVIL, cosign=False), cert(X, EVIL), handover(A, X, 3, [X, EVIL], org=EVIL.node_id)]
    )
    assert code(auth, 4, X) == "not-handed-over" and code(auth, 4, A) is None


def test_lost_key_handover_by_the_org() -> None:
    auth = Authority([cert(A), cert(B), handover(A, B, 7, [B, ORG], org=ORG.node_id)])
    assert code(auth, 8, B) is None and code(auth, 8, A) == "handed-over"
    # without the org's certificate of B it is void
    lost = handover(A, B, 7, [B, ORG], org=ORG.node_id)
    assert code(Authority([cert(A), lost]), 8, B) == "not-handed-over"


def test_a_revoked_key_cannot_hand_over_past_its_bound() -> None:
    auth = Authority([cert(A), revoke(A, 5), handover(A, X, 7, [A, X])])
    assert code(auth, 8, X) == code(auth, 6, A) == "revoked"
    assert auth.signer_for(A.node_id, "csam", 8) is None
    at_bound = Authority([cert(A), revoke(A, 5), handover(A, B, 5, [A, B])])
    assert code(at_bound, 6, B) is None


def test_conflicting_handovers_freeze_the_log_until_the_org_settles_it() -> None:
    legit, stolen = handover(A, B, 10, [A, B]), handover(A, X, 4, [A, X])
    auth = Authority([legit, stolen])
    assert code(auth, 4, A) is None
    assert code(auth, 5, A) == code(auth, 5, X) == code(auth, 11, B) == "conflict"
    assert auth.conflicts() == [(stolen.id, legit.id)]  # by seq
    auth.add_all([cert(A), cert(B), handover(A, B, 10, [B, ORG], org=ORG.node_id)])
    assert code(auth, 11, B) is None and code(auth, 5, X) == "not-handed-over"
    assert code(auth, 5, A) is None and auth.conflicts() == []


def test_check_head() -> None:
    auth = Authority([handover(A, B, 10, [A, B])])
    assert auth.check_head(A.node_id, "csam", 10, HEAD) is None
    refusal = auth.check_head(A.node_id, "csam", 10, "ee" * 32)
    assert refusal is not None and refusal.code == "head-mismatch"
    assert auth.check_head(A.node_id, "csam", 9, "ee" * 32) is None


def test_drop_ranges() -> None:
    auth = Authority([cert(A), revoke(A, 5)])
    log = (A.node_id, "csam")
    assert auth.drop_ranges({log: 3}) == [DropRange(*log, 1, 3, A.node_id, auth_reason(auth))]
    ranges = auth.drop_ranges({log: 9})
    assert [(r.first, r.last, r.keep) for r in ranges] == [(1, 5, A.node_id), (6, 9, None)]
    assert "revoked after seq 5" in ranges[1].reason
    rotated = Authority([handover(A, B, 4, [A, B])])
    assert [(r.first, r.last, r.keep) for r in rotated.drop_ranges({log: 9})] == [
        (1, 4, A.node_id),
        (5, 9, B.node_id),
    ]


def auth_reason(auth: Authority) -> str:
    return f"seqs 1-3 are signed by {A.node_id}"


def test_adding_is_idempotent_and_merges_signatures() -> None:
    auth = Authority()
    only_org = cert(A, cosign=False)
    assert auth.add(only_org) and not auth.add(only_org)
    assert auth.accepted(A.node_id) == frozenset()
    assert auth.add(cert(A))  # the co-signed copy: same id, one more signature
    assert auth.accepted(A.node_id) == ORGS and len(auth.statements()) == 1


POOL = [
    cert(A),
    cert(A, cosign=False),  # the same certificate before A co-signed it
    cert(B),
    cert(C, cosign=False),
    cert(A, EVIL, cosign=False),
    cert(X, EVIL),
    cert(B, not_before=TS + 2000, not_after=TS + 3000),
    revoke(A, 6),
    revoke(A, 3, coll="csam"),
    revoke(B, 15, org=EVIL),
    revoke(B, 12),
    handover(A, B, 5, [A, B]),
    handover(A, X, 3, [A, X]),
    handover(A, B, 5, [B, ORG], org=ORG.node_id),
    handover(A, B, 5, [A, B, ORG], org=ORG.node_id),  # the same, with the old key too
    handover(B, C, 12, [B, C]),
    handover(A, X, 2, [X, EVIL], org=EVIL.node_id),
]


def answers(auth: Authority) -> tuple[object, ...]:
    log = (A.node_id, "csam")
    grid = tuple(
        auth.decide(*log, seq, k.node_id, TS + 10, orgs)
        for seq in (1, 3, 4, 5, 6, 12, 13, 16)
        for k in (A, B, C, X)
        for orgs in (None, ORGS)
    )
    return (
        grid,
        tuple(auth.segments(*log)),
        tuple(auth.revocations()),
        tuple(auth.conflicts()),
        tuple(auth.drop_ranges({log: 20})),
        tuple(auth.vouchers(k.node_id, TS + 2500) for k in (A, B, C, X)),
        tuple(s.to_wire() for s in auth.statements()),
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(range(len(POOL))), min_size=1, max_size=20), st.randoms())
def test_any_order_gives_the_same_answers(picks: list[int], rnd: Any) -> None:
    chosen = [POOL[i] for i in picks]
    shuffled = list(chosen)
    rnd.shuffle(shuffled)
    one, two = Authority(chosen), Authority()
    for statement in shuffled + shuffled[: len(shuffled) // 2]:  # and repeats change nothing
        two.add(statement)
    assert answers(one) == answers(two)


def test_merge_order_does_not_matter() -> None:
    a = cert(A, cosign=False)
    b = cert(A)
    assert merge(a, b).to_wire() == merge(b, a).to_wire()
