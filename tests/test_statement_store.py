"""The statements table (store/statements.py): one generic store for every statement kind.

The rows here are made up (the store never parses a statement): what is tested is the
store's part of the contract, i.e. merging copies of one id through the merge function
it is given, one row per slot with the highest order, scope-limited listing and digests,
and the since-cursor.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hashmesh.node.store.core import Store
from hashmesh.node.store.statements import StatementRow


def union(held: bytes, new: bytes) -> bytes:
    """A stand-in for protocol/statements.py's merge: the union of two JSON lists."""
    return json.dumps(sorted(set(json.loads(held)) | set(json.loads(new)))).encode()


def row(
    sid: str, kind: str = "cert", scope: str | None = None, slot: str | None = None,
    order: int = 0, sigs: tuple[str, ...] = ("a",),
) -> StatementRow:  # fmt: skip
    return StatementRow(sid, kind, scope, slot, order, json.dumps(sorted(sigs)).encode())


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "db")


def test_insert_merge_and_same(store: Store) -> None:
    assert store.put_statement(row("01"), union) == "new"
    assert store.put_statement(row("01"), union) == "same"
    before = store.statements.digest(None)
    assert store.put_statement(row("01", sigs=("b",)), union) == "merged"
    held = store.statements.get("01")
    assert held is not None and json.loads(held.wire) == ["a", "b"]
    assert store.statements.digest(None) != before  # a new signature is a new version


def test_slot_keeps_the_highest_order(store: Store) -> None:
    assert store.put_statement(row("a1", "membership", "c", "c", 2), union) == "new"
    assert store.put_statement(row("a0", "membership", "c", "c", 1), union) == "stale"
    assert store.put_statement(row("a9", "membership", "c", "c", 2), union) == "stale"
    assert store.put_statement(row("a2", "membership", "c", "c", 3), union) == "superseded"
    assert [r.id for r in store.statements.visible(None)] == ["a2"]
    # another kind's slot of the same name is another slot
    assert store.put_statement(row("b1", "cosign", "c", "c", 1), union) == "new"


def test_scope_limits_listing_and_digest(store: Store) -> None:
    store.put_statement(row("01"), union)  # unscoped: every peer sees it
    store.put_statement(row("02", "handover", "csam"), union)
    store.put_statement(row("03", "handover", "le-only"), union)
    assert [r.id for r in store.statements.visible({"csam"})] == ["01", "02"]
    assert [r.id for r in store.statements.visible(set())] == ["01"]
    assert [r.id for r in store.statements.get_many(["02", "03"], {"csam"})] == ["02"]
    assert store.statements.digest({"csam"}) != store.statements.digest({"csam", "le-only"})
    assert [i for i, _ in store.statements.index({"le-only"}, after_id="01")] == ["03"]
    # the digest depends only on the visible set, not on what else is held
    other = Store(store.path.with_name("other"))
    other.put_statement(row("01"), union)
    other.put_statement(row("02", "handover", "csam"), union)
    assert other.statements.digest({"csam"}) == store.statements.digest({"csam"})


def test_since_cursor_sees_inserts_and_merges(store: Store) -> None:
    store.put_statement(row("01"), union)
    store.put_statement(row("02"), union)
    cursor = store.statements.cursor()
    store.put_statement(row("01", sigs=("z",)), union)
    assert [r.id for r in store.statements.since(cursor)] == ["01"]
    assert [r.id for r in store.statements.since(0)] == ["02", "01"]


def test_a_rolled_back_bulk_leaves_no_statement(store: Store) -> None:
    with pytest.raises(RuntimeError), store.bulk():
        store.put_statement(row("01"), union)
        assert store.statements.count() == 1
        raise RuntimeError("late failure")
    assert store.statements.count() == 0
    assert store.statements.digest(None) == Store(store.path).statements.digest(None)


def test_statements_survive_reopen(store: Store) -> None:
    store.put_statement(row("01", "key-revoke", None), union)
    store.close()
    again = Store(store.path)
    held = again.statements.get("01")
    assert held is not None and held.kind == "key-revoke" and held.scope is None
