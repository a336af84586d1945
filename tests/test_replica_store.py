"""A matcher replica's own store (hashmesh/node/store/replica.py) and the follower's
validation of what a node sends (hashmesh/node/net/follow.py), without processes: rows in
the node's API shape, opinions counted per collection as the node counts them, pages that
commit their cursor with their rows, a snapshot that is not one until its end, and input
no hashmesh node sends refused with the field that is wrong."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from hashmesh.node.net.follow import (
    NodeDataError,
    add_event,
    parse_add,
    parse_event,
    parse_stances,
    parse_state,
)
from hashmesh.node.store.replica import Add, Page, ReplicaStore, StanceRow, visible_head
from hashmesh.protocol import SigningKey
from hashmesh.protocol.state import OpinionCounts

A = SigningKey(bytes([1]) * 32).node_id
B = SigningKey(bytes([2]) * 32).node_id
PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"


def add(seq: int, collection: str = "csam", signal_type: str = "md5", value: str = "") -> Add:
    value = value or f"{seq:032x}"
    return Add(
        op_id=f"{A}/{collection}/{seq}/0",
        author=A,
        collection=collection,
        seq=seq,
        idx=0,
        type=signal_type,
        value=value,
        quality=90 if signal_type == "pdq" else None,
        category="csam",
        classification=None,
        ref="case-1" if seq == 1 else None,
    )


def page_of(cursor: int, *adds: Add, revokes: tuple[tuple[str, str, str], ...] = ()) -> Page:
    page = Page(cursor=cursor, adds=list(adds), revokes=list(revokes))
    page.order = [("add", i) for i in range(len(adds))] + [
        ("revoke", i) for i in range(len(revokes))
    ]
    return page


@pytest.fixture
def store(tmp_path: Path) -> ReplicaStore:
    s = ReplicaStore(tmp_path / "data")
    s.begin_snapshot("http://node", "h" * 64, 0)
    s.end_snapshot(0)
    return s


def test_files_are_private(tmp_path: Path) -> None:
    s = ReplicaStore(tmp_path / "data")
    s.close()
    assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700
    for f in (tmp_path / "data").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_rows_in_the_nodes_api_shape(store: ReplicaStore) -> None:
    applied = store.apply(page_of(5, add(1), add(2, signal_type="pdq", value=PDQ)))
    assert store.cursor == 5
    [(pdq_id, value)] = applied.added
    assert value == PDQ
    md5_id = store.find_exact("md5", f"{1:032x}")[0]
    rows = store.signals_by_id([md5_id, pdq_id])
    assert rows[md5_id] == {
        "id": md5_id,
        "op_id": f"{A}/csam/1/0",
        "author": A,
        "collection": "csam",
        "type": "md5",
        "value": f"{1:032x}",
        "category": "csam",
        "ref": "case-1",
        "live": True,
    }
    assert rows[pdq_id]["quality"] == 90
    applied = store.apply(page_of(6, revokes=((f"{A}/csam/2/0", f"{A}/csam/3/0", "fp"),)))
    assert applied.removed == [pdq_id]
    row = store.signals_by_id([pdq_id])[pdq_id]
    assert (row["live"], row["revoked_by"], row["revoked_reason"]) == (False, f"{A}/csam/3/0", "fp")
    assert list(store.live_pdq()) == [] and store.pdq_digest() == (0, 0)
    with pytest.raises(ValueError, match="matched by distance"):
        store.find_exact("pdq", PDQ)  # through the PDQ index, never by value
    # A revocation applied twice (a resumed stream) changes nothing the second time.
    assert store.apply(page_of(7, revokes=((f"{A}/csam/2/0", "x/y/1/0", ""),))).removed == []


def test_an_add_and_its_revocation_in_one_page(store: ReplicaStore) -> None:
    applied = store.apply(
        page_of(
            3,
            add(1, signal_type="pdq", value=PDQ),
            revokes=((f"{A}/csam/1/0", f"{A}/csam/2/0", ""),),
        )
    )
    assert len(applied.added) == 1 and applied.removed == [applied.added[0][0]]
    assert store.pdq_digest() == (0, 0)


def test_feed_order_holds_across_runs_of_one_kind(store: ReplicaStore) -> None:
    """Runs of adds and of revocations are applied a statement each, in feed order: a
    revocation before its add (which the node never sends) finds nothing, one after
    withdraws it, and a target revoked twice keeps the first revocation."""
    page = Page(
        cursor=4,
        adds=[add(1, signal_type="pdq", value=PDQ), add(2), add(3)],
        revokes=[
            (f"{A}/csam/2/0", f"{A}/csam/9/0", "early"),
            (f"{A}/csam/1/0", f"{A}/csam/8/0", "first"),
            (f"{A}/csam/1/0", f"{A}/csam/7/0", "second"),
        ],
    )
    page.order = [("revoke", 0), ("add", 0), ("add", 1), ("revoke", 1), ("revoke", 2)]
    page.order.append(("add", 2))
    applied = store.apply(page)
    [(pdq_id, _)] = applied.added
    assert applied.removed == [pdq_id]
    [md5_id] = store.find_exact("md5", f"{2:032x}")
    rows = store.signals_by_id([pdq_id, md5_id])
    assert (rows[pdq_id]["live"], rows[pdq_id]["revoked_reason"]) == (False, "first")
    assert rows[md5_id]["live"] is True
    assert store.counts() == {"live": 2, "revoked": 1}


def test_an_older_replicas_value_index_is_replaced(tmp_path: Path) -> None:
    s = ReplicaStore(tmp_path / "data")
    s.close()
    conn = sqlite3.connect(tmp_path / "data" / "replica.sqlite")
    conn.execute("DROP INDEX signals_exact_value")
    conn.execute("CREATE INDEX signals_value ON signals (value)")  # as before, every value
    conn.commit()
    conn.close()
    s = ReplicaStore(tmp_path / "data")
    names = {r[0] for r in s.conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "signals_value" not in names and "signals_exact_value" in names
    [(*_, plan)] = s.conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM signals WHERE value = ? AND type = ?"
        " AND type NOT IN ('pdq', 'vpdq')",
        ("x", "md5"),
    ).fetchall()
    assert "signals_exact_value" in plan
    s.close()


def test_opinions_counted_per_collection_as_the_node_does(store: ReplicaStore) -> None:
    target = f"{A}/csam/1/0"
    page = page_of(2, add(1))
    page.stances[target] = [
        StanceRow(A, "csam", "confirm", True),
        StanceRow(B, "csam", "dispute", False),
        StanceRow(B, "other", "confirm", False),
    ]
    store.apply(page)
    assert store.opinion_counts_many([target]) == {target: OpinionCounts(2, 1, 1)}
    assert store.opinion_counts_many([target], frozenset({"csam"})) == {
        target: OpinionCounts(1, 1, 1)
    }
    assert store.opinion_counts_many([target], frozenset({"other"})) == {
        target: OpinionCounts(1, 0, 0)
    }
    # A later state replaces the whole: B retracted in csam.
    later = Page(cursor=3, stances={target: [StanceRow(A, "csam", "confirm", True)]})
    store.apply(later)
    assert store.opinion_counts_many([target]) == {target: OpinionCounts(1, 0, 1)}


def test_a_page_commits_its_cursor_with_its_rows(store: ReplicaStore, tmp_path: Path) -> None:
    store.apply(page_of(4, add(1)))
    bad = page_of(9, add(2), add(2))  # the same op id twice is fine (ignored) ...
    store.apply(bad)
    conflicting = page_of(10, add(3))
    conflicting.order.append(("revoke", 0))  # ... a page that fails midway is not applied
    with pytest.raises(IndexError):
        store.apply(conflicting)
    assert store.cursor == 9
    assert store.find_exact("md5", f"{3:032x}") == []
    store.close()
    again = ReplicaStore(tmp_path / "data")
    assert again.cursor == 9
    assert len(again.find_exact("md5", f"{2:032x}")) == 1


def test_a_snapshot_is_one_only_at_its_end(tmp_path: Path) -> None:
    s = ReplicaStore(tmp_path / "data")
    s.begin_snapshot("http://node", "h" * 64, 0)
    s.snapshot_rows([add(1), add(2, signal_type="pdq", value=PDQ)], {}, 7)
    assert s.cursor is None  # killed here, a replica starts the snapshot again
    s.end_snapshot(7)
    assert s.cursor == 7
    assert s.source() == {"url": "http://node", "token_hash": "h" * 64}
    [[(pdq_id, _)]] = list(s.live_pdq())
    assert s.pdq_digest() == (1, pdq_id)
    # A new snapshot forgets every row of the old one.
    s.begin_snapshot("http://node", "h" * 64, 0)
    assert s.cursor is None and s.find_exact("md5", f"{1:032x}") == []


def test_pdq_changes_since_a_checkpoint(store: ReplicaStore) -> None:
    store.apply(page_of(2, add(1, signal_type="pdq", value=PDQ)))
    other = "0" * 63 + "1"
    store.apply(page_of(3, add(2, signal_type="pdq", value=PDQ[:-1] + "0")))
    store.apply(page_of(4, revokes=((f"{A}/csam/1/0", f"{A}/csam/9/0", ""),)))
    changes = store.pdq_changes_since(2)
    assert [v for _, v in changes.added] == [PDQ[:-1] + "0"]
    assert len(changes.removed) == 1
    assert store.pdq_changes_since(4).added == [] and other


def test_visible_head_hides_other_collections(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "feed.sqlite")
    conn.execute(
        "CREATE TABLE feed (cursor INTEGER PRIMARY KEY, kind TEXT, collection TEXT,"
        " signal_id INTEGER, op_id TEXT, target TEXT, detail TEXT, at INTEGER)"
    )
    rows = [
        (1, "add", "a", None),
        (2, "add", "b", None),
        (3, "opinion", "a", f"{A}/b/1/0"),  # in a, about b's signal: not sent to a reader of a
        (4, "add", "b", None),
    ]
    conn.executemany(
        "INSERT INTO feed (cursor, kind, collection, target, at) VALUES (?, ?, ?, ?, 0)", rows
    )
    assert visible_head(conn, None) == 4
    assert visible_head(conn, {"a"}) == 1
    assert visible_head(conn, {"a", "b"}) == 4
    assert visible_head(conn, {"c"}) == 0


def test_node_input_is_validated() -> None:
    good = {
        "op_id": f"{A}/csam/1/0",
        "author": A,
        "collection": "csam",
        "type": "md5",
        "value": "0" * 31 + "1",
        "category": "csam",
    }
    assert parse_add(good, "row").value == "0" * 31 + "1"
    # Its log is now known (a short cut for the next op ids): odd spellings still fail.
    for odd in (f"{A}/csam/01/0", f"{A}/csam/0/0", f"{A}/csam/1/-1", f"{A}/csam/{2**53}/0"):
        with pytest.raises(NodeDataError, match=r"row\.op_id"):
            parse_add({**good, "op_id": odd}, "row")
    for field, value, words in (
        ("author", B, "author and collection"),
        ("value", "0" * 31 + "X", "md5"),
        ("category", "Bad Category", "category"),
        ("type", "nosuchtype", "type"),
        ("op_id", "not/an/op", r"row\.op_id"),
    ):
        with pytest.raises(NodeDataError, match=words):
            parse_add({**good, field: value}, "row")
    with pytest.raises(NodeDataError, match="seen"):
        parse_stances([{"author": A, "collection": "csam", "verdict": None, "seen": 1}], "s")
    with pytest.raises(NodeDataError, match="at most"):
        parse_stances([{}] * 10_001, "s")
    with pytest.raises(NodeDataError, match="not after"):
        parse_event("5", '{"cursor": 5}', 5)
    with pytest.raises(NodeDataError, match="feed cursor"):
        parse_event("-1", "{}", 0)
    with pytest.raises(NodeDataError, match="not JSON"):
        parse_event("6", "{", 0)
    with pytest.raises(NodeDataError, match="differs"):
        parse_event("6", '{"cursor": 7}', 0)
    page = Page(cursor=0)
    with pytest.raises(NodeDataError, match="own collection"):
        add_event(
            page,
            1,
            {
                "kind": "revoke",
                "collection": "csam",
                "op_id": f"{A}/csam/2/0",
                "target": f"{A}/other/1/0",
            },
        )
    with pytest.raises(NodeDataError, match="kind"):
        add_event(page, 1, {"kind": "delete", "collection": "csam"})
    state = parse_state(
        {
            "cursor": 3,
            "grants": [{"hash": "c" * 64, "name": "p", "scopes": ["match"], "collections": None}],
            "authors": {A: "hotline"},
        }
    )
    assert state.grants["c" * 64].allows("match") and not state.grants["c" * 64].allows("read")
    with pytest.raises(NodeDataError, match="scopes"):
        parse_state(
            {
                "cursor": 3,
                "grants": [{"hash": "c" * 64, "name": "p", "scopes": ["admin"]}],
                "authors": {},
            }
        )
    with pytest.raises(NodeDataError, match="cursor"):
        parse_state({"cursor": -1, "grants": [], "authors": {}})
