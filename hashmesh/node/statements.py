"""The node's statements: verified before anything is stored, stored in one transaction per
page, and announced to whoever acts on them (gossip, the authority, the index).

Every way a statement arrives goes through `StatementBook.admit`: the operator's
`key certificate add` / `key revocation add`, a peer's fetched page or push, a bundle. All
of a page is verified first (protocol/statements.py: body, bounds, every signature), so a
page with one bad statement changes nothing; then it is stored (store/statements.py:
merging signatures, superseding by slot) and the new ones are handed to the listeners.

Whether a stored statement has any effect (a revocation by an org that never certified the
key does nothing) is the authority's decision, not this module's: a statement is kept and
relayed when its envelope verifies, as batches are kept when their signature does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from hashmesh.node.store.core import Store
from hashmesh.node.store.statements import StatementRow
from hashmesh.protocol.encoding import parse_canonical
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.statements import (
    Registry,
    Statement,
    merge,
    parse_statement,
    parse_statement_json,
)

log = logging.getLogger("hashmesh.statements")

#: Kinds that change what is accepted at once: gossiped with priority (every round woken).
URGENT_KINDS = frozenset({"key-revoke", "handover", "cert"})
#: What a node holds from all peers together; past it a peer's new statements are refused
#: (a peer could otherwise fill the database with statements of throw-away keys).
MAX_STATEMENTS = 100_000

StatementListener = Callable[[list[Statement], str], None]
#: A gate sees a verified page before it is stored (the statements, their source) and
#: returns those to keep and, per refused id, why: a membership document that does not
#: chain to the node's anchor is refused there (node/membership.py).
Gate = Callable[[list[Statement], str], tuple[list[Statement], dict[str, str]]]


@dataclass
class Admitted:
    """What one admit did: the statements that were new or gained signatures, in order,
    and per outcome the count."""

    changed: list[Statement] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # id -> why (a gate's reason)

    def to_json(self) -> dict[str, Any]:
        return {
            "outcomes": dict(sorted(self.outcomes.items())),
            "changed": [{"id": s.id, "kind": s.kind.name} for s in self.changed],
            "refused": dict(sorted(self.refused.items())),
        }


def row_of(statement: Statement, source: str) -> StatementRow:
    slot = statement.slot
    return StatementRow(
        statement.id,
        statement.kind.name,
        statement.scope,
        None if slot is None else slot[0],
        0 if slot is None else slot[1],
        statement.to_wire(),
        source=source,
    )


class StatementBook:
    """The statements of one node's store (store thread only, like the store)."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store = store
        self.registry = registry
        self.listeners: list[StatementListener] = []
        self.gates: list[Gate] = []
        #: Kinds a gate bounds on their own (cosigns: node/witness.py), neither counted
        #: towards MAX_STATEMENTS nor refused by it, so they never crowd out the rest.
        self.counted_apart: set[str] = set()

    def _merge(self, held: bytes, new: bytes) -> bytes:
        return merge(
            parse_statement(held, self.registry), parse_statement(new, self.registry)
        ).to_wire()

    def verify_objects(self, objects: list[Any]) -> list[Statement]:
        """Pure: every object verified, or the first fault raised (ProtocolError naming its
        position and field). Runs on any thread."""
        out = []
        for n, value in enumerate(objects):
            try:
                out.append(parse_statement_json(value, self.registry))
            except ProtocolError as exc:
                raise type(exc)(f"statements[{n}]: {exc}") from None
        return out

    def verify_wire(self, wire: bytes) -> Statement:
        return parse_statement(wire, self.registry)

    def admit(self, statements: list[Statement], source: str) -> Admitted:
        """Store verified statements, all in one transaction; listeners hear of the changed
        ones after the commit."""
        done = Admitted()
        for gate in self.gates:
            statements, refused = gate(statements, source)
            done.refused.update(refused)
        if done.refused:
            done.outcomes["refused"] = len(done.refused)
            for statement_id, why in sorted(done.refused.items()):
                log.warning("refused statement %s from %s: %s", statement_id, source, why)
        if not statements:
            return done
        table = self.store.statements
        held = table.count() - sum(table.count(k) for k in self.counted_apart)
        if source != "local" and held >= MAX_STATEMENTS:
            fresh = [
                s
                for s in statements
                if s.kind.name not in self.counted_apart and table.get(s.id) is None
            ]
            if fresh:
                log.warning(
                    "refused %d statements from %s: this node holds %d, the most it keeps",
                    len(fresh),
                    source,
                    MAX_STATEMENTS,
                )
                statements = [s for s in statements if s not in fresh]
                done.outcomes["refused_full"] = len(fresh)
        with self.store.bulk(source):
            for statement in statements:
                outcome = self.store.put_statement(row_of(statement, source), self._merge)
                done.outcomes[outcome] = done.outcomes.get(outcome, 0) + 1
                if outcome in ("new", "merged", "superseded"):
                    done.changed.append(statement)
        if done.changed:
            for listener in self.listeners:
                listener(done.changed, source)
        return done

    def held(self, statement_id: str) -> Statement | None:
        row = self.store.statements.get(statement_id)
        return None if row is None else parse_statement(row.wire, self.registry)

    def all(self, readable: Collection[str] | None = None) -> list[Statement]:
        """Every held statement (visible to `readable`), verified again: the rows are ours,
        but a statement is only ever used as a Statement."""
        return [
            parse_statement(r.wire, self.registry) for r in self.store.statements.visible(readable)
        ]

    def wire_objects(self, ids: list[str], readable: Collection[str] | None) -> list[Any]:
        """The wire objects of the statements named that `readable` may see."""
        return [
            parse_canonical(r.wire, "statement")
            for r in self.store.statements.get_many(ids, readable)
        ]
