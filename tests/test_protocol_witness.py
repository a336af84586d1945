"""Witness cosigns and split views (protocol/witness.py): a cosign is signed by its witness
only; two different heads for one (log, seq), from cosigns or a held header, are found
whatever order the cosigns come in, and nothing is reported when all agree."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import Registry, add_signatures, parse_statement, sign_statement
from hashmesh.protocol.witness import (
    CosignBody,
    CosignKind,
    cosign_body,
    split_views,
    witnesses,
)

REG = Registry([CosignKind])
AUTHOR = SigningKey(b"\x61" * 32).node_id
W1, W2, W3 = (SigningKey(bytes([0x70 + i]) * 32) for i in range(3))
ME = SigningKey(b"\x7f" * 32).node_id
H1, H2, H3 = ("1" * 64, "2" * 64, "3" * 64)


def cs(w: SigningKey, seq: int, head: str, collection: str = "csam") -> CosignBody:
    return cosign_body(w.node_id, AUTHOR, collection, seq, head, 1_700_000_000)


def test_a_cosign_is_signed_by_its_witness_only() -> None:
    body = cs(W1, 3, H1)
    statement = sign_statement(body, [W1], REG)
    assert parse_statement(statement.to_wire(), REG).body == body
    assert statement.scope == "csam"
    assert statement.slot == (f"cosign:{W1.node_id} {AUTHOR} csam", 3)
    with pytest.raises(Exception, match=r"refusing to sign|does not sign"):
        sign_statement(body, [W2], REG)
    with pytest.raises(Exception, match="does not sign"):
        add_signatures(statement, [W2])


def test_a_later_cosign_supersedes_by_seq() -> None:
    a = sign_statement(cs(W1, 3, H1), [W1], REG)
    b = sign_statement(cs(W1, 4, H2), [W1], REG)
    assert a.slot is not None and b.slot is not None
    assert a.slot[0] == b.slot[0] and b.slot[1] > a.slot[1]


@pytest.mark.parametrize(
    ("field", "value"),
    [("seq", 0), ("head", "A" * 64), ("witness", "ed25519:x"), ("collection", "A")],
)
def test_bad_cosigns_are_refused_naming_the_field(field: str, value: object) -> None:
    from hashmesh.protocol.encoding import canonical

    raw = cs(W1, 3, H1).model_dump()
    raw[field] = value
    with pytest.raises(ProtocolError, match=field):
        REG.parse_body(canonical(raw))


def test_two_witnesses_naming_different_heads_is_a_split_view() -> None:
    views = split_views([cs(W1, 5, H1), cs(W2, 5, H2), cs(W3, 5, H1)], lambda *k: None, ME)
    assert len(views) == 1
    view = views[0]
    assert (view.author, view.collection, view.seq) == (AUTHOR, "csam", 5)
    assert view.heads == {
        H1: tuple(sorted([W1.node_id, W3.node_id])),
        H2: (W2.node_id,),
    }
    assert view.to_json()["heads"] == [
        {"head": H1, "witnesses": sorted([W1.node_id, W3.node_id])},
        {"head": H2, "witnesses": [W2.node_id]},
    ]


def test_a_cosign_against_our_own_header_is_a_split_view() -> None:
    held = {(AUTHOR, "csam", 5): H1}
    views = split_views([cs(W2, 5, H2)], lambda a, c, s: held.get((a, c, s)), ME)
    assert [v.heads for v in views] == [{H1: (ME,), H2: (W2.node_id,)}]


def test_agreement_and_other_collections_are_not_split_views() -> None:
    held = {(AUTHOR, "csam", 5): H1}
    same = [cs(W1, 5, H1), cs(W2, 5, H1), cs(W3, 5, H2, "ncii")]
    assert split_views(same, lambda a, c, s: held.get((a, c, s)), ME) == []


def test_witness_report_against_our_copy() -> None:
    ours = {1: H3, 4: H1, 5: H2}
    lines = witnesses(
        AUTHOR,
        "csam",
        [cs(W1, 4, H1), cs(W1, 2, H3), cs(W2, 5, H3), cs(W3, 9, H1), cs(W3, 9, H1, "ncii")],
        ours.get,
        5,
        lambda w: {"org-" + w[-4:]},
    )
    got = {(line.witness, line.seq, line.agreement) for line in lines}
    assert got == {(W1.node_id, 4, "same"), (W2.node_id, 5, "different"), (W3.node_id, 9, "ahead")}
    assert all(line.orgs == ("org-" + line.witness[-4:],) for line in lines)
    assert lines[0].to_json()["agreement"] in {"same", "different", "ahead"}


SIGHTINGS = st.lists(
    st.tuples(st.sampled_from([W1, W2, W3]), st.integers(1, 3), st.sampled_from([H1, H2])),
    max_size=12,
)


@settings(max_examples=80, deadline=None)
@given(SIGHTINGS, st.randoms())
def test_split_views_depend_only_on_the_set(
    picked: list[tuple[SigningKey, int, str]], rnd: object
) -> None:
    bodies = [cs(w, s, h) for w, s, h in picked]
    shuffled = list(bodies)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    held = {(AUTHOR, "csam", 2): H1}

    def look(a: str, c: str, s: int) -> str | None:
        return held.get((a, c, s))

    assert split_views(bodies, look, ME) == split_views(shuffled + shuffled[:3], look, ME)
    # found exactly where two heads were named
    named: dict[int, set[str]] = {}
    for _, s, h in picked:
        named.setdefault(s, set()).add(h)
    if 2 in named:
        named[2].add(H1)
    assert [v.seq for v in split_views(bodies, look, ME)] == sorted(
        s for s, heads in named.items() if len(heads) > 1
    )


def test_header_requests_are_bounded_and_checked_field_by_field() -> None:
    from hashmesh.protocol.encoding import canonical
    from hashmesh.protocol.witness import (
        MAX_HEADER_REQUEST_BYTES,
        HeaderRequest,
        decode_header_answer,
        parse_header_request,
    )

    ok = HeaderRequest(AUTHOR, "csam", 3)
    assert parse_header_request(ok.to_bytes()) == ok
    good = {"v": 1, "author": AUTHOR, "collection": "csam", "seq": 3}
    bad = [
        ({**good, "v": 2}, "header request.v"),
        ({**good, "v": True}, "header request.v"),
        ({**good, "author": "nobody"}, "header request.author"),
        ({**good, "author": 7}, "header request.author"),
        ({**good, "collection": "Not A Name"}, "header request.collection"),
        ({**good, "seq": 0}, "header request.seq"),
        ({**good, "seq": "3"}, "header request.seq"),
        ({**good, "extra": 1}, "header request: must be"),
    ]
    for value, field in bad:
        with pytest.raises(ProtocolError, match=field.replace(".", r"\.")):
            parse_header_request(canonical(value))
    with pytest.raises(ProtocolError, match="exceeds"):
        parse_header_request(b" " * (MAX_HEADER_REQUEST_BYTES + 1))
    with pytest.raises(ProtocolError, match="header answer"):
        decode_header_answer(canonical({"v": 1, "header": "", "sig": "AAAA"}))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_header_answer(b"x" * 9000)
    assert decode_header_answer(canonical({"v": 1, "held": False})) is None
    for value in ({"v": 1, "held": True}, {"v": 2, "held": False}, {"v": 1, "held": 0}):
        with pytest.raises(ProtocolError, match="not held"):
            decode_header_answer(canonical(value))


def test_prove_head_refuses_what_the_cosign_does_not_name() -> None:
    from hashlib import sha256

    from hashmesh.protocol.batches import build_batch
    from hashmesh.protocol.evidence import SignedHeader
    from hashmesh.protocol.witness import prove_head

    author = SigningKey(b"\x61" * 32)
    op = {"op": "add", "type": "md5", "value": "0" * 32, "category": "csam"}
    batch = build_batch(author, "csam", 1, None, 1_700_000_000_000, [op])
    signed = SignedHeader(batch.header_bytes, batch.signature)
    head = sha256(batch.header_bytes).hexdigest()
    assert prove_head(signed, cs(W1, 1, head)).seq == 1
    with pytest.raises(ProtocolError, match="does not hash"):
        prove_head(signed, cs(W1, 1, H1))
    with pytest.raises(ProtocolError, match="seq"):
        prove_head(signed, cs(W1, 2, head))
    with pytest.raises(ProtocolError, match="another log"):
        prove_head(signed, cs(W1, 1, head, collection="other"))
    forged = SignedHeader(batch.header_bytes, bytes(64))
    with pytest.raises(ProtocolError):
        prove_head(forged, cs(W1, 1, head))


def test_split_views_ignore_convicted_witnesses_and_equivocation_is_one_seq() -> None:
    from hashmesh.protocol.witness import equivocates

    bodies = [cs(W1, 4, H1), cs(W2, 4, H2)]
    assert len(split_views(bodies, lambda *_: None, ME)) == 1
    assert split_views(bodies, lambda *_: None, ME, ignore={W2.node_id}) == []
    assert equivocates(cs(W1, 4, H1), cs(W1, 4, H2))
    assert not equivocates(cs(W1, 4, H1), cs(W1, 5, H2))  # a newer head supersedes
    assert not equivocates(cs(W1, 4, H1), cs(W2, 4, H2))  # two witnesses: a split view
    assert not equivocates(cs(W1, 4, H1), cs(W1, 4, H1))
