"""The node's durable state: one SQLite file (WAL), written one batch per transaction.

Ingesting a batch stores its exact signed bytes, its signals, the revocations and opinions
it carries, the log's new head and the feed entries, all in one transaction: a crash at any
instant leaves each batch either whole or absent, and re-receiving a batch is a no-op.

The store implements `protocol.state.Ledger`: the protocol (`receive`, `decide`) makes every
decision and the store only carries it out. The schema and its migrations are in
schema.py, the one transaction helper in transaction.py, the one rendering of a signal row
in render.py; the ingest hot path uses plain `executemany` and set-based statements.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

from hashmesh.node.errors import HomeError
from hashmesh.node.hashing.degenerate import degenerate_adds
from hashmesh.node.store.backup import backup_database
from hashmesh.node.store.bridges import BridgeTable
from hashmesh.node.store.cases import CaseTable
from hashmesh.node.store.feed import connect_reader
from hashmesh.node.store.inlist import in_list
from hashmesh.node.store.integrity import check_at_open, closed_cleanly, read_header
from hashmesh.node.store.jsonrows import json_param, json_rows
from hashmesh.node.store.policies import PolicyRow, PolicyTable, policy_rows
from hashmesh.node.store.quarantine import (
    DEGENERATE_REASON,
    QuarantineTable,
    active_for,
    live_adds,
)
from hashmesh.node.store.render import SIGNAL_COLUMNS, signal_dict
from hashmesh.node.store.schema import migrate
from hashmesh.node.store.statements import Merge, StatementRow, StatementTable
from hashmesh.node.store.tokens import TokenTable
from hashmesh.node.store.transaction import transaction
from hashmesh.node.store.witness import EquivocationRow, EquivocationTable
from hashmesh.protocol.batches import Batch, LogKey, encode_frame, split_frame, verify_batch
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.evidence import ForkEvidence, SignedHeader, build_evidence
from hashmesh.protocol.ops import AddOp, OpId
from hashmesh.protocol.state import (
    MAX_PENDING_PER_LOG,
    Apply,
    Decision,
    Defer,
    Duplicate,
    Fork,
    Frozen,
    Opined,
    OpinionCounts,
    Revoked,
    Stance,
    apply_opinion,
    count_opinions,
    receive,
)

_second = itemgetter(1)
_get_type = attrgetter("type")
_get_value = attrgetter("value")
_add_fields = attrgetter("type", "value", "quality", "category", "classification", "ref")


def _lighten(decision: Decision) -> Decision:
    if isinstance(decision, Apply):
        light = replace(decision.batch, ops=[], leaf_hashes=[])
        return Apply(light, [], [], [])
    return decision


def _for_observers(result: IngestResult) -> IngestResult:
    """What a decision observer keeps until a bulk commit: the ops (observers count them)
    but not the leaf hashes or the per-add index lists, which only applying needed."""
    kept: list[Decision] = []
    for decision in result.decisions:
        if isinstance(decision, Apply):
            decision = Apply(replace(decision.batch, leaf_hashes=[]), [], [], [])
        kept.append(decision)
    return IngestResult(kept)


def _signed(batch: Batch) -> SignedHeader:
    return SignedHeader(batch.header_bytes, batch.signature)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class IngestResult:
    """What one ingest call did: the decisions in order (the batch, then any it unblocked)."""

    decisions: list[Decision] = field(default_factory=list)
    added: list[tuple[int, str, str]] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)

    @property
    def applied(self) -> list[Batch]:
        return [d.batch for d in self.decisions if isinstance(d, Apply)]

    @property
    def forks(self) -> list[ForkEvidence]:
        return [d.evidence for d in self.decisions if isinstance(d, Fork)]

    @property
    def outcome(self) -> str:
        """The first decision's kind: applied, duplicate, deferred, fork or frozen."""
        if not self.decisions:
            return "none"
        return {
            Apply: "applied",
            Duplicate: "duplicate",
            Defer: "deferred",
            Fork: "fork",
            Frozen: "frozen",
        }[type(self.decisions[0])]


ChangeListener = Callable[[list[tuple[int, str, str]], list[int]], None]
BatchListener = Callable[[list[Batch], list[ForkEvidence], str], None]


class Store:
    """One node's SQLite database. Not thread-safe: one owner (the node process or the CLI)."""

    def __init__(self, path: str | Path, *, check: bool = True) -> None:
        self.path = Path(path)
        clean = closed_cleanly(self.path)  # before connecting: the -wal file a crash leaves
        # Before connecting too: closing any descriptor of the file drops this process's
        # POSIX locks on it, and a connection that lost them lets another process take the
        # database for unused and delete its -wal and -shm under us (integrity.py).
        size = read_header(self.path) if check else 0
        self.open_check = "none"  # which check ran at open (integrity.py says why)
        try:
            self.conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA busy_timeout=10000")
            self.conn.execute("PRAGMA cache_size=-65536")
            if check:
                self.open_check = check_at_open(self.conn, self.path, clean, size)
            migrate(self.conn, self.path)
        except sqlite3.DatabaseError as exc:
            raise HomeError(f"database {self.path}: {exc}") from None
        self.tokens = TokenTable(self.conn)
        self.cases = CaseTable(self.conn)
        self.policies = PolicyTable(self.conn)
        self.quarantine = QuarantineTable(self.conn)
        self.bridges = BridgeTable(self.conn)
        self.statements = StatementTable(self.conn)
        self.equivocations = EquivocationTable(self.conn)
        self._log_ids: dict[LogKey, int] = {}
        self._log_keys: dict[int, LogKey] = {}
        self._heads: dict[int, int] = {}
        self._forked: set[int] = set()
        # Bumped whenever a head may have changed: replication keeps what it derived from
        # the heads (a peer's view, our own collections) while this stays the same.
        self.heads_version = 0
        for row in self.conn.execute("SELECT id, author, collection, head, forked FROM logs"):
            key = LogKey(row[1], row[2])
            self._log_ids[key] = row[0]
            self._log_keys[row[0]] = key
            self._heads[row[0]] = row[3]
            if row[4]:
                self._forked.add(row[0])
        self.listeners: list[ChangeListener] = []
        self.batch_listeners: list[BatchListener] = []
        self.decision_listeners: list[Callable[[IngestResult, str], None]] = []
        self._bulk: IngestResult | None = None
        self._bulk_decisions: list[tuple[IngestResult, str]] = []
        self._known_adds: dict[OpId, bool] = {}
        self._ingesting: tuple[str, IngestResult] | None = None

    def close(self) -> None:
        self.conn.close()

    # -- StateView -----------------------------------------------------------------------

    def head(self, log: LogKey) -> int:
        log_id = self._log_ids.get(log)
        return 0 if log_id is None else self._heads[log_id]

    def signed_header(self, log: LogKey, seq: int) -> SignedHeader | None:
        log_id = self._log_ids.get(log)
        if log_id is None:
            return None
        row = self.conn.execute(
            "SELECT header, sig FROM batches WHERE log_id = ? AND seq = ?", (log_id, seq)
        ).fetchone()
        return None if row is None else SignedHeader(row[0], row[1])

    def is_forked(self, log: LogKey) -> bool:
        log_id = self._log_ids.get(log)
        return log_id is not None and log_id in self._forked

    def is_add(self, op_id: OpId) -> bool:
        known = self._known_adds.get(op_id)
        if known is not None:
            return known
        return self.signal_id(op_id) is not None

    # -- ingest --------------------------------------------------------------------------

    def _log_id(self, log: LogKey) -> int:
        log_id = self._log_ids.get(log)
        if log_id is None:
            cur = self.conn.execute(
                "INSERT INTO logs (author, collection) VALUES (?, ?)", (log.author, log.collection)
            )
            log_id = int(cur.lastrowid or 0)
            self._log_ids[log] = log_id
            self._log_keys[log_id] = log
            self._heads[log_id] = 0
        return log_id

    def ingest(self, batch: Batch, source: str = "local") -> IngestResult:
        """Decide and carry out one verified batch, then every waiting batch it unblocks
        (`protocol.state.receive` drives; this store only persists, one transaction per
        batch)."""
        result = IngestResult()
        self._ingesting = (source, result)
        try:
            result.decisions = receive(self, batch)
        finally:
            self._ingesting = None
            self._known_adds = {}
        if self._bulk is not None:
            # Listeners after the commit need the signed bytes, not the parsed ops: keep
            # light copies so a million-signal import does not hold every op in memory.
            self._bulk.decisions.extend(_lighten(d) for d in result.decisions)
            self._bulk.added.extend(result.added)
            self._bulk.removed.extend(result.removed)
            if self.decision_listeners:
                self._bulk_decisions.append((_for_observers(result), source))
        else:
            for observe in self.decision_listeners:
                observe(result, source)
            self._notify(result, source)
        return result

    # -- protocol.state.Ledger: called by `receive` during `ingest` ------------------------

    def _context(self) -> tuple[str, IngestResult]:
        assert self._ingesting is not None, "Ledger methods run only inside ingest()"
        return self._ingesting

    def prepare(self, batch: Batch) -> None:
        self._known_adds = self._revoke_targets_held(batch)

    def apply(self, decision: Apply) -> None:
        source, result = self._context()
        self._transaction(lambda: self._apply(decision, source, result))

    def defer(self, batch: Batch) -> None:
        source, _ = self._context()
        self._transaction(lambda: self._defer(batch, source))

    def waiting_conflict(self, batch: Batch) -> SignedHeader | None:
        return self._pending_conflict(batch)

    def take_waiting(self, log: LogKey, seq: int) -> Batch | None:
        return self._take_pending(log, seq)

    def record_fork(self, log: LogKey, evidence: ForkEvidence) -> None:
        source, _ = self._context()
        self._transaction(lambda: self._store_fork(evidence, source))

    def _notify(self, result: IngestResult, source: str) -> None:
        if result.added or result.removed:
            for listener in self.listeners:
                listener(result.added, result.removed)
        applied, forks = result.applied, result.forks
        if applied or forks:
            for batch_listener in self.batch_listeners:
                batch_listener(applied, forks, source)

    def _snapshot(self) -> tuple[Any, ...]:
        return (dict(self._log_ids), dict(self._log_keys), dict(self._heads), set(self._forked))

    def _restore(self, snapshot: tuple[Any, ...]) -> None:
        self._log_ids, self._log_keys, self._heads, self._forked = snapshot
        self.heads_version += 1

    def _transaction(self, work: Callable[[], None]) -> None:
        """One batch, atomically: a transaction, or a savepoint inside `bulk`."""
        snapshot = self._snapshot()
        try:
            with transaction(self.conn, self.path, nested=self._bulk is not None):
                work()
        except BaseException:
            self._restore(snapshot)
            raise

    @contextmanager
    def bulk(self, source: str = "bundle") -> Iterator[None]:
        """Make everything ingested inside one transaction: all of it commits or none does.

        Used by bundle import, where a bad batch late in the file must leave no trace, and
        for each page of batches pulled from a peer (one fsync per page, not per batch).
        Change listeners (the matcher index, eager push) hear of the changes only after the
        commit, with `source` so a relay never pushes a batch back where it came from.
        """
        if self._bulk is not None:
            raise RuntimeError("bulk() does not nest")
        snapshot = self._snapshot()
        self._bulk = IngestResult()
        self._bulk_decisions = []
        try:
            with transaction(self.conn, self.path):
                yield
        except BaseException:
            self._bulk = None
            self._bulk_decisions = []
            self._restore(snapshot)
            raise
        done, self._bulk = self._bulk, None
        decided, self._bulk_decisions = self._bulk_decisions, []
        # Observers (metrics) must never count what a rollback undid: they hear of a bulk
        # transaction's decisions only once it has committed.
        for result, batch_source in decided:
            for observe in self.decision_listeners:
                observe(result, batch_source)
        self._notify(done, source)

    def _hold_degenerate(
        self, header: Any, adds: list[tuple[int, Any]], fields: list[tuple[Any, ...]], at: int
    ) -> None:
        """Quarantine the degenerate hashes of another node's batch (hashing/degenerate.py):
        the batch must be kept whole (it is signed, and its log goes on after it), but such
        a hash describes no picture and would match innocent ones, so it never matches
        here. Our own publishing routes refuse them before they are signed."""
        found = degenerate_adds([(f[0], f[1]) for f in fields])
        for position, reason in found:
            index = adds[position][0]
            kind, value = fields[position][0], fields[position][1]
            op_id = f"{header.author}/{header.collection}/{header.seq}/{index}"
            row = (op_id, header.collection, kind, value, header.author,
                   f"{DEGENERATE_REASON}{reason}", 0, at)  # fmt: skip
            self.quarantine.add(row)

    def _apply(self, decision: Apply, source: str, result: IngestResult) -> None:
        batch = decision.batch
        header = batch.header
        log_id = self._log_id(batch.log)
        at = now_ms()
        conn = self.conn
        conn.execute(
            "INSERT INTO batches (log_id, seq, hash, header, sig, ops, op_count, received_at,"
            " source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                log_id,
                header.seq,
                batch.hash,
                batch.header_bytes,
                batch.signature,
                batch.ops_bytes,
                header.count,
                at,
                source,
            ),
        )
        seq = header.seq
        first_id = None
        if decision.adds:
            first_id = (conn.execute("SELECT coalesce(max(id), 0) FROM signals").fetchone()[0]) + 1
            count = len(decision.adds)
            ops = list(map(_second, decision.adds))
            fields = list(map(_add_fields, ops))  # (type, value, quality, category, ...)
            conn.execute(
                "INSERT INTO signals (id, log_id, seq, idx, type, value, quality, category,"
                " classification, ref) SELECT ? + j.key, ?, ?, j.value ->> 0, j.value ->> 1,"
                " j.value ->> 2, j.value ->> 3, j.value ->> 4, j.value ->> 5, j.value ->> 6"
                " FROM json_each(?) j",
                (
                    first_id,
                    log_id,
                    seq,
                    json_param(
                        [index, *rest]
                        for (index, _), rest in zip(decision.adds, fields, strict=True)
                    ),
                ),
            )
            # The feed rows in one statement, straight from the rows just written.
            conn.execute(
                "INSERT INTO feed (kind, collection, signal_id, at)"
                " SELECT 'add', ?, id, ? FROM signals WHERE id BETWEEN ? AND ? ORDER BY id",
                (header.collection, at, first_id, first_id + count - 1),
            )
            if source != "local":
                self._hold_degenerate(header, decision.adds, fields, at)
            result.added.extend(
                zip(
                    range(first_id, first_id + count),
                    map(_get_type, ops),
                    map(_get_value, ops),
                    strict=True,
                )
            )
        revoked = 0
        revokes: list[Revoked] = []
        opinions: list[Opined] = []
        for effect in decision.effects:
            # Runs of one kind at a time, each in a few set-based statements; the feed keeps
            # op order across runs.
            if isinstance(effect, Revoked):
                if opinions:
                    self._opine(opinions, at)
                    opinions = []
                revokes.append(effect)
            else:
                if revokes:
                    revoked += self._revoke(revokes, header.collection, at, result)
                    revokes = []
                opinions.append(effect)
        if revokes:
            revoked += self._revoke(revokes, header.collection, at, result)
        if opinions:
            self._opine(opinions, at)
        conn.execute(
            "UPDATE logs SET head = ?, head_hash = ?, head_ts = ?, adds = adds + ?,"
            " live = live + ? - ?, updated_at = ? WHERE id = ?",
            (
                seq,
                batch.hash,
                header.ts,
                len(decision.adds),
                len(decision.adds),
                revoked,
                at,
                log_id,
            ),
        )
        self._heads[log_id] = seq
        self.heads_version += 1

    def _revoke_targets_held(self, batch: Batch) -> dict[OpId, bool]:
        """Which earlier revoke targets of `batch` are held adds, in one statement, so that
        `decide` asks `is_add` of a 10,000-target batch without 10,000 queries."""
        if set(map(type, batch.ops)) == {AddOp}:
            return {}
        log_id = self._log_ids.get(batch.log)
        # Verification parsed them (a verified batch names only op ids of its own log).
        targets = [
            target
            for ids in batch.revoke_targets.values()
            for target in ids
            if target.seq < batch.seq
        ]
        if log_id is None or not targets:
            return {}
        held = set(
            map(
                tuple,
                json_rows(
                    self.conn,
                    "s.seq, s.idx",
                    "FROM json_each(?) j CROSS JOIN signals s"
                    " ON s.log_id = ? AND s.seq = j.value ->> 0 AND s.idx = j.value ->> 1",
                    (json_param([t.seq, t.index] for t in targets), log_id),
                ),
            )
        )
        return {t: (t.seq, t.index) in held for t in targets}

    def _revoke(
        self, effects: list[Revoked], collection: str, at: int, result: IngestResult
    ) -> int:
        """Carry out a run of revocations with one statement each to find, mark and feed
        them; the first revocation of a signal wins, as applying them one by one would."""
        wanted = [
            [self._log_ids.get(LogKey(e.target.author, e.target.collection)), *e.target[2:]]
            for e in effects
        ]
        conn = self.conn
        chosen: dict[int, Revoked] = {}
        found = json_rows(
            conn,
            "j.key, s.id",
            "FROM json_each(?) j CROSS JOIN signals s"
            " ON s.log_id = j.value ->> 0 AND s.seq = j.value ->> 1 AND s.idx = j.value ->> 2"
            " WHERE s.revoked_by IS NULL",
            (json_param(wanted),),
        )
        found.sort()
        for key, signal_id in found:
            chosen.setdefault(signal_id, effects[key])
        if not chosen:
            return 0
        rows = json.dumps([[sid, str(e.by), e.reason, str(e.target)] for sid, e in chosen.items()])
        conn.execute(
            "UPDATE signals SET revoked_by = j.value ->> 1, revoked_reason = j.value ->> 2"
            " FROM json_each(?) j WHERE signals.id = j.value ->> 0",
            (rows,),
        )
        conn.execute(
            "INSERT INTO feed (kind, collection, signal_id, op_id, target, detail, at)"
            " SELECT 'revoke', ?, j.value ->> 0, j.value ->> 1, j.value ->> 3, j.value ->> 2, ?"
            " FROM json_each(?) j ORDER BY j.key",
            (collection, at, rows),
        )
        result.removed.extend(chosen)
        return len(chosen)

    def _opine(self, run: list[Opined], at: int) -> None:
        """A run of one batch's opinions (one author and collection): the stances they
        change read in one statement, folded in op order, written back in one. A stance
        keeps the reason of the op that set its verdict (a `seen` leaves it, a `retract`
        clears it with the verdict)."""
        author, collection = run[0].op_id.author, run[0].op_id.collection
        targets = sorted({str(e.target) for e in run})
        stances: dict[str, Stance] = {}
        reasons: dict[str, str | None] = {}
        for target, verdict, seen, reason in json_rows(
            self.conn,
            "target, verdict, seen, reason",
            "FROM opinions WHERE author = ? AND collection = ?"
            " AND target IN (SELECT value FROM json_each(?))",
            (author, collection, json.dumps(targets)),
        ):
            stances[target] = Stance(verdict, bool(seen))
            reasons[target] = reason
        last: dict[str, str] = {}
        for effect in run:
            target = str(effect.target)
            apply_opinion(stances.setdefault(target, Stance()), effect.opinion)
            if effect.opinion != "seen":
                reasons[target] = effect.reason if effect.opinion != "retract" else None
            last[target] = str(effect.op_id)
        self.conn.execute(
            "INSERT OR REPLACE INTO opinions (target, author, collection, verdict, seen, op_id,"
            " reason) SELECT j.value ->> 0, ?, ?, j.value ->> 1, j.value ->> 2, j.value ->> 3,"
            " j.value ->> 4 FROM json_each(?) j ORDER BY j.key",
            (
                author,
                collection,
                json_param(
                    [t, stances[t].verdict, int(stances[t].seen), op_id, reasons.get(t)]
                    for t, op_id in last.items()
                ),
            ),
        )
        self.conn.execute(
            "INSERT INTO feed (kind, collection, op_id, target, detail, at)"
            " SELECT 'opinion', ?, j.value ->> 0, j.value ->> 1, j.value ->> 2, ?"
            " FROM json_each(?) j ORDER BY j.key",
            (collection, at, json_param([str(e.op_id), str(e.target), e.opinion] for e in run)),
        )

    def _defer(self, batch: Batch, source: str) -> None:
        log_id = self._log_id(batch.log)
        waiting = self.conn.execute(
            "SELECT count(*) FROM pending WHERE log_id = ?", (log_id,)
        ).fetchone()[0]
        if waiting >= MAX_PENDING_PER_LOG:
            return
        self.conn.execute(
            "INSERT OR IGNORE INTO pending (log_id, seq, hash, frame, received_at, source)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (log_id, batch.seq, batch.hash, batch.to_bytes(), now_ms(), source),
        )

    def _pending_conflict(self, batch: Batch) -> SignedHeader | None:
        """A validly signed waiting batch at the same place as `batch` but different from it."""
        log_id = self._log_ids.get(batch.log)
        if log_id is None:
            return None
        for (frame,) in self.conn.execute(
            "SELECT frame FROM pending WHERE log_id = ? AND seq = ? AND hash != ?",
            (log_id, batch.seq, batch.hash),
        ).fetchall():
            try:
                header_bytes, signature, _, _ = split_frame(frame)
                held = SignedHeader(header_bytes, signature)
                build_evidence(held, _signed(batch))
            except ProtocolError:
                continue
            return held
        return None

    def _take_pending(self, log: LogKey, seq: int) -> Batch | None:
        """Pop one waiting batch for (log, seq); re-verified, since it is stored bytes."""
        log_id = self._log_ids[log]
        rows = self.conn.execute(
            "SELECT hash, frame FROM pending WHERE log_id = ? AND seq = ?", (log_id, seq)
        ).fetchall()
        for hash_, frame in rows:
            self.conn.execute(
                "DELETE FROM pending WHERE log_id = ? AND seq = ? AND hash = ?",
                (log_id, seq, hash_),
            )
            try:
                return verify_batch(frame)
            except ProtocolError:
                continue
        return None

    def _store_fork(self, evidence: ForkEvidence, source: str) -> None:
        log_id = self._log_id(evidence.log)
        self.conn.execute(
            "INSERT OR IGNORE INTO forks (id, log_id, seq, evidence, found_at, source)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (evidence.id, log_id, evidence.seq, evidence.to_bytes(), now_ms(), source),
        )
        self.conn.execute("UPDATE logs SET forked = 1 WHERE id = ?", (log_id,))
        self.conn.execute("DELETE FROM pending WHERE log_id = ?", (log_id,))
        self._forked.add(log_id)

    def add_evidence(self, evidence: ForkEvidence, source: str) -> bool:
        """Store evidence learnt from a peer; True when it was new."""
        known = self.conn.execute("SELECT 1 FROM forks WHERE id = ?", (evidence.id,)).fetchone()
        if known:
            return False
        self._transaction(lambda: self._store_fork(evidence, source))
        return True

    def evidence_count(self, log: LogKey) -> int:
        """Evidence items stored about one log: one proves the fork, so a cap on more is
        what keeps a peer from filling the disk with variants of it."""
        log_id = self._log_ids.get(log)
        if log_id is None:
            return 0
        row = self.conn.execute("SELECT count(*) FROM forks WHERE log_id = ?", (log_id,))
        return int(row.fetchone()[0])

    def evidence_count_from(self, source: str) -> int:
        """Evidence items stored that `source` (e.g. "peer:<id>") was the first to send."""
        row = self.conn.execute("SELECT count(*) FROM forks WHERE source = ?", (source,))
        return int(row.fetchone()[0])

    # -- queries -------------------------------------------------------------------------

    def log_key(self, log_id: int) -> LogKey:
        return self._log_keys[log_id]

    def signal_id(self, op_id: OpId) -> int | None:
        log_id = self._log_ids.get(LogKey(op_id.author, op_id.collection))
        if log_id is None:
            return None
        row = self.conn.execute(
            "SELECT id FROM signals WHERE log_id = ? AND seq = ? AND idx = ?",
            (log_id, op_id.seq, op_id.index),
        ).fetchone()
        return None if row is None else int(row[0])

    def signal(self, signal_id: int) -> dict[str, Any] | None:
        row = self.conn.execute(
            f"SELECT {SIGNAL_COLUMNS} FROM signals WHERE id = ?", (signal_id,)
        ).fetchone()
        return None if row is None else signal_dict(row, self._log_keys[row[1]])

    def signals_by_id(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        return signals_by_id(self.conn, ids, self._log_keys.get)

    def find_exact(
        self, signal_type: str, value: str, live_only: bool = True, limit: int = -1
    ) -> list[int]:
        return find_exact(self.conn, signal_type, value, live_only, limit)

    def exact_rows(self, signal_type: str, value: str, limit: int) -> dict[int, dict[str, Any]]:
        return exact_rows(self.conn, signal_type, value, limit, self._log_keys.get)

    def find_own_live(
        self, author: str, collection: str, signal_type: str, value: str
    ) -> int | None:
        log_id = self._log_ids.get(LogKey(author, collection))
        return None if log_id is None else find_own_live(self.conn, log_id, signal_type, value)

    def own_live_places(
        self, author: str, collection: str, pairs: list[tuple[str, str]], refs: list[str]
    ) -> set[tuple[int, int]]:
        """(seq, index) of `author`'s live adds in `collection` of these (type, value) pairs
        or references: one statement per signal type and one for all references, however
        long the list (a list withdrawal asks this of a million entries)."""
        by_type: dict[str, list[str]] = {}
        for signal_type, value in pairs:
            by_type.setdefault(signal_type, []).append(value)
        found: set[tuple[int, int]] = set()
        for signal_type, values in by_type.items():
            found.update(
                self.conn.execute(
                    "SELECT s.seq, s.idx FROM signals s JOIN logs l ON l.id = s.log_id"
                    " WHERE l.author = ? AND l.collection = ? AND s.type = ?"
                    " AND s.revoked_by IS NULL AND s.value IN (SELECT value FROM json_each(?))",
                    (author, collection, signal_type, json.dumps(values)),
                )
            )
        if refs:
            found.update(
                self.conn.execute(
                    "SELECT s.seq, s.idx FROM signals s JOIN logs l ON l.id = s.log_id"
                    " WHERE l.author = ? AND l.collection = ? AND s.revoked_by IS NULL"
                    " AND s.ref IN (SELECT value FROM json_each(?))",
                    (author, collection, json.dumps(refs)),
                )
            )
        return found

    def live_signals(self, signal_type: str) -> Iterator[tuple[int, str]]:
        """(id, value) of every live signal of a type, for loading a matcher index."""
        yield from self.conn.execute(
            "SELECT id, value FROM signals WHERE type = ? AND revoked_by IS NULL", (signal_type,)
        )

    def policy_rows(self) -> list[PolicyRow]:
        return policy_rows(self.conn)

    def quarantined(self, op_ids: list[str]) -> dict[str, str]:
        return active_for(self.conn, op_ids)

    def opinion_counts(self, target: str) -> OpinionCounts:
        rows = self.conn.execute(
            "SELECT author, verdict, seen FROM opinions WHERE target = ?", (target,)
        ).fetchall()
        return count_opinions((a, Stance(v, bool(s))) for a, v, s in rows)

    def opinion_counts_many(
        self, targets: list[str], collections: frozenset[str] | None = None
    ) -> dict[str, OpinionCounts]:
        return opinion_counts_many(self.conn, targets, collections)

    def opinions_on(self, target: str) -> list[dict[str, Any]]:
        return [
            {"author": a, "collection": c, "verdict": v, "seen": bool(s), "op_id": o}
            for a, c, v, s, o in self.conn.execute(
                "SELECT author, collection, verdict, seen, op_id FROM opinions WHERE target = ?"
                " ORDER BY author, collection",
                (target,),
            )
        ]

    def opinions_on_author(self, author: str, limit: int) -> list[tuple[Any, ...]]:
        """(target, opinion author, collection, verdict, seen, op id, reason) of other
        authors' opinions on `author`'s adds, for its review queue: a range over the opinions'
        primary key (an op id begins with its author's node id), at most `limit` targets,
        those with the most recent opinions (by opinion op id) first."""
        low = author + "/"
        high = author + "0"  # "0" sorts right after "/"
        targets = [
            r[0]
            for r in self.conn.execute(
                "SELECT target FROM opinions WHERE target >= ? AND target < ? AND author != ?"
                " GROUP BY target ORDER BY max(op_id) DESC LIMIT ?",
                (low, high, author, limit),
            )
        ]
        if not targets:
            return []
        return self.conn.execute(
            "SELECT target, author, collection, verdict, seen, op_id, reason FROM opinions"
            " WHERE target IN (SELECT value FROM json_each(?)) AND author != ?"
            " ORDER BY target, author, collection",
            (json.dumps(targets), author),
        ).fetchall()

    def logs(self, after: tuple[str, str] | None = None, limit: int = -1) -> list[dict[str, Any]]:
        """Logs in (collection, author) order, those after `after` if given, at most
        `limit` (-1: all): a status page reads one page, never every log."""
        rows = self.conn.execute(
            "SELECT l.id, l.author, l.collection, l.head, l.head_hash, l.head_ts, l.forked,"
            " l.adds, l.live, l.updated_at, (SELECT count(*) FROM pending p WHERE p.log_id = l.id)"
            " FROM logs l WHERE ? IS NULL OR (l.collection, l.author) > (?, ?)"
            " ORDER BY l.collection, l.author LIMIT ?",
            (after and after[0], after and after[0], after and after[1], limit),
        ).fetchall()
        return [
            {
                "author": r[1],
                "collection": r[2],
                "head": r[3],
                "head_hash": r[4].hex() if r[4] else None,
                "head_ts": r[5],
                "forked": bool(r[6]),
                "adds": r[7],
                "live": r[8],
                "updated_at": r[9],
                "pending": r[10],
            }
            for r in rows
        ]

    def log_count(self) -> int:
        return len(self._log_ids)

    def held_collections(self) -> list[str]:
        """Collections with at least one batch held, without reading every log."""
        return sorted({k.collection for k, i in self._log_ids.items() if self._heads[i] > 0})

    def vector(self, collections: set[str] | None = None) -> dict[LogKey, int]:
        """Version vector: the highest contiguous seq of every log held (optionally filtered)."""
        return {
            key: self._heads[log_id]
            for key, log_id in self._log_ids.items()
            if self._heads[log_id] > 0 and (collections is None or key.collection in collections)
        }

    def batch_frames(self, log: LogKey, after: int = 0, limit: int = 1_000_000) -> Iterator[bytes]:
        log_id = self._log_ids.get(log)
        if log_id is None:
            return
        for header, sig, ops in self.conn.execute(
            "SELECT header, sig, ops FROM batches WHERE log_id = ? AND seq > ? ORDER BY seq"
            " LIMIT ?",
            (log_id, after, limit),
        ):
            yield encode_frame(header, sig, ops)

    def forks(self) -> list[dict[str, Any]]:
        return [
            {
                "id": r[0],
                "author": self._log_keys[r[1]].author,
                "collection": self._log_keys[r[1]].collection,
                "seq": r[2],
                "evidence": r[3].decode("ascii"),
                "found_at": r[4],
                "source": r[5],
            }
            for r in self.conn.execute(
                "SELECT id, log_id, seq, evidence, found_at, source FROM forks ORDER BY found_at"
            )
        ]

    def recent_changes(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest feed entries, newest first, with the signal they concern."""
        rows = self.conn.execute(
            "SELECT cursor, kind, collection, signal_id, op_id, target, detail, at FROM feed"
            " ORDER BY cursor DESC LIMIT ?",
            (limit,),
        ).fetchall()
        signals = self.signals_by_id([r[3] for r in rows if r[3] is not None])
        out = []
        for cursor, kind, collection, signal_id, op_id, target, detail, at in rows:
            entry: dict[str, Any] = {
                "cursor": cursor,
                "kind": kind,
                "collection": collection,
                "at": at,
            }
            signal = signals.get(signal_id) if signal_id is not None else None
            if signal is not None:
                entry.update(
                    type=signal["type"],
                    value=signal["value"],
                    author=signal["author"],
                    op_id=signal["op_id"] if kind == "add" else op_id,
                )
            else:
                entry["op_id"] = op_id
            if target:
                entry["target"] = target
            if detail:
                entry["detail"] = detail
            out.append(entry)
        return out

    def feed_cursor(self) -> int:
        row = self.conn.execute("SELECT coalesce(max(cursor), 0) FROM feed").fetchone()
        return int(row[0])

    def counts(self) -> dict[str, Any]:
        live = {
            row[0]: row[1]
            for row in self.conn.execute(
                "SELECT collection, sum(live) FROM logs GROUP BY collection ORDER BY collection"
            )
        }
        return {
            "live_by_collection": live,
            "live": sum(live.values()),
            "batches": self.conn.execute("SELECT count(*) FROM batches").fetchone()[0],
            "pending": self.conn.execute("SELECT count(*) FROM pending").fetchone()[0],
            "forks": self.conn.execute("SELECT count(*) FROM forks").fetchone()[0],
            "feed_cursor": self.feed_cursor(),
        }

    def batches_not_signed_by(
        self,
        log: LogKey,
        first: int,
        last: int | None,
        keep: str | None,
        signer_of: Callable[[bytes], str],
    ) -> list[tuple[LogKey, int]]:
        """(log, seq) of the held batches first..last (None: to the head) that `keep` did
        not sign (None: all of them); `signer_of` reads a header (the protocol's to parse,
        not the store's)."""
        log_id = self._log_ids.get(log)
        if log_id is None:
            return []
        return [
            (log, seq)
            for seq, header in self.conn.execute(
                "SELECT seq, header FROM batches WHERE log_id = ? AND seq >= ? AND seq <= ?"
                " ORDER BY seq",
                (log_id, first, self._heads[log_id] if last is None else last),
            )
            if keep is None or signer_of(header) != keep
        ]

    def withdraw_batches(
        self, batches: list[tuple[LogKey, int]], by: str, reason: str
    ) -> list[int]:
        """Take the live adds of held batches out of matching, as if revoked by `by` (a
        key revocation: its batches after the bound are no longer the author's word):
        each becomes a revoke entry in the feed, so a feed consumer drops it too. The
        batches stay (their bytes are signed, and the log's chain runs through them).
        Returns the signal ids withdrawn; one transaction."""
        removed: list[int] = []
        at = now_ms()

        def work() -> None:
            for log, seq in batches:
                log_id = self._log_ids[log]
                rows = self.conn.execute(
                    "UPDATE signals SET revoked_by = ?, revoked_reason = ?"
                    " WHERE log_id = ? AND seq = ? AND revoked_by IS NULL RETURNING id, idx",
                    (by, reason, log_id, seq),
                ).fetchall()
                if not rows:
                    continue
                rows.sort()
                self.conn.executemany(
                    "INSERT INTO feed (kind, collection, signal_id, op_id, target, detail, at)"
                    " VALUES ('revoke', ?, ?, ?, ?, ?, ?)",
                    [
                        (log.collection, sid, by, f"{log}/{seq}/{idx}", reason, at)
                        for sid, idx in rows
                    ],
                )
                self.conn.execute(
                    "UPDATE logs SET live = live - ?, updated_at = ? WHERE id = ?",
                    (len(rows), at, log_id),
                )
                removed.extend(sid for sid, _ in rows)

        self._transaction(work)
        if removed and self._bulk is None:
            for listener in self.listeners:
                listener([], removed)
        elif removed and self._bulk is not None:
            self._bulk.removed.extend(removed)
        return removed

    def put_equivocation(self, row: EquivocationRow) -> bool:
        """Keep a witness's equivocation (store/witness.py) in its own transaction, or the
        open bulk one."""
        new = False

        def work() -> None:
            nonlocal new
            new = self.equivocations.put(row)

        self._transaction(work)
        return new

    def put_statement(self, row: StatementRow, merge: Merge) -> str:
        """Store one verified statement (store/statements.py): in the open bulk
        transaction when there is one, else in its own."""
        outcome = ""

        def work() -> None:
            nonlocal outcome
            outcome = self.statements.put(row, merge, now_ms())

        try:
            with transaction(self.conn, self.path, nested=self._bulk is not None):
                work()
        except BaseException:
            self.statements.changed()  # a digest computed inside the rollback is void
            raise
        return outcome

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str | None) -> None:
        if value is None:
            self.conn.execute("DELETE FROM meta WHERE key = ?", (key,))
        else:
            self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)
            )

    def set_batch_time(self, log: LogKey, seq: int, at: int) -> None:
        """This node's own times of one batch it holds (its row, the log's when it is the
        head, and its feed entries) set to `at`: the self-report page promises the day
        only, and the second of receipt would tell more."""
        log_id = self._log_ids[log]
        self.conn.execute(
            "UPDATE batches SET received_at = ? WHERE log_id = ? AND seq = ?", (at, log_id, seq)
        )
        self.conn.execute(
            "UPDATE logs SET updated_at = ? WHERE id = ? AND head = ?", (at, log_id, seq)
        )
        self.conn.execute(
            "UPDATE feed SET at = ? WHERE signal_id IN"
            " (SELECT id FROM signals WHERE log_id = ? AND seq = ?)",
            (at, log_id, seq),
        )
        prefix = f"{log.author}/{log.collection}/{seq}/"
        self.conn.execute(
            "UPDATE feed SET at = ? WHERE kind != 'add' AND op_id >= ? AND op_id < ?",
            (at, prefix, prefix[:-1] + "0"),
        )

    def backup_to(self, target: Path) -> None:
        """A consistent copy of the whole database into `target` (see backup.py)."""
        backup_database(self.conn, target)

    def integrity_check(self) -> str:
        return str(self.conn.execute("PRAGMA integrity_check").fetchone()[0])


def opinion_counts_many(
    conn: sqlite3.Connection,
    targets: list[str],
    collections: frozenset[str] | None = None,
    table: str = "opinions",
) -> dict[str, OpinionCounts]:
    """Opinions on many signals in one statement, counting only those held in `collections`
    (None: all): a caller restricted to some collections must not learn what was said in
    the others. Takes a connection so the off-thread exact reader can use its own, and the
    table (one of ours, never input) so a matcher replica's copy counts the same way."""
    if not targets:
        return {}
    unique = sorted(set(targets))
    where, args = in_list(unique)
    sql = f"SELECT target, author, verdict, seen FROM {table} WHERE target IN {where}"
    if collections is not None:
        more, extra = in_list(sorted(collections))
        sql += f" AND collection IN {more}"
        args += extra
    stances: dict[str, list[tuple[str, Stance]]] = {t: [] for t in targets}
    for target, author, verdict, seen in conn.execute(sql, args):
        stances[target].append((author, Stance(verdict, bool(seen))))
    return {t: count_opinions(s) for t, s in stances.items()}


def signals_by_id(
    conn: sqlite3.Connection, ids: list[int], log_of: Callable[[int], LogKey | None]
) -> dict[int, dict[str, Any]]:
    """Signals by row id as API dicts; a row whose log `log_of` does not know is left out
    (a reader's view may be older or newer than the cache it was given)."""
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        for row in conn.execute(
            f"SELECT {SIGNAL_COLUMNS} FROM signals WHERE id IN ({marks})", chunk
        ):
            log = log_of(row[1])
            if log is not None:
                out[row[0]] = signal_dict(row, log)
    return out


def exact_rows(
    conn: sqlite3.Connection,
    signal_type: str,
    value: str,
    limit: int,
    log_of: Callable[[int], LogKey | None],
) -> dict[int, dict[str, Any]]:
    """The live rows of one exact value as API dicts, by row id: `find_exact` and then
    `signals_by_id` in one statement, the one a match of an exact hash costs (a statement
    is most of an exact match's CPU on the fast path, docs/benchmarks.md)."""
    out: dict[int, dict[str, Any]] = {}
    for row in conn.execute(
        f"SELECT {SIGNAL_COLUMNS} FROM signals WHERE value = ? AND type = ?"
        " AND revoked_by IS NULL ORDER BY id LIMIT ?",
        (value, signal_type, limit),
    ):
        log = log_of(row[1])
        if log is not None:
            out[row[0]] = signal_dict(row, log)
    return out


def find_own_live(
    conn: sqlite3.Connection, log_id: int, signal_type: str, value: str
) -> int | None:
    """By value first: a join on the log would make SQLite walk the whole log through
    signals_position, one row per signal it holds, for every add it is asked about."""
    row = conn.execute(
        "SELECT id FROM signals WHERE value = ? AND type = ? AND log_id = ?"
        " AND revoked_by IS NULL LIMIT 1",
        (value, signal_type, log_id),
    ).fetchone()
    return None if row is None else int(row[0])


def find_exact(
    conn: sqlite3.Connection, signal_type: str, value: str, live_only: bool, limit: int
) -> list[int]:
    sql = "SELECT id FROM signals WHERE value = ? AND type = ?"
    if live_only:
        sql += " AND revoked_by IS NULL"
    sql += " ORDER BY id LIMIT ?"
    return [row[0] for row in conn.execute(sql, (value, signal_type, limit))]


class StoreReader:
    """The store's signals and opinions, read on a thread that is not the store's.

    In WAL mode a read-only connection sees the last committed state and never waits for
    the store thread's write transactions, so a match is never queued behind an ingest and
    an expensive one cannot hold up publishing. Logs are immutable once created, so their
    keys are cached here; this never touches the store's own caches, which only its thread
    may read while it writes them.
    """

    def __init__(self, path: str | Path) -> None:
        self.conn = connect_reader(path)
        self._log_keys: dict[int, LogKey] = {}
        self._log_ids: dict[LogKey, int] = {}

    def close(self) -> None:
        self.conn.close()

    def _log(self, log_id: int) -> LogKey | None:
        key = self._log_keys.get(log_id)
        if key is None:
            row = self.conn.execute(
                "SELECT author, collection FROM logs WHERE id = ?", (log_id,)
            ).fetchone()
            if row is None:
                return None
            key = self._log_keys[log_id] = LogKey(row[0], row[1])
        return key

    def find_exact(
        self, signal_type: str, value: str, live_only: bool = True, limit: int = -1
    ) -> list[int]:
        return find_exact(self.conn, signal_type, value, live_only, limit)

    def exact_rows(self, signal_type: str, value: str, limit: int) -> dict[int, dict[str, Any]]:
        return exact_rows(self.conn, signal_type, value, limit, self._log)

    def signals_by_id(self, ids: list[int]) -> dict[int, dict[str, Any]]:
        return signals_by_id(self.conn, ids, self._log)

    def own_live_op(self, author: str, collection: str, signal_type: str, value: str) -> str | None:
        """The op id of `author`'s live add of this signal in `collection`, if committed
        (Store.find_own_live, for a thread that is not the store's)."""
        log_id = self._log_ids.get(LogKey(author, collection))
        if log_id is None:
            row = self.conn.execute(
                "SELECT id FROM logs WHERE author = ? AND collection = ?", (author, collection)
            ).fetchone()
            if row is None:
                return None
            log_id = self._log_ids[LogKey(author, collection)] = int(row[0])
        signal_id = find_own_live(self.conn, log_id, signal_type, value)
        if signal_id is None:
            return None
        signal = self.signals_by_id([signal_id]).get(signal_id)
        return None if signal is None else str(signal["op_id"])

    def opinion_counts_many(
        self, targets: list[str], collections: frozenset[str] | None = None
    ) -> dict[str, OpinionCounts]:
        return opinion_counts_many(self.conn, targets, collections)

    def policy_rows(self) -> list[PolicyRow]:
        return policy_rows(self.conn)

    def quarantined(self, op_ids: list[str]) -> dict[str, str]:
        return active_for(self.conn, op_ids)

    def live_adds(
        self, keys: list[tuple[str, str, int, int]]
    ) -> dict[str, tuple[str, str, str, str]]:
        return live_adds(self.conn, keys)


class ReaderPool:
    """One `StoreReader` per thread: sqlite3 connections must not be shared across threads
    that use them at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self._local = threading.local()

    def get(self) -> StoreReader:
        reader: StoreReader | None = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = StoreReader(self.path)
        return reader
