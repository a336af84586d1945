"""Quarantine on a match spike: which signals' match rate jumped, from the hits counted.

A poisoned hash (a popular meme's, a flood of near-identical PDQs from one author) shows
as a signal that suddenly matches far more than it used to. A signal matching a lot can
also be a viral picture of abuse, and quarantining it means missing that abuse here, so
nothing is quarantined unless its collection's policy asks for it: `spike_cap` (absolute:
matches within the window) and/or `spike_factor` (relative: the window's count over the
signal's baseline). Pure logic: the caller passes the clock and the policy, and persists
what `observe` returns (store/quarantine.py); the answer then holds the signal back
(verdict ``quarantined``) until an operator lifts it.

Counts are kept per signal in buckets of `BUCKET_S`; the window is the last `WINDOW_S`
(six buckets), sliding by bucket. The baseline is a moving average of the signal's
matches per window over about an hour (each closed bucket weighs 1/360), floored at one
match a window, so a signal never seen before spikes when it reaches `MIN_SPIKE` matches
at `spike_factor` times that floor. Memory is bounded: at most `MAX_TRACKED` signals, the
one idle longest forgotten first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hashmesh.node.errors import NodeError
from hashmesh.node.matching.policy import NEGATIVE, QUARANTINED, SUPPRESSED, PolicySet
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.ops import OpId

BUCKET_S = 10.0
BUCKETS = 6
WINDOW_S = BUCKET_S * BUCKETS
ALPHA = 1 / 360  # a closed bucket's weight in the baseline: about an hour of memory
MIN_SPIKE = 20  # the relative rule needs at least this many matches in the window
MAX_TRACKED = 200_000
# What one report of matches answered elsewhere (a matcher worker, a replica) may carry.
MAX_REPORT = 10_000  # signals
MAX_REPORTED = 100_000  # matches of one signal
REPORT_S = 1.0  # how often workers and replicas report
NOT_COUNTED = frozenset({NEGATIVE, SUPPRESSED, QUARANTINED})  # held back already


@dataclass(frozen=True)
class Hit:
    """One counted hit: the signal (its add's op id) and what the quarantine row keeps."""

    op_id: str
    collection: str
    type: str
    value: str
    author: str


@dataclass(frozen=True)
class Spike:
    hit: Hit
    matches: int  # in the window
    reason: str


class _Track:
    __slots__ = ("baseline", "bucket", "counts")

    def __init__(self, bucket: int) -> None:
        self.bucket = bucket
        self.counts = [0] * BUCKETS  # ring, indexed by bucket number % BUCKETS
        self.baseline = 0.0  # matches per bucket

    def advance(self, bucket: int) -> None:
        """Close the buckets between the last one counted and `bucket`."""
        gap = bucket - self.bucket
        if gap <= 0:
            return
        self.baseline += ALPHA * (self.counts[self.bucket % BUCKETS] - self.baseline)
        self.baseline *= (1 - ALPHA) ** (gap - 1)  # the empty buckets in between
        for n in range(self.bucket + 1, self.bucket + 1 + min(gap, BUCKETS)):
            self.counts[n % BUCKETS] = 0
        self.bucket = bucket


class SpikeDetector:
    """Counts hits per signal and says which cross their collection's spike rule."""

    def __init__(self, max_tracked: int = MAX_TRACKED) -> None:
        self.max_tracked = max_tracked
        self._tracks: OrderedDict[str, _Track] = OrderedDict()
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self._tracks)

    def forget(self, op_ids: Iterable[str]) -> None:
        """Stop counting these (quarantined, or lifted by an operator: not again)."""
        for op_id in op_ids:
            self._tracks.pop(op_id, None)
            self._reported.add(op_id)

    def unforget(self, op_ids: Iterable[str]) -> None:
        """Count these again (their quarantine could not be recorded)."""
        for op_id in op_ids:
            self._reported.discard(op_id)

    def observe(self, now: float, hits: Iterable[Hit], policies: PolicySet) -> list[Spike]:
        """Count `hits` (one per matched signal per query) at time `now` (seconds, any
        monotonic clock); the signals whose collection's rule they now cross, once each."""
        return self.observe_counted(now, ((hit, 1) for hit in hits), policies)

    def observe_counted(
        self, now: float, counted: Iterable[tuple[Hit, int]], policies: PolicySet
    ) -> list[Spike]:
        """`observe` for hits counted elsewhere (a worker's or replica's report): each
        (hit, n) is n matches of that signal, counted in the bucket of `now`."""
        bucket = int(now // BUCKET_S)
        spikes: list[Spike] = []
        for hit, n in counted:
            if hit.op_id in self._reported:
                continue
            policy = policies.by_collection.get(hit.collection)
            if policy is None or (policy.spike_cap is None and policy.spike_factor is None):
                continue
            track = self._tracks.get(hit.op_id)
            if track is None:
                track = self._tracks[hit.op_id] = _Track(bucket)
                if len(self._tracks) > self.max_tracked:
                    self._tracks.popitem(last=False)
            else:
                self._tracks.move_to_end(hit.op_id)
                track.advance(bucket)
            track.counts[bucket % BUCKETS] += n
            window = sum(track.counts)
            reason = None
            if policy.spike_cap is not None and window >= policy.spike_cap:
                reason = (
                    f"{window} matches in {WINDOW_S:.0f} s, at {hit.collection}'s cap of"
                    f" {policy.spike_cap}"
                )
            elif policy.spike_factor is not None and window >= MIN_SPIKE:
                usual = max(1.0, track.baseline * BUCKETS)
                if window >= policy.spike_factor * usual:
                    reason = (
                        f"{window} matches in {WINDOW_S:.0f} s, {window / usual:.0f}x its"
                        f" baseline of {usual:.1f} (spike factor {policy.spike_factor})"
                    )
            if reason is not None:
                spikes.append(Spike(hit, window, reason))
                self.forget([hit.op_id])
        return spikes


def spiky(policies: PolicySet) -> frozenset[str]:
    """The collections whose policy can quarantine: only their hits are worth counting."""
    return policies.spiky


class MatchCounter:
    """Hits answered where the node's own quarantine cannot see them (its matcher workers
    answering on their address, a replica), counted per signal until the next report.

    Counted as the node counts its own answers: one per matched signal per query, in a
    collection with a spike rule, unless policy held the hit back already. Bounded: a
    report holds at most MAX_REPORT signals (hits of others wait in `dropped`, counted
    but not sent) and MAX_REPORTED matches of one."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self.dropped = 0
        self.reported = 0

    def __len__(self) -> int:
        return len(self._counts)

    def count(self, answer: dict[str, Any], collections: frozenset[str]) -> None:
        """Count `answer`'s hits in `collections` (`spiky` of the policy it was judged by)."""
        if not collections:
            return
        counted = [
            hit["op_id"]
            for result in answer.get("results", ())
            for hit in result.get("matches", ())
            if hit["collection"] in collections and hit.get("verdict") not in NOT_COUNTED
        ]
        counts = self._counts
        for op_id in counted:
            held = counts.get(op_id)
            if held is None:
                if len(counts) < MAX_REPORT:
                    counts[op_id] = 1
                else:
                    self.dropped += 1
            elif held < MAX_REPORTED:
                counts[op_id] = held + 1

    def drain(self) -> list[tuple[str, int]]:
        """The counts so far, cleared: what one report carries."""
        out = sorted(self._counts.items())
        self._counts = {}
        self.reported += len(out)
        return out

    def restore(self, pairs: list[tuple[str, int]]) -> None:
        """Put back counts a report could not deliver (the node was unreachable)."""
        for op_id, n in pairs:
            held = self._counts.get(op_id)
            if held is not None or len(self._counts) < MAX_REPORT:
                self._counts[op_id] = min(MAX_REPORTED, (held or 0) + n)
        self.reported -= len(pairs)


def parse_report(body: Any, what: str = "matches") -> list[tuple[OpId, int]]:
    """A report `{"matches": [[OP_ID, N], ...]}` from a worker or replica, each field
    checked and bounded (at most MAX_REPORT distinct op ids, N 1-MAX_REPORTED): a report
    can add counts, never rows, so each op id must be a live add of the node to count."""
    if not isinstance(body, dict) or set(body) != {"matches"}:
        raise NodeError("request body: expected an object with only a matches list")
    raw = body["matches"]
    if not isinstance(raw, list) or len(raw) > MAX_REPORT:
        raise NodeError(f"{what}: expected a list of at most {MAX_REPORT} [op id, count] pairs")
    out: list[tuple[OpId, int]] = []
    seen: set[str] = set()
    for n, pair in enumerate(raw):
        where = f"{what}[{n}]"
        if not isinstance(pair, list) or len(pair) != 2:
            raise NodeError(f"{where}: expected [op id, count]")
        op_id, count = pair
        if type(count) is not int or not 1 <= count <= MAX_REPORTED:
            raise NodeError(f"{where}: count must be an integer 1-{MAX_REPORTED}")
        try:
            parsed = OpId.parse(op_id, f"{where} op id")
        except ProtocolError as exc:
            raise NodeError(str(exc)) from None
        if op_id in seen:
            raise NodeError(f"{where}: op id {op_id} is listed twice")
        seen.add(op_id)
        out.append((parsed, count))
    return out
