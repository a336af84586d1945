"""A matcher replica's own SQLite file: the node's live signals and opinion stances as the
replica learnt them from the node's snapshot and change feed, and the cursor they reflect.

Why a file of its own rather than the node's: a replica runs on another machine (or pod)
than the node and reaches it only over HTTP, with a token restricted like any platform's.
It keeps exactly what a match answer needs, in the shape the node's store answers with
(`signals_by_id` builds its dicts with render.signal_dict, `opinion_counts_many` counts
stances per opinion collection as the node does), so the matcher code that answers on the
node answers here too, and the answers are the same for the same queries and token.

Crash safety: every page of the snapshot and of the feed is applied in one transaction
that also writes the cursor it reaches, so a replica killed at any instant resumes from a
cursor whose changes are all in its rows, and none after it is. A snapshot in progress has
no cursor yet (`bootstrapping`): a replica killed during one starts it again.

Rows carry the cursor that added and the one that revoked them (`added_at`, `revoked_at`),
so an index checkpoint of an older cursor is brought up to date from the rows changed
since, not rebuilt (`pdq_changes_since`).

Also here, because all SQL lives in hashmesh/node/store: the node-side read of the head
cursor a restricted follower can see (`visible_head`), for the node's /v1/replica/state.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

from hashmesh.node.store.core import opinion_counts_many
from hashmesh.node.store.render import signal_dict
from hashmesh.protocol.batches import LogKey
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.ops import OpId
from hashmesh.protocol.signals import signal_types
from hashmesh.protocol.state import OpinionCounts

DB_NAME = "replica.sqlite"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id TEXT NOT NULL UNIQUE,
    author TEXT NOT NULL,
    collection TEXT NOT NULL,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    quality INTEGER,
    category TEXT NOT NULL,
    classification TEXT,
    ref TEXT,
    revoked_by TEXT,
    revoked_reason TEXT,
    added_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX IF NOT EXISTS signals_revoked_at ON signals (revoked_at) WHERE revoked_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS signals_added_at ON signals (added_at);
CREATE TABLE IF NOT EXISTS stances (
    target TEXT NOT NULL,
    author TEXT NOT NULL,
    collection TEXT NOT NULL,
    verdict TEXT,
    seen INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (target, author, collection)
) WITHOUT ROWID;
"""

# Rows of distance-matched types are found through their indexes (PDQ, vPDQ), never by
# value: indexing their values, random hex, was two thirds of the time a replica took to
# apply a feed page. The index holds the exactly matched types' values only.
_BY_DISTANCE = tuple(sorted(name for name, t in signal_types().items() if not t.exact))
_EXACT_ONLY = "type NOT IN (" + ", ".join(f"'{name}'" for name in _BY_DISTANCE) + ")"
_VALUE_INDEX = f"CREATE INDEX signals_exact_value ON signals (value) WHERE {_EXACT_ONLY}"

# signals columns in render.SIGNAL_COLUMNS order (log_id is unused by signal_dict).
_SIGNAL_SELECT = (
    "id, 0, seq, idx, type, value, quality, category, classification, ref,"
    " revoked_by, revoked_reason, author, collection"
)


@dataclass(frozen=True)
class Add:
    """A validated add as the node's snapshot or feed told it (hashmesh/node/net/follow.py
    validates; this module trusts what it is handed)."""

    op_id: str
    author: str
    collection: str
    seq: int
    idx: int
    type: str
    value: str
    quality: int | None
    category: str
    classification: str | None
    ref: str | None


@dataclass(frozen=True)
class StanceRow:
    author: str
    collection: str
    verdict: str | None
    seen: bool


@dataclass
class Page:
    """One transaction's worth of changes, in feed order, and the cursor they reach.

    `stances` replaces, per target, every stance held: the node sends a target's whole
    opinion state with each change that concerns it."""

    cursor: int
    adds: list[Add] = field(default_factory=list)
    revokes: list[tuple[str, str, str]] = field(default_factory=list)  # target, by, reason
    stances: dict[str, list[StanceRow]] = field(default_factory=dict)
    # Feed order matters when one page both adds and revokes a signal: (kind, position).
    order: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class Applied:
    """What a page changed in the PDQ index: (local id, pdq hex) added, local ids removed."""

    added: list[tuple[int, str]] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)  # of PDQ and vPDQ rows
    videos: list[tuple[int, str]] = field(default_factory=list)  # vPDQ (local id, value)


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout=10000")
    if readonly:
        conn.execute("PRAGMA query_only=1")
    return conn


def private_dir(directory: Path) -> Path:
    """The data directory, created 0700 (its rows are hashes of abuse material)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(directory, 0o700)
    return directory


class ReplicaStore:
    """The replica's rows. One writer (the follower, on its own thread via `write_*`) and
    any number of reading threads (`reader()`, one connection per thread, WAL)."""

    def __init__(self, directory: Path) -> None:
        self.directory = private_dir(Path(directory))
        self.path = self.directory / DB_NAME
        fresh = not self.path.exists()
        old = os.umask(0o077)
        try:
            self.conn = _connect(self.path, readonly=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            # The node's store's page cache. Measured at 200,000 rows it was no faster
            # than SQLite's 2 MB default (larger replicas not measured).
            self.conn.execute("PRAGMA cache_size=-65536")
        finally:
            os.umask(old)
        for suffix in ("", "-wal", "-shm"):
            candidate = Path(str(self.path) + suffix)
            if candidate.exists():
                os.chmod(candidate, 0o600)
        self.conn.executescript(_SCHEMA)
        self._index_values()
        if fresh:
            self._set("schema", str(SCHEMA_VERSION))
        elif self._get("schema") != str(SCHEMA_VERSION):
            raise ValueError(
                f"{self.path}: replica schema {self._get('schema')!r}, this version reads"
                f" {SCHEMA_VERSION}; remove the directory and let the replica bootstrap again"
            )
        self._local = threading.local()
        self._lock = threading.Lock()  # the writer connection, from any one thread at a time
        # Kept in memory as committed: the event loop reads them (health, every request) and
        # must never wait for the lock a snapshot chunk's write holds.
        self._cursor = self._int_meta("cursor")
        self._floor = self._int_meta("floor") or 0
        self._source = self._get("source")
        # The node's match policy for the collections we follow, as /v1/replica/state
        # last sent it: kept in memory (the state is polled every 250 ms), never on disk.
        self._policy_rows: list[tuple[Any, ...]] = []
        self._quarantined: frozenset[str] = frozenset()  # op ids, as the state last said

    def _index_values(self) -> None:
        """Create the value index as this version defines it, replacing an older one (a
        replica of before indexed every value; a registry that gains a distance type
        narrows it): one scan of the table, once."""
        row = self.conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'signals_exact_value'"
        ).fetchone()
        if row is not None and row[0] == _VALUE_INDEX:
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("DROP INDEX IF EXISTS signals_value")
            self.conn.execute("DROP INDEX IF EXISTS signals_exact_value")
            self.conn.execute(_VALUE_INDEX)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # -- meta ----------------------------------------------------------------------------

    def _get(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _int_meta(self, key: str) -> int | None:
        value = self._get(key)
        return None if value is None else int(value)

    @property
    def cursor(self) -> int | None:
        """The feed cursor every row reflects; None before a snapshot completed."""
        return self._cursor

    def source(self) -> dict[str, str]:
        """Whom the rows came from ({"url", "token_hash"}; empty when never bootstrapped)."""
        return {} if self._source is None else dict(json.loads(self._source))

    def floor(self) -> int:
        """The lowest head cursor the node may report without having been reset: its head
        before our snapshot, or the last event we applied (see net/follow.py)."""
        return self._floor

    # -- writing -------------------------------------------------------------------------

    def begin_snapshot(self, url: str, token_hash: str, floor: int) -> None:
        """Forget everything held (a new snapshot replaces it whole) and mark the rows
        incomplete until `end_snapshot` commits the snapshot's cursor."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM signals")
                conn.execute("DELETE FROM stances")
                conn.execute("DELETE FROM meta WHERE key IN ('cursor', 'floor')")
                source = json.dumps({"url": url, "token_hash": token_hash})
                self._set("source", source)
                self._set("floor", str(floor))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._cursor, self._floor, self._source = None, floor, source

    def snapshot_rows(self, adds: list[Add], stances: dict[str, list[StanceRow]], at: int) -> None:
        """One chunk of a snapshot in one transaction (no cursor yet). In one statement per
        table: the index is built from the rows once the snapshot ends, so no id is needed
        back."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    _INSERT_ADD,
                    [_add_row(a, at) for a in adds],
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO stances (target, author, collection, verdict, seen)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [
                        (target, s.author, s.collection, s.verdict, int(s.seen))
                        for target, rows in stances.items()
                        for s in rows
                    ],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def end_snapshot(self, cursor: int) -> None:
        with self._lock:
            self._set("cursor", str(cursor))
            self._cursor = cursor

    def apply(self, page: Page) -> Applied:
        """Feed changes and the cursor they reach, in one transaction."""
        return self._apply(page, commit_cursor=True)

    def _apply(self, page: Page, commit_cursor: bool) -> Applied:
        out = Applied()
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Runs of one kind in one statement each (a replica following a 1M sync
                # applied 12k changes/s one statement at a time, the node ingests 20k/s);
                # the runs keep feed order, so a page that adds then revokes still works.
                for kind, run in groupby(page.order, key=itemgetter(0)):
                    if kind == "add":
                        self._add_run([page.adds[at] for _, at in run], page.cursor, out)
                    else:
                        self._revoke_run([page.revokes[at] for _, at in run], page.cursor, out)
                if page.stances:
                    conn.executemany(
                        "DELETE FROM stances WHERE target = ?", [(t,) for t in page.stances]
                    )
                    conn.executemany(
                        "INSERT OR REPLACE INTO stances (target, author, collection, verdict,"
                        " seen) VALUES (?, ?, ?, ?, ?)",
                        [
                            (target, s.author, s.collection, s.verdict, int(s.seen))
                            for target, rows in page.stances.items()
                            for s in rows
                        ],
                    )
                if commit_cursor:
                    # An event the node sent: its head can never again be below it.
                    self._set("cursor", str(page.cursor))
                    self._set("floor", str(page.cursor))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            if commit_cursor:
                self._cursor = self._floor = page.cursor
        return out

    def _add_run(self, adds: list[Add], cursor: int, out: Applied) -> None:
        """Insert `adds`; the rows inserted (not those already held) are the ids above the
        largest before, as this connection is the only writer."""
        conn = self.conn
        (before,) = conn.execute("SELECT coalesce(max(id), 0) FROM signals").fetchone()
        conn.executemany(_INSERT_ADD, [_add_row(a, cursor) for a in adds])
        for key, kind, value in conn.execute(
            "SELECT id, type, value FROM signals WHERE id > ? AND type IN ('pdq', 'vpdq')"
            " ORDER BY id",
            (before,),
        ):
            (out.added if kind == "pdq" else out.videos).append((int(key), value))

    def _revoke_run(self, revokes: list[tuple[str, str, str]], cursor: int, out: Applied) -> None:
        """Revoke each target still live; a target named twice keeps the first revocation,
        as applying them one by one would."""
        conn = self.conn
        out.removed.extend(
            int(key)
            for (key,) in conn.execute(
                "SELECT id FROM signals WHERE op_id IN (SELECT value FROM json_each(?))"
                " AND revoked_by IS NULL AND type IN ('pdq', 'vpdq')",
                (json.dumps([target for target, _, _ in revokes]),),
            )
        )
        conn.executemany(
            "UPDATE signals SET revoked_by = ?, revoked_reason = ?, revoked_at = ?"
            " WHERE op_id = ? AND revoked_by IS NULL",
            [(by, reason, cursor, target) for target, by, reason in revokes],
        )

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    # -- the PDQ index's rows --------------------------------------------------------------

    def live_pdq(self, chunk: int = 100_000) -> Iterator[list[tuple[int, str]]]:
        """(local id, pdq hex) of every live PDQ row, `chunk` at a time, for building the index."""
        conn = self._reader_conn()
        query = conn.execute(
            "SELECT id, value FROM signals WHERE type = 'pdq' AND revoked_by IS NULL ORDER BY id"
        )
        while rows := query.fetchmany(chunk):
            yield [(int(k), str(v)) for k, v in rows]

    def live_vpdq(self) -> list[tuple[int, str]]:
        """(local id, value) of every live vPDQ row, for building the vPDQ index."""
        rows = self._reader_conn().execute(
            "SELECT id, value FROM signals WHERE type = 'vpdq' AND revoked_by IS NULL"
        )
        return [(int(k), str(v)) for k, v in rows]

    def pdq_changes_since(self, cursor: int) -> Applied:
        """What changed in the PDQ rows after `cursor`: brings a checkpoint up to date."""
        conn = self._reader_conn()
        out = Applied()
        out.added = [
            (int(k), str(v))
            for k, v in conn.execute(
                "SELECT id, value FROM signals WHERE type = 'pdq' AND added_at > ?"
                " AND revoked_by IS NULL ORDER BY id",
                (cursor,),
            )
        ]
        out.removed = [
            int(k)
            for (k,) in conn.execute(
                "SELECT id FROM signals WHERE type = 'pdq' AND revoked_at > ? AND added_at <= ?",
                (cursor, cursor),
            )
        ]
        return out

    def pdq_digest(self) -> tuple[int, int]:
        """(live count, sum of live keys mod 2**63), as PDQIndex.digest() computes it, to
        verify a loaded index against the rows."""
        # In SQL, not row by row in Python: this runs at every start, over millions of rows
        # (ids are positive and far below 2**63 / rows, so the sum cannot overflow).
        count, total = (
            self._reader_conn()
            .execute(
                "SELECT count(*), coalesce(sum(id), 0) FROM signals"
                " WHERE type = 'pdq' AND revoked_by IS NULL"
            )
            .fetchone()
        )
        return int(count), int(total) % (1 << 63)

    def counts(self) -> dict[str, int]:
        conn = self._reader_conn()
        live, revoked = conn.execute(
            "SELECT count(*) FILTER (WHERE revoked_by IS NULL),"
            " count(*) FILTER (WHERE revoked_by IS NOT NULL) FROM signals"
        ).fetchone()
        return {"live": int(live), "revoked": int(revoked)}

    # -- SignalSource (hashmesh/node/matching/matcher.py) ----------------------------------

    def _reader_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = _connect(self.path, readonly=True)
        return conn

    def set_policy_rows(self, rows: list[tuple[Any, ...]]) -> None:
        self._policy_rows = rows

    def policy_rows(self) -> list[tuple[Any, ...]]:
        return self._policy_rows

    def set_quarantined(self, op_ids: frozenset[str]) -> None:
        self._quarantined = op_ids

    def quarantined(self, op_ids: list[str]) -> dict[str, str]:
        held = self._quarantined
        return {
            o: "on a match spike, at the node this replica follows" for o in op_ids if o in held
        }

    def reader(self) -> ReplicaStore:
        """This object is its own reader: each thread reads through a connection of its own."""
        return self

    def find_exact(
        self, signal_type: str, value: str, live_only: bool = True, limit: int = -1
    ) -> list[int]:
        _exact_type(signal_type)
        sql = f"SELECT id FROM signals WHERE value = ? AND type = ? AND {_EXACT_ONLY}"
        if live_only:
            sql += " AND revoked_by IS NULL"
        sql += " ORDER BY id LIMIT ?"
        return [int(r[0]) for r in self._reader_conn().execute(sql, (value, signal_type, limit))]

    def exact_rows(self, signal_type: str, value: str, limit: int) -> dict[int, dict[str, Any]]:
        """The live rows of one exact value, by row id, in one statement."""
        _exact_type(signal_type)
        return {
            row[0]: signal_dict(row, LogKey(row[12], row[13]))
            for row in self._reader_conn().execute(
                f"SELECT {_SIGNAL_SELECT} FROM signals WHERE value = ? AND type = ?"
                f" AND {_EXACT_ONLY} AND revoked_by IS NULL ORDER BY id LIMIT ?",
                (value, signal_type, limit),
            )
        }

    def signals_by_id(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        conn = self._reader_conn()
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(
                f"SELECT {_SIGNAL_SELECT} FROM signals WHERE id IN ({marks})", chunk
            ):
                out[row[0]] = signal_dict(row, LogKey(row[12], row[13]))
        return out

    def opinion_counts_many(
        self, targets: list[str], collections: frozenset[str] | None = None
    ) -> dict[str, OpinionCounts]:
        """As the node's store counts them (the same function, over the replica's stances)."""
        return opinion_counts_many(self._reader_conn(), targets, collections, table="stances")


_INSERT_ADD = (
    "INSERT INTO signals (op_id, author, collection, seq, idx, type, value, quality,"
    " category, classification, ref, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (op_id) DO NOTHING"
)


def _exact_type(signal_type: str) -> None:
    if signal_type in _BY_DISTANCE:  # the matcher asks their indexes: a caller's bug
        raise ValueError(f"{signal_type} is matched by distance, not looked up by value")


def _add_row(a: Add, at: int) -> tuple[Any, ...]:
    return (
        a.op_id,
        a.author,
        a.collection,
        a.seq,
        a.idx,
        a.type,
        a.value,
        a.quality,
        a.category,
        a.classification,
        a.ref,
        at,
    )


# -- the node side --------------------------------------------------------------------------

_SCAN = 256


def visible_head(conn: sqlite3.Connection, collections: Iterable[str] | None) -> int:
    """The highest feed cursor a reader of `collections` (None: all) is sent.

    The feed also holds rows such a reader is never sent (an opinion made in a readable
    collection about a signal of another), and a head past every event a replica can ever
    receive would read as lag that never ends, so each collection's newest rows are read
    until one the reader is sent."""
    if collections is None:
        return int(conn.execute("SELECT coalesce(max(cursor), 0) FROM feed").fetchone()[0])
    allowed = set(collections)
    head = 0
    for collection in sorted(allowed):
        before = 1 << 62
        while True:
            rows = conn.execute(
                "SELECT cursor, kind, target FROM feed WHERE collection = ? AND cursor < ?"
                " AND cursor > ? ORDER BY cursor DESC LIMIT ?",
                (collection, before, head, _SCAN),
            ).fetchall()
            if not rows:
                break
            found = next((r[0] for r in rows if _sent(r[1], r[2], allowed)), None)
            if found is not None:
                head = max(head, int(found))
                break
            before = rows[-1][0]
    return head


def _sent(kind: str, target: str | None, allowed: set[str]) -> bool:
    if kind != "opinion":
        return True
    try:
        return OpId.parse(target or "").collection in allowed
    except ProtocolError:
        return False
