"""How old a matcher's answers are (matching/freshness.py LagClock), and the refusals that
follow from it: bounded in seconds, not in changes, for the node's own workers."""

from __future__ import annotations

import math

from hashmesh.node.matching.freshness import Freshness, LagClock


def test_lag_is_the_age_of_the_newest_head_fully_applied() -> None:
    clock = LagClock()
    assert clock.lag_s(100.0) == 0.0
    clock.read(5_000, at=10.0)
    clock.applied(5_000)
    assert clock.lag_s(10.2) == 0.0  # caught up with every head seen
    clock.read(20_000, at=11.0)
    clock.read(40_000, at=12.0)
    clock.applied(25_000)  # past the head read at 11.0, short of the one read at 12.0
    assert clock.lag_s(12.5) == 1.5
    clock.applied(40_000)
    assert clock.lag_s(30.0) == 0.0
    clock.read(40_000, at=31.0)  # no new head: nothing to wait for
    assert clock.lag_s(40.0) == 0.0


def test_never_caught_up_counts_from_the_first_read() -> None:
    clock = LagClock()
    clock.read(1_000_000, at=50.0)
    clock.applied(10)
    assert clock.lag_s(53.0) == 3.0


def test_refusal_by_seconds_and_by_changes() -> None:
    moving = Freshness(applied=10_000, head=40_000, behind=30_000, stale_s=0.1, lag_s=0.4)
    assert moving.refusal(math.inf, 10.0, 2.0) is None  # far behind in changes, fresh in time
    assert "30000 changes behind" in str(moving.refusal(10_000, 10.0))
    late = Freshness(applied=10_000, head=10_500, behind=500, stale_s=0.1, lag_s=2.5)
    assert "2.5 s behind its source (limit 2 s)" in str(late.refusal(math.inf, 10.0, 2.0))
    assert late.json()["lag_s"] == 2.5
