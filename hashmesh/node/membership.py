"""Collections that follow a steward-signed membership document (issue 22).

A collection listed under [[membership]] in config.toml (`hashmesh membership follow C
--steward ORG... --threshold K`) takes its writers and readers from the document in force
(protocol/membership.py decides which that is, from the anchor pinned in the config and
the documents held), instead of from hand-listed trust entries. Local policy still
narrows it: [[trust]] entries for the collection, if any, must accept an author too, and a
peer reads it only if its share list names it.

This module is the node's side: it keeps only documents valid from the anchor (a gate on
every way a statement arrives, so a peer cannot make the node hold documents nobody with
the stewards' keys signed), trims signatures that count for nothing, answers the
authority's per-batch question (`may_write`) and publishes what the documents say into
Config.members, which the accept and read decisions read. Store thread only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from hashmesh.node.config import Config, Follow, MemberView
from hashmesh.node.statements import StatementBook
from hashmesh.protocol.membership import (
    KIND,
    Anchor,
    Document,
    InForce,
    admit,
    order_for_admission,
    parent_of,
    resolve,
    trim,
)
from hashmesh.protocol.statements import Statement

log = logging.getLogger("hashmesh.membership")

Vouchers = Callable[[str, int], frozenset[str]]


def anchor_of(follow: Follow) -> Anchor:
    return Anchor(follow.collection, frozenset(follow.stewards), follow.threshold)


class NodeMemberships:
    """The membership documents held and what is in force, per followed collection."""

    def __init__(
        self, book: StatementBook, config: Callable[[], Config], vouchers: Vouchers
    ) -> None:
        self.book = book
        self._config = config
        self._vouchers = vouchers
        self._docs: dict[str, dict[str, Document]] = {}
        self._resolved: dict[str, tuple[Anchor, int, InForce]] = {}
        for statement in book.all(kinds=[KIND]):
            self._hold(Document.of(statement))
        book.listeners.append(self._learn)
        book.gates.append(self.gate)
        # past the statement caps too: what the gate lets through is valid from an anchor
        # the operator pinned (at most MAX_DOCUMENTS per followed collection), and a new
        # version must not be kept out by a peer that filled the table
        book.always.append(lambda statement: statement.kind.name == KIND)

    def _hold(self, doc: Document) -> None:
        held = self._docs.setdefault(doc.body.collection, {})
        old = held.get(doc.id)
        held[doc.id] = doc if old is None else Document(doc.id, doc.body, old.signers | doc.signers)
        self._resolved.pop(doc.body.collection, None)

    def _learn(self, statements: list[Statement], source: str) -> None:
        changed = False
        for statement in statements:
            if statement.kind.name == KIND:
                self._hold(Document.of(statement))
                changed = True
            elif statement.kind.name == "cert":
                changed = True  # an org's new certificate may make a peer a reader
        if changed:
            self.apply(self._config())

    # -- the gate every statement passes before it is stored --------------------------

    def gate(
        self, statements: list[Statement], source: str
    ) -> tuple[list[Statement], dict[str, str]]:
        """Keep membership documents valid from this node's anchor (parents first, so one
        page may bring several versions in any order), trimmed to the signatures that
        count; refuse the rest by id with the reason. Other kinds pass untouched."""
        config = self._config()
        others = [s for s in statements if s.kind.name != KIND]
        offered = [s for s in statements if s.kind.name == KIND]
        if not offered:
            return statements, {}
        refused: dict[str, str] = {}
        kept: list[Statement] = []
        page: dict[str, list[Document]] = {}
        by_id = {s.id: s for s in offered}
        for doc in order_for_admission(Document.of(s) for s in offered):
            follow = config.follows(doc.body.collection)
            if follow is None:
                refused[doc.id] = (
                    f"membership of {doc.body.collection}: this node does not follow it"
                    " (hashmesh membership follow)"
                )
                continue
            anchor = anchor_of(follow)
            held = [
                *self._docs.get(doc.body.collection, {}).values(),
                *page.get(anchor.collection, []),
            ]
            why = admit(anchor, held, doc)
            if why is not None:
                refused[doc.id] = why
                continue
            parent = parent_of(anchor, held, doc)
            statement = by_id[doc.id] if parent is None else trim(by_id[doc.id], parent)
            kept.append(statement)
            page.setdefault(anchor.collection, []).append(Document.of(statement))
        if refused:
            log.info("refused %d membership documents from %s", len(refused), source)
        return [*others, *kept], refused

    # -- what is in force ---------------------------------------------------------------

    def in_force(self, follow: Follow) -> InForce:
        anchor = anchor_of(follow)
        held = self._docs.get(follow.collection, {})
        cached = self._resolved.get(follow.collection)
        if cached is not None and cached[0] == anchor and cached[1] == len(held):
            return cached[2]
        result = resolve(anchor, held.values())
        self._resolved[follow.collection] = (anchor, len(held), result)
        return result

    def followed(self, collection: str) -> bool:
        return self._config().follows(collection) is not None

    def may_write(self, key: str, collection: str, ts: int, vouchers: Vouchers) -> bool:
        """The authority's per-batch question: may `key` sign a batch of `collection` at
        `ts` (seconds) by the document in force (listed itself, or certified then by a
        listed org)?"""
        follow = self._config().follows(collection)
        if follow is None:
            return False
        return self.in_force(follow).may_write(key, lambda k: vouchers(k, ts))

    def apply(self, config: Config) -> None:
        """Publish what the documents in force say into config.members: the ids listed as
        writers, and the read decision (listed, or certified now by a listed org). Called
        on every config load and new document or certificate."""
        writers = {f.collection: self.in_force(f).writers for f in config.memberships}
        config.members = MemberView(writers, self._may_read)

    def _may_read(self, node_id: str, collection: str) -> bool:
        follow = self._config().follows(collection)
        if follow is None:
            return False
        now = int(time.time())
        return self.in_force(follow).may_read(node_id, lambda k: self._vouchers(k, now))

    def status(self, config: Config) -> list[dict[str, Any]]:
        """Per followed collection: the version in force, its document id, stewards,
        writers and readers, a conflict if stewards signed two, and refused documents."""
        out = []
        for follow in config.memberships:
            result = self.in_force(follow)
            doc = result.document
            out.append(
                {
                    "collection": follow.collection,
                    "anchor": {"stewards": sorted(follow.stewards), "threshold": follow.threshold},
                    "version": result.version,
                    "id": doc.id if doc else None,
                    "stewards": sorted(doc.body.stewards) if doc else [],
                    "threshold": doc.body.threshold if doc else None,
                    "writers": sorted(result.writers),
                    "readers": sorted(result.readers),
                    "signers": sorted(doc.signers) if doc else [],
                    "conflict": (
                        {"version": result.conflict.version, "ids": list(result.conflict.ids)}
                        if result.conflict
                        else None
                    ),
                    "held": len(self._docs.get(follow.collection, {})),
                }
            )
        return out
