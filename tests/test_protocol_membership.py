"""Signed collection membership (protocol/membership.py): thresholds of the previous and
the new stewards, the pinned anchor, prev links, versions that never go back, replays that
change nothing, and a result that depends only on the set of documents held."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashmesh.protocol.errors import ProtocolError, StatementError
from hashmesh.protocol.membership import (
    Anchor,
    Document,
    MembershipBody,
    MembershipError,
    MembershipKind,
    admit,
    check_successor,
    draft,
    order_for_admission,
    resolve,
    trim,
)
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import (
    Registry,
    Statement,
    add_signatures,
    encode_body,
    parse_statement,
    sign_statement,
)

REG = Registry([MembershipKind])
C = "csam"
ORGS = [SigningKey(bytes([i]) * 32) for i in range(1, 8)]
A, B, S3, D, E = ORGS[:5]  # A, B, S3: version 1's stewards; D, E: later ones
NODE_X = SigningKey(b"\x51" * 32).node_id
NODE_Y = SigningKey(b"\x52" * 32).node_id
NODE_Z = SigningKey(b"\x53" * 32).node_id
ANCHOR = Anchor(C, frozenset(k.node_id for k in (A, B, S3)), 2)


def ids(*keys: SigningKey) -> list[str]:
    return [k.node_id for k in keys]


def doc(
    version: int,
    prev: Statement | None,
    signers: list[SigningKey],
    stewards: list[SigningKey] = [A, B, S3],  # noqa: B006 (read only)
    threshold: int = 2,
    writers: list[str] | None = None,
    readers: list[str] | None = None,
    collection: str = C,
) -> Statement:
    body = draft(
        collection,
        version,
        ids(*stewards),
        threshold,
        writers if writers is not None else [NODE_X],
        readers if readers is not None else [],
        prev.id if prev is not None else None,
        1_700_000_000 + version,
    )
    return sign_statement(body, signers, REG)


def d(statement: Statement) -> Document:
    return Document.of(statement)


V1 = doc(1, None, [A, B], writers=[NODE_X])
V2 = doc(2, V1, [A, S3], writers=[NODE_X, NODE_Y])
# version 3 rotates the stewards to B, D, E with threshold 2: needs 2 of v2's and 2 of its own
V3 = doc(3, V2, [A, B, D], stewards=[B, D, E], writers=[NODE_Y, NODE_Z])
CHAIN = [V1, V2, V3]


def test_version_1_needs_the_pinned_threshold() -> None:
    one = doc(1, None, [A])
    result = resolve(ANCHOR, [d(one)])
    assert result.version == 0 and not result.may_write(NODE_X)
    assert "signed by 1 of the pinned stewards, needs 2 of 3" in result.refused[one.id]
    assert resolve(ANCHOR, [d(V1)]).version == 1


def test_a_change_signed_by_one_of_three_stewards_is_refused_by_two_applied() -> None:
    one = doc(2, V1, [A], writers=[NODE_Y])
    refused = resolve(ANCHOR, [d(V1), d(one)])
    assert refused.version == 1 and refused.may_write(NODE_X) and not refused.may_write(NODE_Y)
    assert "signed by 1 of the stewards of version 1, needs 2 of 3" in refused.refused[one.id]
    assert admit(ANCHOR, [d(V1)], d(one)) is not None
    two = Document.of(add_signatures(one, [B]))
    assert two.id == one.id  # a co-signature keeps the id
    assert admit(ANCHOR, [d(V1)], two) is None
    applied = resolve(ANCHOR, [d(V1), two])
    assert applied.version == 2 and applied.may_write(NODE_Y) and not applied.may_write(NODE_X)


def test_copies_merge_their_signers() -> None:
    one_a = Document.of(doc(2, V1, [A], writers=[NODE_Y]))
    one_b = Document.of(doc(2, V1, [B], writers=[NODE_Y]))
    assert one_a.id == one_b.id
    assert resolve(ANCHOR, [d(V1), one_a, one_b]).version == 2


def test_rotation_needs_the_old_and_the_new_stewards() -> None:
    assert resolve(ANCHOR, map(d, CHAIN)).version == 3
    only_old = doc(3, V2, [A, B], stewards=[B, D, E], writers=[NODE_Y, NODE_Z])
    result = resolve(ANCHOR, [d(V1), d(V2), d(only_old)])
    assert result.version == 2
    assert "signed by 1 of its own stewards, needs 2 of 3" in result.refused[only_old.id]
    only_new = doc(3, V2, [D, E], stewards=[B, D, E], writers=[NODE_Y, NODE_Z])
    result = resolve(ANCHOR, [d(V1), d(V2), d(only_new)])
    assert result.version == 2
    assert "signed by 0 of the stewards of version 2, needs 2 of 3" in result.refused[only_new.id]
    # after the rotation the old stewards alone can change nothing
    v4_old = doc(4, V3, [A, S3], writers=[NODE_X])
    assert resolve(ANCHOR, [*map(d, CHAIN), d(v4_old)]).version == 3
    v4 = doc(4, V3, [D, E], stewards=[B, D, E], writers=[NODE_X])
    assert resolve(ANCHOR, [*map(d, CHAIN), d(v4)]).version == 4


def test_replaying_an_old_document_changes_nothing() -> None:
    now = resolve(ANCHOR, map(d, CHAIN))
    for old in (V1, V2, V3):
        again = resolve(ANCHOR, [*map(d, CHAIN), d(old)])
        assert again.tips == now.tips and again.writers == now.writers
        assert admit(ANCHOR, map(d, CHAIN), d(old)) is None  # a copy: nothing new
    # an old version re-signed with a different body (a new id) does not follow anything
    other_v2 = doc(2, V1, [A, B], writers=[NODE_X, NODE_Z])
    result = resolve(ANCHOR, [*map(d, CHAIN), d(other_v2)])
    assert result.version == 3 and result.writers == frozenset([NODE_Y, NODE_Z])


def test_prev_must_name_the_previous_version() -> None:
    skip = doc(3, V1, [A, B], writers=[NODE_Z])
    result = resolve(ANCHOR, [d(V1), d(skip)])
    assert result.version == 1
    assert "does not follow version 1" in result.refused[skip.id]
    dangling = doc(2, V3, [A, B])  # version 2 naming a document that is not version 1
    assert resolve(ANCHOR, [d(V1), d(V3), d(dangling)]).version == 1
    with pytest.raises(MembershipError, match="not the id of version 1"):
        check_successor(d(doc(2, V2, [A, B])), d(V1))


def test_another_collections_document_is_refused() -> None:
    other = doc(1, None, [A, B], collection="ncii")
    result = resolve(ANCHOR, [d(other)])
    assert result.version == 0 and "is not followed" in result.refused[other.id]


def test_two_valid_documents_at_one_version_grant_only_what_both_grant() -> None:
    left = doc(2, V1, [A, B], writers=[NODE_X, NODE_Y], readers=[NODE_Z])
    right = doc(2, V1, [B, S3], writers=[NODE_Y, NODE_Z], readers=[NODE_Z])
    result = resolve(ANCHOR, map(d, [V1, left, right]))
    assert result.conflict is not None and result.conflict.version == 2
    assert set(result.conflict.ids) == {left.id, right.id}
    assert result.document is None
    assert result.writers == frozenset([NODE_Y])
    assert result.may_read(NODE_Z) and not result.may_write(NODE_X)
    # the stewards resolve it by signing version 3 on one branch
    v3 = doc(3, left, [A, B], writers=[NODE_X])
    resolved = resolve(ANCHOR, map(d, [V1, left, right, v3]))
    assert resolved.conflict is None and resolved.version == 3 and resolved.may_write(NODE_X)


def test_org_members_cover_the_keys_they_certified() -> None:
    org = ORGS[5].node_id
    v1 = doc(1, None, [A, B], writers=[org], readers=[NODE_Z])
    result = resolve(ANCHOR, [d(v1)])
    vouch = {NODE_X: {org}}
    assert result.may_write(NODE_X, lambda key: vouch.get(key, set()))
    assert not result.may_write(NODE_X)  # without the org lookup: node ids only
    assert not result.may_write(NODE_Y, lambda key: vouch.get(key, set()))
    assert result.may_read(NODE_X, lambda key: vouch.get(key, set()))  # a writer reads
    assert result.may_read(NODE_Z) and not result.may_write(NODE_Z)


def test_noise_signatures_are_trimmed() -> None:
    noisy = add_signatures(V2, ORGS[5:7])
    assert len(noisy.sigs) == 4
    trimmed = trim(noisy, d(V1))
    assert trimmed.signers == {A.node_id, S3.node_id} and trimmed.id == V2.id
    assert parse_statement(trimmed.to_wire(), REG).id == V2.id


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"stewards": []}, "stewards"),
        ({"threshold": 4}, "threshold"),
        ({"threshold": 0}, "threshold"),
        ({"version": 0}, "version"),
        ({"prev": None, "version": 2}, "prev"),
        ({"prev": "00" * 32, "version": 1}, "prev"),
        ({"writers": sorted([NODE_X, NODE_Y], reverse=True)}, "writers"),
        ({"readers": [NODE_X, NODE_X]}, "readers"),
        ({"collection": "Not A Name"}, "collection"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_bodies_are_refused_naming_the_field(change: dict[str, object], field: str) -> None:
    value = V1.body.model_dump()
    value.update(change)
    from hashmesh.protocol.encoding import canonical

    with pytest.raises(ProtocolError, match=field):
        REG.parse_body(canonical(value))


def test_a_steward_id_that_is_no_key_is_refused() -> None:
    value = V1.body.model_dump()
    value["stewards"] = ["ed25519:" + "A" * 43]
    from hashmesh.protocol.encoding import canonical

    with pytest.raises(ProtocolError, match="stewards"):
        REG.parse_body(canonical(value))


def test_draft_sorts_and_names_bad_fields() -> None:
    body = draft(C, 1, ids(B, A), 1, [NODE_Y, NODE_X, NODE_X], [], None, 5)
    assert body.writers == sorted([NODE_X, NODE_Y]) and body.stewards == sorted(ids(A, B))
    with pytest.raises(StatementError, match="threshold"):
        draft(C, 1, ids(A), 2, [], [], None, 5)
    assert isinstance(REG.parse_body(encode_body(body))[1], MembershipBody)


def test_scope_and_slot() -> None:
    assert V1.scope == C and V1.slot is None


EXTRA = [
    doc(2, V1, [A], writers=[NODE_Z]),  # one steward: never valid
    doc(2, V1, [A, B], writers=[NODE_X, NODE_Z]),  # a valid rival of V2 (a conflict)
    doc(4, V3, [D, E], stewards=[B, D, E], writers=[NODE_X]),
    doc(1, None, [A, B], collection="ncii"),
]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([*CHAIN, *EXTRA]), max_size=10), st.randoms())
def test_the_result_depends_only_on_the_set(picked: list[Statement], rnd: object) -> None:
    docs = [d(s) for s in picked]
    shuffled = list(docs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    a = resolve(ANCHOR, docs)
    b = resolve(ANCHOR, shuffled + shuffled[:2])
    assert (a.tips, a.writers, a.readers, a.conflict, dict(a.refused)) == (
        b.tips,
        b.writers,
        b.readers,
        b.conflict,
        dict(b.refused),
    )
    # admitting one at a time, parents first, keeps exactly the valid ones
    held: list[Document] = []
    for one in order_for_admission(shuffled):
        if admit(ANCHOR, held, one) is None and all(h.id != one.id for h in held):
            held.append(one)
    assert {h.id for h in held} == {x.id for x in a.chain}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([*CHAIN, *EXTRA]), max_size=8), st.sampled_from([*CHAIN, *EXTRA]))
def test_adding_a_document_never_lowers_the_version(
    picked: list[Statement], new: Statement
) -> None:
    before = resolve(ANCHOR, map(d, picked))
    after = resolve(ANCHOR, [*map(d, picked), d(new)])
    assert after.version >= before.version
