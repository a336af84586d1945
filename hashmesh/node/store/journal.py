"""The intake journal: a second, small SQLite file (intake.db) where a running node's own
signed batches are made durable before the store applies them.

SQLite has one writer per database, so an operator's add could not commit beside a peer
transaction already running on the store thread (one 5,000-add batch, or a 30,000-target
withdrawal: 0.1-2 s on busy cores). This file has its own writer: a publish commits its
frames here in a few milliseconds, and the store thread applies them when its current call
ends. Frames stay until a later append deletes the ones applied by then (`applied_through`),
so the steady state costs one transaction per publish; a start applies whatever is left
(node/intake.py). Rows only: what a frame means is the protocol's and the intake's.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

from hashmesh.node.store.transaction import storage_error, transaction

JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: ids order frames for good
    frame BLOB NOT NULL
);
"""


class JournalFile:
    """The frames table of intake.db. Safe to share between threads: the intake thread
    appends and a start reads, one at a time under its lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():  # the database's 0600 before SQLite creates it
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._lock = threading.Lock()
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=10000")
            self.conn.executescript(JOURNAL_SCHEMA)
        except sqlite3.OperationalError as exc:
            raise storage_error(self.path, exc) from None

    def append(self, frames: list[bytes], applied_through: int) -> list[int]:
        """Commit `frames` (one fsync) and drop those with id <= applied_through; the new
        frames' ids, in order."""
        with self._lock, transaction(self.conn, self.path):
            if applied_through:
                self.conn.execute("DELETE FROM frames WHERE id <= ?", (applied_through,))
            ids = []
            for frame in frames:
                cursor = self.conn.execute("INSERT INTO frames (frame) VALUES (?)", (frame,))
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
            return ids

    def frames(self) -> list[tuple[int, bytes]]:
        """Every frame held, oldest first."""
        with self._lock:
            return [
                (int(i), bytes(f))
                for i, f in self.conn.execute("SELECT id, frame FROM frames ORDER BY id")
            ]

    def last_id(self) -> int:
        with self._lock:
            row = self.conn.execute("SELECT max(id) FROM frames").fetchone()
        return int(row[0] or 0)

    def drop_through(self, frame_id: int) -> None:
        with self._lock, transaction(self.conn, self.path):
            self.conn.execute("DELETE FROM frames WHERE id <= ?", (frame_id,))

    def close(self) -> None:
        with self._lock:
            self.conn.close()
