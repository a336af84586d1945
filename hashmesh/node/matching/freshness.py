"""How current a matcher is, and when it must refuse to answer: one record for the node's
matcher workers and for stand-alone replicas.

A matcher that answers from an index far behind its source could miss a hash that was
added minutes ago or, worse, still match one that was revoked. So freshness is part of
the contract with whoever routes requests to it: /healthz answers 503 (and so does every
match) when the matcher is more than `max_lag` feed steps behind, or has not heard from
its source for `max_stale` seconds (it cannot know what it missed), or is not loaded yet.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_LAG = 10_000
DEFAULT_MAX_STALE_S = 10.0


@dataclass(frozen=True)
class Freshness:
    """The cursor applied, the source's head, how far behind, and seconds since the source
    was last read (inf: never)."""

    applied: int | None
    head: int | None
    behind: int | None
    stale_s: float

    def refusal(self, max_lag: int, max_stale: float) -> str | None:
        """Why this matcher must not answer now, or None."""
        if self.applied is None:
            return "the matcher has not loaded its index yet"
        if self.stale_s > max_stale:
            return f"its source has not been read for {self.stale_s:.1f} s (limit {max_stale:g} s)"
        if self.behind is None:
            return "the source's head cursor is not known yet"
        if self.behind > max_lag:
            return f"{self.behind} changes behind its source (limit {max_lag})"
        return None

    def json(self) -> dict[str, Any]:
        return {
            "cursor": self.applied,
            "head": self.head,
            "behind": self.behind,
            "stale_s": None if math.isinf(self.stale_s) else round(self.stale_s, 3),
        }
