"""vPDQ index: which indexed videos a video matches, by Meta's rule, exactly.

The rule is python-threatexchange's (extensions/vpdq, the `VPDQIndex` HMA uses): of each
video only frames of quality >= 50 count, and each distinct PDQ value once (filtered, then
deduplicated, in that order, as `prepare_vpdq_feature` does; pytx's brute matcher dedups
first, which differs only when one PDQ value occurs at two qualities). A query frame
matches a video when some counted frame of it lies within PDQ distance 31; the query
matches the video when at least 80 % of the query's counted frames match it and at least
the target-side percentage (default 0) of the video's counted frames match some query
frame. Percentages are computed as pytx computes them (`count * 100 / total`, compared
with `>=`), so a borderline 4-of-5 is a match here exactly when it is one there.

Why one PDQ index over every frame: a 60-frame query against 100,000 videos is 60 range
searches over 6M frames, which the multi-index PDQ index answers with a few thousand
probes each, where comparing the query with each video (pytx's brute matcher) reads all
6M frames per query. A frame's key in that index is ``video << 16 | slot`` (slot: the
frame's place among its video's distinct frames), so the hits are counted per video by
arithmetic on keys, with no table from frame to video, and a video's frames are removed by
one `remove_many` of keys it can recompute. Adds and removals are incremental, as the PDQ
index's are; not thread-safe either: the owner serialises calls.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hashmesh.node.matching.pdq_index import PDQIndex, hex_to_words

__all__ = [
    "DISTANCE",
    "QUALITY",
    "QUERY_PERCENT",
    "TARGET_PERCENT",
    "VPDQIndex",
    "VideoFrames",
    "VideoMatch",
    "reference_query",
]

QUALITY = 50
DISTANCE = 31
QUERY_PERCENT = 80.0
TARGET_PERCENT = 0.0
_SLOT_BITS = 16
MAX_DISTINCT_FRAMES = 1 << _SLOT_BITS
MAX_VIDEO_KEY = (1 << (63 - _SLOT_BITS)) - 1

U64Array = npt.NDArray[np.uint64]
I64Array = npt.NDArray[np.int64]
F64Array = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class VideoFrames:
    """A video's sampled frames as arrays: PDQ words (n, 4), quality and seconds (n,)."""

    words: U64Array
    quality: npt.NDArray[np.int64]
    seconds: F64Array

    def __post_init__(self) -> None:
        n = len(self.words)
        if self.words.shape != (n, 4) or self.words.dtype != np.uint64:
            raise ValueError(f"frame words must be (n, 4) uint64, got {self.words.shape}")
        if self.quality.shape != (n,) or self.seconds.shape != (n,):
            raise ValueError("frames: quality and seconds must have one entry per frame")

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def of(cls, frames: Iterable[tuple[str, int, float]]) -> VideoFrames:
        """From (PDQ hex, quality, seconds) triples."""
        rows = list(frames)
        return cls(
            hex_to_words([r[0] for r in rows]) if rows else np.empty((0, 4), np.uint64),
            np.array([r[1] for r in rows], dtype=np.int64),
            np.array([r[2] for r in rows], dtype=np.float64),
        )

    @classmethod
    def from_value(cls, value: str) -> VideoFrames:
        """From a canonical `vpdq` value (protocol/signals.py's VPDQSignal: frames
        ``NUMBER,QUALITY,PDQHEX,SECONDS`` joined by spaces), parsed in bulk: loading
        100,000 videos frame by frame through Python objects costs seconds."""
        fields = value.replace(" ", ",").split(",")
        if len(fields) % 4:
            raise ValueError("vpdq value: frames must have four fields each")
        return cls(
            hex_to_words(fields[2::4]),
            np.array(fields[1::4], dtype=np.int64),
            np.array(fields[3::4], dtype=np.float64),
        )


@dataclass(frozen=True)
class VideoMatch:
    """One matched video: the shares pytx reports and where the frames matched.

    `ranges` are spans of the video (seconds, first and last frame) over which consecutive
    counted frames all matched; `query_ranges` the same spans of the query.
    """

    key: int
    query_percent: float
    target_percent: float
    query_matched: int
    query_frames: int
    target_matched: int
    target_frames: int
    distance: int  # the nearest pair of frames
    ranges: tuple[tuple[float, float], ...]
    query_ranges: tuple[tuple[float, float], ...]

    def json(self) -> dict[str, object]:
        return {
            "query_percent": round(self.query_percent, 2),
            "target_percent": round(self.target_percent, 2),
            "query_frames": [self.query_matched, self.query_frames],
            "target_frames": [self.target_matched, self.target_frames],
            "ranges": [list(r) for r in self.ranges],
            "query_ranges": [list(r) for r in self.query_ranges],
        }


@dataclass(frozen=True, eq=False)
class _Prepared:
    """A video as the rule counts it: its distinct frames of enough quality, and for each
    kept frame (in time order) which distinct frame it is (for the ranges)."""

    words: U64Array  # (distinct, 4), in order of first occurrence
    seconds: F64Array  # kept frames, in time order
    slot: npt.NDArray[np.int32]  # kept frame -> distinct frame

    @property
    def distinct(self) -> int:
        return len(self.words)


def _prepare(frames: VideoFrames, quality: int) -> _Prepared:
    keep = frames.quality >= quality
    words = frames.words[keep]
    seconds = frames.seconds[keep]
    order = np.argsort(seconds, kind="stable")
    words, seconds = words[order], seconds[order]
    if len(words) == 0:
        return _Prepared(words, seconds, np.empty(0, np.int32))
    raw = np.ascontiguousarray(words).view(np.dtype((np.void, 32))).reshape(-1)
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int32)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first), dtype=np.int32)
    return _Prepared(words[np.sort(first)], seconds, rank[inverse.reshape(-1)])


def _runs(seconds: F64Array, matched: npt.NDArray[np.bool_]) -> tuple[tuple[float, float], ...]:
    """Spans of consecutive True entries, as (first second, last second)."""
    if not matched.any():
        return ()
    edges = np.diff(np.concatenate(([0], matched.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return tuple((float(seconds[a]), float(seconds[b])) for a, b in zip(starts, ends, strict=True))


class VPDQIndex:
    """Videos keyed by integer (the store's row id), matched by Meta's vPDQ rule.

    A key holds one video; adding a key that is present replaces its video. A video with
    no frame of enough quality can match nothing (pytx refuses to index it): it is kept
    out of the frame index but counted, so removals and `len` agree with the rows.
    """

    def __init__(
        self,
        quality: int = QUALITY,
        distance: int = DISTANCE,
        query_percent: float = QUERY_PERCENT,
        target_percent: float = TARGET_PERCENT,
    ) -> None:
        self.quality = quality
        self.distance = distance
        self.query_percent = query_percent
        self.target_percent = target_percent
        self._frames = PDQIndex(distance)
        self._videos: dict[int, _Prepared] = {}

    def __len__(self) -> int:
        return len(self._videos)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int | np.integer) and int(key) in self._videos

    @property
    def frames(self) -> int:
        """Distinct frames indexed, over all videos."""
        return len(self._frames)

    def add(self, key: int, frames: VideoFrames) -> None:
        self.add_many([(key, frames)])

    def add_many(self, videos: Iterable[tuple[int, VideoFrames]]) -> None:
        """Bulk add: one `PDQIndex.add_many` for every frame of every video, so loading
        100,000 videos builds segments once instead of flushing the delta buffer 700 times.
        Keys repeated within the call: the last video wins."""
        prepared: dict[int, _Prepared] = {}
        for key, frames in videos:
            key = int(key)
            if not 0 <= key <= MAX_VIDEO_KEY:
                raise ValueError(f"video key must be within 0..{MAX_VIDEO_KEY}, got {key}")
            p = _prepare(frames, self.quality)
            if p.distinct > MAX_DISTINCT_FRAMES:
                raise ValueError(f"video {key}: more than {MAX_DISTINCT_FRAMES} distinct frames")
            prepared[key] = p
        if not prepared:
            return
        self.remove_many([k for k in prepared if k in self._videos])
        keys = [
            (k << _SLOT_BITS) + np.arange(p.distinct, dtype=np.int64) for k, p in prepared.items()
        ]
        words = [p.words for p in prepared.values()]
        if sum(len(w) for w in words):
            self._frames.add_many(np.concatenate(keys), np.concatenate(words))
        self._videos.update(prepared)

    def remove(self, key: int) -> bool:
        """Forget a video; returns whether it was present."""
        return self.remove_many([key]) == 1

    def remove_many(self, keys: Iterable[int]) -> int:
        """Forget many videos at once; absent keys are allowed. Returns how many were present."""
        gone = [(int(k), p) for k in set(map(int, keys)) if (p := self._videos.pop(int(k), None))]
        frame_keys = [
            (k << _SLOT_BITS) + np.arange(p.distinct, dtype=np.int64) for k, p in gone if p.distinct
        ]
        if frame_keys:
            self._frames.remove_many(np.concatenate(frame_keys))
        return len(gone)

    def query(
        self,
        frames: VideoFrames,
        query_percent: float | None = None,
        target_percent: float | None = None,
    ) -> list[VideoMatch]:
        """Every indexed video the query matches, best first (query share, target share,
        then key)."""
        q_pct = self.query_percent if query_percent is None else query_percent
        t_pct = self.target_percent if target_percent is None else target_percent
        q = _prepare(frames, self.quality)
        m = q.distinct
        if m == 0 or not self._frames:
            return []
        qid, key, dist = self._frames.search(q.words, self.distance)
        if len(key) == 0:
            return []
        video = key >> _SLOT_BITS
        videos, vid = np.unique(video, return_inverse=True)
        vid = vid.reshape(-1)
        n = len(videos)
        q_hits = np.unique(vid * m + qid)
        q_count = np.bincount(q_hits // m, minlength=n)
        t_keys = np.unique(key)
        t_vid = np.searchsorted(videos, t_keys >> _SLOT_BITS)
        t_count = np.bincount(t_vid, minlength=n)
        nearest = np.full(n, 1 << 16, dtype=np.int64)
        np.minimum.at(nearest, vid, dist)
        totals = np.array([self._videos[int(v)].distinct for v in videos.tolist()], np.int64)
        q_share = q_count * 100 / m
        t_share = t_count * 100 / totals
        passing = np.flatnonzero((q_share >= q_pct) & (t_share >= t_pct))
        out = []
        for i in passing.tolist():
            target = self._videos[int(videos[i])]
            slots = t_keys[t_vid == i] & ((1 << _SLOT_BITS) - 1)
            t_matched = np.zeros(target.distinct, dtype=np.bool_)
            t_matched[slots] = True
            q_matched = np.zeros(m, dtype=np.bool_)
            q_matched[q_hits[q_hits // m == i] % m] = True
            out.append(
                VideoMatch(
                    key=int(videos[i]),
                    query_percent=float(q_share[i]),
                    target_percent=float(t_share[i]),
                    query_matched=int(q_count[i]),
                    query_frames=m,
                    target_matched=int(t_count[i]),
                    target_frames=int(totals[i]),
                    distance=int(nearest[i]),
                    ranges=_runs(target.seconds, t_matched[target.slot]),
                    query_ranges=_runs(q.seconds, q_matched[q.slot]),
                )
            )
        out.sort(key=lambda v: (-v.query_percent, -v.target_percent, v.key))
        return out


def reference_query(
    query: VideoFrames,
    videos: Mapping[int, VideoFrames] | Sequence[tuple[int, VideoFrames]],
    quality: int = QUALITY,
    distance: int = DISTANCE,
    query_percent: float = QUERY_PERCENT,
    target_percent: float = TARGET_PERCENT,
) -> list[tuple[int, float, float]]:
    """(key, query %, target %) of every matching video by comparing every frame pair:
    the brute-force reference the index is tested and benchmarked against."""
    items = videos.items() if isinstance(videos, Mapping) else videos
    q = _prepare(query, quality)
    out: list[tuple[int, float, float]] = []
    if q.distinct == 0:
        return out
    for key, frames in items:
        t = _prepare(frames, quality)
        if t.distinct == 0:
            continue
        xor = np.bitwise_xor(q.words[:, None, :], t.words[None, :, :])
        close = np.bitwise_count(xor).sum(axis=2, dtype=np.int16) <= distance
        q_share = int(close.any(axis=1).sum()) * 100 / q.distinct
        t_share = int(close.any(axis=0).sum()) * 100 / t.distinct
        if q_share >= query_percent and t_share >= target_percent:
            out.append((int(key), q_share, t_share))
    out.sort(key=lambda r: (-r[1], -r[2], r[0]))
    return out
