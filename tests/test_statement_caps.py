"""The statement caps of node/statements.py on a real store and real signatures: one peer
may make the node hold at most MAX_STATEMENTS_PER_PEER statements (counted by the row's
source), the node at most MAX_STATEMENTS from peers and bundles, and a revocation in force
of a key the node trusts goes in past both, into REVOCATION_RESERVE, while a revocation of
a key nobody here relies on, or one that revokes no more than one held, does not. The caps
are lowered here (module constants) so that the boundaries take a few statements; the
same rules at their real sizes, over HTTP, are test_statement_caps_net.py's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import HomeFactory, author_key

from hashmesh.node import statements as book
from hashmesh.node.config import Home
from hashmesh.node.service import NodeService
from hashmesh.protocol.certificates import CertBody, KeyRevokeBody
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import Statement, sign_statement

C = "csam"
ORG = author_key(60)
TRUSTED = author_key(61)  # certified by ORG (co-signed), ORG trusted in C
STRANGER = author_key(62)  # certified by ORG, never co-signed: ORG has no power over it


def cert(org: SigningKey, key: SigningKey, ts: int = 1, cosign: bool = True) -> Statement:
    body = CertBody(ts=ts, org=org.node_id, key=key.node_id, not_before=0, not_after=2**40)
    return sign_statement(body, [org, key] if cosign else [org], REGISTRY)


def revoke(org: SigningKey, key: SigningKey, after: int, collection: str = "*") -> Statement:
    body = KeyRevokeBody(
        ts=2, org=org.node_id, key=key.node_id, collection=collection, after=after, reason="x"
    )
    return sign_statement(body, [org], REGISTRY)


def junk(n: int, start: int = 0) -> list[Statement]:
    """Certificates of throw-away keys by a throw-away org: what fills a store."""
    org = SigningKey(b"\x07" * 32)
    return [cert(org, SigningKey((start + i).to_bytes(32, "big")), cosign=False) for i in range(n)]


@pytest.fixture
def node(home: HomeFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[NodeService]:
    monkeypatch.setattr(book, "MAX_STATEMENTS_PER_PEER", 4)
    monkeypatch.setattr(book, "MAX_STATEMENTS", 10)
    monkeypatch.setattr(book, "REVOCATION_RESERVE", 3)
    service = NodeService(Home(home("A")))
    try:
        service.trust_add(ORG.node_id, C, kind="org")
        yield service
    finally:
        service.close()


def test_one_peer_cannot_fill_the_store_and_others_still_get_in(node: NodeService) -> None:
    statements = node.statements
    done = statements.admit(junk(6), "peer:x")
    assert done.outcomes == {"new": 4, "refused_peer_cap": 2}
    assert statements.held_from("peer:x") == 4
    # copies of what it delivered (more signatures, or the same) are no new rows: they pass
    again = statements.admit(junk(2), "peer:x")
    assert again.outcomes == {"same": 2}
    # another peer has its own budget, and a peer's certificate of a key we trust too
    other = statements.admit([*junk(2, start=100), cert(ORG, TRUSTED)], "peer:y")
    assert other.outcomes == {"new": 3}
    assert statements.held_from("peer:y") == 3
    # the count survives a restart (it is the rows' source, not a counter in memory)
    fresh = book.StatementBook(node.store, REGISTRY)
    assert fresh.held_from("peer:x") == 4 and fresh.held_from("peer:y") == 3
    # the operator's own statements are not a peer's
    assert statements.admit(junk(1, start=200), "local").outcomes == {"new": 1}


def test_a_revocation_of_a_trusted_key_goes_in_past_both_caps_and_is_bounded(
    node: NodeService,
) -> None:
    statements = node.statements
    statements.admit([cert(ORG, TRUSTED), cert(ORG, STRANGER, cosign=False)], "peer:y")
    statements.admit(junk(4), "peer:x")  # x is at its budget
    assert statements.admit(junk(1, start=50), "peer:x").outcomes == {"refused_peer_cap": 1}

    # in force (TRUSTED co-signed ORG's certificate), of a key ORG's trust covers: in
    stolen = revoke(ORG, TRUSTED, after=10)
    done = statements.admit([stolen], "peer:x")
    assert done.outcomes == {"beyond_cap": 1, "new": 1}
    assert node.authority.authority.revoked(TRUSTED.node_id, C, 11) is not None
    # one that revokes no more than the one held: under the caps like anything else
    weaker = revoke(ORG, TRUSTED, after=20)
    assert statements.admit([weaker], "peer:x").outcomes == {"refused_peer_cap": 1}
    # not in force (STRANGER never co-signed ORG's certificate): it would change nothing
    assert statements.admit([revoke(ORG, STRANGER, 0)], "peer:x").outcomes == {
        "refused_peer_cap": 1
    }
    # a throw-away org revoking a throw-away key it certified, co-signed: nobody here
    # relies on that key, so no exception either
    org, key = SigningKey(b"\x08" * 32), SigningKey(b"\x09" * 32)
    statements.admit([cert(org, key)], "local")
    assert statements.admit([revoke(org, key, 0)], "peer:x").outcomes == {"refused_peer_cap": 1}

    # the node-wide cap: full, and still a stronger revocation of a trusted key goes in,
    # until the reserve is spent (10 + 3 counted rows at most)
    statements.admit(junk(10, start=300), "peer:z")
    assert node.store.statements.count() >= book.MAX_STATEMENTS
    assert statements.admit(junk(1, start=400), "peer:w").outcomes == {"refused_full": 1}
    lower = [revoke(ORG, TRUSTED, after=a) for a in (9, 8, 7, 6)]
    outcomes = [statements.admit([r], "peer:w").outcomes for r in lower]
    held = node.store.statements.count()
    assert held == book.MAX_STATEMENTS + book.REVOCATION_RESERVE
    assert outcomes[-1] == {"refused_full": 1}
    assert all(o == {"beyond_cap": 1, "new": 1} for o in outcomes[:-1])


def test_a_valid_membership_document_goes_in_past_the_caps(node: NodeService) -> None:
    """A new version of a followed collection's membership is not kept out by a full
    table; one that is not valid from the anchor is refused by the gate before any cap."""
    from hashmesh.protocol.membership import draft

    stewards = [author_key(70 + i) for i in range(3)]
    ids = sorted(k.node_id for k in stewards)
    node.membership_follow("followed", ids, 2)
    statements = node.statements
    statements.admit(junk(4), "peer:x")
    statements.admit(junk(10, start=100), "peer:y")
    assert statements.admit(junk(1, start=200), "peer:x").outcomes == {"refused_peer_cap": 1}
    body = draft("followed", 1, ids, 2, [TRUSTED.node_id], [], None, 1_700_000_000)
    v1 = sign_statement(body, stewards[:2], REGISTRY)
    assert statements.admit([v1], "peer:x").outcomes == {"beyond_cap": 1, "new": 1}
    forged = sign_statement(body.model_copy(update={"ts": 1}), [STRANGER], REGISTRY)
    assert statements.admit([forged], "peer:x").outcomes == {"refused": 1}
    assert node.membership_show()["memberships"][0]["version"] == 1


def test_a_page_with_a_kind_this_version_does_not_know_keeps_the_rest(node: NodeService) -> None:
    """A newer peer's statement kinds must not make its whole page, and the peer, look
    invalid: the unknown one is skipped and counted, the rest verified as ever; a known
    kind that breaks its rules still refuses the page."""
    from hashmesh.protocol.encoding import b64url, canonical
    from hashmesh.protocol.errors import StatementError

    future = {
        "body": b64url(canonical({"kind": "from-a-newer-version", "v": 1})),
        "sigs": [[ORG.node_id, b64url(b"\0" * 64)]],
    }
    known = [s.to_json() for s in junk(2, start=300)]
    got = node.statements.verify_objects([known[0], future, known[1]])
    assert [s.id for s in got] == [s.id for s in junk(2, start=300)]
    assert node.statements.skipped_unknown == 1
    broken = dict(known[0], sigs=[[ORG.node_id, b64url(b"\0" * 64)]])
    with pytest.raises(StatementError, match=r"statements\[1\]"):
        node.statements.verify_objects([known[1], broken])
