"""Answering "is this hash known?" with provenance, over the store and the PDQ index.

Exact types are a lookup in the store's value index. PDQ goes through the in-memory
`PDQIndex`, loaded once at start and kept current by the store's change listener, so a
new add is matchable as soon as its batch commits and a revoked one never matches again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from protocol.errors import ProtocolError
from protocol.signals import Signal, get_type
from protocol.state import OpinionCounts

from .errors import NodeError
from .pdq_index import DEFAULT_THRESHOLD, PDQIndex
from .store import Store, opinion_counts_many, signal_dict

MAX_QUERIES = 1000
# The default (Meta's and HMA's recommended distance) is also the ceiling: at 31 the PDQ
# index probes 272 buckets a query; past it the probe set grows ~8x a step and a wide
# threshold degrades to a scan of every row (docs/platforms.md, "Match bounds").
MAX_THRESHOLD = DEFAULT_THRESHOLD
MAX_MATCHES_PER_QUERY = 100
MAX_MATCHES_PER_REQUEST = 10_000


def check_threshold(threshold: object) -> int:
    if type(threshold) is not int:
        raise NodeError("threshold: must be an integer")
    if not 0 <= threshold <= MAX_THRESHOLD:
        raise NodeError(
            f"threshold: must be 0-{MAX_THRESHOLD} (wider PDQ distances match unrelated"
            f" pictures and scan the whole index), got {threshold}"
        )
    return threshold


def parse_queries(queries: object) -> list[Signal]:
    if not isinstance(queries, list) or not queries:
        raise NodeError("queries: expected a non-empty list of {type, value}")
    if len(queries) > MAX_QUERIES:
        raise NodeError(f"queries: at most {MAX_QUERIES} per request, got {len(queries)}")
    signals: list[Signal] = []
    for n, q in enumerate(queries):
        if (
            not isinstance(q, dict)
            or not isinstance(q.get("type"), str)
            or not isinstance(q.get("value"), str)
        ):
            raise NodeError(f"queries[{n}]: expected an object with string type and value")
        try:
            signals.append(Signal.parse(q["type"], q["value"]))
        except ProtocolError as exc:
            raise NodeError(f"queries[{n}]: {exc}") from None
    return signals


def distinct(signals: list[Signal]) -> tuple[list[Signal], list[int]]:
    """Each distinct signal once, and for every query the position of its signal: a request
    repeating one hash a thousand times costs one lookup."""
    seen: dict[tuple[str, str], int] = {}
    unique: list[Signal] = []
    slots: list[int] = []
    for signal in signals:
        key = (signal.type, signal.value)
        if key not in seen:
            seen[key] = len(unique)
            unique.append(signal)
        slots.append(seen[key])
    return unique, slots


def assemble(
    queries: list[dict[str, Any]],
    slots: list[int],
    hits: list[list[tuple[int, int]]],
    rows: dict[int, dict[str, Any]],
    opinions: dict[str, OpinionCounts],
    collections: frozenset[str] | None,
    author_name: Callable[[str], Any],
    threshold: int,
) -> dict[str, Any]:
    """The match answer, bounded: each query's nearest `MAX_MATCHES_PER_QUERY` (`hits` holds
    one more, to tell that there were more) and `MAX_MATCHES_PER_REQUEST` in all, so one
    request can neither run the node out of memory nor answer with tens of megabytes."""
    budget = MAX_MATCHES_PER_REQUEST
    results = []
    cut = False
    for q, slot in zip(queries, slots, strict=True):
        window = hits[slot]
        matches = []
        for key, distance in window:
            row = rows.get(key)
            if row is None or not row["live"]:
                continue
            if collections is not None and row["collection"] not in collections:
                continue
            info = dict(row)
            info.pop("id", None)
            info["distance"] = distance
            info["author_name"] = author_name(row["author"])
            counts = opinions.get(row["op_id"], OpinionCounts(0, 0, 0))
            info["opinions"] = {
                "confirm": counts.confirm,
                "dispute": counts.dispute,
                "seen": counts.seen,
            }
            matches.append(info)
        matches.sort(key=lambda m: (m["distance"], m["op_id"]))
        cap = min(MAX_MATCHES_PER_QUERY, budget)
        truncated = len(window) > MAX_MATCHES_PER_QUERY or len(matches) > cap
        matches = matches[:cap]
        budget -= len(matches)
        entry: dict[str, Any] = {
            "query": {"type": q["type"], "value": q["value"]},
            "matches": matches,
        }
        if truncated:
            entry["truncated"] = True
            cut = True
        results.append(entry)
    return {
        "threshold": threshold,
        "matched": any(r["matches"] for r in results),
        "truncated": cut,
        "results": results,
    }


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
        check_threshold(threshold)
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

    def answer(
        self,
        queries: Any,
        threshold: int,
        collections: frozenset[str] | None,
        author_name: Callable[[str], Any],
    ) -> dict[str, Any]:
        """The API's match answer (see `assemble`), drawn only from `collections`."""
        check_threshold(threshold)
        unique, slots = distinct(parse_queries(queries))
        limit = MAX_MATCHES_PER_QUERY + 1
        hits: list[list[tuple[int, int]]] = [[] for _ in unique]
        pdq_positions = [i for i, s in enumerate(unique) if not get_type(s.type).exact]
        if pdq_positions:
            found = self.pdq.query_many(
                [unique[i].value for i in pdq_positions], threshold, limit=limit
            )
            for i, result in zip(pdq_positions, found, strict=True):
                hits[i] = [(int(k), int(d)) for k, d in result]
        for i, signal in enumerate(unique):
            if get_type(signal.type).exact:
                hits[i] = [(k, 0) for k in self.store.find_exact(signal.type, signal.value)][:limit]
        rows = self.store.signals_by_id(sorted({k for h in hits for k, _ in h}))
        opinions = self.store.opinion_counts_many([r["op_id"] for r in rows.values()], collections)
        return assemble(queries, slots, hits, rows, opinions, collections, author_name, threshold)

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

        check_threshold(threshold)
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

    def answer(
        self, queries: list[dict[str, Any]], threshold: int, collections: frozenset[str] | None
    ) -> dict[str, Any]:
        """`Matcher.answer` for exact types, on this thread's own connection."""
        check_threshold(threshold)
        unique, slots = distinct(parse_queries(queries))
        conn = self._conn()
        hits: list[list[tuple[int, int]]] = []
        rows: dict[int, dict[str, Any]] = {}
        for signal in unique:
            found = []
            for row in conn.execute(
                "SELECT id, log_id, seq, idx, type, value, quality, category, classification,"
                " ref, revoked_by, revoked_reason FROM signals"
                " WHERE value = ? AND type = ? AND revoked_by IS NULL ORDER BY id LIMIT ?",
                (signal.value, signal.type, MAX_MATCHES_PER_QUERY + 1),
            ):
                info = self._signal(conn, row)
                if info is not None:
                    rows[row[0]] = info
                    found.append((int(row[0]), 0))
            hits.append(found)
        opinions = opinion_counts_many(conn, [r["op_id"] for r in rows.values()], collections)
        return assemble(
            queries, slots, hits, rows, opinions, collections, self.author_name, threshold
        )

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
