"""PDQ index checkpoints: exact round trips, reuse of segment files, refusal of bad files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_pdq_index import brute, flip

from hashmesh.node.matching import checkpoint, pdq_index
from hashmesh.node.matching.checkpoint import read_checkpoint, write_checkpoint
from hashmesh.node.matching.pdq_index import PDQIndex, words_to_hex

Words = np.ndarray


def build(rng: np.random.Generator, n: int) -> tuple[PDQIndex, Words, np.ndarray]:
    """A big bulk segment, a few flushed small ones, a part-full delta, and tombstones."""
    words = rng.integers(0, 2**64, size=(n, 4), dtype=np.uint64)
    keys = np.arange(n, dtype=np.int64) * 3 + 7
    index = PDQIndex()
    bulk = n - 3000
    index.add_many(keys[:bulk], words[:bulk])
    hexes = words_to_hex(words[bulk:])
    for k, h in zip(keys[bulk:].tolist(), hexes, strict=True):
        index.add(k, h)
    gone = rng.choice(keys, n // 10, replace=False)
    assert index.remove_many(gone) == len(gone)
    live = np.isin(keys, gone, invert=True)
    return index, words[live], keys[live]


def queries_for(rng: np.random.Generator, words: Words) -> Words:
    picks = words[rng.integers(0, len(words), 60)]
    near = [flip(rng, w, int(rng.integers(0, 36))) for w in picks]
    return np.concatenate([picks, np.array(near), rng.integers(0, 2**64, (10, 4), np.uint64)])


@pytest.fixture(autouse=True)
def small_delta(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pdq_index, "_DELTA_CAPACITY", 1024)  # flushes: several segments


def test_round_trip_is_exact_and_mapped_read_only(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    index, words, keys = build(rng, 40_000)
    assert len(index._segments) >= 2 and index._delta.size > 0
    d = tmp_path / "home" / "index" / "pdq"
    write_checkpoint(d, index, 1234)
    loaded = read_checkpoint(d)
    assert loaded is not None
    got, cursor = loaded
    assert cursor == 1234
    assert got.digest() == index.digest() == (len(keys), int(keys.sum()) % 2**63)
    q = queries_for(rng, words)
    expected = brute(words, keys, q, 31)
    assert got.query_many(q) == index.query_many(q) == expected
    for seg in got._segments:
        for arr in (seg.words, seg.keys, seg.offsets, seg.rows):
            assert isinstance(arr.base, np.memmap) and not arr.flags.writeable
        assert seg.alive.flags.writeable
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for f in d.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
    # the loaded index takes changes like any other: removals, adds, flushes, merges
    assert got.remove_many(keys[:500]) == 500
    extra = rng.integers(0, 2**64, size=(3000, 4), dtype=np.uint64)
    for i, h in enumerate(words_to_hex(extra)):
        got.add(10**9 + i, h)
    all_words = np.concatenate([words[500:], extra])
    all_keys = np.concatenate([keys[500:], 10**9 + np.arange(3000)])
    q = queries_for(rng, all_words)
    assert got.query_many(q) == brute(all_words, all_keys, q, 31)


def test_second_checkpoint_reuses_segment_files_and_removes_stale_ones(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    index, words, keys = build(rng, 30_000)
    write_checkpoint(tmp_path, index, 10)
    first = json.loads((tmp_path / "manifest.json").read_text())
    big = max(first["segments"], key=lambda s: s["rows"])
    big_file = tmp_path / big["files"]["rows"]["name"]
    inode = big_file.stat().st_ino
    loaded = read_checkpoint(tmp_path)
    assert loaded is not None
    got = loaded[0]
    got.remove_many(keys[:100])
    for i, h in enumerate(words_to_hex(rng.integers(0, 2**64, (2500, 4), np.uint64))):
        got.add(10**9 + i, h)  # flushes: new small segments, merges of the small ones
    write_checkpoint(tmp_path, got, 20)
    second = json.loads((tmp_path / "manifest.json").read_text())
    assert big["id"] in [s["id"] for s in second["segments"]]
    assert big_file.stat().st_ino == inode  # not rewritten
    named = {e["name"] for s in second["segments"] for e in s["files"].values()}
    named |= {e["name"] for e in second["files"].values()}
    on_disk = {f.name for f in tmp_path.iterdir()} - {"manifest.json", ".lock"}
    assert on_disk == named  # the first checkpoint's own files are gone
    # the first load still works on its mapped (possibly unlinked) files
    q = queries_for(rng, words)
    assert got.query_many(q) == got.query_many(q)
    again = read_checkpoint(tmp_path, verify_content=True)
    assert again is not None and again[1] == 20
    assert again[0].digest() == got.digest()
    assert again[0].query_many(q) == got.query_many(q)


def test_process_keeps_its_mapped_files_after_they_are_removed(tmp_path: Path) -> None:
    """Linux unlink semantics: the old files live while mapped."""
    rng = np.random.default_rng(3)
    index, words, keys = build(rng, 20_000)
    write_checkpoint(tmp_path, index, 1)
    loaded = read_checkpoint(tmp_path)
    assert loaded is not None
    old = loaded[0]
    other, _, _ = build(np.random.default_rng(4), 20_000)
    write_checkpoint(tmp_path, other, 2)  # shares no segment: every old file is unlinked
    old_names = {seg.cid for seg in old._segments}
    assert not any(cid in f.name for f in tmp_path.iterdir() for cid in old_names if cid)
    q = queries_for(rng, words)
    assert old.query_many(q) == brute(words, keys, q, 31)


def _load_warns(d: Path, caplog: pytest.LogCaptureFixture, why: str, **kw: bool) -> None:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hashmesh.checkpoint"):
        assert read_checkpoint(d, **kw) is None
    assert any(why in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]


def test_absent_or_damaged_checkpoints_load_as_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _load_warns(tmp_path / "nothing", caplog, "no PDQ index checkpoint")
    rng = np.random.default_rng(5)
    index, _, _ = build(rng, 20_000)
    write_checkpoint(tmp_path, index, 7)
    manifest = tmp_path / "manifest.json"
    good = manifest.read_text()
    m = json.loads(good)
    big = max(m["segments"], key=lambda s: s["rows"])

    def edit(change: dict[str, object]) -> None:
        manifest.write_text(json.dumps({**json.loads(good), **change}))

    edit({"format": 2})
    _load_warns(tmp_path, caplog, "format 2")
    manifest.write_text(good[:-20])
    _load_warns(tmp_path, caplog, "not JSON")
    edit({"digest": [1, 2]})
    _load_warns(tmp_path, caplog, "digest")
    edit({"cursor": -1})
    _load_warns(tmp_path, caplog, "cursor")
    bad_rows = json.loads(good)
    max(bad_rows["segments"], key=lambda s: s["rows"])["rows"] += 1
    manifest.write_text(json.dumps(bad_rows))
    _load_warns(tmp_path, caplog, "expected")
    manifest.write_text(good)
    assert read_checkpoint(tmp_path) is not None

    # a truncated segment file
    path = tmp_path / big["files"]["words"]["name"]
    data = path.read_bytes()
    path.write_bytes(data[:-32])
    _load_warns(tmp_path, caplog, "truncated")
    # same size, another dtype in the header
    path.write_bytes(data.replace(b"'<u8'", b"'<i8'", 1))
    _load_warns(tmp_path, caplog, "header")
    # a flipped bit in the data: only the content hash sees it
    flipped = bytearray(data)
    flipped[-1] ^= 1
    path.write_bytes(bytes(flipped))
    assert read_checkpoint(tmp_path) is not None
    _load_warns(tmp_path, caplog, "content", verify_content=True)
    path.write_bytes(data)
    # keys out of order are caught without a content hash
    kpath = tmp_path / big["files"]["keys"]["name"]
    kdata = kpath.read_bytes()
    keys = np.frombuffer(kdata[-16:], dtype=np.int64)[::-1].copy()
    kpath.write_bytes(kdata[:-16] + keys.tobytes())
    _load_warns(tmp_path, caplog, "ascend")
    kpath.write_bytes(kdata)
    # a missing file
    (tmp_path / m["files"]["dead"]["name"]).unlink()
    _load_warns(tmp_path, caplog, "missing")


def test_dead_rows_and_delta_are_checked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(6)
    index, _, _ = build(rng, 20_000)
    write_checkpoint(tmp_path, index, 7)
    m = json.loads((tmp_path / "manifest.json").read_text())
    dead_path = tmp_path / m["files"]["dead"]["name"]
    dead = np.load(dead_path)
    # a forged but well-formed dead file (manifest updated to match) still fails its checks
    for forged, why in ((dead[::-1], "ascending"), (dead + 10**7, "ascending")):
        np.save(dead_path, forged)
        entry = m["files"]["dead"]
        raw = dead_path.read_bytes()
        entry["size"] = len(raw)
        entry["sha256"] = hashlib.sha256(raw).hexdigest()
        (tmp_path / "manifest.json").write_text(json.dumps(m))
        _load_warns(tmp_path, caplog, why)


def test_empty_index_round_trips(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, PDQIndex(), 0)
    loaded = read_checkpoint(tmp_path)
    assert loaded is not None
    assert loaded[0].digest() == (0, 0) and loaded[1] == 0
    assert loaded[0].query("0" * 64) == []
    with pytest.raises(ValueError):
        write_checkpoint(tmp_path, PDQIndex(), -1)


_CHILD = """
import sys, numpy as np
from pathlib import Path
from hashmesh.node.matching.checkpoint import read_checkpoint
index, _ = read_checkpoint(Path(sys.argv[1]))
for seg in index._segments:
    for arr in (seg.words, seg.keys, seg.offsets, seg.rows):
        int(np.asarray(arr).view(np.uint8)[::4096].sum())  # touch every page
print("mapped", flush=True)
sys.stdin.readline()  # measure once every process has mapped the files
rss = pss = 0
inside = False
for line in open("/proc/self/smaps"):
    field = line.split()
    if not line[0].isupper() or not field[0].endswith(":"):  # a mapping's first line
        inside = field[-1].startswith(sys.argv[1])
    elif inside and field[0] in ("Rss:", "Pss:"):
        rss += int(field[1]) if field[0] == "Rss:" else 0
        pss += int(field[1]) if field[0] == "Pss:" else 0
print(rss, pss, flush=True)
sys.stdin.read()  # hold the mappings until the parent has read every answer
"""


def test_processes_mapping_one_checkpoint_share_its_pages(tmp_path: Path) -> None:
    """Three processes, one copy: each one's PSS of the index files is a third of them."""
    rng = np.random.default_rng(7)
    words = rng.integers(0, 2**64, size=(400_000, 4), dtype=np.uint64)
    index = PDQIndex()
    index.add_many(np.arange(400_000), words)
    write_checkpoint(tmp_path, index, 1)
    seg_kib = sum(f.stat().st_size for f in tmp_path.glob("seg-*.npy")) // 1024
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "mapped"
        seen = []
        for p in procs:
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write("measure\n")
            p.stdin.flush()
            seen.append([int(v) for v in p.stdout.readline().split()])
    finally:
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
            p.wait(timeout=30)
    for rss, pss in seen:
        assert rss >= 0.95 * seg_kib, (seen, seg_kib)  # all pages resident in each process
        assert pss <= 0.4 * seg_kib, (seen, seg_kib)  # but a third of each is its share


def test_reader_racing_a_writer_loads_the_new_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer removes the files a reader's manifest named: the reader starts over."""
    rng = np.random.default_rng(8)
    first, _, _ = build(rng, 20_000)
    second, words, keys = build(np.random.default_rng(9), 20_000)
    write_checkpoint(tmp_path, first, 1)
    real = checkpoint._load_segment
    calls = []

    def racing(*args: object, **kw: object) -> object:
        if not calls:  # between this reader's manifest read and its first file
            write_checkpoint(tmp_path, second, 2)
        calls.append(1)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(checkpoint, "_load_segment", racing)
    loaded = read_checkpoint(tmp_path)
    assert loaded is not None and loaded[1] == 2
    segments = json.loads((tmp_path / "manifest.json").read_text())["segments"]
    assert len(calls) == 1 + len(segments)  # one failed start, then the new checkpoint's
    q = queries_for(rng, words)
    assert loaded[0].query_many(q) == brute(words, keys, q, 31)
