"""In-memory PDQ index: exact Hamming range search by multi-index hashing.

Why this design (measured in bench/match.py, numbers in docs/benchmarks.md): a 256-bit
hash is cut into m chunks. If two hashes differ in at most ``t`` bits, some chunk differs
in at most ``t // m`` bits (pigeonhole), so probing every chunk's table with every key
within that radius finds every true match; a vectorised popcount then verifies the
candidates and drops the false ones. Recall is exactly 1.0 at any threshold.

What a query costs is random memory reads: one per probe (the bucket's offsets) and about
two per candidate (its row id, then its 32-byte hash). With 16 chunks of 16 bits probed at
radius 1 (t=31) a query makes 272 probes, but at 10M hashes each bucket holds ~150 rows,
so it verifies ~41,600 candidates. With 11 chunks of 23-24 bits probed at radius 2 it makes
~3,000 probes into tables sized to about one row per bucket and verifies ~3,600: about 6x
fewer reads, and 10x the queries/s measured. Each segment takes whichever layout its size
makes cheaper (16 chunks below ~1.5M rows, where few rows per bucket make 272 probes win).

Each chunk table is a counting-sort layout (2**bits + 1 offsets plus a row permutation,
4 bytes per hash per chunk), far smaller than a hash map of lists. The verification
gathers with `np.take`, ~3x faster than fancy indexing for random 32-byte rows, and sums
the four popcounts with one multiply rather than a reduction. A row close to a query is
found through several chunks; repeats are dropped by sorting (query, row) pairs packed into
one int64 in place, before the hashes are read where buckets are crowded (clustered
collections), after verification elsewhere. Large batches are split over the cores no
other task is running on (see `_idle_workers`).

Changes never rebuild the whole index: adds go to a small delta buffer that is scanned
brute force; a full buffer becomes a segment, and segments are merged logarithmically
(a segment is merged into its predecessor once it is at least a quarter of its size),
so an add costs amortised O(log n) row copies. Removals tombstone the row; a segment
whose tombstones pass a quarter of its rows is compacted. None of this is thread-safe:
the owner serialises calls (the node calls it from its event loop).

A merge at 1M rows builds a segment of a million (0.7-2.1 s on this project's 2-core
machine), and inline it ran inside whichever `add_many` filled the delta, under the owner's
lock, so every query waited for it. With `defer_merges` set (matching/matcher.py's Matcher
sets it) changes only tombstone and append, and the owner merges in three steps:
`merge_plan` (under its lock: which segments, and a copy of their alive masks),
`build_merge` (without the lock: segments' rows never change, only their masks), and
`install_merge` (under the lock again: swap the new segment in, tombstoning in it what
died in its sources meanwhile).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_THRESHOLD", "MergePlan", "PDQIndex", "hex_to_words", "words_to_hex"]

DEFAULT_THRESHOLD = 31
_MIN_TABLE_BITS = 4
_MAX_PROBE_RADIUS = 3
# Random reads (probes plus expected candidates, as `_Layout.cost` counts them) per
# vectorised step. Two threads need large steps, which hand the GIL over less often (at 10M
# hashes 1.7x over one thread with ~72k reads a step, 1.3x with ~18k); counting candidates
# and not probes alone keeps a step's gathered rows near the L2 cache at 1M, where each
# probe brings ~15 candidates.
_READS_PER_STEP = 1 << 16
_BUILD_BLOCK = 1 << 18
_DELTA_CAPACITY = 8192
_MERGE_RATIO = 4
_COMPACT_DEAD_FRACTION = 0.25
_PARALLEL_MIN_QUERIES = 32
_PACKED_SORT_MIN = 256  # below this many pairs the plain numpy calls are cheaper
_CROWDED_FACTOR = 4  # buckets this many times fuller than uniform hashes would fill them
_PARALLEL_MIN_ROWS = 200_000
_LOW_HALF = 0 if sys.byteorder == "little" else 1  # of a uint64 viewed as 2 uint32

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


@dataclass(frozen=True)
class _Layout:
    """How the 256 bits are cut into chunks, each with its own table."""

    widths: tuple[int, ...]

    @property
    def chunks(self) -> int:
        return len(self.widths)

    @property
    def starts(self) -> tuple[int, ...]:
        return tuple(itertools.accumulate((0, *self.widths[:-1])))

    def table_bits(self, n: int) -> int:
        """Direct-address table size: about one row per bucket, so a probe reads ~1 row."""
        return max(_MIN_TABLE_BITS, min(min(self.widths), n.bit_length()))

    def cost(self, n: int, threshold: int) -> float:
        """Random reads per query: one per probe plus one per candidate."""
        bits = self.table_bits(n)
        probes = self.chunks * _ball_size(bits, threshold // self.chunks)
        return probes * (1 + n / (1 << bits))


# 16 x 16 bits probed at radius 1 (t=31) is cheapest up to ~1.5M rows; past that, 11 chunks
# of 23-24 bits at radius 2 read ~10x fewer candidates (at 10M: 3.6k vs 41.6k per query).
_LAYOUTS = (_Layout((16,) * 16), _Layout((24, 24, 24, 23, 23, 23, 23, 23, 23, 23, 23)))


def _chunk_key(words: U64Array, start: int, bits: int) -> U64Array:
    """`bits` bits of every row from bit `start` on (they may straddle two words)."""
    i, o = divmod(start, 64)
    mask = np.uint64((1 << bits) - 1)
    w = words[:, i]
    if o + bits <= 64:
        key: U64Array = (w >> np.uint64(64 - o - bits)) & mask
        return key
    low = o + bits - 64
    key = ((w << np.uint64(low)) | (words[:, i + 1] >> np.uint64(64 - low))) & mask
    return key


def _ball_size(bits: int, radius: int) -> int:
    return sum(math.comb(bits, r) for r in range(min(radius, bits) + 1))


@functools.lru_cache(maxsize=64)
def _ball(bits: int, radius: int) -> npt.NDArray[np.int64]:
    """XOR masks of every `bits`-bit pattern with at most `radius` ones (the probe set)."""
    masks = [0]
    for r in range(1, min(radius, bits) + 1):
        for ones in itertools.combinations(range(bits), r):
            masks.append(sum(1 << b for b in ones))
    arr = np.array(masks, dtype=np.int64)
    arr.flags.writeable = False
    return arr


@functools.lru_cache(maxsize=64)
def _probe_set(chunks: int, bits: int, threshold: int) -> tuple[I64Array, npt.NDArray[np.bool_]]:
    """The XOR masks to probe and, per chunk, which of them (generalised pigeonhole).

    Radius r = threshold // chunks in every chunk is enough, but so is any radii r_i with
    sum(r_i + 1) > threshold: if every chunk differed by more than its r_i, the hashes would
    differ by more than the threshold. So chunks * (r + 1) - (threshold + 1) chunks can be
    probed at r - 1 (not at all when r is 0). At t=31 with 11 chunks that is one chunk:
    8% fewer probes and candidates; the 16-chunk layout has no slack at 31.
    """
    radius = threshold // chunks
    flips = _ball(bits, radius)
    slack = chunks * (radius + 1) - (threshold + 1)
    probed = np.ones((chunks, len(flips)), dtype=np.bool_)
    if slack:
        probed[:slack, _ball_size(bits, radius - 1) if radius else 0 :] = False
    probed.flags.writeable = False
    return flips, probed


def _popcount_distance(a: U64Array, b: U64Array) -> npt.NDArray[np.int64]:
    """Hamming distance over the last axis (4 words).

    The four per-word counts are summed by one multiply of their packed uint16s: numpy's
    reduction over a length-4 axis costs ~5x more than the popcount itself.
    """
    counts = np.bitwise_count(np.bitwise_xor(a, b)).astype(np.uint16)
    packed = counts.view(np.uint64)[..., 0]
    dist: npt.NDArray[np.int64] = ((packed * _SUM_LANES) >> np.uint64(48)).astype(np.int64)
    return dist


_SUM_LANES = np.uint64(0x0001_0001_0001_0001)


@functools.lru_cache(maxsize=64)
def _key_weights(layout: _Layout, bits: int) -> npt.NDArray[np.int64]:
    """(256, chunks) matrix turning a row of hash bits into the table keys."""
    w = np.zeros((256, layout.chunks), dtype=np.int64)
    for c, start in enumerate(layout.starts):
        w[start : start + bits, c] = 1 << np.arange(bits - 1, -1, -1, dtype=np.int64)
    w.flags.writeable = False
    return w


def _query_keys(queries: U64Array, layout: _Layout, bits: int) -> npt.NDArray[np.int64]:
    """Table keys of a few queries at once: one unpack and one small matmul."""
    be = np.ascontiguousarray(queries).astype(">u8").view(np.uint8)
    hash_bits = np.unpackbits(be, axis=1).astype(np.int64)
    keys: npt.NDArray[np.int64] = hash_bits @ _key_weights(layout, bits)
    return keys


def _check_words(words: npt.ArrayLike) -> U64Array:
    arr = np.asarray(words)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"PDQ words must have shape (n, 4), got {arr.shape}")
    if arr.dtype != np.uint64:
        raise ValueError(f"PDQ words must be uint64, got {arr.dtype}")
    return np.ascontiguousarray(arr)


@dataclass(eq=False)
class _Segment:
    """Immutable rows plus their chunk tables; only the `alive` mask changes."""

    words: U64Array
    keys: I64Array
    alive: npt.NDArray[np.bool_]
    layout: _Layout
    bits: int  # each chunk table is addressed by the first `bits` bits of its chunk
    offsets: npt.NDArray[np.uint32]  # (chunks * (2**bits + 1),) bucket starts in `rows`
    rows: npt.NDArray[np.uint32]  # (chunks * n,) row ids, chunk by chunk, grouped by bucket
    key_order: npt.NDArray[np.int64] | None  # argsort of keys; None when keys are sorted
    dead: int = 0
    cid: str | None = None  # content id once a checkpoint has named it (checkpoint.py)

    @classmethod
    def build(
        cls, words: U64Array, keys: I64Array, threshold: int, *, argsort: bool = False
    ) -> _Segment:
        """Chunk tables for `words` (rows in key order), in the layout its size makes cheaper.

        Each chunk's rows are grouped by bucket with one in-place sort of (bucket << 32 |
        row) packed into a uint64: numpy's SIMD sort of plain values is ~4x faster than
        `np.argsort` (at 10M rows 0.56 s against 2.3 s a chunk; the 11 chunks' argsorts
        took 51 s on a busy machine), needs no int64 permutation, and leaves rows ascending
        within a bucket, so the layout is a function of the rows alone (a stable order).
        `argsort=True` builds the old way (`bench/startup.py` compares the two).
        """
        n = len(keys)
        layout = min(_LAYOUTS, key=lambda lay: lay.cost(n, threshold))
        if layout.chunks * n >= 1 << 32:
            raise ValueError(f"a segment of {n:,} rows overflows its uint32 row tables")
        bits = layout.table_bits(n)
        buckets = 1 << bits
        offsets = np.empty((layout.chunks, buckets + 1), dtype=np.uint32)
        rows = np.empty(layout.chunks * n, dtype=np.uint32)
        col = np.empty(n, dtype=np.uint32)
        packed = np.empty(0 if argsort else n, dtype=np.uint64)
        row_ids = np.arange(min(n, _BUILD_BLOCK), dtype=np.uint64)
        for c, start in enumerate(layout.starts):
            # Row blocks keep the 64-bit temporaries small: peak memory is the budget at 10M.
            for lo in range(0, n, _BUILD_BLOCK):
                key = _chunk_key(words[lo : lo + _BUILD_BLOCK], start, bits)
                col[lo : lo + len(key)] = key
                if not argsort:
                    block = packed[lo : lo + len(key)]
                    np.left_shift(key, np.uint64(32), out=block)
                    block |= row_ids[: len(key)]
                    block += np.uint64(lo)  # row ids < 2**32 (checked above): no carry
            if argsort:
                rows[c * n : (c + 1) * n] = np.argsort(col)
            else:
                packed.sort()
                # the low 32 bits of each value are its row: no 64-bit temporary
                rows[c * n : (c + 1) * n] = packed.view(np.uint32)[_LOW_HALF::2]
            counts = np.bincount(col, minlength=buckets)
            np.cumsum(counts, out=counts)
            offsets[c, 0] = c * n
            offsets[c, 1:] = counts
            offsets[c, 1:] += np.uint32(c * n)
            del counts
        del col, packed
        sorted_keys = bool(n < 2 or np.all(keys[1:] > keys[:-1]))
        return cls(
            words=words,
            keys=keys,
            alive=np.ones(n, dtype=np.bool_),
            layout=layout,
            bits=bits,
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

    def probing_pays(self, threshold: int) -> bool:
        """Probing beats a linear scan while it reads far fewer candidates than rows."""
        radius = threshold // self.layout.chunks
        if radius > _MAX_PROBE_RADIUS:
            return False
        return self.layout.chunks * _ball_size(self.bits, radius) * 4 <= 1 << self.bits

    def search(self, queries: U64Array, threshold: int) -> tuple[I64Array, I64Array, I64Array]:
        """(query index, key, distance) triples of live rows within threshold.

        Pigeonhole: if two hashes differ in at most `threshold` bits, one of the m chunks
        differs in at most threshold // m of them, so probing each chunk's table with
        every key within that radius finds every match; only the first `bits` bits of a
        chunk address its table, so the probe set is the radius ball in those bits (one
        radius smaller in the chunks the generalised pigeonhole spares, see `_probe_set`).
        """
        m = self.layout.chunks
        flips, probed = _probe_set(m, self.bits, threshold)
        per_query = int(probed.sum())
        n_rows = len(self.keys)
        base = (np.arange(m, dtype=np.int64) * ((1 << self.bits) + 1))[None, :, None]
        step = max(1, int(_READS_PER_STEP // (per_query * (1 + n_rows / (1 << self.bits)))))
        crowded_above = _CROWDED_FACTOR * n_rows / (1 << self.bits) + 1  # candidates per probe
        out_q: list[I64Array] = []
        out_k: list[I64Array] = []
        out_d: list[I64Array] = []
        for s in range(0, len(queries), step):
            q = queries[s : s + step]
            probe = ((_query_keys(q, self.layout, self.bits)[:, :, None] ^ flips) + base)[
                :, probed
            ].reshape(-1)
            starts = np.take(self.offsets, probe).astype(np.int64)
            lengths = np.take(self.offsets, probe + 1) - starts
            hit_probe = np.flatnonzero(lengths)
            if len(hit_probe) == 0:
                continue
            starts, lengths = starts[hit_probe], lengths[hit_probe]
            ends = np.cumsum(lengths)
            total = int(ends[-1])
            pos = np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - lengths), lengths)
            cand = np.take(self.rows, pos)
            if len(q) == 1:
                qid = np.zeros(total, dtype=np.int64)
            else:
                qid = np.repeat(hit_probe // per_query, lengths)
            # A close pair collides in several chunks: keep one of each (query, row). Where
            # buckets are crowded (clustered collections: ~2.3 candidates per distinct pair)
            # that is worth doing before reading the hashes; elsewhere only for the hits.
            crowded = total > crowded_above * len(probe)
            if crowded:
                qid, cand = _distinct_pairs(qid, cand.astype(np.int64), n_rows)
            # np.take copies 32-byte rows ~3x faster than fancy indexing on random rows.
            cand_words = np.take(self.words, cand, axis=0)
            if len(q) == 1:
                dist = _popcount_distance(cand_words, q)
            else:
                dist = _popcount_distance(cand_words, np.take(q, qid, axis=0))
            hit = dist <= threshold
            qid, cand, dist = qid[hit], cand[hit].astype(np.int64), dist[hit]
            if self.dead:
                live = self.alive[cand]
                qid, cand, dist = qid[live], cand[live], dist[live]
            if len(cand) == 0:
                continue
            if not crowded:
                qid, cand, dist = _unique_pairs(qid, cand, dist, n_rows)
            out_q.append(qid + s)
            out_k.append(self.keys[cand])
            out_d.append(dist)
        return _concat(out_q), _concat(out_k), _concat(out_d)


def _nearest_first(qa: I64Array, ka: I64Array, da: I64Array) -> tuple[I64Array, I64Array, I64Array]:
    """Sorted by query, then distance, then key.

    One in-place sort of packed values when they fit in 63 bits (keys under 2**32: store
    row ids), else a lexsort, ~10x slower on the millions of pairs clustered data gives.
    """
    if len(ka) < _PACKED_SORT_MIN or ka.min() < 0 or ka.max() >= 1 << 32 or qa.max() >= 1 << 22:
        order = np.lexsort((ka, da, qa))
        return qa[order], ka[order], da[order]
    packed = (qa << 41) | (da << 32) | ka
    packed.sort()
    return packed >> 41, packed & 0xFFFF_FFFF, (packed >> 32) & 0x1FF


def _sorted_distinct(packed: I64Array) -> I64Array:
    """Sorted in place (numpy's SIMD sort), each value once."""
    packed.sort()
    keep = np.empty(len(packed), dtype=np.bool_)
    keep[:1] = True
    np.not_equal(packed[1:], packed[:-1], out=keep[1:])
    return packed[keep]


def _distinct_pairs(qid: I64Array, row: I64Array, n_rows: int) -> tuple[I64Array, I64Array]:
    """Distinct (query, row) pairs, by one in-place sort of their packed values."""
    packed = _sorted_distinct(qid * max(n_rows, 1) + row)
    return packed // max(n_rows, 1), packed % max(n_rows, 1)


def _unique_pairs(
    qid: I64Array, row: I64Array, dist: I64Array, n_rows: int
) -> tuple[I64Array, I64Array, I64Array]:
    """Distinct (query, row) pairs with their distance.

    A pair's distance is a function of the pair, so (query, row, distance) packed in one
    int64 can be sorted in place: numpy's SIMD sort is ~15x faster on millions of pairs
    than the stable argsort `np.unique(..., return_index=True)` does (crowded, clustered
    collections produce tens of millions of duplicate candidates).
    """
    if len(qid) < _PACKED_SORT_MIN:  # a few hits: fewer numpy calls win
        pair = np.unique(qid * max(n_rows, 1) + row, return_index=True)[1]
        return qid[pair], row[pair], dist[pair]
    packed = _sorted_distinct(((qid * max(n_rows, 1) + row) << 8) | dist)
    pair = packed >> 8
    return pair // max(n_rows, 1), pair % max(n_rows, 1), packed & 0xFF


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


@dataclass(frozen=True)
class MergePlan:
    """Segments to merge into one (one: a compaction) and their alive masks when planned."""

    sources: tuple[_Segment, ...]
    alive: tuple[npt.NDArray[np.bool_], ...]


class PDQIndex:
    """Exact Hamming range search over PDQ hashes, keyed by integer (the store's row id).

    A key holds one hash; adding a key that is present replaces its hash.
    """

    def __init__(self, threshold: int = DEFAULT_THRESHOLD) -> None:
        self.threshold = threshold
        self._segments: list[_Segment] = []
        self._delta = _Delta()
        self._count = 0
        # True: merges and compactions wait for merge_plan/build_merge/install_merge.
        self.defer_merges = False

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
            self._add_to_delta(key_arr, words)
            return
        # Keys usually arrive sorted (store row ids): then skip the argsort and its copies,
        # which at 10M would be 160 MB of temporaries on top of the index being built.
        if np.all(key_arr[1:] > key_arr[:-1]):
            if isinstance(hashes, np.ndarray):  # parsed hex is ours already: no second copy
                words = np.array(words, copy=True)
            key_arr = key_arr.copy()
        else:
            order = np.argsort(key_arr, kind="stable")
            key_arr = key_arr[order]
            if np.any(key_arr[1:] == key_arr[:-1]):
                raise ValueError("add_many: duplicate keys in one call")
            words = words[order]
            del order
        if self._count:
            self._remove_many(key_arr)
        self._segments.append(_Segment.build(words, key_arr, self.threshold))
        self._count += len(key_arr)
        self._rebalance()

    def _add_to_delta(self, keys: I64Array, words: U64Array) -> None:
        """A few adds into the delta, the keys already present removed in one vectorised
        pass (a replica following a sync adds a page of them at a time: one lookup per key
        and segment cost it a fifth of its time)."""
        distinct = np.unique(keys)
        repeated = len(distinct) < len(keys)  # a key twice in one call: the last hash holds
        if self._count and not repeated:
            self._remove_many(distinct)
        for at, k in enumerate(keys.tolist()):
            if repeated:
                self.remove(k)
            if self._delta.full():
                self._flush_delta()
            self._delta.append(k, words[at])
            self._count += 1

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

    def remove_many(self, keys: Sequence[int] | npt.ArrayLike) -> int:
        """Forget many keys at once; returns how many of them were present.

        One vectorised lookup per segment instead of one per key and segment: revoking
        100,000 hashes one `remove` at a time held PDQ matching for the whole ingest.
        Duplicates and absent keys are allowed (counted once, and not at all).
        """
        key_arr = np.unique(np.asarray(keys, dtype=np.int64).reshape(-1))
        if len(key_arr) == 0 or self._count == 0:
            return 0
        return self._remove_many(key_arr)

    def _remove_many(self, keys: I64Array) -> int:
        """`remove_many` on sorted distinct keys."""
        removed = 0
        if self._delta.rows:
            for k in keys[np.isin(keys, self._delta.keys[: self._delta.size])].tolist():
                removed += self._delta.remove(k)
        for seg in list(self._segments):
            rows = seg.locate(keys)
            rows = rows[rows >= 0]
            if len(rows):
                seg.alive[rows] = False
                seg.dead += len(rows)
                removed += len(rows)
                if seg.dead > _COMPACT_DEAD_FRACTION * len(seg):
                    self._compact(seg)
        self._count -= removed
        return removed

    def digest(self) -> tuple[int, int]:
        """(live keys, sum of live keys mod 2**63): what a checkpoint is verified by.

        The store answers the same with `SELECT count(*), sum(id)` over its live PDQ rows,
        so a loaded index is checked against the rows without reading them. Summed as
        uint64 (wrapping mod 2**64, which 2**63 divides), so negative keys agree with
        Python's `sum(keys) % 2**63`.
        """
        total = 0
        for seg in self._segments:
            total += int(np.sum(seg.keys.view(np.uint64), where=seg.alive, dtype=np.uint64))
        d = self._delta
        live = d.keys[: d.size].view(np.uint64)
        total += int(np.sum(live, where=d.alive[: d.size], dtype=np.uint64))
        return self._count, total % (1 << 63)

    def _flush_delta(self) -> None:
        words, keys = self._delta.live()
        self._delta = _Delta()
        if len(keys):
            order = np.argsort(keys, kind="stable")
            self._segments.append(_Segment.build(words[order], keys[order], self.threshold))
            self._rebalance()

    def _compact(self, seg: _Segment) -> None:
        if self.defer_merges:
            return
        i = self._segments.index(seg)
        words, keys = seg.live()
        self._segments[i] = _Segment.build(words, keys, self.threshold)
        self._segments.sort(key=len, reverse=True)
        self._rebalance()

    def _rebalance(self) -> None:
        segs = self._segments
        segs.sort(key=len, reverse=True)
        while (
            not self.defer_merges
            and len(segs) >= 2
            and len(segs[-1]) * _MERGE_RATIO >= len(segs[-2])
        ):
            b, a = segs.pop(), segs.pop()
            wa, ka = a.live()
            wb, kb = b.live()
            keys = np.concatenate([ka, kb])
            order = np.argsort(keys, kind="stable")
            segs.append(
                _Segment.build(np.concatenate([wa, wb])[order], keys[order], self.threshold)
            )
            segs.sort(key=len, reverse=True)

    # -- merges outside the owner's lock (defer_merges) -------------------------------------

    def merge_plan(self) -> MergePlan | None:
        """The next merge or compaction due (the rules `_rebalance` and `_compact` apply
        inline), or None. Cheap: masks are copied, rows are not."""
        for seg in self._segments:
            if seg.dead > _COMPACT_DEAD_FRACTION * len(seg):
                return MergePlan((seg,), (seg.alive.copy(),))
        segs = sorted(self._segments, key=len, reverse=True)
        if len(segs) >= 2 and len(segs[-1]) * _MERGE_RATIO >= len(segs[-2]):
            pair = (segs[-2], segs[-1])
            return MergePlan(pair, tuple(seg.alive.copy() for seg in pair))
        return None

    def build_merge(self, plan: MergePlan) -> _Segment | None:
        """The segment replacing `plan`'s sources (None: no row was live). Needs no lock:
        it reads only rows (never changed) and the masks the plan copied."""
        words = [seg.words[mask] for seg, mask in zip(plan.sources, plan.alive, strict=True)]
        keys = [seg.keys[mask] for seg, mask in zip(plan.sources, plan.alive, strict=True)]
        key_arr = np.concatenate(keys) if len(keys) > 1 else keys[0]
        if len(key_arr) == 0:
            return None
        word_arr = np.concatenate(words) if len(words) > 1 else words[0]
        if len(keys) > 1:
            order = np.argsort(key_arr, kind="stable")
            key_arr, word_arr = key_arr[order], word_arr[order]
        return _Segment.build(word_arr, key_arr, self.threshold)

    def install_merge(self, plan: MergePlan, built: _Segment | None) -> bool:
        """Swap `built` in for `plan`'s sources (under the owner's lock), tombstoning the
        rows that died in them since the plan; False if a source is no longer here."""
        here = {id(seg) for seg in self._segments}
        if any(id(seg) not in here for seg in plan.sources):
            return False
        if built is not None:
            for seg, mask in zip(plan.sources, plan.alive, strict=True):
                gone = seg.keys[mask & ~seg.alive]
                if len(gone):
                    rows = built.locate(np.sort(gone))
                    rows = rows[rows >= 0]
                    built.alive[rows] = False
                    built.dead += len(rows)
        sources = {id(seg) for seg in plan.sources}
        # A new list, not changed in place: a checkpoint capture iterating the old one
        # (matching/checkpoint.py snapshot) sees the segments before or after, whole.
        segs = [seg for seg in self._segments if id(seg) not in sources]
        if built is not None and len(built) > built.dead:
            segs.append(built)
        segs.sort(key=len, reverse=True)
        self._segments = segs
        return True

    # -- queries ---------------------------------------------------------------------------

    def query(self, pdq_hex: str, threshold: int | None = None) -> list[tuple[int, int]]:
        """(key, distance) pairs within threshold, nearest first (ties by key)."""
        return self.query_many([pdq_hex], threshold)[0]

    def query_many(
        self,
        pdq_hexes: Sequence[str] | U64Array,
        threshold: int | None = None,
        limit: int | None = None,
    ) -> list[list[tuple[int, int]]]:
        """One result list per query, each as `query` returns it; vectorised across queries.

        `limit` keeps only each query's nearest that many: a clustered collection can put
        thousands of rows within reach of one hash, and turning them all into Python
        tuples costs more than finding them.
        """
        t = self.threshold if threshold is None else int(threshold)
        if not 0 <= t <= 255:
            raise ValueError(f"threshold must be within 0..255, got {t}")
        if isinstance(pdq_hexes, np.ndarray):
            queries = _check_words(pdq_hexes)
        else:
            queries = hex_to_words(list(pdq_hexes))
        qa, ka, da = _nearest_first(*self._search_parallel(queries, t))
        out: list[list[tuple[int, int]]] = [[] for _ in range(len(queries))]
        bounds = np.searchsorted(qa, np.arange(len(queries) + 1))
        kl, dl = ka.tolist(), da.tolist()
        for i in range(len(queries)):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            if limit is not None:
                hi = min(hi, lo + limit)
            if hi > lo:
                out[i] = list(zip(kl[lo:hi], dl[lo:hi], strict=True))
        return out

    def search(
        self, words: U64Array, threshold: int | None = None
    ) -> tuple[I64Array, I64Array, I64Array]:
        """Every (query row, key, distance) within threshold, in no order: for callers that
        aggregate the hits themselves (the vPDQ index counts them per video), so neither the
        nearest-first sort nor a Python tuple per hit is paid for."""
        t = self.threshold if threshold is None else int(threshold)
        if not 0 <= t <= 255:
            raise ValueError(f"threshold must be within 0..255, got {t}")
        return self._search_parallel(_check_words(words), t)

    def _search_parallel(self, queries: U64Array, t: int) -> tuple[I64Array, I64Array, I64Array]:
        """Split a large batch over the idle cores: the gathers release the GIL."""
        if len(queries) < _PARALLEL_MIN_QUERIES or self._count < _PARALLEL_MIN_ROWS:
            return self._search(queries, t)
        workers = _idle_workers()  # reads /proc: only for batches worth splitting
        if workers < 2:
            return self._search(queries, t)
        bounds = np.linspace(0, len(queries), workers + 1).astype(int).tolist()
        slices = list(itertools.pairwise(bounds))
        parts = list(
            _executor(workers).map(lambda b: self._search(queries[b[0] : b[1]], t), slices)
        )
        return (
            np.concatenate([q + lo for (q, _, _), (lo, _) in zip(parts, slices, strict=True)]),
            np.concatenate([k for _, k, _ in parts]),
            np.concatenate([d for _, _, d in parts]),
        )

    def _search(self, queries: U64Array, t: int) -> tuple[I64Array, I64Array, I64Array]:
        qs, ks, ds = [], [], []
        for seg in self._segments:
            if seg.probing_pays(t):
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
        return np.concatenate(qs), np.concatenate(ks), np.concatenate(ds)


def _idle_workers() -> int:
    """Cores a batch may use: those no other task is running on right now (at least one).

    Measured at 10M hashes: with the other core idle two threads give 1.7x; with it
    already busy they lose 1.1-2.7x (the numpy calls of each step serialise on the GIL and
    wait for a descheduled thread), so busy cores are left alone. The kernel's count of
    runnable tasks (4th field of /proc/loadavg) says what is busy now, and counts the
    calling thread; the 1-minute load average lags a minute behind and, in a node that was
    just busy matching, counts the node itself.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
        with open("/proc/loadavg", "rb") as f:
            running = int(f.read().split()[3].split(b"/")[0])
    except (AttributeError, OSError, ValueError, IndexError):
        return 1
    return max(1, min(cpus, cpus - (running - 1)))


_EXECUTORS: dict[int, ThreadPoolExecutor] = {}


def _executor(workers: int) -> ThreadPoolExecutor:
    if workers not in _EXECUTORS:
        _EXECUTORS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="pdq-query")
    return _EXECUTORS[workers]


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
