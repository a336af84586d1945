"""How current a matcher is, and when it must refuse to answer: one record for the node's
matcher workers and for stand-alone replicas.

A matcher that answers from an index far behind its source could miss a hash that was
added minutes ago or, worse, still match one that was revoked. So freshness is part of
the contract with whoever routes requests to it: /healthz answers 503 (and so does every
match) when the matcher is more than `max_lag` feed steps behind, or its answers are more
than `max_lag_s` seconds old (LagClock), or it has not heard from its source for
`max_stale` seconds (it cannot know what it missed), or is not loaded yet.

The node's own matcher workers are bounded in seconds only: during a 1M sync the feed
moves 20,000 changes a second, so a worker a poll behind is thousands of changes behind
while its answers are a fraction of a second old, and a count bound refused every PDQ
match for the whole sync (bench/load.py: 25,854 503s). Replicas keep the count bound their
operators set (`hashmesh matcher --max-lag`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_LAG = 10_000
DEFAULT_MAX_STALE_S = 10.0
DEFAULT_MAX_LAG_S = 2.0


@dataclass(frozen=True)
class Freshness:
    """The cursor applied, the source's head, how far behind, and seconds since the source
    was last read (inf: never)."""

    applied: int | None
    head: int | None
    behind: int | None
    stale_s: float
    lag_s: float = 0.0

    def refusal(self, max_lag: float, max_stale: float, max_lag_s: float = math.inf) -> str | None:
        """Why this matcher must not answer now, or None."""
        if self.applied is None:
            return "the matcher has not loaded its index yet"
        if self.stale_s > max_stale:
            return f"its source has not been read for {self.stale_s:.1f} s (limit {max_stale:g} s)"
        if self.behind is None:
            return "the source's head cursor is not known yet"
        if self.behind > max_lag:
            return f"{self.behind} changes behind its source (limit {max_lag})"
        if self.lag_s > max_lag_s:
            return f"its answers are {self.lag_s:.1f} s behind its source (limit {max_lag_s:g} s)"
        return None

    def json(self) -> dict[str, Any]:
        return {
            "cursor": self.applied,
            "head": self.head,
            "behind": self.behind,
            "stale_s": None if math.isinf(self.stale_s) else round(self.stale_s, 3),
            "lag_s": round(self.lag_s, 3),
        }


class LagClock:
    """How old a matcher's answers are: seconds since the newest source head it has fully
    applied was read (0 once it has applied every head it has seen).

    The feed carries no commit times, so each poll records (when read, head read); when the
    applied cursor reaches a recorded head, the matcher is known current as of that read.
    """

    _MAX_READS = 8192

    def __init__(self) -> None:
        self._reads: deque[tuple[float, int]] = deque()
        self._as_of: float | None = None
        self._applied = -1

    def read(self, head: int, at: float) -> None:
        """The source's head was `head` when read at monotonic time `at`."""
        if head <= self._applied:
            self._as_of = at
            return
        if self._reads and self._reads[-1][1] >= head:
            return
        if len(self._reads) >= self._MAX_READS:
            self._reads.popleft()  # a matcher this far behind is refused long before
        self._reads.append((at, head))

    def applied(self, cursor: int) -> None:
        self._applied = max(self._applied, cursor)
        while self._reads and self._reads[0][1] <= cursor:
            self._as_of = self._reads.popleft()[0]

    def lag_s(self, now: float) -> float:
        if not self._reads:
            return 0.0
        since = self._as_of if self._as_of is not None else self._reads[0][0]
        return max(0.0, now - since)
