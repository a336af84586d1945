"""The SQLite store: one transaction per batch, idempotence, ordering, forks, feed, bulk."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import add_ops, author_key, chain, md5_values

from hashmesh.node.errors import HomeError
from hashmesh.node.store.core import Store
from hashmesh.protocol import LogKey, build_batch
from hashmesh.protocol.batches import Batch

TABLES = ("logs", "batches", "signals", "opinions", "pending", "forks", "feed")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "hashmesh.db")
    yield s  # type: ignore[misc]
    s.close()


def rows(store: Store, table: str) -> int:
    return int(store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def table_counts(store: Store) -> dict[str, int]:
    return {t: rows(store, t) for t in TABLES}


def feed(store: Store) -> list[tuple[Any, ...]]:
    return store.conn.execute(
        "SELECT cursor, kind, signal_id, op_id, target, detail FROM feed ORDER BY cursor"
    ).fetchall()


def other_connection(store: Store) -> sqlite3.Connection:
    """A second connection: it sees only what has been committed."""
    return sqlite3.connect(store.path)


KEY = author_key(1)
OTHER = author_key(2)
LOG = LogKey(KEY.node_id, "c1")


def log_batches(n: int, per: int = 3, salt: int = 0) -> list[Batch]:
    values = md5_values(n * per, salt)
    return chain(KEY, "c1", [add_ops(values[i * per : (i + 1) * per]) for i in range(n)])


# -- idempotence and ordering -------------------------------------------------------------


def test_ingest_applies_a_batch_in_full(store: Store) -> None:
    (batch,) = log_batches(1, per=4)
    result = store.ingest(batch, source="test")
    assert result.outcome == "applied"
    assert [v for _, _, v in result.added] == [op.value for op in batch.ops]
    assert store.head(LOG) == 1
    assert rows(store, "signals") == 4
    assert rows(store, "feed") == 4
    stored = store.conn.execute("SELECT header, sig, ops, op_count FROM batches").fetchone()
    assert stored == (batch.header_bytes, batch.signature, batch.ops_bytes, 4)
    assert store.signal_id(batch.op_id(3)) is not None
    assert store.signal_id(batch.op_id(4)) is None


def test_ingesting_the_same_batch_twice_is_a_duplicate(store: Store) -> None:
    (batch,) = log_batches(1)
    assert store.ingest(batch).outcome == "applied"
    before = table_counts(store)
    cursor = store.feed_cursor()
    second = store.ingest(batch)
    assert second.outcome == "duplicate"
    assert second.added == [] and second.removed == []
    assert table_counts(store) == before
    assert store.feed_cursor() == cursor
    # Also after a restart (nothing cached in memory).
    store.close()
    reopened = Store(store.path)
    try:
        assert reopened.ingest(batch).outcome == "duplicate"
        assert table_counts(reopened) == before
    finally:
        reopened.close()


def test_out_of_order_batches_wait_then_apply_in_seq_order(store: Store) -> None:
    b1, b2, b3 = log_batches(3)
    assert store.ingest(b3).outcome == "deferred"
    assert store.ingest(b2).outcome == "deferred"
    assert store.head(LOG) == 0
    assert rows(store, "pending") == 2
    assert rows(store, "signals") == 0
    assert store.counts()["pending"] == 2

    result = store.ingest(b1)
    assert [type(d).__name__ for d in result.decisions] == ["Apply", "Apply", "Apply"]
    assert [b.seq for b in result.applied] == [1, 2, 3]
    assert store.head(LOG) == 3
    assert rows(store, "pending") == 0
    # Signals went in in log order, so ids and feed cursors follow (seq, index).
    positions = store.conn.execute("SELECT seq, idx FROM signals ORDER BY id").fetchall()
    assert positions == sorted(positions)
    assert len(positions) == 9


def test_deferred_batch_survives_a_restart(store: Store) -> None:
    b1, b2 = log_batches(2)
    assert store.ingest(b2).outcome == "deferred"
    store.close()
    reopened = Store(store.path)
    try:
        result = reopened.ingest(b1)
        assert [b.seq for b in result.applied] == [1, 2]
        assert reopened.head(LOG) == 2
    finally:
        reopened.close()


# -- forks ---------------------------------------------------------------------------------


def test_fork_evidence_is_stored_and_the_log_frozen(store: Store) -> None:
    a1, a2 = log_batches(2, salt=1)
    (b1,) = chain(KEY, "c1", [add_ops(md5_values(2, salt=2))])  # another seq 1
    assert store.ingest(a1).outcome == "applied"
    result = store.ingest(b1)
    assert result.outcome == "fork"
    assert store.is_forked(LOG)
    forks = store.forks()
    assert len(forks) == 1
    assert forks[0]["author"] == KEY.node_id and forks[0]["seq"] == 1
    assert forks[0]["id"] == result.forks[0].id
    assert [log["forked"] for log in store.logs()] == [True]
    # b1's signals were not stored, and the log accepts nothing more, even a2.
    assert rows(store, "signals") == 3
    assert store.ingest(a2).outcome == "frozen"
    assert store.head(LOG) == 1
    assert rows(store, "signals") == 3
    # The freeze is durable.
    store.close()
    reopened = Store(store.path)
    try:
        assert reopened.is_forked(LOG)
        assert reopened.ingest(a2).outcome == "frozen"
        assert reopened.add_evidence(result.forks[0], "peer") is False
    finally:
        reopened.close()


def test_a_broken_chain_link_is_a_fork(store: Store) -> None:
    (a1,) = log_batches(1)
    bogus_prev = bytes(32)
    bad2 = build_batch(KEY, "c1", 2, bogus_prev, 1, add_ops(md5_values(1, salt=9)))
    store.ingest(a1)
    assert store.ingest(bad2).outcome == "fork"
    assert store.is_forked(LOG)
    assert store.head(LOG) == 1


def test_two_different_waiting_batches_with_one_seq_are_a_fork(store: Store) -> None:
    """Like the protocol's reference State: conflicting batches are a fork even while both
    wait for their predecessor, so the outcome does not depend on arrival order."""
    a1, a2 = log_batches(2, salt=1)
    (b2,) = chain(KEY, "c1", [add_ops(md5_values(2, salt=3))], first_seq=2, prev=a1.hash)
    assert store.ingest(a2).outcome == "deferred"
    assert store.ingest(b2).outcome == "fork"
    assert store.is_forked(LOG)
    assert rows(store, "pending") == 0
    assert store.ingest(a1).outcome == "frozen"
    assert rows(store, "signals") == 0


def test_a_fork_in_one_log_leaves_other_logs_alone(store: Store) -> None:
    (a1,) = log_batches(1, salt=1)
    (b1,) = chain(KEY, "c1", [add_ops(md5_values(1, salt=2))])
    (other,) = chain(OTHER, "c1", [add_ops(md5_values(1, salt=3))])
    (mine_elsewhere,) = chain(KEY, "c2", [add_ops(md5_values(1, salt=4))])
    store.ingest(a1)
    store.ingest(b1)
    assert store.ingest(other).outcome == "applied"
    assert store.ingest(mine_elsewhere).outcome == "applied"
    assert not store.is_forked(LogKey(OTHER.node_id, "c1"))
    assert not store.is_forked(LogKey(KEY.node_id, "c2"))


# -- revocations, opinions, the feed and live counts --------------------------------------


def test_feed_cursor_strictly_increases_with_adds_revokes_and_opinions(store: Store) -> None:
    values = md5_values(3, salt=5)
    (adds,) = chain(KEY, "c1", [add_ops(values)])
    cursors = [store.feed_cursor()]
    store.ingest(adds)
    cursors.append(store.feed_cursor())
    revoke = build_batch(
        KEY, "c1", 2, adds.hash, 2, [{"op": "revoke", "targets": [str(adds.op_id(1))]}]
    )
    store.ingest(revoke)
    cursors.append(store.feed_cursor())
    seen = [{"op": "opinion", "target": str(adds.op_id(0)), "opinion": "seen"}]
    opinion = build_batch(OTHER, "c1", 1, None, 3, seen)
    store.ingest(opinion)
    cursors.append(store.feed_cursor())
    assert cursors == sorted(set(cursors)), cursors  # strictly increasing
    assert cursors == [0, 3, 4, 5]

    entries = feed(store)
    assert [e[0] for e in entries] == [1, 2, 3, 4, 5]
    assert [e[1] for e in entries] == ["add", "add", "add", "revoke", "opinion"]
    revoked_id = store.signal_id(adds.op_id(1))
    assert entries[3][2] == revoked_id
    assert entries[3][3:5] == (str(revoke.op_id(0)), str(adds.op_id(1)))
    assert entries[4][3:] == (str(opinion.op_id(0)), str(adds.op_id(0)), "seen")
    # A duplicate changes nothing, so the cursor does not move.
    store.ingest(revoke)
    assert store.feed_cursor() == 5


def test_live_counts_follow_adds_and_revokes(store: Store) -> None:
    values = md5_values(4, salt=6)
    (adds,) = chain(KEY, "c1", [add_ops(values)])
    store.ingest(adds)
    assert store.counts()["live"] == 4
    assert store.counts()["live_by_collection"] == {"c1": 4}
    targets = [str(adds.op_id(0)), str(adds.op_id(2))]
    revoke = build_batch(KEY, "c1", 2, adds.hash, 2, [{"op": "revoke", "targets": targets}])
    result = store.ingest(revoke)
    assert sorted(result.removed) == sorted(
        sid for sid in (store.signal_id(adds.op_id(i)) for i in (0, 2)) if sid is not None
    )
    assert store.counts()["live"] == 2
    (log,) = store.logs()
    assert (log["adds"], log["live"], log["head"]) == (4, 2, 2)
    assert store.find_exact("md5", values[0]) == []
    assert store.find_exact("md5", values[0], live_only=False) != []
    assert store.find_exact("md5", values[1]) == [store.signal_id(adds.op_id(1))]

    # Revoking the same add again (and naming an op that is not an add) changes no count.
    again = build_batch(
        KEY,
        "c1",
        3,
        revoke.hash,
        3,
        [{"op": "revoke", "targets": [targets[0], str(revoke.op_id(0))]}],
    )
    result = store.ingest(again)
    assert result.outcome == "applied"
    assert result.removed == []
    assert store.counts()["live"] == 2
    assert store.logs()[0]["live"] == 2


def test_revoke_of_an_add_in_the_same_batch(store: Store) -> None:
    (value,) = md5_values(1, salt=7)
    ops = [
        {"op": "add", "type": "md5", "value": value, "category": "csam"},
        {"op": "revoke", "targets": [f"{KEY.node_id}/c1/1/0"], "reason": "typo"},
    ]
    (batch,) = chain(KEY, "c1", [ops])
    result = store.ingest(batch)
    assert len(result.added) == 1 and len(result.removed) == 1
    assert store.counts()["live"] == 0
    signal = store.signal(result.added[0][0])
    assert signal is not None
    assert signal["live"] is False and signal["revoked_reason"] == "typo"


def test_opinions_aggregate_per_author(store: Store) -> None:
    (adds,) = chain(KEY, "c1", [add_ops(md5_values(1, salt=8))])
    store.ingest(adds)
    target = str(adds.op_id(0))
    third = author_key(3)
    store.ingest(
        build_batch(
            OTHER, "c1", 1, None, 1, [{"op": "opinion", "target": target, "opinion": "dispute"}]
        )
    )
    ops = [
        {"op": "opinion", "target": target, "opinion": "confirm"},
        {"op": "opinion", "target": target, "opinion": "seen"},
    ]
    store.ingest(build_batch(third, "c1", 1, None, 1, ops))
    counts = store.opinion_counts(target)
    assert (counts.confirm, counts.dispute, counts.seen) == (1, 1, 1)
    # The same author in a second collection still counts once.
    store.ingest(
        build_batch(
            third, "c2", 1, None, 1, [{"op": "opinion", "target": target, "opinion": "confirm"}]
        )
    )
    counts = store.opinion_counts(target)
    assert (counts.confirm, counts.dispute, counts.seen) == (1, 1, 1)


# -- atomicity: failures, bulk, listeners --------------------------------------------------


def test_a_failure_inside_a_batch_leaves_no_trace(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    (adds,) = chain(KEY, "c1", [add_ops(md5_values(2, salt=10))])
    store.ingest(adds)
    before = table_counts(store)
    mixed = build_batch(
        KEY,
        "c1",
        2,
        adds.hash,
        2,
        [*add_ops(md5_values(3, salt=11)), {"op": "revoke", "targets": [str(adds.op_id(0))]}],
    )

    def crash(*args: Any) -> int:
        raise OSError("disk fell off")

    monkeypatch.setattr(store, "_revoke", crash)  # after the batch's adds were written
    with pytest.raises(OSError):
        store.ingest(mixed)
    assert table_counts(store) == before
    assert store.head(LOG) == 1
    monkeypatch.undo()
    assert store.ingest(mixed).outcome == "applied"
    assert store.counts()["live"] == 4


def test_bulk_rollback_leaves_no_trace(store: Store) -> None:
    (committed,) = chain(OTHER, "c9", [add_ops(md5_values(1, salt=12))])
    store.ingest(committed)
    before = table_counts(store)
    cursor = store.feed_cursor()
    b1, b2, b3 = log_batches(3, salt=13)
    (fork,) = chain(OTHER, "c9", [add_ops(md5_values(1, salt=14))])
    heard: list[Any] = []
    store.listeners.append(lambda added, removed: heard.append((added, removed)))

    with pytest.raises(RuntimeError, match="abort"), store.bulk():
        assert store.ingest(b1).outcome == "applied"
        assert store.ingest(b3).outcome == "deferred"
        assert store.ingest(fork).outcome == "fork"
        assert store.head(LOG) == 1
        raise RuntimeError("abort")

    assert table_counts(store) == before
    assert store.feed_cursor() == cursor
    assert heard == []
    # The in-memory caches were rolled back with the tables.
    assert store.head(LOG) == 0
    assert not store.is_forked(LogKey(OTHER.node_id, "c9"))
    assert store.vector() == {LogKey(OTHER.node_id, "c9"): 1}
    assert store.signal_id(b1.op_id(0)) is None
    # The same batches apply normally afterwards, to a log that really exists.
    assert [b.seq for b in store.ingest(b1).applied] == [1]
    assert [b.seq for b in store.ingest(b3).applied] == []
    assert [b.seq for b in store.ingest(b2).applied] == [2, 3]
    mine = [log for log in store.logs() if log["author"] == KEY.node_id]
    assert [(log["head"], log["live"]) for log in mine] == [(3, 9)]


def test_bulk_commits_everything_at_once(store: Store) -> None:
    batches = log_batches(3, salt=15)
    outside = other_connection(store)
    with store.bulk():
        for batch in batches:
            store.ingest(batch)
        assert outside.execute("SELECT count(*) FROM signals").fetchone()[0] == 0
    assert outside.execute("SELECT count(*) FROM signals").fetchone()[0] == 9
    outside.close()


def test_listeners_fire_after_commit_only(store: Store) -> None:
    outside = other_connection(store)
    heard: list[tuple[list[int], list[int], int]] = []

    def listener(added: list[tuple[int, str, str]], removed: list[int]) -> None:
        ids = [a[0] for a in added]
        marks = ",".join("?" * len(ids)) or "NULL"
        visible = outside.execute(
            f"SELECT count(*) FROM signals WHERE id IN ({marks})", ids
        ).fetchone()[0]
        heard.append((ids, removed, visible))

    store.listeners.append(listener)
    b1, b2 = log_batches(2, salt=16)
    store.ingest(b1)
    assert len(heard) == 1
    ids, removed, visible = heard[0]
    assert len(ids) == 3 and removed == [] and visible == 3

    # Inside bulk: silent until the commit, then one call with everything.
    revoke_ops = [{"op": "revoke", "targets": [str(b1.op_id(0))]}]
    (b3,) = chain(KEY, "c1", [revoke_ops], first_seq=3, prev=b2.hash)
    with store.bulk():
        store.ingest(b2)
        store.ingest(b3)
        assert len(heard) == 1
    assert len(heard) == 2
    ids, removed, visible = heard[1]
    assert len(ids) == 3 and visible == 3
    assert removed == [store.signal_id(b1.op_id(0))]
    # A duplicate changes nothing and is not announced.
    store.ingest(b1)
    assert len(heard) == 2
    outside.close()


def test_bulk_does_not_nest(store: Store) -> None:
    with pytest.raises(RuntimeError, match="nest"), store.bulk(), store.bulk():
        pass
    assert table_counts(store)["batches"] == 0


# -- startup -------------------------------------------------------------------------------


def test_startup_refuses_a_corrupt_database(tmp_path: Path) -> None:
    path = tmp_path / "hashmesh.db"
    store = Store(path)
    batches = chain(KEY, "c1", [add_ops(md5_values(500, salt=n)) for n in range(20)])
    for batch in batches:
        store.ingest(batch)
    assert store.integrity_check() == "ok"
    store.close()
    assert not Path(str(path) + "-wal").exists() or Path(str(path) + "-wal").stat().st_size == 0
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 20 * page
    for n in range(4, len(data) // page, 3):  # scribble over many b-tree pages, keep page 1
        data[n * page : n * page + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(HomeError, match=r"hashmesh\.db"):
        Store(path)


# -- bulk statements: one SQLite step per statement, whatever the batch size ---------------


def _statements_to_ingest(store: Store, batch: Batch) -> int:
    """How many statements ingesting `batch` ran on the store's connection (the trace
    callback fires once per execution, so once per row of an `executemany`)."""
    ran: list[str] = []
    store.conn.set_trace_callback(ran.append)
    try:
        with store.bulk("peer:test"):
            assert store.ingest(batch, source="peer:test").outcome == "applied"
    finally:
        store.conn.set_trace_callback(None)
    return len(ran)


@pytest.mark.parametrize("size", [10, 2000])
def test_a_batch_of_any_size_takes_a_few_statements(tmp_path: Path, size: int) -> None:
    """Python's sqlite3 hands the GIL back at each statement execution, and beside a thread
    computing in Python each hand-back waits for its switch interval, so a 5,000-row
    `executemany` cost seconds of store-thread time (docs/design-notes.md, "One SQLite step
    per bulk statement"). Adds, opinions and revocations of any number of ops take the
    same few statements."""
    store = Store(tmp_path / f"h{size}.db")
    try:
        (adds,) = chain(KEY, "c1", [add_ops(md5_values(size, salt=size))])
        ids = [str(adds.op_id(i)) for i in range(size)]
        opinions = build_batch(
            OTHER, "c1", 1, None, 2,
            [{"op": "opinion", "opinion": "dispute", "target": t} for t in ids],
        )  # fmt: skip
        revokes = build_batch(
            KEY, "c1", 2, adds.hash, 3,
            [{"op": "revoke", "targets": ids[k : k + 25]} for k in range(0, size, 25)],
        )  # fmt: skip
        counts = [_statements_to_ingest(store, b) for b in (adds, opinions, revokes)]
        assert all(count <= 40 for count in counts), counts
        assert rows(store, "feed") == 3 * size
        revoked = "SELECT count(*) FROM signals WHERE revoked_by IS NOT NULL"
        disputed = "SELECT count(*) FROM opinions WHERE verdict = 'dispute'"
        assert store.conn.execute(revoked).fetchone()[0] == size
        assert store.conn.execute(disputed).fetchone()[0] == size
    finally:
        store.close()
