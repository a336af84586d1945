"""The statements table: rows only. What a statement says, who must sign it and whether its
signatures hold is hashmesh/protocol/statements.py's; this module keeps the SQL in the
store package, for every kind alike (certificates, handovers, key revocations, membership
documents, cosigns).

One row per statement id (sha256 of its body): `scope` is the collection it concerns, NULL
for a key-level fact any authenticated peer may see; `slot`, for kinds where a newer one
replaces an older, is the slot key, `ord` its order in the slot (at most one row per
(kind, slot): the highest order held). `wire` is the canonical envelope, `wire_hash` its
sha256, so that a peer's copy with more signatures reads as a different version of the
same statement. `cursor` grows on every insert or merge: what changed since a cursor is
one range read.

Every write runs inside the caller's transaction when there is one (Store.bulk), or its
own otherwise (StatementTable.put opens none: Store.put_statement does).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

from hashmesh.node.store.inlist import in_list

STATEMENTS_V6 = """
CREATE TABLE IF NOT EXISTS statements (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    scope TEXT,
    slot TEXT,
    ord INTEGER NOT NULL DEFAULT 0,
    wire BLOB NOT NULL,
    wire_hash TEXT NOT NULL,
    cursor INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    source TEXT NOT NULL
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS statements_cursor ON statements (cursor);
CREATE INDEX IF NOT EXISTS statements_scope ON statements (scope, id);
CREATE INDEX IF NOT EXISTS statements_slot ON statements (kind, slot) WHERE slot IS NOT NULL;
"""

#: put outcomes: new (stored), merged (held, now with more signatures), same (held as is),
#: superseded (stored, replacing a lower order in its slot), stale (its slot holds the same
#: or a higher order: nothing changed).
OUTCOMES = ("new", "merged", "same", "superseded", "stale")

Merge = Callable[[bytes, bytes], bytes]


@dataclass(frozen=True, slots=True)
class StatementRow:
    """One statement as stored. `scope` None: unscoped; `slot` None: not superseding."""

    id: str
    kind: str
    scope: str | None
    slot: str | None
    order: int
    wire: bytes
    cursor: int = 0
    received_at: int = 0
    source: str = ""


_COLUMNS = "id, kind, scope, slot, ord, wire, cursor, received_at, source"


def _row(r: tuple[Any, ...]) -> StatementRow:
    return StatementRow(r[0], r[1], r[2], r[3], int(r[4]), bytes(r[5]), r[6], r[7], r[8])


def wire_hash(wire: bytes) -> str:
    return hashlib.sha256(wire).hexdigest()


def _visible(readable: Collection[str] | None) -> tuple[str, list[str]]:
    """WHERE clause for what a caller who may read `readable` (None: everything) sees:
    unscoped statements and those of its collections, never a scope it may not read."""
    if readable is None:
        return "1", []
    if not readable:
        return "scope IS NULL", []
    where, args = in_list(sorted(readable))
    return f"(scope IS NULL OR scope IN {where})", args


class StatementTable:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # Bumped on every change: a digest computed for one scope is kept while it holds.
        self.version = 0
        self._digests: dict[tuple[int, frozenset[str] | None], str] = {}

    def _next_cursor(self) -> int:
        row = self.conn.execute("SELECT coalesce(max(cursor), 0) FROM statements").fetchone()
        return int(row[0]) + 1

    def put(self, row: StatementRow, merge: Merge, at: int) -> str:
        """Store a verified statement; one of OUTCOMES. `merge(held, new)` gives the
        envelope with both copies' signatures (protocol/statements.py); the store never
        parses a statement itself. Runs inside the caller's transaction."""
        held = self.get(row.id)
        if held is not None:
            merged = merge(held.wire, row.wire)
            if merged == held.wire:
                return "same"
            self.conn.execute(
                "UPDATE statements SET wire = ?, wire_hash = ?, cursor = ? WHERE id = ?",
                (merged, wire_hash(merged), self._next_cursor(), row.id),
            )
            self.changed()
            return "merged"
        outcome = "new"
        if row.slot is not None:
            top = self.conn.execute(
                "SELECT max(ord) FROM statements WHERE kind = ? AND slot = ?",
                (row.kind, row.slot),
            ).fetchone()[0]
            if top is not None:
                if int(top) >= row.order:
                    return "stale"
                self.conn.execute(
                    "DELETE FROM statements WHERE kind = ? AND slot = ?", (row.kind, row.slot)
                )
                outcome = "superseded"
        self.conn.execute(
            f"INSERT INTO statements ({_COLUMNS}, wire_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.kind,
                row.scope,
                row.slot,
                row.order,
                row.wire,
                self._next_cursor(),
                at,
                row.source,
                wire_hash(row.wire),
            ),
        )
        self.changed()
        return outcome

    def changed(self) -> None:
        self.version += 1
        self._digests.clear()

    def get(self, statement_id: str) -> StatementRow | None:
        r = self.conn.execute(
            f"SELECT {_COLUMNS} FROM statements WHERE id = ?", (statement_id,)
        ).fetchone()
        return None if r is None else _row(r)

    def get_many(self, ids: list[str], readable: Collection[str] | None) -> list[StatementRow]:
        """The statements named that a caller reading `readable` may see, in id order; an
        id it may not see reads like one that is not held."""
        if not ids:
            return []
        where, args = in_list(sorted(set(ids)))
        visible, more = _visible(readable)
        return [
            _row(r)
            for r in self.conn.execute(
                f"SELECT {_COLUMNS} FROM statements WHERE id IN {where} AND {visible} ORDER BY id",
                args + more,
            )
        ]

    def visible(
        self,
        readable: Collection[str] | None,
        kinds: Iterable[str] | None = None,
        after_id: str = "",
        limit: int = -1,
    ) -> list[StatementRow]:
        """The statements a caller reading `readable` (None: all) may see, in id order,
        those after `after_id`, at most `limit` (-1: all)."""
        visible, args = _visible(readable)
        sql = f"SELECT {_COLUMNS} FROM statements WHERE {visible} AND id > ?"
        args = [*args, after_id]
        if kinds is not None:
            where, more = in_list(sorted(set(kinds)))
            sql += f" AND kind IN {where}"
            args += more
        sql += " ORDER BY id LIMIT ?"
        return [_row(r) for r in self.conn.execute(sql, [*args, limit])]

    def index(
        self, readable: Collection[str] | None, after_id: str = "", limit: int = -1
    ) -> list[tuple[str, str]]:
        """(id, wire hash) of the visible statements in id order: what a peer compares
        with what it holds to fetch only what it lacks or holds with fewer signatures."""
        visible, args = _visible(readable)
        return [
            (str(r[0]), str(r[1]))
            for r in self.conn.execute(
                f"SELECT id, wire_hash FROM statements WHERE {visible} AND id > ?"
                " ORDER BY id LIMIT ?",
                [*args, after_id, limit],
            )
        ]

    def hashes(self, ids: list[str]) -> dict[str, str]:
        """id -> wire hash of those of `ids` held (whatever their scope: our own view)."""
        if not ids:
            return {}
        where, args = in_list(sorted(set(ids)))
        return {
            str(r[0]): str(r[1])
            for r in self.conn.execute(
                f"SELECT id, wire_hash FROM statements WHERE id IN {where}", args
            )
        }

    def digest(self, readable: Collection[str] | None) -> str:
        """sha256 over the (id, wire hash) of every visible statement in id order: equal
        digests, equal sets, signatures included. Kept until the table changes."""
        key = (self.version, None if readable is None else frozenset(readable))
        found = self._digests.get(key)
        if found is None:
            h = hashlib.sha256()
            for statement_id, hashed in self.index(readable):
                h.update(f"{statement_id}:{hashed}\n".encode("ascii"))
            found = h.hexdigest()
            if len(self._digests) > 256:
                self._digests.clear()
            self._digests[key] = found
        return found

    def since(self, cursor: int, limit: int = 1000) -> list[StatementRow]:
        """Statements inserted or merged after `cursor`, in cursor order."""
        return [
            _row(r)
            for r in self.conn.execute(
                f"SELECT {_COLUMNS} FROM statements WHERE cursor > ? ORDER BY cursor LIMIT ?",
                (cursor, limit),
            )
        ]

    def cursor(self) -> int:
        row = self.conn.execute("SELECT coalesce(max(cursor), 0) FROM statements").fetchone()
        return int(row[0])

    def count_by_source(self, excluding: Iterable[str] = ()) -> dict[str, int]:
        """source -> statements held that it delivered first (kinds in `excluding` left
        out): what a per-peer budget counts. One pass over the table."""
        where, args = in_list(sorted(set(excluding)))
        sql = "SELECT source, count(*) FROM statements"
        if args:
            sql += f" WHERE kind NOT IN {where}"
        return {str(r[0]): int(r[1]) for r in self.conn.execute(sql + " GROUP BY source", args)}

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            row = self.conn.execute("SELECT count(*) FROM statements").fetchone()
        else:
            row = self.conn.execute(
                "SELECT count(*) FROM statements WHERE kind = ?", (kind,)
            ).fetchone()
        return int(row[0])
