"""The self-report case tables: rows only. What a case is, who may see or withdraw it and
what its answers may reveal is hashmesh/node/web/selfreport.py's; the SQL lives here.

Writes run inside the store's transaction (`Store.bulk`), on the store thread, so a case
and the hashes it published commit together.
"""

from __future__ import annotations

import sqlite3
from typing import Any


class CaseTable:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def exists(self, number: str) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM selfreport_cases WHERE case_number = ?", (number,)
            ).fetchone()
            is not None
        )

    def insert(
        self,
        number: str,
        salt: bytes,
        secret_hash: bytes,
        category: str,
        day: str,
        ops: list[tuple[str, str]],
        hashes: int,
    ) -> None:
        """A case, the (op id, type) pairs it owns, and how many hashes the person sent."""
        self.conn.execute(
            "INSERT INTO selfreport_cases (case_number, secret_salt, secret_hash,"
            " category, created_day) VALUES (?, ?, ?, ?, ?)",
            (number, salt, secret_hash, category, day),
        )
        self.conn.executemany(
            "INSERT INTO selfreport_ops (case_number, op_id, type) VALUES (?, ?, ?)",
            [(number, op_id, kind) for op_id, kind in ops],
        )
        self.conn.execute(
            "INSERT INTO selfreport_sizes (case_number, hashes) VALUES (?, ?)", (number, hashes)
        )

    def made_by_a_case(self, op_id: str) -> bool:
        return (
            self.conn.execute(
                "SELECT 1 FROM selfreport_ops WHERE op_id = ? LIMIT 1", (op_id,)
            ).fetchone()
            is not None
        )

    def secret_of(self, number: str) -> tuple[bytes, bytes] | None:
        row = self.conn.execute(
            "SELECT secret_salt, secret_hash FROM selfreport_cases WHERE case_number = ?",
            (number,),
        ).fetchone()
        return None if row is None else (bytes(row[0]), bytes(row[1]))

    def case(self, number: str) -> tuple[str, str, str | None] | None:
        """(category, created day, withdrawn day or None)."""
        row: tuple[str, str, str | None] | None = self.conn.execute(
            "SELECT category, created_day, withdrawn_day FROM selfreport_cases"
            " WHERE case_number = ?",
            (number,),
        ).fetchone()
        return row

    def ops(self, number: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT op_id FROM selfreport_ops WHERE case_number = ?", (number,)
            )
        ]

    def size(self, number: str) -> int | None:
        row = self.conn.execute(
            "SELECT hashes FROM selfreport_sizes WHERE case_number = ?", (number,)
        ).fetchone()
        return None if row is None else int(row[0])

    def shared_with_active(self, op_id: str, number: str) -> bool:
        """Whether another case, not withdrawn, also names `op_id`."""
        return (
            self.conn.execute(
                "SELECT 1 FROM selfreport_ops o JOIN selfreport_cases c USING (case_number)"
                " WHERE o.op_id = ? AND o.case_number != ? AND c.withdrawn_day IS NULL",
                (op_id, number),
            ).fetchone()
            is not None
        )

    def mark_withdrawn(self, number: str, day: str) -> None:
        self.conn.execute(
            "UPDATE selfreport_cases SET withdrawn_day = ? WHERE case_number = ?", (day, number)
        )

    def report(self, since: str) -> dict[str, Any]:
        """Per-day counts since `since` (YYYY-MM-DD), totals, and the opinions platforms
        published on the cases' hashes."""
        per_day: dict[str, dict[str, int]] = {}

        def day(d: str) -> dict[str, int]:
            return per_day.setdefault(d, {"cases": 0, "hashes": 0, "withdrawn": 0})

        for d, n in self.conn.execute(
            "SELECT created_day, count(*) FROM selfreport_cases WHERE created_day >= ?"
            " GROUP BY created_day",
            (since,),
        ):
            day(d)["cases"] = n
        for d, n in self.conn.execute(
            "SELECT c.created_day, count(*) FROM selfreport_ops o JOIN selfreport_cases c"
            " USING (case_number) WHERE c.created_day >= ? GROUP BY c.created_day",
            (since,),
        ):
            day(d)["hashes"] = n
        for d, n in self.conn.execute(
            "SELECT withdrawn_day, count(*) FROM selfreport_cases WHERE withdrawn_day >= ?"
            " GROUP BY withdrawn_day",
            (since,),
        ):
            day(d)["withdrawn"] = n
        totals = self.conn.execute(
            "SELECT count(*), count(withdrawn_day) FROM selfreport_cases"
        ).fetchone()
        by_category = dict(
            self.conn.execute(
                "SELECT category, count(*) FROM selfreport_cases GROUP BY category"
            ).fetchall()
        )
        hashes = self.conn.execute("SELECT count(DISTINCT op_id) FROM selfreport_ops").fetchone()
        opinions = self.conn.execute(
            "SELECT count(DISTINCT CASE WHEN seen THEN target END),"
            " coalesce(sum(seen), 0),"
            " count(DISTINCT CASE WHEN verdict = 'dispute' THEN target END),"
            " count(CASE WHEN verdict = 'dispute' THEN 1 END),"
            " count(CASE WHEN verdict = 'confirm' THEN 1 END)"
            " FROM opinions WHERE target IN (SELECT op_id FROM selfreport_ops)"
        ).fetchone()
        disputed = [
            {"op_id": op, "disputes": n}
            for op, n in self.conn.execute(
                "SELECT target, count(*) FROM opinions WHERE verdict = 'dispute'"
                " AND target IN (SELECT op_id FROM selfreport_ops)"
                " GROUP BY target ORDER BY count(*) DESC, target LIMIT 50"
            )
        ]
        return {
            "days": [{"day": d, **per_day[d]} for d in sorted(per_day, reverse=True)],
            "totals": {
                "cases": totals[0],
                "withdrawn": totals[1],
                "hashes": hashes[0],
                "by_category": by_category,
            },
            "opinions": {
                "hashes_seen": opinions[0],
                "seen": opinions[1],
                "hashes_disputed": opinions[2],
                "disputes": opinions[3],
                "confirms": opinions[4],
            },
            "disputed": disputed,
        }
