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
from .store import Store

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
