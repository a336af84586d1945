"""protocol/identity.py: where a configured peer id leads (pure; vectors in
tests/vectors/identity-v1.json, real nodes in tests/test_peer_identity.py)."""

from __future__ import annotations

from itertools import pairwise

import pytest

from hashmesh.protocol.certificates import CertBody, KeyRevokeBody
from hashmesh.protocol.errors import ProtocolUsageError
from hashmesh.protocol.identity import MAX_CHAIN, Identities, IdentityBody
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import Statement, add_signatures, sign_statement


def key(n: int) -> SigningKey:
    return SigningKey(bytes([n]) * 32)


def link(a: SigningKey, b: SigningKey) -> Statement:
    return sign_statement(IdentityBody(ts=1, key=a.node_id, next=b.node_id), [a, b], REGISTRY)


def test_a_chain_of_the_bound_is_followed_and_one_longer_answers_for_nobody() -> None:
    keys = [key(n) for n in range(1, MAX_CHAIN + 3)]
    links = [link(a, b) for a, b in pairwise(keys)]
    at_bound = Identities(links[:MAX_CHAIN]).resolve(keys[0].node_id)
    assert at_bound.current == keys[MAX_CHAIN].node_id and len(at_bound.chain) == MAX_CHAIN + 1
    assert at_bound.previous == keys[MAX_CHAIN - 1].node_id
    over = Identities(links[: MAX_CHAIN + 1]).resolve(keys[0].node_id)
    assert over.current is None and f"more than {MAX_CHAIN}" in over.why
    # a cycle back to a key on the chain is not followed
    looped = Identities([link(keys[0], keys[1]), link(keys[1], keys[0])])
    assert looped.resolve(keys[0].node_id).current == keys[1].node_id


def test_a_thief_cannot_hand_on_a_revoked_identity_nor_replace_it_without_power() -> None:
    org, old, thief, stranger_org = key(40), key(41), key(42), key(43)
    cert = add_signatures(
        sign_statement(
            CertBody(ts=1, org=org.node_id, key=old.node_id, not_before=0, not_after=9),
            [org],
            REGISTRY,
        ),
        [old],
    )
    revoke = sign_statement(
        KeyRevokeBody(
            ts=2, org=org.node_id, key=old.node_id, collection="csam", after=5, reason="x"
        ),
        [org],
        REGISTRY,
    )
    handed = link(old, thief)
    assert Identities([handed]).resolve(old.node_id).current == thief.node_id
    after = Identities([handed, cert, revoke]).resolve(old.node_id)
    assert after.current is None and "revoked" in after.why  # one collection is enough
    # an org that never had old's co-signature names no replacement
    foreign = sign_statement(
        CertBody(
            ts=3,
            org=stranger_org.node_id,
            key=thief.node_id,
            not_before=0,
            not_after=9,
            replaces=old.node_id,
        ),
        [stranger_org],
        REGISTRY,
    )
    assert Identities([foreign]).resolve(old.node_id).current == old.node_id
    with pytest.raises(ProtocolUsageError, match=r"body\.replaces"):
        sign_statement(
            CertBody(
                ts=3,
                org=org.node_id,
                key=thief.node_id,
                not_before=0,
                not_after=9,
                replaces=thief.node_id,
            ),
            [org],
            REGISTRY,
        )
