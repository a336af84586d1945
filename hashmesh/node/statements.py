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
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from hashmesh.node.store.core import Store
from hashmesh.node.store.statements import StatementRow
from hashmesh.protocol.encoding import parse_canonical
from hashmesh.protocol.errors import ProtocolError, UnknownKind
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
#: What one peer may have delivered first of those: a quarter, so that one peer (hostile,
#: or relaying throw-away keys) cannot crowd out the certificates and revocations the
#: others bring. Counted by the row's source, which a later copy never changes.
MAX_STATEMENTS_PER_PEER = 25_000
#: Room beyond both caps, for the statements that must always go in (`always`: a
#: revocation in force of a key this node trusts, that lowers its bound). The table's
#: counted rows never exceed MAX_STATEMENTS + REVOCATION_RESERVE.
REVOCATION_RESERVE = 10_000
PEER_SOURCE = "peer:"

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
        #: Statements admitted beyond the caps, into REVOCATION_RESERVE, when any of these
        #: says so: NodeAuthority.admits_always (a revocation of a key we trust) and
        #: NodeMemberships (a document its gate found valid from a followed anchor).
        self.always: list[Callable[[Statement], bool]] = []
        self._by_source: dict[str, int] | None = None  # count_by_source, kept up to date
        self.skipped_unknown = 0  # statements of kinds this version does not know

    def _merge(self, held: bytes, new: bytes) -> bytes:
        return merge(
            parse_statement(held, self.registry), parse_statement(new, self.registry)
        ).to_wire()

    def verify_objects(self, objects: list[Any]) -> list[Statement]:
        """Pure: every object verified, or the first fault raised (ProtocolError naming its
        position and field); one of a kind this version does not know is skipped, since a
        newer peer's kinds must not make its pages, and the peer, look invalid (the older
        release before this rule refused such pages: upgrade every node before using a
        new kind). Runs on any thread."""
        out = []
        for n, value in enumerate(objects):
            try:
                out.append(parse_statement_json(value, self.registry))
            except UnknownKind:
                self.skipped_unknown += 1
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
        if source != "local":
            statements = self._within_caps(statements, source, done)
        added = 0
        with self.store.bulk(source):
            for statement in statements:
                outcome = self.store.put_statement(row_of(statement, source), self._merge)
                done.outcomes[outcome] = done.outcomes.get(outcome, 0) + 1
                if outcome in ("new", "merged", "superseded"):
                    done.changed.append(statement)
                if outcome == "superseded":  # the row it replaced may be another's
                    self._by_source = None
                elif outcome == "new" and statement.kind.name not in self.counted_apart:
                    added += 1
        if added and self._by_source is not None:
            self._by_source[source] = self._by_source.get(source, 0) + added
        if done.changed:
            for listener in self.listeners:
                listener(done.changed, source)
        return done

    def held_from(self, source: str) -> int:
        """Statements held that `source` delivered first (cosigns apart)."""
        if self._by_source is None:
            self._by_source = self.store.statements.count_by_source(self.counted_apart)
        return self._by_source.get(source, 0)

    def _within_caps(
        self, statements: list[Statement], source: str, done: Admitted
    ) -> list[Statement]:
        """The statements to store of those a peer or a bundle brings: new ones count
        against MAX_STATEMENTS and, from a peer, against its MAX_STATEMENTS_PER_PEER; past
        either, only `always` ones, into REVOCATION_RESERVE. Copies of held statements
        (more signatures) and kinds counted apart always pass."""
        table = self.store.statements
        counted = [s for s in statements if s.kind.name not in self.counted_apart]
        stored = table.hashes([s.id for s in counted])  # one query for the page
        fresh: dict[str, Statement] = {}
        for s in counted:
            if s.id not in stored:
                fresh.setdefault(s.id, s)
        if not fresh:
            return statements
        held = table.count() - sum(table.count(k) for k in self.counted_apart)
        node_room = MAX_STATEMENTS - held
        reserve_room = MAX_STATEMENTS + REVOCATION_RESERVE - held
        peer_room = (
            MAX_STATEMENTS_PER_PEER - self.held_from(source)
            if source.startswith(PEER_SOURCE)
            else len(fresh)
        )
        refused: dict[str, str] = {}
        for statement_id, s in fresh.items():
            if node_room > 0 and peer_room > 0:
                node_room -= 1
                peer_room -= 1
                reserve_room -= 1
            elif reserve_room > 0 and any(rule(s) for rule in self.always):
                reserve_room -= 1
                done.outcomes["beyond_cap"] = done.outcomes.get("beyond_cap", 0) + 1
            else:
                refused[statement_id] = "refused_peer_cap" if node_room > 0 else "refused_full"
        if not refused:
            return statements
        for outcome in sorted(set(refused.values())):
            n = sum(1 for v in refused.values() if v == outcome)
            done.outcomes[outcome] = n
            log.warning(
                "refused %d statements from %s: %s",
                n,
                source,
                (
                    f"it has delivered {MAX_STATEMENTS_PER_PEER}, the most one peer may"
                    if outcome == "refused_peer_cap"
                    else f"this node holds {MAX_STATEMENTS}, the most it keeps"
                ),
            )
        return [s for s in statements if s.id not in refused]

    def held(self, statement_id: str) -> Statement | None:
        row = self.store.statements.get(statement_id)
        return None if row is None else parse_statement(row.wire, self.registry)

    def all(
        self, readable: Collection[str] | None = None, kinds: Iterable[str] | None = None
    ) -> list[Statement]:
        """Every held statement (visible to `readable`, of `kinds`), verified again: the
        rows are ours, but a statement is only ever used as a Statement. Each consumer
        asks for its kinds only, so a start parses no statement for a consumer that has
        no use for it."""
        return [
            parse_statement(r.wire, self.registry)
            for r in self.store.statements.visible(readable, kinds)
        ]

    def wire_objects(self, ids: list[str], readable: Collection[str] | None) -> list[Any]:
        """The wire objects of the statements named that `readable` may see."""
        return [
            parse_canonical(r.wire, "statement")
            for r in self.store.statements.get_many(ids, readable)
        ]
