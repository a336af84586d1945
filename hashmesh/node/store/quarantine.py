"""The quarantine table: rows only. When a signal is quarantined, and why, is
hashmesh/node/matching/quarantine.py's; this module keeps the SQL in the store package.

A row is one signal (an add's op id) this node suspended locally on a match spike, with
the reason in words and when; `lifted_at` set means an operator lifted it, and the row
stays so the same spike does not quarantine it again at once.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from hashmesh.node.store.inlist import in_list

QUARANTINE_V3 = """
CREATE TABLE IF NOT EXISTS quarantine (
    op_id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    author TEXT NOT NULL,
    reason TEXT NOT NULL,
    matches INTEGER NOT NULL,
    at INTEGER NOT NULL,
    lifted_at INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quarantine_value ON quarantine (value);
"""

#: The reason prefix of a degenerate hash held back at ingest (store/core.py), which no
#: operator lift releases.
DEGENERATE_REASON = "degenerate hash from another node: "

_COLUMNS = "op_id, collection, type, value, author, reason, matches, at, lifted_at"


def active_for(conn: sqlite3.Connection, op_ids: list[str]) -> dict[str, str]:
    """The reason of each of `op_ids` under quarantine now (one statement a match)."""
    if not op_ids:
        return {}
    where, args = in_list(sorted(set(op_ids)))
    rows = conn.execute(
        f"SELECT op_id, reason FROM quarantine WHERE lifted_at IS NULL AND op_id IN {where}",
        args,
    )
    return {str(op_id): str(reason) for op_id, reason in rows}


def live_adds(
    conn: sqlite3.Connection, keys: list[tuple[str, str, int, int]]
) -> dict[str, tuple[str, str, str, str]]:
    """For each (author, collection, seq, index) that is a live add here, its op id's
    (collection, type, value, author): what a quarantine row keeps, read from this node's
    rows rather than taken from whoever reported the matches."""
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT l.author, l.collection, s.seq, s.idx, s.type, s.value FROM json_each(?) j"
        " JOIN logs l ON l.author = j.value ->> 0 AND l.collection = j.value ->> 1"
        " JOIN signals s ON s.log_id = l.id AND s.seq = j.value ->> 2 AND s.idx = j.value ->> 3"
        " WHERE s.revoked_by IS NULL",
        (json.dumps(keys),),
    )
    return {
        f"{author}/{collection}/{seq}/{idx}": (collection, kind, value, author)
        for author, collection, seq, idx, kind, value in rows
    }


def active_ids(conn: sqlite3.Connection, collections: frozenset[str] | None) -> list[str]:
    sql = "SELECT op_id FROM quarantine WHERE lifted_at IS NULL"
    args: list[str] = []
    if collections is not None:
        sql += " AND collection IN (SELECT value FROM json_each(?))"
        args.append(json.dumps(sorted(collections)))
    return [str(r[0]) for r in conn.execute(sql + " ORDER BY op_id", args)]


class QuarantineTable:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def add(self, row: tuple[Any, ...]) -> bool:
        """Insert (op_id, collection, type, value, author, reason, matches, at) unless the
        signal was ever quarantined: True when the row is new."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO quarantine (op_id, collection, type, value, author, reason,"
            " matches, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        return cur.rowcount > 0

    def known(self, op_ids: list[str]) -> set[str]:
        """Which of `op_ids` have a row, lifted or not."""
        rows = self.conn.execute(
            "SELECT op_id FROM quarantine WHERE op_id IN (SELECT value FROM json_each(?))",
            (json.dumps(sorted(set(op_ids))),),
        )
        return {str(r[0]) for r in rows}

    def rows(self, include_lifted: bool = False, limit: int = 10_000) -> list[tuple[Any, ...]]:
        sql = f"SELECT {_COLUMNS} FROM quarantine"
        if not include_lifted:
            sql += " WHERE lifted_at IS NULL"
        return self.conn.execute(sql + " ORDER BY at DESC, op_id LIMIT ?", (limit,)).fetchall()

    def active_matching(self, target: str) -> list[tuple[Any, ...]]:
        """Active rows of an op id, or of every signal with this value."""
        return self.conn.execute(
            f"SELECT {_COLUMNS} FROM quarantine WHERE lifted_at IS NULL"
            " AND (op_id = ? OR value = ?) ORDER BY op_id",
            (target, target),
        ).fetchall()

    def degenerate_by_author(self) -> dict[str, int]:
        """Degenerate hashes held back at ingest, counted per author."""
        rows = self.conn.execute(
            "SELECT author, count(*) FROM quarantine WHERE substr(reason, 1, ?) = ?"
            " GROUP BY author ORDER BY author",
            (len(DEGENERATE_REASON), DEGENERATE_REASON),
        )
        return {str(author): int(n) for author, n in rows}

    def lift(self, op_ids: list[str], at: int) -> None:
        self.conn.execute(
            "UPDATE quarantine SET lifted_at = ? WHERE lifted_at IS NULL"
            " AND op_id IN (SELECT value FROM json_each(?))",
            (at, json.dumps(op_ids)),
        )
