"""The replicated state machine: order independence, OR-set revocation, opinions, forks, gaps."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_helpers import KEYS, add, chain, opinion, revoke

from hashmesh.protocol.batches import Batch, LogKey, build_batch
from hashmesh.protocol.errors import OpError, ProtocolUsageError
from hashmesh.protocol.evidence import verify_evidence
from hashmesh.protocol.ops import AddOp, AnyOp, OpId
from hashmesh.protocol.state import Apply, Defer, Duplicate, Fork, Frozen, State

AUTHORS = KEYS[:3]
COLLECTIONS = ("csam-industry", "ncii")


@dataclass
class Universe:
    batches: list[Batch]
    adds: set[OpId]
    revoked: set[OpId]


@st.composite
def universes(draw: st.DrawFn) -> Universe:
    """Several honest logs with adds (re-adding a small pool of signals), revokes of the
    log's own earlier ops (adds or not) and opinions on anyone's ops."""
    batches: list[Batch] = []
    all_ids: list[OpId] = []
    adds: set[OpId] = set()
    revoked: set[OpId] = set()
    for key in AUTHORS:
        for collection in COLLECTIONS:
            if not draw(st.booleans()):
                continue
            own: list[OpId] = []
            prev = None
            for seq in range(1, draw(st.integers(1, 3)) + 1):
                ops: list[AnyOp] = []
                for index in range(draw(st.integers(1, 4))):
                    op_id = OpId(key.node_id, collection, seq, index)
                    kind = draw(st.sampled_from(["add", "add", "revoke", "opinion"]))
                    if kind == "revoke" and own:
                        targets = draw(st.lists(st.sampled_from(own), min_size=1, max_size=2))
                        ops.append(revoke(*targets))
                        revoked.update(t for t in targets if t in adds)
                    elif kind == "opinion" and all_ids:
                        target = draw(st.sampled_from(all_ids))
                        verdict = draw(st.sampled_from(["confirm", "dispute", "seen", "retract"]))
                        ops.append(opinion(target, verdict))
                    else:
                        signal_type = draw(st.sampled_from(["md5", "pdq"]))
                        ops.append(add(draw(st.integers(0, 3)), signal_type))
                        adds.add(op_id)
                    own.append(op_id)
                batch = build_batch(key, collection, seq, prev, seq, ops)
                prev = batch.hash
                batches.append(batch)
            all_ids.extend(own)
    return Universe(batches, adds, revoked)


def _apply_all(batches: list[Batch]) -> State:
    state = State()
    for batch in batches:
        state.receive(batch)
    return state


@settings(max_examples=60, deadline=None)
@given(universes(), st.randoms(use_true_random=False), st.integers(0, 6))
def test_any_order_with_duplicates_converges(u: Universe, rng: object, dups: int) -> None:
    reference = _apply_all(u.batches)
    shuffled = list(u.batches)
    shuffled += [u.batches[i % len(u.batches)] for i in range(dups)] if u.batches else []
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    state = _apply_all(shuffled)
    assert state.summary() == reference.summary()
    assert not state.pending or all(not waiting for waiting in state.pending.values())
    assert set(state.live()) == u.adds - u.revoked
    assert set(state.revoked) == u.revoked


def test_revoke_removes_exactly_the_named_adds_and_re_add_is_live() -> None:
    key = KEYS[0]
    first = [add(1), add(2), add(3)]
    (b1,) = chain(key, "c", [first])
    b2 = build_batch(key, "c", 2, b1.hash, 2, [revoke(b1.op_id(0), b1.op_id(2))])
    b3 = build_batch(key, "c", 3, b2.hash, 3, [add(1)])
    state = _apply_all([b1, b2, b3])
    live = state.live()
    assert set(live) == {b1.op_id(1), b3.op_id(0)}
    assert live[b3.op_id(0)].value == first[0].value
    assert state.revoked == {b1.op_id(0): b2.op_id(0), b1.op_id(2): b2.op_id(0)}


def test_revoke_in_the_same_batch_and_of_non_adds() -> None:
    key = KEYS[0]
    own = OpId(key.node_id, "c", 1, 0)
    b1 = build_batch(key, "c", 1, None, 1, [add(1), revoke(own), revoke(OpId(*own[:3], 1))])
    decision = State().receive(b1)[0]
    assert isinstance(decision, Apply)
    assert [str(e.target) for e in decision.effects] == [str(own)]
    assert len(decision.ignored) == 1 and "is not an add" in decision.ignored[0]


def test_revoke_of_another_authors_add_is_refused_at_verification() -> None:
    theirs = OpId(KEYS[1].node_id, "c", 1, 0)
    with pytest.raises(ProtocolUsageError, match="may only revoke its own adds") as refused:
        build_batch(KEYS[0], "c", 1, None, 1, [add(1), revoke(theirs)])
    assert isinstance(refused.value.__cause__, OpError)


def test_opinions_latest_verdict_seen_flag_retract_and_distinct_authors() -> None:
    author, a, b = KEYS[0], KEYS[1], KEYS[2]
    target_batch = build_batch(author, "c", 1, None, 1, [add(1)])
    target = target_batch.op_id(0)
    a_logs = chain(
        a,
        "c",
        [[opinion(target, "confirm")], [opinion(target, "dispute")], [opinion(target, "seen")]],
    )
    a_other = chain(a, "d", [[opinion(target, "dispute"), opinion(target, "seen")]])
    b_logs = chain(
        b,
        "c",
        [[opinion(target, "confirm"), opinion(target, "seen")], [opinion(target, "retract")]],
    )
    state = _apply_all([target_batch, *a_logs, *a_other, *b_logs])
    counts = state.opinion_counts(target)
    # a: latest verdict dispute in both logs, seen in both -> counts once; b: retracted
    assert (counts.confirm, counts.dispute, counts.seen) == (0, 1, 1)
    state_b_partial = _apply_all([target_batch, b_logs[0]])
    counts = state_b_partial.opinion_counts(target)
    assert (counts.confirm, counts.dispute, counts.seen) == (1, 0, 1)


def test_out_of_order_batch_waits_then_applies() -> None:
    key = KEYS[0]
    b1, b2, b3 = chain(key, "c", [[add(1)], [add(2)], [add(3)]])
    state = State()
    decisions = state.receive(b3)
    assert [type(d) for d in decisions] == [Defer]
    assert state.head(b3.log) == 0 and not state.live()
    assert [type(d) for d in state.receive(b2)] == [Defer]
    assert [type(d) for d in state.receive(b1)] == [Apply, Apply, Apply]
    assert state.head(b1.log) == 3
    assert set(state.live()) == {b1.op_id(0), b2.op_id(0), b3.op_id(0)}
    assert [type(d) for d in state.receive(b2)] == [Duplicate]


def test_same_seq_fork_freezes_the_log() -> None:
    key = KEYS[0]
    b1, b2 = chain(key, "c", [[add(1)], [add(2)]])
    rival = build_batch(key, "c", 2, b1.hash, 99, [add(3)])
    later = build_batch(key, "c", 3, b2.hash, 100, [add(4)])
    state = _apply_all([b1, b2])
    decision = state.receive(rival)[0]
    assert isinstance(decision, Fork)
    evidence = verify_evidence(decision.evidence.to_bytes())
    assert evidence.log == LogKey(key.node_id, "c") and evidence.seq == 2
    assert state.is_forked(b1.log)
    assert [type(d) for d in state.receive(later)] == [Frozen]
    assert state.head(b1.log) == 2
    assert state.live()[b2.op_id(0)] == b2.ops[0] != rival.ops[0]


def test_broken_link_fork_freezes_the_log() -> None:
    key = KEYS[0]
    (b1,) = chain(key, "c", [[add(1)]])
    rogue = build_batch(key, "c", 2, b"\x22" * 32, 5, [add(2)])
    state = _apply_all([b1])
    decision = state.receive(rogue)[0]
    assert isinstance(decision, Fork)
    evidence = verify_evidence(decision.evidence.to_bytes())
    assert evidence.seq == 2
    assert state.is_forked(b1.log) and state.head(b1.log) == 1
    honest = build_batch(key, "c", 2, b1.hash, 6, [add(3)])
    assert [type(d) for d in state.receive(honest)] == [Frozen]


def test_fork_between_two_waiting_batches() -> None:
    key = KEYS[0]
    b1, b2 = chain(key, "c", [[add(1)], [add(2)]])
    rival = build_batch(key, "c", 2, b1.hash, 77, [add(3)])
    state = State()
    state.receive(b2)
    decision = state.receive(rival)[0]
    assert isinstance(decision, Fork)
    verify_evidence(decision.evidence.to_bytes())
    assert [type(d) for d in state.receive(b1)] == [Frozen]
    assert not state.live()


def test_forks_do_not_touch_other_logs() -> None:
    key, other = KEYS[0], KEYS[1]
    b1, b2 = chain(key, "c", [[add(1)], [add(2)]])
    rival = build_batch(key, "c", 2, b1.hash, 99, [add(3)])
    (o1,) = chain(other, "c", [[add(9)]])
    state = _apply_all([b1, b2, rival, o1])
    assert state.is_forked(b1.log) and not state.is_forked(o1.log)
    assert o1.op_id(0) in state.live()


def test_adds_keep_their_values() -> None:
    key = KEYS[0]
    types = ["md5", "sha1", "sha256", "pdq", "photodna"]
    ops: list[AnyOp] = [add(i, t) for i, t in enumerate(types)]
    (batch,) = chain(key, "c", [ops])
    state = _apply_all([batch])
    assert [state.live()[batch.op_id(i)] for i in range(5)] == ops
    assert all(isinstance(op, AddOp) for op in state.live().values())
