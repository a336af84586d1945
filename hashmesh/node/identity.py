"""Peer identities as this node knows them: who answers for each configured peer now.

The facts are statements (protocol/identity.py): identity successions, certificates
(those with `replaces`, and the co-signed ones that give an org power over a key) and key
revocations. This module keeps them as the StatementBook admits them and publishes an
immutable `Identities` snapshot after each change, made on the store thread and read by
the event loop, which authenticates peer requests and responses with it: a snapshot is
replaced whole (one reference assignment), never changed in place.
"""

from __future__ import annotations

from dataclasses import dataclass

from hashmesh.node.statements import StatementBook
from hashmesh.node.store.core import now_ms
from hashmesh.protocol.certificates import KeyRevokeBody
from hashmesh.protocol.identity import IDENTITY_KINDS, Identities, Link, facts
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import Statement


class NodeIdentities:
    """The identity facts as they arrive (store thread), and the snapshot made of them.

    A change costs a snapshot only when it can change an answer: a revocation, a link, or
    a co-signature on a certificate of a key that is revoked or that an org link starts
    from; the snapshot is made of those alone, so a node holding 100,000 certificates does
    not walk them for each page of statements a peer sends."""

    def __init__(self, book: StatementBook) -> None:
        self._accepted: dict[str, set[str]] = {}
        self._revokes: dict[str, KeyRevokeBody] = {}
        self._links: dict[str, Link] = {}
        #: when each link was first held here (ms): a restart counts as learning it
        #: again, which only gives a rotated peer's old key one more minute of grace
        self._learned: dict[str, int] = {}
        self._book = book
        self.current = Identities()
        self._learn(book.all(kinds=IDENTITY_KINDS), "")
        book.listeners.append(self._learn)

    def _relevant_keys(self) -> set[str]:
        return {b.key for b in self._revokes.values()} | {
            x.key for x in self._links.values() if x.org is not None
        }

    def _learn(self, statements: list[Statement], source: str) -> None:
        accepted, revokes, links = facts(s for s in statements if s.kind.name in IDENTITY_KINDS)
        if not (accepted or revokes or links):
            return
        now = now_ms()
        changed = bool(revokes) or any(x.id not in self._links for x in links)
        for statement_id, body in revokes:
            self._revokes[statement_id] = body
        for link in links:
            self._links[link.id] = link
            self._learned.setdefault(link.id, now)
        relevant = self._relevant_keys()
        for key, orgs in accepted.items():
            held = self._accepted.setdefault(key, set())
            if not orgs <= held:
                held |= orgs
                changed = changed or key in relevant
        if changed:
            self.current = Identities.of(
                {k: frozenset(self._accepted.get(k, ())) for k in relevant},
                self._revokes.items(),
                self._links.values(),
                self._learned,
            )

    def link(self, key: str, next_key: str) -> Statement | None:
        """The identity statement handing `key` over to `next_key`, if held."""
        for link in self._links.values():
            if link.org is None and (link.key, link.next) == (key, next_key):
                return self._book.held(link.id)
        return None


@dataclass(frozen=True)
class OwnIdentity:
    """This node's identity keys: `key` signs its peer requests and responses; the
    `previous` ones (newest first) answer those who still address an old id, and sign
    the `introduction` (the identity statements from the first id to `key`) to a peer
    that does not know `key` yet."""

    key: SigningKey
    previous: tuple[SigningKey, ...] = ()
    introduction: tuple[Statement, ...] = ()
    #: every id this node has had, oldest first (a request addressed to any is ours)
    chain: tuple[str, ...] = ()
    #: the peers (configured ids) that accepted `key` before this start: no introduction
    introduced: frozenset[str] = frozenset()

    @property
    def ids(self) -> frozenset[str]:
        return frozenset([k.node_id for k in (self.key, *self.previous)] + list(self.chain))

    def by_id(self, node_id: str) -> SigningKey | None:
        return next((k for k in (self.key, *self.previous) if k.node_id == node_id), None)
