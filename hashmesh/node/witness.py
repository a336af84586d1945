"""This node as a witness: it cosigns the latest head it verified of each log it holds, and
compares the cosigns it hears with its own headers to find split views (issue 22).

A cosign is a statement (protocol/witness.py) gossiped like every other, scoped to the
log's collection, so only callers who may read the collection ever see one. The rate is
bounded twice: a log is cosigned again only once its head moved and at least
`WITNESS_INTERVAL_S` after its last cosign, and at most `COSIGNS_PER_TICK` per tick; a
newer cosign supersedes the older one in its slot, so a node holds at most one per
witness per log. Store thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from hashlib import sha256
from typing import Any

from hashmesh.node.statements import StatementBook
from hashmesh.node.store.core import Store
from hashmesh.protocol.batches import LogKey
from hashmesh.protocol.encoding import from_b64url, parse_canonical
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import Statement, sign_statement
from hashmesh.protocol.witness import (
    KIND,
    CosignBody,
    SplitView,
    WitnessLine,
    cosign_body,
    split_views,
    witnesses,
)

log = logging.getLogger("hashmesh.witness")

WITNESS_INTERVAL_S = 30.0
COSIGNS_PER_TICK = 500
MAX_SPLIT_VIEWS_SHOWN = 100
STATEMENT_PAGE = 1000
MAX_HEADS_REMEMBERED = 200_000

Vouchers = Callable[[str, int], frozenset[str]]


class NodeWitness:
    def __init__(
        self,
        store: Store,
        book: StatementBook,
        key: SigningKey,
        vouchers: Vouchers,
        interval_s: float = WITNESS_INTERVAL_S,
    ) -> None:
        self.store = store
        self.book = book
        self.key = key
        self.vouchers = vouchers
        self.interval_s = interval_s
        self._last: dict[LogKey, tuple[int, float]] = {}
        self._cosigns: tuple[int, list[CosignBody]] = (-1, [])
        self._splits: tuple[tuple[int, int], list[SplitView]] = ((-1, -1), [])
        self._reported: set[tuple[str, str, int]] = set()
        self._heads_seen = -1
        self._bodies: dict[str, CosignBody] = {}
        self._cursor = 0
        self._reported_at = -1
        self._heads: dict[tuple[LogKey, int], str] = {}
        self._waiting = False
        for body in self.cosigns():
            if body.witness == key.node_id:
                self._last[LogKey(body.author, body.collection)] = (body.seq, 0.0)

    def head_hash(self, log_key: LogKey, seq: int) -> str | None:
        """The hash of the header held at (log, seq); remembered once held (a held header
        is never replaced, and split detection asks for every cosigned seq)."""
        known = self._heads.get((log_key, seq))
        if known is not None:
            return known
        held = self.store.signed_header(log_key, seq)
        if held is None:
            return None
        if len(self._heads) >= MAX_HEADS_REMEMBERED:
            self._heads.clear()
        head = self._heads[(log_key, seq)] = sha256(held.header_bytes).hexdigest()
        return head

    def due(self, now: float) -> list[Statement]:
        """Cosigns of the logs whose head moved since their last cosign, at most one per
        log per interval and COSIGNS_PER_TICK in all. Our own logs are not cosigned: the
        author's claim is its header."""
        out: list[Statement] = []
        me = self.key.node_id
        if self.store.heads_version == self._heads_seen and not self._waiting:
            return out  # nothing moved, nothing held back: an idle tick reads no vector
        self._heads_seen = self.store.heads_version
        self._waiting = False
        for log_key, seq in sorted(self.store.vector().items(), key=lambda kv: str(kv[0])):
            if log_key.author == me or seq <= 0:
                continue
            last = self._last.get(log_key)
            if last is not None and last[0] >= seq:
                continue
            if last is not None and now - last[1] < self.interval_s:
                self._waiting = True
                continue
            head = self.head_hash(log_key, seq)
            if head is None:
                continue
            body = cosign_body(me, log_key.author, log_key.collection, seq, head, int(now))
            out.append(sign_statement(body, [self.key], self.book.registry))
            self._last[log_key] = (seq, now)
            if len(out) >= COSIGNS_PER_TICK:
                self._waiting = True
                break
        return out

    def tick(self, now: float) -> int:
        """Cosign what is due and hand it to the statement book (stored and gossiped)."""
        statements = self.due(now)
        if statements:
            self.book.admit(statements, "local")
        if self._reported_at != self.store.statements.version:
            self._reported_at = self.store.statements.version
            self._report_new_splits()
        return len(statements)

    def cosigns(self) -> list[CosignBody]:
        """Every cosign held (ours and our peers'): read incrementally, the rows stored or
        replaced since the last call (store cursor order), one per slot. Re-reading all
        of them on each change cost a parse per cosign, witnesses x logs of them."""
        version = self.store.statements.version
        if self._cosigns[0] != version:
            while True:
                rows = self.store.statements.since(self._cursor, STATEMENT_PAGE)
                for row in rows:
                    self._cursor = max(self._cursor, row.cursor)
                    if row.kind in ("handover", "key-revoke"):
                        self._heads.clear()  # held batches may be dropped and signed anew
                    if row.kind != KIND:
                        continue
                    # our own rows, verified when they came in: the body is parsed again,
                    # the signature is not
                    wire = parse_canonical(row.wire, "statement")
                    _, body = self.book.registry.parse_body(from_b64url(wire["body"], "body"))
                    if not isinstance(body, CosignBody):
                        continue
                    key = row.slot or row.id
                    held = self._bodies.get(key)
                    if held is None or body.seq >= held.seq:
                        self._bodies[key] = body
                if len(rows) < STATEMENT_PAGE:
                    break
            self._cosigns = (version, list(self._bodies.values()))
        return self._cosigns[1]

    def split_views(self) -> list[SplitView]:
        key = (self.store.statements.version, self.store.heads_version)
        if self._splits[0] != key:

            def held(author: str, collection: str, seq: int) -> str | None:
                return self.head_hash(LogKey(author, collection), seq)

            self._splits = (key, split_views(self.cosigns(), held, self.key.node_id))
        return self._splits[1]

    def _report_new_splits(self) -> None:
        for view in self.split_views():
            key = (view.author, view.collection, view.seq)
            if key not in self._reported:
                self._reported.add(key)
                log.warning(
                    "split view: log %s/%s at seq %d has %d different heads (%s)",
                    view.author,
                    view.collection,
                    view.seq,
                    len(view.heads),
                    "; ".join(f"{h[:12]}: {', '.join(w)}" for h, w in sorted(view.heads.items())),
                )

    def report(self, author: str, collection: str, now: int) -> list[WitnessLine]:
        """Which witnesses (and the orgs certifying them now) saw which head of one log."""
        log_key = LogKey(author, collection)
        our_seq = self.store.head(log_key)
        return witnesses(
            author,
            collection,
            self.cosigns(),
            lambda seq: self.head_hash(log_key, seq),
            our_seq,
            lambda w: self.vouchers(w, now),
        )

    def status(self, readable: set[str] | None = None) -> dict[str, Any]:
        views = [v for v in self.split_views() if readable is None or v.collection in readable]
        # no count of cosigns held: a running node cosigns what an offline look at the same
        # home would not, and status must say the same either way (only more when running)
        return {
            "split_views": [v.to_json() for v in views[:MAX_SPLIT_VIEWS_SHOWN]],
            "split_views_total": len(views),
        }
