"""One ingest engine: `protocol.state.receive` drives both the in-memory `State` and the
SQLite `Store`, so for the same batches in the same order (any order, duplicated, with
forked logs) they must end in the same state: heads, live adds, revocations, opinions,
frozen logs and waiting batches."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_helpers import KEYS, add, opinion, revoke

from hashmesh.node.store.core import Store
from hashmesh.protocol.batches import Batch, LogKey, build_batch
from hashmesh.protocol.ops import AnyOp, OpId
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.state import State

AUTHORS = KEYS[:2]
COLLECTIONS = ("csam", "ncii")


@st.composite
def deliveries(draw: st.DrawFn) -> list[Batch]:
    """Logs of adds, revokes and opinions; some logs get a rival batch (a fork) at a seq;
    the whole lot shuffled with duplicates."""
    batches: list[Batch] = []
    all_ids: list[OpId] = []
    for key in AUTHORS:
        for collection in COLLECTIONS:
            if not draw(st.booleans()):
                continue
            own: list[OpId] = []
            prev = None
            length = draw(st.integers(1, 4))
            fork_at = draw(st.integers(0, length))  # 0: no fork
            for seq in range(1, length + 1):
                ops = _ops(draw, key, collection, seq, own, all_ids)
                batch = build_batch(key, collection, seq, prev, seq, ops)
                if seq == fork_at:
                    rival_ops = [add(100 + seq, "md5")]
                    batches.append(build_batch(key, collection, seq, prev, seq + 1000, rival_ops))
                prev = batch.hash
                batches.append(batch)
            all_ids.extend(own)
    dups = draw(st.integers(0, 5))
    delivered = batches + [batches[i % len(batches)] for i in range(dups)] if batches else []
    Random(draw(st.integers(0, 2**32))).shuffle(delivered)
    return delivered


def _ops(
    draw: st.DrawFn,
    key: SigningKey,
    collection: str,
    seq: int,
    own: list[OpId],
    all_ids: list[OpId],
) -> list[AnyOp]:
    ops: list[AnyOp] = []
    for index in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["add", "add", "revoke", "opinion"]))
        if kind == "revoke" and own:
            ops.append(revoke(*draw(st.lists(st.sampled_from(own), min_size=1, max_size=2))))
        elif kind == "opinion" and (own or all_ids):
            target = draw(st.sampled_from(own + all_ids))
            ops.append(opinion(target, draw(st.sampled_from(["confirm", "dispute", "retract"]))))
        else:
            ops.append(add(draw(st.integers(0, 3)), draw(st.sampled_from(["md5", "pdq"]))))
        own.append(OpId(key.node_id, collection, seq, index))
    return ops


def _state_summary(state: State) -> tuple[object, ...]:
    waiting = sorted((str(log), seq) for log, held in state.pending.items() for seq in held)
    return (*state.summary(), sorted(str(log) for log in state.forks), waiting)


def _store_summary(path: Path) -> tuple[object, ...]:
    with sqlite3.connect(path) as db:
        logs = {
            i: LogKey(a, c) for i, a, c in db.execute("SELECT id, author, collection FROM logs")
        }
        heads = sorted((str(logs[i]), h) for i, h in db.execute("SELECT id, head FROM logs") if h)

        def op(log_id: int, seq: int, idx: int) -> str:
            key = logs[log_id]
            return str(OpId(key.author, key.collection, seq, idx))

        rows = db.execute("SELECT log_id, seq, idx, revoked_by FROM signals").fetchall()
        live = sorted(op(lg, s, i) for lg, s, i, by in rows if by is None)
        revoked = sorted((op(lg, s, i), by) for lg, s, i, by in rows if by is not None)
        opinions = sorted(
            (t, a, c, v or "", bool(seen))
            for t, a, c, v, seen in db.execute(
                "SELECT target, author, collection, verdict, seen FROM opinions"
            )
        )
        forks = sorted({str(logs[i]) for (i,) in db.execute("SELECT log_id FROM forks")})
        waiting = sorted(
            (str(logs[i]), s) for i, s in db.execute("SELECT log_id, seq FROM pending")
        )
    return (heads, live, revoked, opinions, forks, waiting)


@settings(max_examples=80, deadline=None)
@given(deliveries())
def test_state_and_store_agree_for_any_delivery(delivered: list[Batch]) -> None:
    state = State()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "db.sqlite"
        store = Store(path)
        try:
            for batch in delivered:
                ours = [type(d).__name__ for d in state.receive(batch)]
                theirs = [type(d).__name__ for d in store.ingest(batch).decisions]
                assert ours == theirs, f"seq {batch.seq} of {batch.log}"
        finally:
            store.close()
        assert _store_summary(path) == _state_summary(state)
