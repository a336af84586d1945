"""The bridges' tables: rows only. What a bridge fetches and publishes is
hashmesh/node/bridges/'s; this module keeps the SQL in the store package.

`bridge_state` is one row per configured bridge: its upstream checkpoint (JSON, the
upstream kind's own shape), its counts and its last success and error. `bridge_items` maps
each upstream entry's fingerprint to the add op of ours that stands for it: the row exists
exactly while that add is live, so an upstream deletion or replacement revokes what the
row names and nothing else. `bridge_feedback` is every opinion forwarded upstream, keyed
so the same one is never sent twice.

Every write here runs inside the transaction the caller opened (Store.bulk), beside the
batches it publishes: the checkpoint never runs ahead of, nor behind, what was published.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hashmesh.node.store.inlist import in_list

BRIDGES_V5 = """
CREATE TABLE IF NOT EXISTS bridge_state (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    checkpoint TEXT NOT NULL DEFAULT '{}',
    counts TEXT NOT NULL DEFAULT '{}',
    feedback_cursor INTEGER NOT NULL DEFAULT 0,
    last_success_ms INTEGER,
    last_error TEXT,
    last_error_ms INTEGER,
    failures INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS bridge_items (
    bridge TEXT NOT NULL,
    entry TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    op_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (bridge, entry, fingerprint)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS bridge_items_op ON bridge_items (op_id);
CREATE TABLE IF NOT EXISTS bridge_feedback (
    bridge TEXT NOT NULL,
    target TEXT NOT NULL,
    verdict TEXT NOT NULL,
    author TEXT NOT NULL,
    reason TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    sent TEXT,
    error TEXT,
    queued_at INTEGER NOT NULL,
    done_at INTEGER,
    PRIMARY KEY (bridge, target, verdict)
) WITHOUT ROWID;
"""

#: Feedback states: queued (to send), sending (the call is out: after a crash in this
#: state nobody knows whether upstream got it, so it is never sent again), sent, unknown
#: (was sending when the node stopped), refused (upstream answered with an error that
#: retrying cannot fix).
FEEDBACK_STATES = ("queued", "sending", "sent", "unknown", "refused")


@dataclass(frozen=True, slots=True)
class Item:
    """One live add of ours standing for one fingerprint of one upstream entry."""

    entry: str
    fingerprint: str
    type: str
    value: str
    op_id: str
    detail: dict[str, Any]


class BridgeTable:
    """The bridges' rows on the store's connection (the store thread's)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # -- state -----------------------------------------------------------------------

    def ensure(self, name: str, kind: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO bridge_state (name, kind) VALUES (?, ?)", (name, kind)
        )

    def state(self, name: str) -> dict[str, Any] | None:
        """The whole state, with counts of live items and feedback (scans the bridge's
        items: for `bridge show` and the status page, not for each page)."""
        return state_of(self.conn, name)

    def progress(self, name: str) -> tuple[dict[str, Any], dict[str, Any], int]:
        """(checkpoint, counts, feedback cursor): what each page and each feedback round
        reads, one primary-key lookup."""
        row = self.conn.execute(
            "SELECT checkpoint, counts, feedback_cursor FROM bridge_state WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return {}, {}, 0
        return json.loads(row[0]), json.loads(row[1]), int(row[2])

    def save_checkpoint(
        self, name: str, checkpoint: dict[str, Any], counts: dict[str, Any], at: int
    ) -> None:
        """The new checkpoint and counts, a success at `at`: inside the caller's
        transaction, with the batches the page published."""
        self.conn.execute(
            "UPDATE bridge_state SET checkpoint = ?, counts = ?, last_success_ms = ?,"
            " failures = 0 WHERE name = ?",
            (json.dumps(checkpoint, sort_keys=True), json.dumps(counts, sort_keys=True), at, name),
        )

    def record_error(self, name: str, error: str, at: int) -> int:
        """An upstream failure; returns how many in a row, for the backoff."""
        self.conn.execute(
            "UPDATE bridge_state SET last_error = ?, last_error_ms = ?, failures = failures + 1"
            " WHERE name = ?",
            (error[:500], at, name),
        )
        row = self.conn.execute(
            "SELECT failures FROM bridge_state WHERE name = ?", (name,)
        ).fetchone()
        return int(row[0]) if row else 0

    def forget(self, name: str) -> None:
        """A removed bridge's state and feedback log; its items stay while its adds are
        live (they are the node's own published adds: only a revoke ends them)."""
        self.conn.execute("DELETE FROM bridge_state WHERE name = ?", (name,))

    # -- items -----------------------------------------------------------------------

    def items_of(self, name: str, entries: Iterable[str]) -> dict[str, list[Item]]:
        """The live items of each of `entries` (upstream keys), in one statement."""
        keys = sorted(set(entries))
        if not keys:
            return {}
        where, args = in_list(keys)
        out: dict[str, list[Item]] = {}
        for entry, fingerprint, type_, value, op_id, detail in self.conn.execute(
            "SELECT entry, fingerprint, type, value, op_id, detail FROM bridge_items"
            f" WHERE bridge = ? AND entry IN {where}",
            (name, *args),
        ):
            out.setdefault(entry, []).append(
                Item(entry, fingerprint, type_, value, op_id, json.loads(detail))
            )
        return out

    def put_items(self, name: str, items: Iterable[Item]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO bridge_items (bridge, entry, fingerprint, type, value,"
            " op_id, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (name, i.entry, i.fingerprint, i.type, i.value, i.op_id, json.dumps(i.detail))
                for i in items
            ],
        )

    def drop_items(self, name: str, keys: Iterable[tuple[str, str]]) -> None:
        self.conn.executemany(
            "DELETE FROM bridge_items WHERE bridge = ? AND entry = ? AND fingerprint = ?",
            [(name, entry, fingerprint) for entry, fingerprint in keys],
        )

    def item_by_op(self, op_ids: list[str]) -> dict[str, tuple[str, Item]]:
        """(bridge, item) of each op id that is a bridged add of ours."""
        if not op_ids:
            return {}
        where, args = in_list(sorted(set(op_ids)))
        return {
            row[5]: (row[0], Item(row[1], row[2], row[3], row[4], row[5], json.loads(row[6])))
            for row in self.conn.execute(
                "SELECT bridge, entry, fingerprint, type, value, op_id, detail FROM bridge_items"
                f" WHERE op_id IN {where}",
                args,
            )
        }

    # -- feedback --------------------------------------------------------------------

    def opinions_after(
        self, cursor: int, node_id: str, limit: int
    ) -> list[tuple[int, str, str, str, str | None]]:
        """Opinion feed rows after `cursor` on adds of this node's: (cursor, target,
        verdict, opinion author, reason). The reason is the stance's now, which is the
        op's own unless a later opinion of the same author changed it."""
        return [
            (int(c), str(t), str(v), str(a), r)
            for c, t, v, a, r in self.conn.execute(
                "SELECT f.cursor, f.target, f.detail, substr(f.op_id, 1, instr(f.op_id, '/') - 1),"
                " o.reason FROM feed f LEFT JOIN opinions o ON o.op_id = f.op_id"
                " WHERE f.kind = 'opinion' AND f.cursor > ?"
                " AND substr(f.target, 1, ?) = ? ORDER BY f.cursor LIMIT ?",
                (cursor, len(node_id) + 1, node_id + "/", limit),
            )
        ]

    def feed_head(self) -> int:
        row = self.conn.execute("SELECT max(cursor) FROM feed").fetchone()
        return int(row[0] or 0)

    def set_feedback_cursor(self, name: str, cursor: int) -> None:
        self.conn.execute(
            "UPDATE bridge_state SET feedback_cursor = ? WHERE name = ?", (cursor, name)
        )

    def queue_feedback(
        self, name: str, target: str, verdict: str, author: str, reason: str | None, at: int
    ) -> bool:
        """Queue one opinion to forward; False when the same (target, verdict) was queued
        or sent before (it is never sent twice)."""
        cur = self.conn.execute(
            "INSERT OR IGNORE INTO bridge_feedback (bridge, target, verdict, author, reason,"
            " state, queued_at) VALUES (?, ?, ?, ?, ?, 'queued', ?)",
            (name, target, verdict, author, reason, at),
        )
        return cur.rowcount == 1

    def feedback_due(self, name: str, limit: int) -> list[tuple[str, str, str | None, int]]:
        """Queued feedback: (target, verdict, reason, attempts), oldest first."""
        return [
            (str(t), str(v), r, int(n))
            for t, v, r, n in self.conn.execute(
                "SELECT target, verdict, reason, attempts FROM bridge_feedback"
                " WHERE bridge = ? AND state = 'queued' ORDER BY queued_at, target LIMIT ?",
                (name, limit),
            )
        ]

    def mark_feedback(
        self,
        name: str,
        target: str,
        verdict: str,
        state: str,
        at: int,
        sent: str | None = None,
        error: str | None = None,
    ) -> None:
        assert state in FEEDBACK_STATES
        self.conn.execute(
            "UPDATE bridge_feedback SET state = ?, attempts = attempts + (? = 'sending'),"
            " sent = coalesce(?, sent), error = ?, done_at = CASE WHEN ? IN ('sent', 'refused',"
            " 'unknown') THEN ? ELSE done_at END WHERE bridge = ? AND target = ? AND verdict = ?",
            (state, state, sent, error, state, at, name, target, verdict),
        )

    def feedback_interrupted(self, name: str, at: int) -> int:
        """Feedback a stopped node left `sending`: upstream may have it, so it becomes
        `unknown` and is never sent again. Returns how many."""
        cur = self.conn.execute(
            "UPDATE bridge_feedback SET state = 'unknown', done_at = ?, error = 'the node"
            " stopped while the call was out: upstream may or may not have it (not resent)'"
            " WHERE bridge = ? AND state = 'sending'",
            (at, name),
        )
        return cur.rowcount


def state_of(conn: sqlite3.Connection, name: str) -> dict[str, Any] | None:
    """A bridge's state row with its item and feedback counts (any connection: the CLI
    reads it through a read-only one while the node runs)."""
    row = conn.execute(
        "SELECT kind, checkpoint, counts, feedback_cursor, last_success_ms, last_error,"
        " last_error_ms, failures FROM bridge_state WHERE name = ?",
        (name,),
    ).fetchone()
    if row is None:
        return None
    live = conn.execute("SELECT count(*) FROM bridge_items WHERE bridge = ?", (name,)).fetchone()[0]
    feedback = {
        str(state): int(n)
        for state, n in conn.execute(
            "SELECT state, count(*) FROM bridge_feedback WHERE bridge = ? GROUP BY state", (name,)
        )
    }
    return {
        "kind": row[0],
        "checkpoint": json.loads(row[1]),
        "counts": json.loads(row[2]),
        "feedback_cursor": row[3],
        "last_success_ms": row[4],
        "last_error": row[5],
        "last_error_ms": row[6],
        "failures": row[7],
        "live": int(live),
        "feedback": feedback,
    }


def earlier_use(conn: sqlite3.Connection, name: str) -> tuple[str, str] | None:
    """(kind, collection of its live adds or "") of a bridge name used before, or None."""
    row = conn.execute("SELECT kind FROM bridge_state WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    item = conn.execute(
        "SELECT op_id FROM bridge_items WHERE bridge = ? LIMIT 1", (name,)
    ).fetchone()
    collection = str(item[0]).split("/")[1] if item else ""
    return str(row[0]), collection


def feedback_rows(conn: sqlite3.Connection, name: str, limit: int = 100) -> list[dict[str, Any]]:
    """The latest forwarded (or queued) opinions of a bridge, newest first."""
    return [
        {
            "target": t,
            "verdict": v,
            "author": a,
            "reason": r,
            "state": s,
            "attempts": n,
            "sent": json.loads(sent) if sent else None,
            "error": e,
        }
        for t, v, a, r, s, n, sent, e in conn.execute(
            "SELECT target, verdict, author, reason, state, attempts, sent, error"
            " FROM bridge_feedback WHERE bridge = ? ORDER BY queued_at DESC, target LIMIT ?",
            (name, limit),
        )
    ]
