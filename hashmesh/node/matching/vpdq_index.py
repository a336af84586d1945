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

Why one PDQ index over every frame: a 60-frame query against 100,000 videos would, by
comparing it with each video (pytx's brute matcher), read all 6M frames; the multi-index
PDQ index finds a frame's neighbours with a few thousand probes. And not every query frame
needs looking up: a video that matches holds at least 80 % of the query's frames, so any
21 % of them include one that matches it (13 of 60; see `VPDQIndex.query`); the videos they
find are then compared frame by frame with the whole query, which gives the exact shares.
A frame's key in the PDQ index is ``video << 16 | slot`` (slot: the frame's place among its
video's distinct frames), so hits map to videos by arithmetic on keys, with no table from
frame to video, and a video's frames are removed by one `remove_many` of keys it can
recompute. Each video's distinct frames are also kept beside the PDQ index (32 bytes a
frame) for that comparison. Adds and removals are incremental, as the PDQ
index's are; not thread-safe either: the owner serialises calls.
"""

from __future__ import annotations

import math
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
_VERIFY_PAIRS = 1 << 18  # frame pairs compared in one step (8 MiB of XORed words)

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
    def nbytes(self) -> int:
        """Bytes in numpy arrays: the frame index and each video's own frames and times."""
        own = sum(p.words.nbytes + p.seconds.nbytes + p.slot.nbytes for p in self._videos.values())
        return self._frames.nbytes + own

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
        then key).

        Only some of the query's frames are looked up. A video matches only if at least
        `need` of the m query frames match it, so it misses at most m - need of them, and
        any m - need + 1 query frames include one that matches it (pigeonhole): looking
        those up finds every video that can match (at 80 %, 13 of 60 frames). Each video
        found is then compared frame by frame with the whole query, so every share is the
        exact one, as brute force computes it.
        """
        q_pct = self.query_percent if query_percent is None else query_percent
        t_pct = self.target_percent if target_percent is None else target_percent
        q = _prepare(frames, self.quality)
        m = q.distinct
        if m == 0 or not self._frames:
            return []
        need = _least_count(m, q_pct)
        if need > m:
            return []
        probe = np.unique(np.linspace(0, m - 1, m - need + 1).round().astype(np.int64))
        _, key, _ = self._frames.search(q.words[probe], self.distance)
        candidates = np.unique(key >> _SLOT_BITS).tolist()
        out: list[VideoMatch] = []
        batch: list[int] = []
        pairs = 0
        for k in candidates:
            batch.append(k)
            pairs += m * self._videos[k].distinct
            if pairs >= _VERIFY_PAIRS:
                out += self._verify(q, batch, q_pct, t_pct)
                batch, pairs = [], 0
        if batch:
            out += self._verify(q, batch, q_pct, t_pct)
        out.sort(key=lambda v: (-v.query_percent, -v.target_percent, v.key))
        return out

    def _verify(
        self, q: _Prepared, keys: list[int], q_pct: float, t_pct: float
    ) -> list[VideoMatch]:
        """The exact shares of these videos against the whole query, by every frame pair."""
        videos = [self._videos[k] for k in keys]
        sizes = np.array([v.distinct for v in videos], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        words = np.concatenate([v.words for v in videos])
        m = q.distinct
        close = np.empty((m, len(words)), dtype=np.bool_)
        nearest = np.full(len(words), 256, dtype=np.int16)
        step = max(1, _VERIFY_PAIRS // len(words))
        for r in range(0, m, step):
            block = q.words[r : r + step, None, :] ^ words[None, :, :]
            dist = np.bitwise_count(block).sum(axis=2, dtype=np.int16)
            np.less_equal(dist, self.distance, out=close[r : r + step])
            np.minimum(nearest, dist.min(axis=0), out=nearest)
        distance = np.minimum.reduceat(nearest, starts)
        q_count = np.logical_or.reduceat(close, starts, axis=1).sum(axis=0)
        t_close = np.asarray(close.any(axis=0))
        t_count = np.add.reduceat(t_close, starts)
        q_share = q_count * 100 / m
        t_share = t_count * 100 / sizes
        out = []
        for i in np.flatnonzero((q_share >= q_pct) & (t_share >= t_pct)).tolist():
            a, b = int(starts[i]), int(starts[i] + sizes[i])
            target = videos[i]
            q_matched = np.asarray(close[:, a:b].any(axis=1))
            out.append(
                VideoMatch(
                    key=keys[i],
                    query_percent=float(q_share[i]),
                    target_percent=float(t_share[i]),
                    query_matched=int(q_count[i]),
                    query_frames=m,
                    target_matched=int(t_count[i]),
                    target_frames=int(sizes[i]),
                    distance=int(distance[i]),
                    ranges=_runs(target.seconds, t_close[a:b][target.slot]),
                    query_ranges=_runs(q.seconds, q_matched[q.slot]),
                )
            )
        return out


def _least_count(m: int, percent: float) -> int:
    """The fewest matched frames of m whose share pytx's `count * 100 / m >= percent`
    accepts (at least 1: pytx reports only videos some frame matched); m + 1 if none."""
    guess = max(1, math.ceil(percent * m / 100) - 1)
    for c in range(guess, m + 1):
        if c * 100 / m >= percent:
            return c
    return m + 1


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
        if not close.any():  # pytx reports only videos some frame matched
            continue
        q_share = int(close.any(axis=1).sum()) * 100 / q.distinct
        t_share = int(close.any(axis=0).sum()) * 100 / t.distinct
        if q_share >= query_percent and t_share >= target_percent:
            out.append((int(key), q_share, t_share))
    out.sort(key=lambda r: (-r[1], -r[2], r[0]))
    return out
