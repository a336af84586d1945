"""Large withdrawals: revoke ops cut to the real 2,048-byte op limit, batches cut to the
4 MiB batch limit, and the store applying a run of revocations with a few statements
over all its targets (decided exactly as `protocol.state.State` decides them)."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
from conftest import add_ops, author_key, chain

from hashmesh.node.lists.listfiles import batch_groups
from hashmesh.node.store.core import Store
from hashmesh.protocol.batches import MAX_OPS_BYTES, build_batch
from hashmesh.protocol.encoding import canonical
from hashmesh.protocol.errors import OpError
from hashmesh.protocol.ops import MAX_OP_BYTES, MAX_REASON, OpId, RevokeOp, op_size, pack_revokes
from hashmesh.protocol.state import State

KEY = author_key(5)


def md5s(count: int, salt: str = "") -> list[str]:
    return [hashlib.md5(f"{salt}{i}".encode()).hexdigest() for i in range(count)]


def op_ids(count: int, collection: str = "csam", per_batch: int = 5000) -> list[str]:
    return [
        str(OpId(KEY.node_id, collection, 1 + i // per_batch, i % per_batch)) for i in range(count)
    ]


def test_every_op_fits_and_holds_as_many_targets_as_fit() -> None:
    targets = op_ids(100_000)
    ops = pack_revokes(targets, "withdrawn by the source list")
    assert [t for op in ops for t in op.targets] == targets
    for op, following in itertools.pairwise(ops):
        size = op_size(op)
        assert size <= MAX_OP_BYTES
        # full: the next target (and its comma) would not have fitted
        assert size + len(canonical(following.targets[0])) + 1 > MAX_OP_BYTES
    assert op_size(ops[-1]) <= MAX_OP_BYTES
    assert 20 <= len(ops[0].targets) <= 40  # an op id is 60-70 bytes


def test_the_budget_counts_the_reason_as_encoded() -> None:
    # quotes, backslashes and control characters take two or six bytes when encoded
    reason = ('"\\\x01é' * 64)[:MAX_REASON]
    targets = op_ids(500)
    ops = pack_revokes(targets, reason)
    assert all(op_size(op) <= MAX_OP_BYTES for op in ops)
    assert [t for op in ops for t in op.targets] == targets
    assert len(ops[0].targets) < len(pack_revokes(targets)[0].targets)


def test_a_reason_too_long_is_refused_by_name() -> None:
    with pytest.raises(OpError, match=r"revoke\.reason"):
        pack_revokes(op_ids(2), "x" * (MAX_REASON + 1))


def test_batch_groups_stay_under_the_batch_byte_limit() -> None:
    ops = pack_revokes(op_ids(200_000))
    groups = list(batch_groups(ops))
    assert len(groups) > 1
    assert [op for g in groups for op in g] == ops
    for group in groups:
        assert sum(op_size(op) + 1 for op in group) - 1 <= MAX_OPS_BYTES
    # each group can be signed as one batch, which verifies it like a peer would
    build_batch(KEY, "csam", 100, b"\x00" * 32, 1_700_000_000_000, groups[0])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "hashmesh.db")
    yield s  # type: ignore[misc]
    s.close()


def test_a_large_revocation_batch_costs_a_few_statements_not_some_per_target(
    store: Store,
) -> None:
    values = md5s(3000)
    (adds,) = chain(KEY, "csam", [add_ops(values)])
    store.ingest(adds)
    targets = [str(adds.op_id(i)) for i in range(len(values))]
    ops = pack_revokes(targets, "withdrawn")
    revocation = build_batch(KEY, "csam", 2, adds.hash, 1_700_000_000_001, ops)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    result = store.ingest(revocation)
    store.conn.set_trace_callback(None)
    assert result.outcome == "applied"
    assert len(result.removed) == len(values)
    assert store.counts()["live"] == 0
    assert len(statements) < 20, statements[:40]


def test_revocations_apply_as_the_reference_state_decides(store: Store) -> None:
    """Duplicates, a target named in two ops, an add revoked in its own batch, a target
    that is not an add, and revocations interleaved with opinions: the store ends where
    the in-memory reference state ends, feed rows in op order."""
    first = add_ops(md5s(6, "ref"))
    a = [str(OpId(KEY.node_id, "csam", 1, i)) for i in range(6)]
    unknown = str(OpId(KEY.node_id, "csam", 1, 99))
    second = [
        RevokeOp(targets=[a[0], a[0], a[1]], reason="one"),
        {"op": "opinion", "target": a[1], "opinion": "dispute"},
        RevokeOp(targets=[a[1], a[2], unknown], reason="two"),
        add_ops(md5s(1, "fresh"))[0],
        RevokeOp(targets=[str(OpId(KEY.node_id, "csam", 2, 3)), a[3]], reason="three"),
    ]
    batches = chain(KEY, "csam", [first, second])  # type: ignore[list-item]
    reference = State()
    for batch in batches:
        reference.receive(batch)
        store.ingest(batch)
    revoked = {
        (row[0], row[1])
        for row in store.conn.execute(
            "SELECT seq || '/' || idx, revoked_by FROM signals WHERE revoked_by IS NOT NULL"
        )
    }
    expected = {(f"{t.seq}/{t.index}", str(by)) for t, by in reference.revoked.items()}
    assert revoked == expected
    assert ("1/0", str(OpId(KEY.node_id, "csam", 2, 0))) in revoked
    assert ("1/1", str(OpId(KEY.node_id, "csam", 2, 0))) in revoked  # the first op wins
    assert store.counts()["live"] == len(reference.live()) == 2
    kinds = [
        (kind, target, detail)
        for kind, target, detail in store.conn.execute(
            "SELECT kind, target, detail FROM feed WHERE kind != 'add' ORDER BY cursor"
        )
    ]
    assert kinds == [
        ("revoke", a[0], "one"),
        ("revoke", a[1], "one"),
        ("opinion", a[1], "dispute"),
        ("revoke", a[2], "two"),
        ("revoke", str(OpId(KEY.node_id, "csam", 2, 3)), "three"),
        ("revoke", a[3], "three"),
    ]
