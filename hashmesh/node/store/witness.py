"""The witness_equivocations table: rows only. Each row is the proof that one witness
signed two different heads for one (log, seq): the canonical record of its two signed
cosign statements (protocol/witness.py, `equivocation_evidence`). One row per witness
(one proof convicts it for good); whether a record holds is the protocol's to say, this
module keeps the SQL in the store package.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

WITNESS_V7 = """
CREATE TABLE IF NOT EXISTS witness_equivocations (
    witness TEXT PRIMARY KEY,
    author TEXT NOT NULL,
    collection TEXT NOT NULL,
    seq INTEGER NOT NULL,
    evidence BLOB NOT NULL,
    found_at INTEGER NOT NULL,
    source TEXT NOT NULL
) WITHOUT ROWID;
"""


@dataclass(frozen=True, slots=True)
class EquivocationRow:
    witness: str
    author: str
    collection: str
    seq: int
    evidence: bytes
    found_at: int = 0
    source: str = ""


class EquivocationTable:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def put(self, row: EquivocationRow) -> bool:
        """Keep the first proof against a witness; True when it was new. Runs inside the
        caller's transaction."""
        cursor = self.conn.execute(
            "INSERT OR IGNORE INTO witness_equivocations"
            " (witness, author, collection, seq, evidence, found_at, source)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.witness,
                row.author,
                row.collection,
                row.seq,
                row.evidence,
                row.found_at,
                row.source,
            ),
        )
        return cursor.rowcount > 0

    def rows(self) -> list[EquivocationRow]:
        return [
            EquivocationRow(r[0], r[1], r[2], int(r[3]), bytes(r[4]), int(r[5]), r[6])
            for r in self.conn.execute(
                "SELECT witness, author, collection, seq, evidence, found_at, source"
                " FROM witness_equivocations ORDER BY found_at, witness"
            )
        ]

    def count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM witness_equivocations").fetchone()[0])
