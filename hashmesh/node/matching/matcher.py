"""Answering "is this hash known?" with provenance, over the store and the PDQ index.

Exact types are a lookup in the store's value index. PDQ goes through a `PDQIndex`
held by a `Matcher`, loaded once (from a checkpoint or the rows) and kept current by its
owner in feed order, so a new add is matchable as soon as it is applied and a revoked one
never matches again.

In the node, matching runs on threads of its own with their own read-only connections
(`StoreReader`), never on the store thread: a large match cannot hold up publishing,
ingest or revocation. The listener, which runs on the store thread, only queues index
changes; whoever next holds the index lock applies them, in commit order, before it
queries.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from hashmesh.node.errors import IndexLoading, NodeError
from hashmesh.node.hashing.degenerate import degenerate_reason
from hashmesh.node.matching.pdq_index import DEFAULT_THRESHOLD, PDQIndex
from hashmesh.node.matching.policy import (
    EMPTY,
    LET_THROUGH,
    MATCH,
    NO_LABELS,
    REVIEW_REQUIRED,
    PolicySet,
    TrustLabels,
    Verdict,
    judge,
    policy_set,
)
from hashmesh.node.matching.vpdq_index import VideoFrames, VideoMatch, VPDQIndex
from hashmesh.node.store.core import Store
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.signals import PDQSignal, Signal, VPDQSignal, get_type
from hashmesh.protocol.state import OpinionCounts

MAX_QUERIES = 1000
# The default (Meta's and HMA's recommended distance) is also the ceiling: at 31 the PDQ
# index probes 272 buckets a query; past it the probe set grows ~8x a step and a wide
# threshold degrades to a scan of every row (docs/platforms.md, "Match bounds").
MAX_THRESHOLD = DEFAULT_THRESHOLD
MAX_MATCHES_PER_QUERY = 100
MAX_MATCHES_PER_REQUEST = 10_000
# One hour-long video (at one frame a second) in all: a vPDQ query costs a PDQ lookup of
# a fifth of its frames and a comparison with every video those find.
MAX_VIDEO_FRAMES_PER_REQUEST = VPDQSignal.max_frames


def check_threshold(threshold: object) -> int:
    if type(threshold) is not int:
        raise NodeError("threshold: must be an integer")
    if not 0 <= threshold <= MAX_THRESHOLD:
        raise NodeError(
            f"threshold: must be 0-{MAX_THRESHOLD} (wider PDQ distances match unrelated"
            f" pictures and scan the whole index), got {threshold}"
        )
    return threshold


def parse_queries(queries: object) -> list[Signal]:
    if not isinstance(queries, list) or not queries:
        raise NodeError("queries: expected a non-empty list of {type, value}")
    if len(queries) > MAX_QUERIES:
        raise NodeError(f"queries: at most {MAX_QUERIES} per request, got {len(queries)}")
    signals: list[Signal] = []
    frames = 0
    for n, q in enumerate(queries):
        if (
            not isinstance(q, dict)
            or not isinstance(q.get("type"), str)
            or not isinstance(q.get("value"), str)
        ):
            raise NodeError(f"queries[{n}]: expected an object with string type and value")
        try:
            signals.append(Signal.parse(q["type"], q["value"]))
        except ProtocolError as exc:
            raise NodeError(f"queries[{n}]: {exc}") from None
        if signals[-1].type == VPDQSignal.name:
            frames += signals[-1].value.count(" ") + 1
            if frames > MAX_VIDEO_FRAMES_PER_REQUEST:
                raise NodeError(
                    f"queries[{n}]: vpdq queries hold more than {MAX_VIDEO_FRAMES_PER_REQUEST}"
                    " frames in all (one request at most)"
                )
    return signals


def distinct(signals: list[Signal]) -> tuple[list[Signal], list[int]]:
    """Each distinct signal once, and for every query the position of its signal: a request
    repeating one hash a thousand times costs one lookup."""
    seen: dict[tuple[str, str], int] = {}
    unique: list[Signal] = []
    slots: list[int] = []
    for signal in signals:
        key = (signal.type, signal.value)
        if key not in seen:
            seen[key] = len(unique)
            unique.append(signal)
        slots.append(seen[key])
    return unique, slots


def assemble(
    queries: list[dict[str, Any]],
    slots: list[int],
    hits: list[list[tuple[int, int]]],
    rows: dict[int, dict[str, Any]],
    opinions: dict[str, OpinionCounts],
    collections: frozenset[str] | None,
    author_name: Callable[[str], Any],
    threshold: int,
    policies: PolicySet = EMPTY,
    quarantined: dict[str, str] | None = None,
    labels: TrustLabels = NO_LABELS,
    videos: dict[int, dict[int, VideoMatch]] | None = None,
) -> dict[str, Any]:
    """The match answer, bounded: each query's nearest `MAX_MATCHES_PER_QUERY` (`hits` holds
    one more, to tell that there were more) and `MAX_MATCHES_PER_REQUEST` in all, so one
    request can neither run the node out of memory nor answer with tens of megabytes.

    Each hit carries its policy verdict (matching/policy.py) and, unless it is a plain
    match, the reasons; `matched` is true only for a hit policy lets through. `hits` may
    reach past `threshold` (a negative collection's wider radius): such rows only judge.
    A vPDQ hit (`videos`: per query slot, the match of each video key) has distance 0 (it
    met Meta's rule, which fixes its own frame distance) and says what share matched where."""
    budget = MAX_MATCHES_PER_REQUEST
    results = []
    cut = False
    judged: dict[int, list[Verdict]] = {}
    readable = _readable(collections)
    held = (quarantined or {}).get
    disputes = {op_id: c.dispute for op_id, c in opinions.items() if c.dispute}

    for q, slot in zip(queries, slots, strict=True):
        window = hits[slot]
        live = [(row, d) for key, d in window if (row := rows.get(key)) is not None and row["live"]]
        verdicts = judged.get(slot)
        # A video matched by the vPDQ rule is judged as a whole, like an exact value.
        exact = q["type"] != PDQSignal.name
        unusable = None
        if verdicts is None and live and not exact:
            unusable = degenerate_reason("pdq", query_value(q))
        if verdicts is None and (policies.active or unusable is not None or quarantined):
            verdicts = judged[slot] = judge(
                policies,
                exact,
                live,
                threshold,
                readable,
                disputes,
                unusable,
                held,
                labels,
            )
        matches = []
        for n, (row, distance) in enumerate(live):
            if distance > threshold:
                continue
            if collections is not None and row["collection"] not in collections:
                continue
            info = dict(row)
            info.pop("id", None)
            info["distance"] = distance
            info["author_name"] = author_name(row["author"])
            counts = opinions.get(row["op_id"], NO_OPINIONS)
            info["opinions"] = {
                "confirm": counts.confirm,
                "dispute": counts.dispute,
                "seen": counts.seen,
            }
            info.update(LET_THROUGH.json() if verdicts is None else verdicts[n].json())
            video = (videos or {}).get(slot, {}).get(row["id"])
            if video is not None:
                info["video"] = video.json()
            matches.append(info)
        matches.sort(key=_nearest)
        cap = min(MAX_MATCHES_PER_QUERY, budget)
        # Rows past `threshold` (a negative radius reached further) never count as more.
        within = sum(1 for _, d in window if d <= threshold)
        truncated = within > MAX_MATCHES_PER_QUERY or len(matches) > cap
        matches = matches[:cap]
        budget -= len(matches)
        entry: dict[str, Any] = {
            "query": {"type": q["type"], "value": q["value"]},
            "matches": matches,
        }
        if truncated:
            entry["truncated"] = True
            cut = True
        results.append(entry)
    verdicts_seen = {m["verdict"] for r in results for m in r["matches"]}
    return {
        "threshold": threshold,
        "matched": MATCH in verdicts_seen,
        "review_required": REVIEW_REQUIRED in verdicts_seen,
        "truncated": cut,
        "results": results,
    }


NO_OPINIONS = OpinionCounts(0, 0, 0)


def _nearest(match: dict[str, Any]) -> tuple[int, float, str]:
    """Nearest first; among videos (all at distance 0), the larger share of the query."""
    share = match["video"]["query_percent"] if "video" in match else 0.0
    return match["distance"], -share, match["op_id"]


def query_value(q: dict[str, Any]) -> str:
    """A PDQ query's value as the index compared it (parse_queries accepted it)."""
    return Signal.parse(q["type"], q["value"]).value


def _readable(collections: frozenset[str] | None) -> Callable[[str], bool]:
    if collections is None:
        return lambda _collection: True
    return collections.__contains__


class SignalSource(Protocol):
    """Where a match reads rows from: the store itself (CLI, store thread) or a
    `StoreReader` (any other thread)."""

    def find_exact(
        self, signal_type: str, value: str, live_only: bool = True, limit: int = -1
    ) -> list[int]: ...

    def signals_by_id(self, ids: list[int]) -> dict[int, dict[str, Any]]: ...

    def exact_rows(self, signal_type: str, value: str, limit: int) -> dict[int, dict[str, Any]]:
        """The live rows of one exact value by row id: `find_exact` and `signals_by_id`
        in one read."""
        ...

    def opinion_counts_many(
        self, targets: list[str], collections: frozenset[str] | None = None
    ) -> dict[str, OpinionCounts]: ...

    def policy_rows(self) -> list[tuple[Any, ...]]:
        """The match_policy rows to judge by (store/policies.py's column order)."""
        ...

    def quarantined(self, op_ids: list[str]) -> dict[str, str]:
        """Which of these signals are under quarantine here, and why."""
        ...


def exact_only(queries: Any) -> bool:
    """True when every query names an exact type: such a request needs no PDQ index and
    costs a few indexed lookups, small enough to answer inline."""
    if not isinstance(queries, list) or not queries or len(queries) > MAX_QUERIES:
        return False
    for q in queries:
        if not isinstance(q, dict) or not isinstance(q.get("type"), str):
            return False
        try:
            if not get_type(q["type"]).exact:
                return False
        except ProtocolError:
            return False
    return True


Change = tuple[list[tuple[int, str]], list[int], int | None, list[tuple[int, str]]]


def video_index(rows: Iterable[tuple[int, str]]) -> VPDQIndex:
    """A vPDQ index of (key, canonical vpdq value) rows."""
    index = VPDQIndex()
    index.add_many((key, VideoFrames.from_value(value)) for key, value in rows)
    return index


class Matcher:
    """A PDQ index, a vPDQ index beside it and the feed cursor they reflect, answering over
    any `SignalSource`.

    It does not know where its changes come from: the node feeds it from its store's
    change listener, a worker process from the feed table, a replica from the node's
    stream. Whoever owns it calls `load` once and `apply` for every change after, in
    cursor order. `apply` never waits for a running match: changes are queued and whoever
    next holds the index lock (the applier itself if it is free, else the next match)
    applies them, so a 100k revocation neither blocks nor is blocked by PDQ queries.

    Segment merges and compactions (up to seconds at 1M rows) are never made under the
    index lock: the index defers them (pdq_index.py, `defer_merges`) and a thread of the
    matcher's own plans each under the lock, builds it without, and installs it under the
    lock again, so a PDQ query waits at most for a page's adds, never for a merge.

    `Matcher(store)` keeps the node's old in-process behaviour for the CLI and tests: the
    index is loaded from the store's rows on first use (on the store's thread), and the
    store's change listener feeds it.
    """

    def __init__(self, store: Store | None = None) -> None:
        self.store = store
        self._pdq: PDQIndex | None = None
        self._cursor = 0
        self._index_lock = threading.Lock()
        self._deferred = False
        self._wake: threading.Event | None = None
        self._pending: deque[Change] = deque()
        self._videos = VPDQIndex()
        self._merge_wake = threading.Event()
        self._merger: threading.Thread | None = None
        self._merger_lock = threading.Lock()

    @property
    def ready(self) -> bool:
        """True once a PDQ index is loaded: before, PDQ queries raise IndexLoading."""
        return self._pdq is not None

    @property
    def size(self) -> int:
        """Live PDQ signals in the index (0 before it is loaded)."""
        return len(self._pdq) if self._pdq is not None else 0

    def defer_load(self) -> None:
        """Never load from the store's rows on first use: the owner loads the index off the
        store thread (matching/loading.py) and calls `load`; until then PDQ queries raise
        IndexLoading. The running node does this, so its listener opens at once."""
        self._deferred = True

    @property
    def cursor(self) -> int:
        """The feed cursor of the last change applied (or queued to be, see `apply`)."""
        return self._cursor

    def load(self, index: PDQIndex, cursor: int, videos: VPDQIndex | None = None) -> None:
        """Start from `index`, which reflects the feed up to `cursor`; changes queued
        before are dropped (the index already holds them, or the owner re-applies them).
        `videos` is the vPDQ index at the same cursor. Without it (a worker mapping a newer
        PDQ checkpoint, which holds no videos) a loaded matcher keeps the vPDQ index it
        has, with what was queued for it applied, and its cursor: the owner's next changes
        bring both indexes from there (replayed on the PDQ index, adds replace and
        removals of absent keys do nothing)."""
        with self._index_lock:
            if videos is None and self._pdq is not None:
                for _, removed, _, added in self._pending:
                    self._apply_videos(added, removed)
                cursor = min(cursor, self._cursor)
            elif videos is not None:
                self._videos = videos
            self._pending.clear()
            index.defer_merges = True
            self._pdq = index
            self._cursor = cursor
        self._merge_soon()

    def attach(self, store: Store, cursor: int = 0) -> None:
        """Load the index from `store`'s live PDQ rows and follow its change listener.
        Call on the store's thread, so no commit slips between the load and the listener."""
        index = PDQIndex()
        keys: list[int] = []
        values: list[str] = []
        for key, value in store.live_signals("pdq"):
            keys.append(key)
            values.append(value)
        if keys:
            index.add_many(keys, values)
        self.load(index, cursor, video_index(store.live_signals(VPDQSignal.name)))
        self.follow(store)

    def follow(self, store: Store) -> None:
        """Keep the index current from `store`'s change listener (after a `load`)."""
        if self._on_change not in store.listeners:
            store.listeners.append(self._on_change)

    @property
    def pdq(self) -> PDQIndex:
        """The index; with a store and none loaded yet, loaded from the store's rows (on
        the store thread), so an exact-only lookup from the CLI never pays for it."""
        if self._pdq is None:
            if self.store is None or self._deferred:
                raise IndexLoading("the PDQ index is loading; retry shortly")
            self.attach(self.store)
        assert self._pdq is not None
        return self._pdq

    def _on_change(self, added: list[tuple[int, str, str]], removed: list[int]) -> None:
        """Store thread, after a commit: queue the change, never wait for a match."""
        pdq = [(key, value) for key, kind, value in added if kind == "pdq"]
        videos = [(key, value) for key, kind, value in added if kind == VPDQSignal.name]
        if pdq or removed or videos:
            self.apply(pdq, removed, videos=videos)

    def apply(
        self,
        added: Sequence[tuple[int, str]],
        removed: Sequence[int],
        cursor: int | None = None,
        videos: Sequence[tuple[int, str]] = (),
    ) -> None:
        """Add `added` (key, PDQ hex) and `videos` (key, vpdq value), tombstone `removed`
        keys (of either), then record `cursor`; thread-safe, and it never waits for a
        running match (see the class)."""
        self._pending.append((list(added), list(removed), cursor, list(videos)))
        if cursor is not None:
            self._cursor = max(self._cursor, cursor)
        if self._wake is not None:
            self._wake.set()
            return
        if self._index_lock.acquire(blocking=False):
            try:
                self._apply_pending()
            finally:
                self._index_lock.release()

    def apply_in_background(self) -> None:
        """From now on `apply` only queues, and a thread of the matcher's own applies: the
        node's change listener runs on the store thread, and a segment merge there (up to
        seconds at 10M) held every publish behind it. A match still applies what is queued
        before it answers, so no answer misses a committed change."""
        if self._wake is not None:
            return
        self._wake = wake = threading.Event()

        def applier() -> None:
            while True:
                wake.wait()
                wake.clear()
                with self._index_lock:
                    self._apply_pending()

        threading.Thread(target=applier, name="index", daemon=True).start()

    def _apply_pending(self) -> None:
        index = self._pdq
        if index is None:  # not loaded yet: the changes wait for `load` (which drops them)
            return
        changed = False
        while self._pending:
            added, removed, _, videos = self._pending.popleft()
            if added:
                index.add_many([k for k, _ in added], [v for _, v in added])
                changed = True
            if removed:
                index.remove_many(removed)
                changed = True
            self._apply_videos(videos, removed)
        if changed:
            self._merge_soon()

    # -- merges, outside the index lock -------------------------------------------------------

    MERGER_IDLE_S = 30.0  # an idle merge thread ends (a CLI's or test's matcher keeps none)

    def _merge_soon(self) -> None:
        """Wake the merge thread (started if there is none)."""
        self._merge_wake.set()
        with self._merger_lock:
            if self._merger is None:
                self._merger = threading.Thread(target=self._merge_loop, name="merge", daemon=True)
                self._merger.start()

    def _merge_loop(self) -> None:
        while True:
            if not self._merge_wake.wait(self.MERGER_IDLE_S):
                with self._merger_lock:
                    if not self._merge_wake.is_set():
                        self._merger = None
                        return
            self._merge_wake.clear()
            self.merge_due()

    def merge_due(self) -> int:
        """Make every merge and compaction the index has due, each segment built without
        the index lock (see the class); how many were installed. The merge thread calls
        it; so may anyone, one at a time (a plan left stale by another is refused)."""
        done = 0
        while True:
            with self._index_lock:
                self._apply_pending()
                index = self._pdq
                plan = None if index is None else index.merge_plan()
            if index is None or plan is None:
                return done
            built = index.build_merge(plan)
            with self._index_lock:
                if self._pdq is not index or not index.install_merge(plan, built):
                    return done
            done += 1

    def _apply_videos(self, added: list[tuple[int, str]], removed: list[int]) -> None:
        if added:
            self._videos.add_many((k, VideoFrames.from_value(v)) for k, v in added)
        if removed and len(self._videos):
            self._videos.remove_many(removed)

    def snapshot_for_checkpoint(self) -> tuple[PDQIndex, int] | None:
        """The index with every queued change applied, and its cursor, taken under the
        lock; None before a load. The caller writes a checkpoint from it (checkpoint.py)."""
        with self._index_lock:
            self._apply_pending()
            if self._pdq is None:
                return None
            return self._pdq, self._cursor

    @property
    def videos(self) -> int:
        """Live vPDQ signals in the index."""
        return len(self._videos)

    def _video_hits(self, values: list[str]) -> list[list[VideoMatch]]:
        if self._pdq is None and (self.store is None or self._deferred):
            raise IndexLoading("the PDQ index is loading; retry shortly")
        if self._pdq is None:
            _ = self.pdq  # loads both indexes from the store's rows
        with self._index_lock:
            self._apply_pending()
            return [self._videos.query(VideoFrames.from_value(v)) for v in values]

    def _pdq_hits(self, values: list[str], threshold: int, limit: int) -> list[Any]:
        index = self.pdq if self.store is not None else self._pdq
        if index is None:
            raise IndexLoading("the PDQ index is loading; retry shortly")
        with self._index_lock:
            self._apply_pending()
            return index.query_many(values, threshold, limit=limit)

    def answer(
        self,
        queries: Any,
        threshold: int,
        collections: frozenset[str] | None,
        author_name: Callable[[str], Any],
        source: SignalSource | None = None,
        labels: TrustLabels = NO_LABELS,
    ) -> dict[str, Any]:
        """The match answer (see `assemble`), drawn only from `collections`; rows come
        from `source` (default: the store, for callers on its thread). A PDQ query before
        the index is loaded raises IndexLoading (503); exact queries need no index.
        `labels` are the trust entries' org and country, for quorums counted by them."""
        check_threshold(threshold)
        if source is None:
            if self.store is None:
                raise TypeError("Matcher.answer: a source is required without a store")
            reads: SignalSource = self.store
        else:
            reads = source
        unique, slots = distinct(parse_queries(queries))
        policies = policy_set(reads.policy_rows())
        limit = MAX_MATCHES_PER_QUERY + 1
        hits: list[list[tuple[int, int]]] = [[] for _ in unique]
        pdq_positions = [i for i, s in enumerate(unique) if s.type == PDQSignal.name]
        video_positions = [i for i, s in enumerate(unique) if s.type == VPDQSignal.name]
        videos: dict[int, dict[int, VideoMatch]] = {}
        if video_positions:
            found_videos = self._video_hits([unique[i].value for i in video_positions])
            for i, matched in zip(video_positions, found_videos, strict=True):
                videos[i] = {m.key: m for m in matched[:limit]}
                hits[i] = [(m.key, 0) for m in matched[:limit]]
        if pdq_positions:
            reach = policies.lookup_threshold(threshold)
            found = self._pdq_hits([unique[i].value for i in pdq_positions], reach, limit)
            for i, result in zip(pdq_positions, found, strict=True):
                hits[i] = [(int(k), int(d)) for k, d in result]
        # Index hits first (their rows in one read), then each exact value with its rows.
        rows = reads.signals_by_id(sorted({k for h in hits for k, _ in h}))
        for i, signal in enumerate(unique):
            if get_type(signal.type).exact:
                found_rows = reads.exact_rows(signal.type, signal.value, limit)
                rows.update(found_rows)
                hits[i] = [(k, 0) for k in found_rows]
        op_ids = [r["op_id"] for r in rows.values()]
        opinions = reads.opinion_counts_many(op_ids, collections) if op_ids else {}
        held = reads.quarantined(op_ids) if op_ids else {}
        return assemble(
            queries,
            slots,
            hits,
            rows,
            opinions,
            collections,
            author_name,
            threshold,
            policies,
            held,
            labels,
            videos,
        )
