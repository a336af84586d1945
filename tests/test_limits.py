"""The one rate limiter (hashmesh/node/limits.py) against a model that recounts every
window from scratch, under any interleaving of keys, hits, peeks and clock steps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashmesh.node.limits import RateLimiter


class Clock:
    """A clock the test moves by hand (whole seconds, so the arithmetic is exact)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def model_count(accepted: list[tuple[str, float]], key: str, now: float, window: float) -> int:
    return sum(1 for k, t in accepted if k == key and t > now - window)


steps = st.lists(
    st.tuples(
        st.sampled_from(["hit", "peek", "wait"]),
        st.sampled_from(["a", "b", "c"]),
        st.integers(min_value=0, max_value=7),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(min_value=0, max_value=5), window=st.integers(1, 10), steps=steps)
def test_limiter_admits_exactly_what_fits_the_window(
    limit: int, window: int, steps: list[tuple[str, str, int]]
) -> None:
    clock = Clock()
    limiter: RateLimiter[str] = RateLimiter(limit, float(window), clock=clock)
    accepted: list[tuple[str, float]] = []
    for action, key, seconds in steps:
        expected = model_count(accepted, key, clock.now, window)
        assert limiter.count(key) == expected
        assert limiter.allows(key) == (expected < limit)
        if action == "hit":
            ok = limiter.hit(key)
            assert ok == (expected < limit)
            if ok:
                accepted.append((key, clock.now))
        elif action == "wait":
            clock.now += seconds
        # never more than `limit` accepted in any window of any key
        assert model_count(accepted, key, clock.now, window) <= limit


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 5), window=st.integers(1, 10), gaps=st.lists(st.integers(0, 4)))
def test_retry_after_is_the_moment_the_next_hit_fits(
    limit: int, window: int, gaps: list[int]
) -> None:
    clock = Clock()
    limiter: RateLimiter[str] = RateLimiter(limit, float(window), clock=clock)
    for gap in gaps:
        clock.now += gap
        limiter.hit("k")
    wait = limiter.retry_after("k")
    if wait == 0:
        assert limiter.allows("k")
        return
    assert not limiter.allows("k")
    clock.now += wait
    assert limiter.allows("k")


def test_peeking_records_nothing_and_refusals_are_not_recorded() -> None:
    clock = Clock()
    limiter: RateLimiter[bytes] = RateLimiter(1, 3600.0, clock=clock)
    assert limiter.allows(b"k") and limiter.allows(b"k") and len(limiter) == 0
    assert limiter.hit(b"k")
    clock.now = 1
    assert not limiter.allows(b"k") and not limiter.hit(b"k")
    assert limiter.retry_after(b"k") == 3599  # the refused hit did not push it later
    clock.now = 3600
    assert limiter.hit(b"k")


def test_key_table_is_bounded_least_recently_used_first() -> None:
    clock = Clock()
    limiter: RateLimiter[int] = RateLimiter(1, 60.0, max_keys=3, clock=clock)
    for key in range(3):
        assert limiter.hit(key)
    assert not limiter.hit(0)  # 0 is now the most recently used
    assert limiter.hit(3)  # evicts 1, the least recently used
    assert len(limiter) == 3
    assert limiter.count(1) == 0 and limiter.count(0) == 1 and limiter.count(2) == 1


def test_a_zero_limit_admits_nothing_and_says_to_wait_a_window() -> None:
    limiter: RateLimiter[str] = RateLimiter(0, 30.0, clock=Clock())
    assert not limiter.allows("k") and not limiter.hit("k")
    assert limiter.retry_after("k") == 30.0 and len(limiter) == 0


@pytest.mark.parametrize(("limit", "window", "max_keys"), [(-1, 1.0, 1), (1, 0.0, 1), (1, 1.0, 0)])
def test_nonsense_settings_are_refused(limit: int, window: float, max_keys: int) -> None:
    with pytest.raises(ValueError, match="required"):
        RateLimiter(limit, window, max_keys=max_keys)
