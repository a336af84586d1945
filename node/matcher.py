"""Answering "is this hash known?" with provenance, over the store and the PDQ index.

Exact types are a lookup in the store's value index. PDQ goes through the in-memory
`PDQIndex`, loaded once at start and kept current by the store's change listener, so a
new add is matchable as soon as its batch commits and a revoked one never matches again.
"""

from __future__ import annotations

from typing import Any

from protocol.errors import ProtocolError
from protocol.signals import Signal, get_type

from .errors import NodeError
from .pdq_index import DEFAULT_THRESHOLD, PDQIndex
from .store import Store, signal_dict

MAX_QUERIES = 1000
MAX_THRESHOLD = 64


class Matcher:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._pdq: PDQIndex | None = None

    @property
    def pdq(self) -> PDQIndex:
        """Loaded on first use, so an exact-only lookup from the CLI never pays for it."""
        if self._pdq is None:
            index = PDQIndex()
            keys: list[int] = []
            values: list[str] = []
            for key, value in self.store.live_signals("pdq"):
                keys.append(key)
                values.append(value)
            if keys:
                index.add_many(keys, values)
            self._pdq = index
            self.store.listeners.append(self._on_change)
        return self._pdq

    def _on_change(self, added: list[tuple[int, str, str]], removed: list[int]) -> None:
        pdq = [(key, value) for key, kind, value in added if kind == "pdq"]
        if pdq:
            self.pdq.add_many([k for k, _ in pdq], [v for _, v in pdq])
        for key in removed:
            self.pdq.remove(key)

    def match(
        self, queries: list[tuple[str, str]], threshold: int = DEFAULT_THRESHOLD
    ) -> list[list[tuple[int, int]]]:
        """For each (type, value) query, the live signal ids that match and their distances."""
        if len(queries) > MAX_QUERIES:
            raise NodeError(f"queries: at most {MAX_QUERIES} per request, got {len(queries)}")
        if not 0 <= threshold <= MAX_THRESHOLD:
            raise NodeError(f"threshold: must be 0-{MAX_THRESHOLD}, got {threshold}")
        signals: list[Signal] = []
        for n, (kind, value) in enumerate(queries):
            try:
                signals.append(Signal.parse(kind, value))
            except ProtocolError as exc:
                raise NodeError(f"queries[{n}]: {exc}") from None
        hits: list[list[tuple[int, int]]] = [[] for _ in signals]
        pdq_positions = [i for i, s in enumerate(signals) if not get_type(s.type).exact]
        if pdq_positions:
            found = self.pdq.query_many([signals[i].value for i in pdq_positions], threshold)
            for i, result in zip(pdq_positions, found, strict=True):
                hits[i] = [(int(k), int(d)) for k, d in result]
        for i, signal in enumerate(signals):
            if get_type(signal.type).exact:
                hits[i] = [(k, 0) for k in self.store.find_exact(signal.type, signal.value)]
        return hits

    def explain(self, hits: list[tuple[int, int]]) -> list[dict[str, Any]]:
        rows = self.store.signals_by_id([k for k, _ in hits])
        out = []
        for key, distance in hits:
            row = rows.get(key)
            if row is not None and row["live"]:
                out.append({**row, "distance": distance})
        return out


class ExactReader:
    """Exact-type matches (md5, sha1, sha256, photodna) off the store thread.

    Each thread that asks gets its own read-only SQLite connection; in WAL mode a reader
    sees the last committed state and never waits for the store thread's write
    transactions, so matches are not queued behind a large ingest. The answer is the one
    `NodeService.match` gives. PDQ queries still go through the store thread, which owns
    the in-memory PDQ index.
    """

    def __init__(self, store: Store, author_name: Any) -> None:
        import threading

        self.store = store
        self.author_name = author_name
        self._local = threading.local()

    def _conn(self) -> Any:
        import sqlite3

        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.store.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA query_only=1")
            self._local.conn = conn
        return conn

    @staticmethod
    def handles(queries: Any) -> bool:
        """True when every query names an exact signal type (else use the store thread)."""
        if not isinstance(queries, list) or not queries or len(queries) > MAX_QUERIES:
            return False
        for q in queries:
            if not isinstance(q, dict) or not isinstance(q.get("type"), str):
                return False
            try:
                if not get_type(q["type"]).exact:
                    return False
            except ProtocolError:
                return False
        return True

    def match(self, queries: list[dict[str, Any]], threshold: int = DEFAULT_THRESHOLD) -> Any:
        from protocol.state import Stance, count_opinions

        if not 0 <= threshold <= MAX_THRESHOLD:
            raise NodeError(f"threshold: must be 0-{MAX_THRESHOLD}, got {threshold}")
        signals: list[Signal] = []
        for n, q in enumerate(queries):
            if not isinstance(q.get("value"), str):
                raise NodeError(f"queries[{n}]: expected an object with string type and value")
            try:
                signals.append(Signal.parse(q["type"], q["value"]))
            except ProtocolError as exc:
                raise NodeError(f"queries[{n}]: {exc}") from None
        conn = self._conn()
        results = []
        for q, signal in zip(queries, signals, strict=True):
            matches = []
            for row in conn.execute(
                "SELECT id, log_id, seq, idx, type, value, quality, category, classification,"
                " ref, revoked_by, revoked_reason FROM signals"
                " WHERE value = ? AND type = ? AND revoked_by IS NULL",
                (signal.value, signal.type),
            ):
                info = self._signal(conn, row)
                if info is None:
                    continue
                rows = conn.execute(
                    "SELECT author, verdict, seen FROM opinions WHERE target = ?",
                    (info["op_id"],),
                ).fetchall()
                counts = count_opinions((a, Stance(v, bool(s))) for a, v, s in rows)
                info["distance"] = 0
                info["author_name"] = self.author_name(info["author"])
                info["opinions"] = {
                    "confirm": counts.confirm,
                    "dispute": counts.dispute,
                    "seen": counts.seen,
                }
                matches.append(info)
            matches.sort(key=lambda m: (m["distance"], m["op_id"]))
            results.append({"query": {"type": q["type"], "value": q["value"]}, "matches": matches})
        return {
            "threshold": threshold,
            "matched": any(r["matches"] for r in results),
            "results": results,
        }

    def _signal(self, conn: Any, row: tuple[Any, ...]) -> dict[str, Any] | None:
        from protocol.batches import LogKey

        log = self.store._log_keys.get(row[1])
        if log is None:  # a log committed after this node last cached it: read it here
            found = conn.execute(
                "SELECT author, collection FROM logs WHERE id = ?", (row[1],)
            ).fetchone()
            if found is None:
                return None
            log = LogKey(found[0], found[1])
        return signal_dict(row, log)
