"""Store listeners and bulk transactions: nobody hears of a batch a rollback undid, and a
committed transaction is announced once, after the commit, to every kind of listener."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import add_ops, author_key, chain, md5_values

from hashmesh.node.store.core import IngestResult, Store
from hashmesh.node.web.metrics import Metrics
from hashmesh.protocol import LogKey
from hashmesh.protocol.batches import Batch

KEY = author_key(7)
LOG = LogKey(KEY.node_id, "c1")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "hashmesh.db")
    yield s  # type: ignore[misc]
    s.close()


def batches(n: int, per: int = 2) -> list[Batch]:
    values = md5_values(n * per, 7)
    return chain(KEY, "c1", [add_ops(values[i * per : (i + 1) * per]) for i in range(n)])


class Recorder:
    """Every listener kind at once; each event records what a second connection (which
    sees only committed rows) could see when it arrived."""

    def __init__(self, store: Store) -> None:
        self.path = store.path
        self.events: list[tuple[str, Any, int]] = []
        store.decision_listeners.append(self.decision)
        store.batch_listeners.append(self.batches)
        store.listeners.append(self.changes)

    def committed_batches(self) -> int:
        with sqlite3.connect(self.path) as conn:
            return int(conn.execute("SELECT count(*) FROM batches").fetchone()[0])

    def decision(self, result: IngestResult, source: str) -> None:
        self.events.append(("decision", (result.outcome, source), self.committed_batches()))

    def batches(self, applied: list[Batch], forks: list[Any], source: str) -> None:
        seqs = [b.seq for b in applied]
        self.events.append(("batches", (seqs, source), self.committed_batches()))

    def changes(self, added: list[tuple[int, str, str]], removed: list[int]) -> None:
        self.events.append(("changes", (len(added), len(removed)), self.committed_batches()))

    def kinds(self) -> list[str]:
        return [kind for kind, _, _ in self.events]


def test_rolled_back_bulk_notifies_no_listener(store: Store) -> None:
    heard = Recorder(store)
    with pytest.raises(RuntimeError, match="abort"), store.bulk("peer:x"):
        for batch in batches(3):
            assert store.ingest(batch, "peer:x").outcome == "applied"
        raise RuntimeError("abort")
    assert heard.events == []
    assert store.head(LOG) == 0


def test_rolled_back_bulk_leaves_metrics_untouched(store: Store) -> None:
    metrics = Metrics()
    store.decision_listeners.append(metrics.observe_ingest)
    with pytest.raises(RuntimeError), store.bulk():
        for batch in batches(2):
            store.ingest(batch, "local")
        raise RuntimeError("abort")
    assert b'hashmesh_batches_ingested_total{outcome="applied",source="local"}' not in (
        metrics.render()
    )
    with store.bulk():
        for batch in batches(2):
            store.ingest(batch, "local")
    rendered = metrics.render()
    assert b'hashmesh_batches_ingested_total{outcome="applied",source="local"} 2.0' in rendered
    assert b'hashmesh_ops_applied_total{kind="add"} 4.0' in rendered


def test_committed_bulk_notifies_once_per_event_after_the_commit(store: Store) -> None:
    heard = Recorder(store)
    three = batches(3)
    with store.bulk("peer:x"):
        for batch in three:
            store.ingest(batch, "peer:x")
        store.ingest(three[0], "peer:x")
        assert heard.events == []
    assert heard.kinds() == ["decision"] * 4 + ["changes", "batches"]
    decisions = [detail for kind, detail, _ in heard.events if kind == "decision"]
    assert decisions == [("applied", "peer:x")] * 3 + [("duplicate", "peer:x")]
    assert ("batches", ([1, 2, 3], "peer:x"), 3) in heard.events
    assert ("changes", (6, 0), 3) in heard.events
    assert all(seen == 3 for _, _, seen in heard.events)


def test_outside_bulk_each_ingest_notifies_after_its_own_commit(store: Store) -> None:
    heard = Recorder(store)
    for batch in batches(2):
        store.ingest(batch)
    assert heard.kinds() == ["decision", "changes", "batches"] * 2
    assert [seen for _, _, seen in heard.events] == [1, 1, 1, 2, 2, 2]
