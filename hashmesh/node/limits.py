"""The node's one rate limiter: at most `limit` events in any `window_s` seconds per key.

Peers (net/peers.py: requests per peer) and the self-report page (web/selfreport.py: per
visitor, per address block, node-wide) used to carry a token bucket and a sliding window
each, with their own clocks and their own idea of "over the limit". One class keeps what a
limit means the same everywhere and is tested once (tests/test_limits.py).

Why a sliding log rather than a token bucket: it promises exactly "at most N in any
window", which is what the self-report page's documented bounds (submissions, scrypt work
an hour) rest on; a bucket of burst N refilling N a window lets through up to 2N - 1 in
one. A peer limit of 200 in any 4 s is a burst of 200 and 50/s sustained, as before.

Pure and in memory: no I/O, no event loop, and the clock is passed in, so tests drive time
by hand. Memory is bounded twice: a refused event is never recorded (a key holds at most
`limit` timestamps) and at most `max_keys` keys are kept, the least recently used going
first, so a flood of distinct keys cannot exhaust memory. The clock must not go backwards
(time.monotonic, the default), which lets expired events be dropped whenever they are seen.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

Clock = Callable[[], float]


class RateLimiter(Generic[K]):
    """At most `limit` events in any `window_s` seconds per key."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        *,
        max_keys: int = 50_000,
        clock: Clock = time.monotonic,
    ) -> None:
        if limit < 0 or window_s <= 0 or max_keys < 1:
            raise ValueError("limit >= 0, window_s > 0 and max_keys >= 1 are required")
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self.clock = clock
        self._events: OrderedDict[K, deque[float]] = OrderedDict()

    def _live(self, key: K, now: float) -> deque[float] | None:
        events = self._events.get(key)
        if events is not None:
            while events and events[0] <= now - self.window_s:
                events.popleft()
        return events

    def hit(self, key: K) -> bool:
        """Record an event; False, recording nothing, when the key is at its limit."""
        now = self.clock()
        events = self._live(key, now)
        if events is not None:
            self._events.move_to_end(key)  # a key refused often stays limited, not evicted
            if len(events) >= self.limit:
                return False
        elif self.limit == 0:
            return False
        else:
            events = self._events[key] = deque()
            while len(self._events) > self.max_keys:
                self._events.popitem(last=False)
        events.append(now)
        return True

    def allows(self, key: K) -> bool:
        """Whether `hit` would succeed now, recording nothing: a caller that must pass
        several limits checks them all before it charges any."""
        return self.count(key) < self.limit

    def count(self, key: K) -> int:
        """The key's events in the window, recording nothing."""
        events = self._live(key, self.clock())
        return 0 if events is None else len(events)

    def retry_after(self, key: K) -> float:
        """Seconds until `hit` would succeed: 0 when it would now. A limit of 0 never
        admits anything, so its answer is one window (the most any caller should wait
        before asking again)."""
        if self.limit == 0:
            return self.window_s
        now = self.clock()
        events = self._live(key, now)
        if events is None or len(events) < self.limit:
            return 0.0
        return events[len(events) - self.limit] + self.window_s - now

    def __len__(self) -> int:
        """Keys held (at most max_keys)."""
        return len(self._events)
