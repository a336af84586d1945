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
from hashmesh.protocol.identity import IDENTITY_KINDS, Identities, IdentityBody
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import Statement, merge


class NodeIdentities:
    def __init__(self, book: StatementBook) -> None:
        self._held: dict[str, Statement] = {}
        #: when each identity statement was first held here (ms): a restart counts as
        #: learning it again, which only gives a rotated peer's old key one more grace
        self._learned: dict[str, int] = {}
        self.current = Identities()
        self._learn([s for s in book.all() if s.kind.name in IDENTITY_KINDS], "")
        book.listeners.append(self._learn)

    def _learn(self, statements: list[Statement], source: str) -> None:
        changed = False
        now = now_ms()
        for statement in statements:
            if statement.kind.name not in IDENTITY_KINDS:
                continue
            held = self._held.get(statement.id)
            self._held[statement.id] = statement if held is None else merge(held, statement)
            self._learned.setdefault(statement.id, now)
            changed = True
        if changed:
            self.current = Identities(self._held.values(), self._learned)

    def link(self, key: str, next_key: str) -> Statement | None:
        """The identity statement handing `key` over to `next_key`, if held."""
        for statement in self._held.values():
            body = statement.body
            if isinstance(body, IdentityBody) and (body.key, body.next) == (key, next_key):
                return statement
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

    @property
    def ids(self) -> frozenset[str]:
        return frozenset([k.node_id for k in (self.key, *self.previous)] + list(self.chain))

    def by_id(self, node_id: str) -> SigningKey | None:
        return next((k for k in (self.key, *self.previous) if k.node_id == node_id), None)
