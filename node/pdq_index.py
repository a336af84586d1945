"""In-memory PDQ index: exact Hamming range search by multi-index hashing.

Why this design (measured in bench/match.py, numbers in docs/benchmarks.md): a 256-bit
hash is cut into 16 chunks of 16 bits. If two hashes differ in at most ``t`` bits, some
chunk differs in at most ``t // 16`` bits (pigeonhole), so probing every chunk's table at
that radius finds every true match; a vectorised popcount then verifies the candidates
and drops the false ones. Recall is exactly 1.0 at any threshold.

Each chunk table is a counting-sort layout (65,537 offsets plus a row permutation), which
numpy builds with a radix sort in well under a second per million hashes and which costs
4 bytes per hash per chunk, far less than a hash map of lists.

Changes never rebuild the whole index: adds go to a small delta buffer that is scanned
brute force; a full buffer becomes a segment, and segments are merged logarithmically
(a segment is merged into its predecessor once it is at least a quarter of its size),
so an add costs amortised O(log n) row copies. Removals tombstone the row; a segment
whose tombstones pass a quarter of its rows is compacted. None of this is thread-safe:
the owner serialises calls (the node calls it from its event loop).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_THRESHOLD", "PDQIndex", "hex_to_words", "words_to_hex"]

DEFAULT_THRESHOLD = 31
_CHUNKS = 16
_CHUNK_VALUES = 1 << 16
_DELTA_CAPACITY = 8192
_MERGE_RATIO = 4
_COMPACT_DEAD_FRACTION = 0.25
_QUERY_BATCH_CANDIDATES = 1 << 17
_MAX_PROBE_RADIUS = 2

U64Array = npt.NDArray[np.uint64]
I64Array = npt.NDArray[np.int64]


def hex_to_words(hexes: Sequence[str]) -> U64Array:
    """Parse PDQ hex strings into an (n, 4) uint64 array; word j holds hex[16j:16j+16]."""
    for h in hexes:
        if not isinstance(h, str) or len(h) != 64:
            raise ValueError(f"PDQ hash must be 64 hex characters, got {h!r}")
    try:
        raw = bytes.fromhex("".join(hexes))
    except ValueError:
        raise ValueError("PDQ hash contains a character that is not hex") from None
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(-1, 4)


def words_to_hex(words: U64Array) -> list[str]:
    """Inverse of `hex_to_words`, for tests and diagnostics."""
    raw = np.ascontiguousarray(words, dtype=np.uint64).astype(">u8").tobytes()
    return [raw[i : i + 32].hex() for i in range(0, len(raw), 32)]


def _chunks(words: U64Array) -> npt.NDArray[np.uint16]:
    """(n, 4) words -> (n, 16) chunk values, chunk c = bits [16c, 16c+16) from the left."""
    be = np.ascontiguousarray(words).astype(">u8")
    return be.view(">u2").reshape(-1, _CHUNKS).astype(np.uint16)


def _flip_masks(radius: int) -> npt.NDArray[np.int64]:
    masks = [0]
    for r in range(1, radius + 1):
        for bits in itertools.combinations(range(16), r):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, dtype=np.int64)


_FLIPS = {r: _flip_masks(r) for r in range(_MAX_PROBE_RADIUS + 1)}
_CHUNK_BASE = (np.arange(_CHUNKS, dtype=np.int64) * (_CHUNK_VALUES + 1))[:, None]


def _popcount_distance(a: U64Array, b: U64Array) -> npt.NDArray[np.int64]:
    dist: npt.NDArray[np.int64] = np.bitwise_count(np.bitwise_xor(a, b)).sum(
        axis=-1, dtype=np.int64
    )
    return dist


def _check_words(words: npt.ArrayLike) -> U64Array:
    arr = np.asarray(words)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"PDQ words must have shape (n, 4), got {arr.shape}")
    if arr.dtype != np.uint64:
        raise ValueError(f"PDQ words must be uint64, got {arr.dtype}")
    return np.ascontiguousarray(arr)


@dataclass(eq=False)
class _Segment:
    """Immutable rows plus their 16 chunk tables; only the `alive` mask changes."""

    words: U64Array
    keys: I64Array
    alive: npt.NDArray[np.bool_]
    offsets: I64Array  # (16 * 65537,) into `rows`
    rows: npt.NDArray[np.uint32]  # (16 * n,) row ids, chunk by chunk, sorted by value
    key_order: npt.NDArray[np.int64] | None  # argsort of keys; None when keys are sorted
    dead: int = 0

    @classmethod
    def build(cls, words: U64Array, keys: I64Array) -> _Segment:
        n = len(keys)
        chunks = _chunks(words)
        offsets = np.empty((_CHUNKS, _CHUNK_VALUES + 1), dtype=np.int64)
        rows = np.empty(_CHUNKS * n, dtype=np.uint32)
        for c in range(_CHUNKS):
            col = chunks[:, c]
            rows[c * n : (c + 1) * n] = np.argsort(col, kind="stable")
            counts = np.bincount(col, minlength=_CHUNK_VALUES)
            offsets[c, 0] = c * n
            np.cumsum(counts, out=offsets[c, 1:])
            offsets[c, 1:] += c * n
        sorted_keys = bool(n < 2 or np.all(keys[1:] > keys[:-1]))
        return cls(
            words=words,
            keys=keys,
            alive=np.ones(n, dtype=np.bool_),
            offsets=offsets.reshape(-1),
            rows=rows,
            key_order=None if sorted_keys else np.argsort(keys, kind="stable"),
        )

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        extra = 0 if self.key_order is None else self.key_order.nbytes
        return (
            self.words.nbytes
            + self.keys.nbytes
            + self.alive.nbytes
            + self.offsets.nbytes
            + self.rows.nbytes
            + extra
        )

    def locate(self, keys: I64Array) -> npt.NDArray[np.int64]:
        """Row of each key, -1 where absent or dead."""
        if len(self.keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        if self.key_order is None:
            pos = np.searchsorted(self.keys, keys)
            pos = np.minimum(pos, len(self.keys) - 1)
            rows = pos.astype(np.int64)
        else:
            sorted_keys = self.keys[self.key_order]
            pos = np.minimum(np.searchsorted(sorted_keys, keys), len(self.keys) - 1)
            rows = self.key_order[pos]
        found = (self.keys[rows] == keys) & self.alive[rows]
        return np.where(found, rows, -1)

    def live(self) -> tuple[U64Array, I64Array]:
        return self.words[self.alive], self.keys[self.alive]

    def search(self, queries: U64Array, threshold: int) -> tuple[I64Array, I64Array, I64Array]:
        """(query index, key, distance) triples of live rows within threshold."""
        radius = threshold // _CHUNKS
        flips = _FLIPS[radius]
        probes_per_query = _CHUNKS * len(flips)
        n_rows = len(self.keys)
        # Expected candidates per query, used to bound the size of one vectorised batch.
        per_query = max(1, probes_per_query * (n_rows // _CHUNK_VALUES + 1))
        # Past a few thousand candidates a query, gathering each candidate's query costs
        # more than the per-call overhead that batching saves.
        step = 1 if per_query > 8192 else max(1, _QUERY_BATCH_CANDIDATES // per_query)
        out_q: list[I64Array] = []
        out_k: list[I64Array] = []
        out_d: list[I64Array] = []
        for s in range(0, len(queries), step):
            q = queries[s : s + step]
            qc = _chunks(q).astype(np.int64)  # (b, 16)
            probe = ((qc[:, :, None] ^ flips[None, None, :]) + _CHUNK_BASE[None]).reshape(
                len(q), -1
            )
            starts = self.offsets[probe].reshape(-1)
            lengths = self.offsets[probe + 1].reshape(-1) - starts
            total = int(lengths.sum())
            if total == 0:
                continue
            ends = np.cumsum(lengths)
            pos = np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - lengths), lengths)
            cand = self.rows[pos].astype(np.int64)
            qid = np.repeat(np.repeat(np.arange(len(q), dtype=np.int64), probes_per_query), lengths)
            qwords = q if len(q) == 1 else q[qid]
            dist = _popcount_distance(self.words[cand], qwords)
            hit = dist <= threshold
            qid, cand, dist = qid[hit], cand[hit], dist[hit]
            if self.dead:
                live = self.alive[cand]
                qid, cand, dist = qid[live], cand[live], dist[live]
            if len(cand) == 0:
                continue
            # A close pair collides in several chunks: keep one of each (query, row).
            pair = np.unique(qid * max(n_rows, 1) + cand, return_index=True)[1]
            out_q.append(qid[pair] + s)
            out_k.append(self.keys[cand[pair]])
            out_d.append(dist[pair])
        return _concat(out_q), _concat(out_k), _concat(out_d)


def _concat(parts: list[I64Array]) -> I64Array:
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


@dataclass(eq=False)
class _Delta:
    """Recent adds, scanned brute force until they are worth a segment."""

    words: U64Array = field(default_factory=lambda: np.empty((_DELTA_CAPACITY, 4), np.uint64))
    keys: I64Array = field(default_factory=lambda: np.empty(_DELTA_CAPACITY, np.int64))
    alive: npt.NDArray[np.bool_] = field(
        default_factory=lambda: np.zeros(_DELTA_CAPACITY, np.bool_)
    )
    rows: dict[int, int] = field(default_factory=dict)
    size: int = 0

    def full(self) -> bool:
        return self.size >= _DELTA_CAPACITY

    def append(self, key: int, words: U64Array) -> None:
        self.words[self.size] = words
        self.keys[self.size] = key
        self.alive[self.size] = True
        self.rows[key] = self.size
        self.size += 1

    def remove(self, key: int) -> bool:
        row = self.rows.pop(key, None)
        if row is None:
            return False
        self.alive[row] = False
        return True

    def live(self) -> tuple[U64Array, I64Array]:
        mask = self.alive[: self.size]
        return self.words[: self.size][mask], self.keys[: self.size][mask]

    def search(self, queries: U64Array, threshold: int) -> tuple[I64Array, I64Array, I64Array]:
        if not self.rows:
            return _concat([]), _concat([]), _concat([])
        words, keys = self.live()
        step = max(1, (1 << 20) // max(len(keys), 1))
        qs, ks, ds = [], [], []
        for s in range(0, len(queries), step):
            dist = _popcount_distance(words[None, :, :], queries[s : s + step, None, :])
            qid, col = np.nonzero(dist <= threshold)
            qs.append(qid.astype(np.int64) + s)
            ks.append(keys[col])
            ds.append(dist[qid, col])
        return _concat(qs), _concat(ks), _concat(ds)


class PDQIndex:
    """Exact Hamming range search over PDQ hashes, keyed by integer (the store's row id).

    A key holds one hash; adding a key that is present replaces its hash.
    """

    def __init__(self, threshold: int = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold
        self._segments: list[_Segment] = []
        self._delta = _Delta()
        self._count = 0

    # -- size and membership -------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int | np.integer):
            return False
        return self._find(int(key)) is not None

    @property
    def nbytes(self) -> int:
        """Bytes held in numpy arrays (the delta's key dict excluded: it stays small)."""
        d = self._delta
        return sum(s.nbytes for s in self._segments) + d.words.nbytes + d.keys.nbytes

    def _find(self, key: int) -> tuple[_Segment | None, int] | None:
        if key in self._delta.rows:
            return None, self._delta.rows[key]
        probe = np.array([key], dtype=np.int64)
        for seg in self._segments:
            row = int(seg.locate(probe)[0])
            if row >= 0:
                return seg, row
        return None

    # -- changes ---------------------------------------------------------------------------

    def add(self, key: int, pdq_hex: str) -> None:
        words = hex_to_words([pdq_hex])[0]
        key = int(key)
        self.remove(key)
        if self._delta.full():
            self._flush_delta()
        self._delta.append(key, words)
        self._count += 1

    def add_many(
        self, keys: Sequence[int] | npt.ArrayLike, hashes: Sequence[str] | U64Array
    ) -> None:
        """Bulk add, the fast path for loading the store at start.

        `hashes` is a list of hex strings or an (n, 4) uint64 array as from `hex_to_words`.
        Keys must be unique within one call; keys already present are replaced.
        """
        key_arr = np.asarray(keys, dtype=np.int64).reshape(-1)
        if isinstance(hashes, np.ndarray):
            words = _check_words(hashes)
        else:
            words = hex_to_words(list(hashes))
        if len(words) != len(key_arr):
            raise ValueError(f"add_many: {len(key_arr)} keys but {len(words)} hashes")
        if len(key_arr) == 0:
            return
        if len(key_arr) < _DELTA_CAPACITY // 4:
            for k, w in zip(key_arr.tolist(), words, strict=True):
                self.remove(k)
                if self._delta.full():
                    self._flush_delta()
                self._delta.append(k, w)
                self._count += 1
            return
        order = np.argsort(key_arr, kind="stable")
        sorted_keys = key_arr[order]
        if np.any(sorted_keys[1:] == sorted_keys[:-1]):
            raise ValueError("add_many: duplicate keys in one call")
        if self._count:
            self._remove_many(key_arr)
        if not np.all(order[1:] > order[:-1]):
            words, key_arr = words[order], sorted_keys
        self._segments.append(_Segment.build(np.array(words, copy=True), key_arr.copy()))
        self._count += len(key_arr)
        self._rebalance()

    def remove(self, key: int) -> bool:
        """Forget a key; returns whether it was present."""
        key = int(key)
        if self._delta.remove(key):
            self._count -= 1
            return True
        probe = np.array([key], dtype=np.int64)
        for seg in self._segments:
            row = int(seg.locate(probe)[0])
            if row >= 0:
                seg.alive[row] = False
                seg.dead += 1
                self._count -= 1
                if seg.dead > _COMPACT_DEAD_FRACTION * len(seg):
                    self._compact(seg)
                return True
        return False

    def _remove_many(self, keys: I64Array) -> None:
        for k in keys[np.isin(keys, self._delta.keys[: self._delta.size])].tolist():
            self.remove(k)
        for seg in list(self._segments):
            rows = seg.locate(keys)
            rows = rows[rows >= 0]
            if len(rows):
                seg.alive[rows] = False
                seg.dead += len(rows)
                self._count -= len(rows)
                if seg.dead > _COMPACT_DEAD_FRACTION * len(seg):
                    self._compact(seg)

    def _flush_delta(self) -> None:
        words, keys = self._delta.live()
        self._delta = _Delta()
        if len(keys):
            order = np.argsort(keys, kind="stable")
            self._segments.append(_Segment.build(words[order], keys[order]))
            self._rebalance()

    def _compact(self, seg: _Segment) -> None:
        i = self._segments.index(seg)
        words, keys = seg.live()
        self._segments[i] = _Segment.build(words, keys)
        self._segments.sort(key=len, reverse=True)
        self._rebalance()

    def _rebalance(self) -> None:
        segs = self._segments
        segs.sort(key=len, reverse=True)
        while len(segs) >= 2 and len(segs[-1]) * _MERGE_RATIO >= len(segs[-2]):
            b, a = segs.pop(), segs.pop()
            wa, ka = a.live()
            wb, kb = b.live()
            keys = np.concatenate([ka, kb])
            order = np.argsort(keys, kind="stable")
            segs.append(_Segment.build(np.concatenate([wa, wb])[order], keys[order]))
            segs.sort(key=len, reverse=True)

    # -- queries ---------------------------------------------------------------------------

    def query(self, pdq_hex: str, threshold: int | None = None) -> list[tuple[int, int]]:
        """(key, distance) pairs within threshold, nearest first (ties by key)."""
        return self.query_many([pdq_hex], threshold)[0]

    def query_many(
        self, pdq_hexes: Sequence[str] | U64Array, threshold: int | None = None
    ) -> list[list[tuple[int, int]]]:
        """One result list per query, each as `query` returns it; vectorised across queries."""
        t = self.threshold if threshold is None else int(threshold)
        if not 0 <= t <= 255:
            raise ValueError(f"threshold must be within 0..255, got {t}")
        if isinstance(pdq_hexes, np.ndarray):
            queries = _check_words(pdq_hexes)
        else:
            queries = hex_to_words(list(pdq_hexes))
        qs, ks, ds = [], [], []
        for seg in self._segments:
            if t // _CHUNKS <= _MAX_PROBE_RADIUS:
                res = seg.search(queries, t)
            else:
                res = _brute(seg.words, seg.keys, seg.alive, queries, t)
            qs.append(res[0])
            ks.append(res[1])
            ds.append(res[2])
        q, k, d = self._delta.search(queries, t)
        qs.append(q)
        ks.append(k)
        ds.append(d)
        qa, ka, da = np.concatenate(qs), np.concatenate(ks), np.concatenate(ds)
        order = np.lexsort((ka, da, qa))
        qa, ka, da = qa[order], ka[order], da[order]
        out: list[list[tuple[int, int]]] = [[] for _ in range(len(queries))]
        bounds = np.searchsorted(qa, np.arange(len(queries) + 1))
        kl, dl = ka.tolist(), da.tolist()
        for i in range(len(queries)):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            if hi > lo:
                out[i] = list(zip(kl[lo:hi], dl[lo:hi], strict=True))
        return out


def _brute(
    words: U64Array,
    keys: I64Array,
    alive: npt.NDArray[np.bool_],
    queries: U64Array,
    threshold: int,
) -> tuple[I64Array, I64Array, I64Array]:
    """Linear scan for thresholds too wide for multi-index probing to pay off."""
    qs, rows, ds = [], [], []
    for i, q in enumerate(queries):
        dist = _popcount_distance(words, q[None, :])
        (hit,) = np.nonzero((dist <= threshold) & alive)
        qs.append(np.full(len(hit), i, dtype=np.int64))
        rows.append(hit.astype(np.int64))
        ds.append(dist[hit])
    r = _concat(rows)
    return _concat(qs), keys[r], _concat(ds)
