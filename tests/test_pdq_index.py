"""PDQIndex must equal brute force exactly: recall 1.0 and no result beyond the threshold."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from testdata import PDQ

from hashmesh.node.matching import pdq_index
from hashmesh.node.matching.pdq_index import PDQIndex, hex_to_words, words_to_hex

Result = list[tuple[int, int]]


def brute(words: np.ndarray, keys: np.ndarray, queries: np.ndarray, t: int) -> list[Result]:
    out: list[Result] = []
    for q in queries:
        d = np.bitwise_count(words ^ q).sum(axis=1)
        hit = np.nonzero(d <= t)[0]
        out.append(
            sorted(
                zip(keys[hit].tolist(), d[hit].tolist(), strict=True), key=lambda r: (r[1], r[0])
            )
        )
    return out


def flip(rng: np.random.Generator, w: np.ndarray, bits: int) -> np.ndarray:
    w = w.copy()
    for b in rng.choice(256, bits, replace=False):
        w[b // 64] ^= np.uint64(1) << np.uint64(int(b) % 64)
    return w


def planted(
    rng: np.random.Generator, n: int, per_distance: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Random stored hashes, and queries at each distance 0..40 from some of them."""
    words = rng.integers(0, 2**64, size=(n, 4), dtype=np.uint64)
    queries = [flip(rng, words[rng.integers(n)], d) for d in range(41) for _ in range(per_distance)]
    queries += list(rng.integers(0, 2**64, size=(20, 4), dtype=np.uint64))
    return words, np.array(queries, dtype=np.uint64)


def test_hex_round_trip() -> None:
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**64, size=(50, 4), dtype=np.uint64)
    hexes = words_to_hex(words)
    assert all(len(h) == 64 and h == h.lower() for h in hexes)
    assert np.array_equal(hex_to_words(hexes), words)
    assert np.array_equal(hex_to_words([h.upper() for h in hexes]), words)
    for bad in ("0" * 63, "z" * 64, "0" * 65):
        with pytest.raises(ValueError):
            hex_to_words([bad])


@pytest.mark.parametrize("layout", pdq_index._LAYOUTS, ids=lambda lay: f"{lay.chunks}chunks")
@pytest.mark.parametrize("threshold", [0, 15, 31, 33, 40, 44])
def test_random_with_planted_neighbours_equals_brute_force(
    threshold: int, layout: pdq_index._Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both chunk layouts, at radii 0-3 and past them (44 // 11 = 4: linear scan)."""
    monkeypatch.setattr(pdq_index, "_LAYOUTS", (layout,))
    monkeypatch.setattr(pdq_index, "_idle_workers", lambda: 2)  # batches take the threaded path
    rng = np.random.default_rng(threshold)
    words, queries = planted(rng, 200_000)
    keys = np.arange(1_000, 1_000 + len(words), dtype=np.int64) * 3  # keys are not row numbers
    index = PDQIndex()
    index.add_many(keys, words)
    assert len(index) == len(words)
    assert index._segments[0].layout == layout
    expected = brute(words, keys, queries, threshold)
    got = index.query_many(words_to_hex(queries), threshold)
    assert got == expected
    assert sum(map(len, expected)) >= 3 * min(threshold + 1, 41)  # the planted ones were found
    # single queries agree with the batch
    qhex = words_to_hex(queries[::7])
    assert [index.query(h, threshold) for h in qhex] == expected[::7]


def test_clustered_hashes_with_crowded_buckets() -> None:
    """Many near-identical hashes (near-blank images) pile into a few buckets."""
    rng = np.random.default_rng(8)
    centres = rng.integers(0, 2**64, size=(40, 4), dtype=np.uint64)
    blank = np.zeros((1, 4), dtype=np.uint64)
    base = np.concatenate([centres[rng.integers(0, 40, 45_000)], np.repeat(blank, 5_000, 0)])
    words = np.array([flip(rng, w, int(rng.integers(0, 20))) for w in base], dtype=np.uint64)
    words[:100] = words[100:200]  # exact duplicates under different keys
    keys = rng.permutation(10**6)[: len(words)].astype(np.int64)  # unsorted keys
    index = PDQIndex()
    index.add_many(keys, words)
    queries = np.concatenate([words[:: len(words) // 60], centres[:10], blank])
    expected = brute(words, keys, queries, 31)
    assert index.query_many(queries) == expected
    assert max(map(len, expected)) > 1000


def test_layout_choice_follows_size() -> None:
    """The cost model picks 16 chunks for small segments and 11 for large ones."""
    small, large = (
        min(pdq_index._LAYOUTS, key=lambda lay: lay.cost(n, 31)) for n in (10**5, 10**7)
    )
    assert (small.chunks, large.chunks) == (16, 11)
    for layout in pdq_index._LAYOUTS:
        assert sum(layout.widths) == 256


def test_default_threshold_is_31() -> None:
    rng = np.random.default_rng(5)
    words = rng.integers(0, 2**64, size=(1000, 4), dtype=np.uint64)
    index = PDQIndex()
    index.add_many(np.arange(1000), words)
    q31, q32 = flip(rng, words[7], 31), flip(rng, words[7], 32)
    assert index.query(words_to_hex(q31[None])[0]) == [(7, 31)]
    assert index.query(words_to_hex(q32[None])[0]) == []


@pytest.mark.parametrize("threshold", [10, 31, 40])
def test_real_haystack_and_needles(threshold: int) -> None:
    d = PDQ
    haystack = [h.strip() for h in (d / "haystack.txt").read_text().split() if h.strip()]
    needles = [h.strip() for h in (d / "needles.txt").read_text().split() if h.strip()]
    words = hex_to_words(haystack)
    keys = np.arange(len(haystack), dtype=np.int64)
    index = PDQIndex()
    index.add_many(keys, haystack)
    expected = brute(words, keys, hex_to_words(needles), threshold)
    assert index.query_many(needles, threshold) == expected
    if threshold == 31:
        assert sum(1 for r in expected if r) > 0
    # the same through one-at-a-time adds (delta buffer and flushed segments)
    one_by_one = PDQIndex()
    for k, h in enumerate(haystack):
        one_by_one.add(k, h)
    assert one_by_one.query_many(needles, threshold) == expected


def test_incremental_add_remove_and_re_add(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdq_index, "_DELTA_CAPACITY", 64)  # force flushes, merges, compaction
    rng = np.random.default_rng(11)
    words = rng.integers(0, 2**64, size=(3000, 4), dtype=np.uint64)
    hexes = words_to_hex(words)
    index = PDQIndex()
    index.add_many(np.arange(1000), words[:1000])
    for k in range(1000, 3000):
        index.add(k, hexes[k])
    assert len(index) == 3000 and 2999 in index and 3000 not in index
    removed = set(rng.choice(3000, 1200, replace=False).tolist())
    for k in removed:
        assert index.remove(k)
        assert not index.remove(k)
    assert len(index) == 1800
    for k in list(removed)[:200]:
        assert k not in index
        assert all(key != k for key, _ in index.query(hexes[k]))
    live = np.array(sorted(set(range(3000)) - removed))
    queries = np.array([flip(rng, words[i], int(rng.integers(0, 36))) for i in range(0, 3000, 10)])
    assert index.query_many(words_to_hex(queries)) == brute(words[live], live, queries, 31)
    # re-add some removed keys, one with a different hash
    back = sorted(removed)[:50]
    for k in back:
        index.add(k, hexes[k])
    assert all(k in index for k in back)
    assert index.query(hexes[back[0]])[0] == (back[0], 0)
    index.add(back[1], hexes[0])  # replace: the old hash no longer finds it
    assert all(key != back[1] for key, _ in index.query(hexes[back[1]]))
    assert (back[1], 0) in index.query(hexes[0])
    assert len(index) == 1850


def test_add_many_replaces_existing_keys_and_rejects_duplicates() -> None:
    rng = np.random.default_rng(3)
    words = rng.integers(0, 2**64, size=(5000, 4), dtype=np.uint64)
    index = PDQIndex()
    index.add_many(np.arange(5000), words)
    other = rng.integers(0, 2**64, size=(5000, 4), dtype=np.uint64)
    index.add_many(np.arange(2500, 7500), other)
    assert len(index) == 7500
    assert index.query(words_to_hex(words[3000:3001])[0], 0) == []
    assert index.query(words_to_hex(other[:1])[0], 0) == [(2500, 0)]
    with pytest.raises(ValueError):
        index.add_many([1, 1] * 2000, np.zeros((4000, 4), dtype=np.uint64))
    with pytest.raises(ValueError):
        index.add_many([1, 2], np.zeros((3, 4), dtype=np.uint64))
    with pytest.raises(ValueError):
        index.add_many([1], np.zeros((1, 4), dtype=np.int64))


def test_small_add_many_replaces_keys_in_segments_and_delta() -> None:
    """A feed page's few adds take the delta path: keys already held, in a segment or in
    the delta, are replaced, and a key twice in one call keeps its last hash."""
    rng = np.random.default_rng(4)
    words = rng.integers(0, 2**64, size=(5000, 4), dtype=np.uint64)
    index = PDQIndex()
    index.add_many(np.arange(5000), words)  # one segment
    index.add_many([7000, 7001], words[:2] ^ np.uint64(1))  # into the delta
    new = rng.integers(0, 2**64, size=(4, 4), dtype=np.uint64)
    index.add_many([10, 7000, 8000, 8000], new)
    assert len(index) == 5003
    assert index.query(words_to_hex(words[10:11])[0], 0) == []
    assert index.query(words_to_hex(new[:1])[0], 0) == [(10, 0)]
    assert index.query(words_to_hex(new[1:2])[0], 0) == [(7000, 0)]
    assert index.query(words_to_hex(new[2:3])[0], 0) == []
    assert index.query(words_to_hex(new[3:4])[0], 0) == [(8000, 0)]
    assert index.digest() == (5003, (sum(range(5000)) + 7000 + 7001 + 8000) % 2**63)


def test_empty_index_and_bad_input() -> None:
    index = PDQIndex()
    assert len(index) == 0 and 5 not in index and "5" not in index
    assert index.query("0" * 64) == []
    assert index.query_many([]) == []
    assert not index.remove(5)
    with pytest.raises(ValueError):
        index.query("0" * 32)
    with pytest.raises(ValueError):
        index.query("0" * 64, threshold=300)


hash_words = st.lists(st.integers(0, 2**64 - 1), min_size=4, max_size=4)


@settings(max_examples=60, deadline=None)
@given(
    base=st.lists(hash_words, min_size=1, max_size=40),
    edits=st.lists(
        st.tuples(st.integers(0, 39), st.sets(st.integers(0, 255), max_size=45)), max_size=40
    ),
    removals=st.sets(st.integers(0, 80), max_size=20),
    threshold=st.integers(0, 50),
)
def test_property_matches_brute_force(
    base: list[list[int]],
    edits: list[tuple[int, set[int]]],
    removals: set[int],
    threshold: int,
) -> None:
    """Stored hashes are random plus near copies; queries are the stored ones and near copies."""
    words = [np.array(w, dtype=np.uint64) for w in base]
    for i, bits in edits:
        w = words[i % len(base)].copy()
        for b in bits:
            w[b // 64] ^= np.uint64(1) << np.uint64(b % 64)
        words.append(w)
    arr = np.array(words, dtype=np.uint64)
    keys = np.arange(len(arr), dtype=np.int64)
    index = PDQIndex()
    half = len(arr) // 2
    index.add_many(keys[:half], arr[:half])
    for k in range(half, len(arr)):
        index.add(k, words_to_hex(arr[k : k + 1])[0])
    live = np.array([k for k in keys if k not in removals], dtype=np.int64)
    for k in removals:
        assert index.remove(k) == (k < len(arr))
    assert len(index) == len(live)
    got = index.query_many(arr, threshold)
    assert got == brute(arr[live], live, arr, threshold)


@pytest.mark.parametrize("key_offset", [0, 2**32 - 60, 2**40])
def test_keys_beyond_32_bits_sort_the_same_way(key_offset: int) -> None:
    """Results are ordered by distance then key whichever way they are sorted internally."""
    rng = np.random.default_rng(12)
    words = rng.integers(0, 2**64, size=(2_000, 4), dtype=np.uint64)
    words[1000:1600] = words[:600]  # ties in distance, broken by key
    keys = rng.permutation(2_000).astype(np.int64) + key_offset
    index = PDQIndex()
    index.add_many(keys, words)
    # 600 pairs: enough for the packed sort where the keys fit in 32 bits
    queries = np.concatenate([words[:300], rng.integers(0, 2**64, size=(10, 4), dtype=np.uint64)])
    assert index.query_many(queries) == brute(words, keys, queries, 31)


def test_remove_many_counts_live_keys_and_matches_brute_force(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bulk removal over segments and the delta; duplicates and absent keys count 0."""
    monkeypatch.setattr(pdq_index, "_DELTA_CAPACITY", 256)
    rng = np.random.default_rng(21)
    words = rng.integers(0, 2**64, size=(6000, 4), dtype=np.uint64)
    index = PDQIndex()
    index.add_many(np.arange(5000), words[:5000])
    for k in range(5000, 6000):  # delta and small flushed segments
        index.add(k, words_to_hex(words[k : k + 1])[0])
    gone = rng.choice(6000, 900, replace=False)
    asked = np.concatenate([gone, gone[:50], np.arange(6000, 6100), [-5]])
    assert index.remove_many(asked.tolist()) == 900
    assert index.remove_many(gone) == 0
    assert index.remove_many([]) == 0
    assert len(index) == 5100
    live = np.setdiff1d(np.arange(6000), gone)
    queries = np.concatenate([words[::40], words[gone[:30]]])
    assert index.query_many(queries) == brute(words[live], live, queries, 31)
    # compaction: removing most of the big segment rebuilds it, still exact
    assert index.remove_many(np.arange(0, 4000)) == len(np.setdiff1d(np.arange(4000), gone))
    live = np.setdiff1d(live, np.arange(4000))
    assert len(index) == len(live)
    assert index.query_many(queries) == brute(words[live], live, queries, 31)
    assert index.digest() == (len(live), int(live.sum()) % 2**63)


def test_digest_counts_and_sums_live_keys() -> None:
    index = PDQIndex()
    assert index.digest() == (0, 0)
    rng = np.random.default_rng(22)
    words = rng.integers(0, 2**64, size=(3000, 4), dtype=np.uint64)
    keys = np.arange(3000, dtype=np.int64) + 2**62  # the sum wraps past 2**63
    index.add_many(keys, words)
    index.add(-7, words_to_hex(words[:1])[0])
    index.remove(int(keys[5]))
    live = [int(k) for k in keys if k != keys[5]] + [-7]
    assert index.digest() == (3000, sum(live) % 2**63)


@pytest.mark.parametrize("n", [1, 3000, 70_000])
def test_packed_sort_build_equals_argsort_build(n: int) -> None:
    """Same offsets, same rows in every bucket; the new build's rows ascend within one."""
    rng = np.random.default_rng(n)
    words = rng.integers(0, 2**64, size=(n, 4), dtype=np.uint64)
    words[n // 2 :] = words[: n - n // 2] ^ np.uint64(1)  # shared buckets, near copies
    keys = np.arange(n, dtype=np.int64) * 5
    for layout in pdq_index._LAYOUTS:
        old_lay = pdq_index._LAYOUTS
        pdq_index._LAYOUTS = (layout,)
        try:
            old = pdq_index._Segment.build(words, keys, 31, argsort=True)
            new = pdq_index._Segment.build(words, keys, 31)
        finally:
            pdq_index._LAYOUTS = old_lay
        assert (old.layout, old.bits) == (new.layout, new.bits) == (layout, new.bits)
        assert np.array_equal(old.offsets, new.offsets)
        buckets = (1 << new.bits) + 1
        for c in range(layout.chunks):
            off = new.offsets[c * buckets : (c + 1) * buckets].astype(np.int64)
            bucket = np.repeat(np.arange(buckets - 1, dtype=np.int64), np.diff(off))
            lo, hi = int(off[0]), int(off[-1])
            assert (lo, hi) == (c * n, (c + 1) * n)
            new_pairs = (bucket << 32) | new.rows[lo:hi].astype(np.int64)
            old_pairs = np.sort((bucket << 32) | old.rows[lo:hi].astype(np.int64))
            assert np.array_equal(new_pairs, old_pairs)
            assert np.all(np.diff(new_pairs) > 0)  # ascending rows within a bucket
        queries = np.concatenate([words[:: max(1, n // 50)], flip(rng, words[0], 20)[None]])
        assert np.array_equal(
            np.sort(new.search(queries, 31)[1]), np.sort(old.search(queries, 31)[1])
        )


def test_search_never_writes_into_segment_arrays() -> None:
    """Checkpoints map segments read-only: queries and removals must not write into them."""
    rng = np.random.default_rng(23)
    words = rng.integers(0, 2**64, size=(20_000, 4), dtype=np.uint64)
    keys = np.arange(20_000, dtype=np.int64)
    index = PDQIndex()
    index.add_many(keys, words)
    for seg in index._segments:
        for arr in (seg.words, seg.keys, seg.offsets, seg.rows):
            arr.flags.writeable = False
    queries = np.concatenate([words[:200], rng.integers(0, 2**64, size=(50, 4), dtype=np.uint64)])
    assert index.remove_many(np.arange(0, 20_000, 7)) == len(range(0, 20_000, 7))
    live = np.setdiff1d(keys, np.arange(0, 20_000, 7))
    for t in (10, 31, 44):
        assert index.query_many(queries, t) == brute(words[live], live, queries, t)


def test_deferred_merge_keeps_what_changed_between_plan_and_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A merge planned, then built while keys are revoked and replaced, then installed:
    the index answers as brute force over what is live at the end (the merged segment
    tombstones what died in its sources after the plan), and nothing merges inline."""
    monkeypatch.setattr(pdq_index, "_DELTA_CAPACITY", 64)
    rng = np.random.default_rng(18)
    words = rng.integers(0, 2**64, size=(4000, 4), dtype=np.uint64)
    index = PDQIndex()
    index.defer_merges = True
    for start in range(0, 4000, 500):  # eight segments of 500, none merged inline
        index.add_many(np.arange(start, start + 500), words[start : start + 500])
    assert sorted(len(s) for s in index._segments) == [500] * 8
    live = set(range(4000))
    installed = 0
    while (plan := index.merge_plan()) is not None:
        # between the plan and the install: revoke some of the sources' keys, and
        # replace one with another hash (the add tombstones its old row)
        source_keys = np.concatenate(
            [s.keys[m] for s, m in zip(plan.sources, plan.alive, strict=True)]
        )
        gone = rng.choice(source_keys, 20, replace=False).tolist()
        index.remove_many(gone[:19])
        live -= set(gone[:19])
        replaced = gone[19]
        words[replaced] = rng.integers(0, 2**64, size=4, dtype=np.uint64)
        index.add(replaced, words_to_hex(words[replaced : replaced + 1])[0])
        built = index.build_merge(plan)
        assert index.install_merge(plan, built)
        assert not index.install_merge(plan, built)  # its sources are gone now
        installed += 1
    assert installed >= 7
    keys = np.array(sorted(live))
    assert len(index) == len(keys)
    assert index.digest() == (len(keys), int(keys.sum()) % (1 << 63))
    queries = np.array([flip(rng, words[k], int(rng.integers(0, 36))) for k in keys[::25]])
    queries = np.concatenate([queries, words[[gone[0], replaced]]])
    assert index.query_many(words_to_hex(queries)) == brute(words[keys], keys, queries, 31)


def test_deferred_compaction_drops_dead_rows() -> None:
    rng = np.random.default_rng(19)
    words = rng.integers(0, 2**64, size=(3000, 4), dtype=np.uint64)
    index = PDQIndex()
    index.defer_merges = True
    index.add_many(np.arange(3000), words)
    index.remove_many(np.arange(1000))  # a third dead: compaction due, not made inline
    assert [len(s) for s in index._segments] == [3000]
    plan = index.merge_plan()
    assert plan is not None and len(plan.sources) == 1
    assert index.install_merge(plan, index.build_merge(plan))
    assert [len(s) for s in index._segments] == [2000] and len(index) == 2000
    index.remove_many(np.arange(1000, 3000))
    plan = index.merge_plan()
    assert plan is not None
    assert index.build_merge(plan) is None  # nothing live: the segment just goes
    assert index.install_merge(plan, None)
    assert index._segments == [] and len(index) == 0
