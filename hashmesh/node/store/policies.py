"""The match_policy table: rows only. What a policy means, its bounds and how it judges a
match are hashmesh/node/matching/policy.py's; this module only keeps the SQL here.

A row is (collection, negative, threshold, min_quality, quorum, suspend_after_disputes,
require_review, updated_at, spike_cap, spike_factor, quorum_by, dispute_on_spike); NULL
means "not set" (the request's threshold, no minimum, no suspension, no quarantine,
quorum counted by node id). A collection without a
row has the default policy: every hit matches.
"""

from __future__ import annotations

import sqlite3
from typing import Any

PolicyRow = tuple[Any, ...]

POLICY_V2 = """
CREATE TABLE IF NOT EXISTS match_policy (
    collection TEXT PRIMARY KEY,
    negative INTEGER NOT NULL DEFAULT 0,
    threshold INTEGER,
    min_quality INTEGER,
    quorum INTEGER NOT NULL DEFAULT 1,
    suspend_after_disputes INTEGER,
    require_review INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
"""

# Version 3 (quarantine on a match spike) added the last two.
POLICY_V3 = """
ALTER TABLE match_policy ADD COLUMN spike_cap INTEGER;
ALTER TABLE match_policy ADD COLUMN spike_factor INTEGER;
"""

# Version 4: what a quorum counts (node, org, country) and the dispute sent on a spike.
POLICY_V4 = """
ALTER TABLE match_policy ADD COLUMN quorum_by TEXT;
ALTER TABLE match_policy ADD COLUMN dispute_on_spike INTEGER NOT NULL DEFAULT 0;
"""

_COLUMNS = (
    "collection, negative, threshold, min_quality, quorum, suspend_after_disputes,"
    " require_review, updated_at, spike_cap, spike_factor, quorum_by, dispute_on_spike"
)


def policy_rows(conn: sqlite3.Connection) -> list[PolicyRow]:
    """Every row, by collection: one small statement, read at every match (by the node,
    its worker processes and the CLI alike), so a change applies to the next match."""
    return conn.execute(f"SELECT {_COLUMNS} FROM match_policy ORDER BY collection").fetchall()


class PolicyTable:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def rows(self) -> list[PolicyRow]:
        return policy_rows(self.conn)

    def put(self, row: PolicyRow) -> None:
        """Insert or replace a collection's row (`row` in the table's column order)."""
        marks = ", ".join("?" * len(row))
        self.conn.execute(f"INSERT OR REPLACE INTO match_policy ({_COLUMNS}) VALUES ({marks})", row)

    def delete(self, collection: str) -> None:
        self.conn.execute("DELETE FROM match_policy WHERE collection = ?", (collection,))
