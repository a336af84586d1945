"""Start-up benchmark: PDQ index from rows (old and new segment build) against a checkpoint.

    .venv/bin/python bench/startup.py [--signals 10m] [--repeat 3] [--home DIR] [--out FILE]

Builds (once; reused from --home on later runs) a node home holding N PDQ signals: a bundle
of signed batches of 5,000 random 256-bit PDQ adds (protocol.build_batch), imported with
the real `hashmesh import` (NodeService.import_bundle) in a child process. That is the
fast correct path: publishing 10M through the node's API would take hours and exercise
nothing start-up depends on.

Then each phase runs in a child process of its own, --repeat times (medians reported):

- rows + old build: `Store.live_signals` into lists, `PDQIndex.add_many` with the segment
  build's old `np.argsort` (what a node did at every start);
- rows + new build + checkpoint write: the same rows, the packed-sort build, then
  `write_checkpoint` into an empty directory (a full write), then again unchanged (a
  write that reuses every segment file);
- start-up from the checkpoint: `Store` open (with its open check), `read_checkpoint`
  (mmap), the verification against the store (`digest()` against `SELECT count(*),
  sum(id)` of the live PDQ rows) and then PDQ queries of the loaded index: one per call,
  and 100 per call; finally the optional full content hash (`verify_content=True`).

Each phase's peak RSS is the child's VmHWM, reset between phases through
/proc/self/clear_refs. Page cache warm (the files were just written or read; dropping the
cache would hit the other users of this machine). The table is printed and written to
--out (default /work/notes/bench-startup.md when that directory exists).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchenv import machine  # noqa: E402

HASHMESH = Path(sys.executable).parent / "hashmesh"
BATCH = 5_000
COLLECTION = "bench"


def parse_count(text: str) -> int:
    t = text.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


# -- the node home -------------------------------------------------------------------------


def build_home(path: Path, signals: int) -> float:
    """A node home with `signals` live PDQ rows, through the real import; seconds taken."""
    from hashmesh.node.config import Home
    from hashmesh.node.service import NodeService, init_home
    from hashmesh.protocol import SigningKey, build_batch
    from hashmesh.protocol.bundles import encode_bundle_header

    started = time.perf_counter()
    init_home(path, "bench", None, None)
    key = SigningKey(bytes([7]) * 32)
    service = NodeService(Home(path))
    service.trust_add(key.node_id, COLLECTION, "bench-author")
    service.close()
    rng = random.Random(signals)
    bundle = path.parent / f"{path.name}.bundle"
    prev = None
    with open(bundle, "wb") as fh:
        fh.write(encode_bundle_header({"v": 1, "collection": COLLECTION, "logs": []}))
        for seq in range(1, (signals + BATCH - 1) // BATCH + 1):
            count = min(BATCH, signals - (seq - 1) * BATCH)
            ops = [
                {
                    "op": "add",
                    "type": "pdq",
                    "value": rng.randbytes(32).hex(),
                    "quality": 100,
                    "category": "csam",
                }
                for _ in range(count)
            ]
            batch = build_batch(key, COLLECTION, seq, prev, 1_700_000_000_000 + seq, ops)
            fh.write(batch.to_bytes())
            prev = batch.hash
    print(f"  bundle of {signals:,} built in {time.perf_counter() - started:.0f} s", flush=True)
    subprocess.run(
        [str(HASHMESH), "--home", str(path), "import", str(bundle), "--json"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    bundle.unlink()
    return time.perf_counter() - started


# -- child phases --------------------------------------------------------------------------


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_mib() -> float:
    return _status("VmHWM:") / 2**20


def rollup_mib() -> dict[str, float]:
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f.read().splitlines()[1:]:
            name, value = line.split(":", 1)
            if name in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
                out[name] = int(value.split()[0]) / 1024
    return out


def load_rows(store: Any) -> tuple[list[int], list[str]]:
    keys: list[int] = []
    values: list[str] = []
    for key, value in store.live_signals("pdq"):  # as Matcher.pdq does
        keys.append(key)
        values.append(value)
    return keys, values


def store_digest(store: Any) -> tuple[int, int]:
    count, total = store.conn.execute(
        "SELECT count(*), coalesce(sum(id), 0) FROM signals"
        " WHERE type = 'pdq' AND revoked_by IS NULL"
    ).fetchone()
    return int(count), int(total) % (1 << 63)


def make_queries(store: Any, count: int) -> list[str]:
    """Stored hashes with 0-20 bits flipped (2,000), and random ones (500)."""
    import numpy as np

    from hashmesh.node.matching.pdq_index import hex_to_words, words_to_hex

    rng = np.random.default_rng(1)
    ids = rng.integers(1, max(2, count), 2_000).tolist()
    marks = ",".join("?" * len(ids))
    sql = f"SELECT value FROM signals WHERE type = 'pdq' AND id IN ({marks})"
    words = hex_to_words([v for (v,) in store.conn.execute(sql, ids)])
    for i in range(len(words)):
        for b in rng.choice(256, int(rng.integers(0, 21)), replace=False):
            words[i, b // 64] ^= np.uint64(1) << np.uint64(int(b) % 64)
    return words_to_hex(np.concatenate([words, rng.integers(0, 2**64, (500, 4), np.uint64)]))


def measure_queries(index: Any, queries: list[str], seconds: float) -> dict[str, float]:
    r = {}
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        index.query(queries[n % len(queries)])
        n += 1
    r["qps_single"] = n / (time.perf_counter() - t)
    n, t = 0, time.perf_counter()
    found = 0
    while time.perf_counter() - t < seconds:
        lo = (n * 100) % (len(queries) - 100)
        found += sum(1 for hit in index.query_many(queries[lo : lo + 100]) if hit)
        n += 1
    r["qps_batch100"] = n * 100 / (time.perf_counter() - t)
    r["query_hit_fraction"] = found / (n * 100)
    return r


def child_build(home: Path, ckpt: Path, old: bool, seconds: float) -> dict[str, Any]:
    from hashmesh.node.config import Home
    from hashmesh.node.matching import pdq_index
    from hashmesh.node.matching.checkpoint import write_checkpoint
    from hashmesh.node.store.core import Store

    r: dict[str, Any] = {}
    if old:
        build = pdq_index._Segment.build.__func__  # type: ignore[attr-defined]

        def old_build(cls: Any, words: Any, keys: Any, threshold: int, **kw: Any) -> Any:
            return build(cls, words, keys, threshold, argsort=True)

        pdq_index._Segment.build = classmethod(old_build)  # type: ignore[assignment,method-assign]
    reset_peak()
    t = time.perf_counter()
    store = Store(Home(home).db_path)
    r["store_open_s"] = time.perf_counter() - t
    r["open_check"] = store.open_check
    t = time.perf_counter()
    keys, values = load_rows(store)
    r["rows_s"] = time.perf_counter() - t
    r["rows_peak_mib"] = peak_mib()
    t = time.perf_counter()
    words = pdq_index.hex_to_words(values)  # what add_many does with hex strings first
    r["parse_s"] = time.perf_counter() - t
    del values
    t = time.perf_counter()
    index = pdq_index.PDQIndex()
    index.add_many(keys, words)
    r["build_s"] = time.perf_counter() - t
    r["build_peak_mib"] = peak_mib()
    r["segments"] = [len(s) for s in index._segments]
    del keys, words
    if not old:
        cursor = store.conn.execute("SELECT coalesce(max(cursor), 0) FROM feed").fetchone()[0]
        shutil.rmtree(ckpt, ignore_errors=True)
        reset_peak()
        t = time.perf_counter()
        write_checkpoint(ckpt, index, int(cursor))
        r["write_s"] = time.perf_counter() - t
        r["write_peak_mib"] = peak_mib()
        t = time.perf_counter()
        write_checkpoint(ckpt, index, int(cursor))
        r["rewrite_s"] = time.perf_counter() - t
        r["checkpoint_mib"] = sum(f.stat().st_size for f in ckpt.iterdir()) / 2**20
        built = measure_queries(index, make_queries(store, len(index)), seconds)
        r.update({f"built_{k}": v for k, v in built.items()})
    store.close()
    return r


def child_load(home: Path, ckpt: Path, seconds: float) -> dict[str, Any]:

    from hashmesh.node.config import Home
    from hashmesh.node.matching.checkpoint import read_checkpoint
    from hashmesh.node.store.core import Store

    r: dict[str, Any] = {}
    reset_peak()
    t0 = time.perf_counter()
    store = Store(Home(home).db_path)
    r["store_open_s"] = time.perf_counter() - t0
    r["open_check"] = store.open_check
    t = time.perf_counter()
    loaded = read_checkpoint(ckpt)
    if loaded is None:
        raise SystemExit("checkpoint did not load")
    index, _cursor = loaded
    r["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ours = index.digest()
    r["digest_s"] = time.perf_counter() - t
    t = time.perf_counter()
    theirs = store_digest(store)
    r["store_digest_s"] = time.perf_counter() - t
    if ours != theirs:
        raise SystemExit(f"checkpoint digest {ours} != store {theirs}")
    r["ready_s"] = time.perf_counter() - t0
    r["ready_peak_mib"] = peak_mib()
    queries = make_queries(store, ours[0])
    first = time.perf_counter()
    index.query(queries[0])
    r["first_query_ms"] = (time.perf_counter() - first) * 1000
    reset_peak()
    r.update(measure_queries(index, queries, seconds))
    r["query_peak_mib"] = peak_mib()
    r.update({f"after_queries_{k}_mib": v for k, v in rollup_mib().items()})
    t = time.perf_counter()
    assert read_checkpoint(ckpt, verify_content=True) is not None
    r["verify_content_s"] = time.perf_counter() - t
    store.close()
    return r


# -- the parent ----------------------------------------------------------------------------


def run_child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def med(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)


def table(
    signals: int, old: list[dict[str, Any]], new: list[dict[str, Any]], load: list[dict[str, Any]]
) -> str:
    def s(runs: list[dict[str, Any]], key: str) -> str:
        vals = ", ".join(f"{float(r[key]):.2f}" for r in runs)
        return f"{med(runs, key):.2f} s" + (f" ({vals})" if len(runs) > 1 else "")

    def mib(runs: list[dict[str, Any]], key: str) -> str:
        return f"{med(runs, key):,.0f} MiB"

    old_path = statistics.median(
        r["store_open_s"] + r["rows_s"] + r["parse_s"] + r["build_s"] for r in old
    )
    rows = [
        (
            "rows from SQLite (`live_signals` into lists)",
            s(old + new, "rows_s"),
            mib(old + new, "rows_peak_mib"),
        ),
        ("parse hex into words (`hex_to_words`)", s(old + new, "parse_s"), ""),
        (
            "index build, old (`np.argsort` per chunk)",
            s(old, "build_s"),
            mib(old, "build_peak_mib"),
        ),
        ("index build, new (packed in-place sort)", s(new, "build_s"), mib(new, "build_peak_mib")),
        (
            "old start-up path: open + rows + parse + old build",
            f"{old_path:.2f} s",
            mib(old, "build_peak_mib"),
        ),
        ("checkpoint write (empty directory)", s(new, "write_s"), mib(new, "write_peak_mib")),
        ("checkpoint write again (all segments reused)", s(new, "rewrite_s"), ""),
        ("store open (open check: " + load[0]["open_check"] + ")", s(load, "store_open_s"), ""),
        ("checkpoint load (mmap, checks)", s(load, "load_s"), ""),
        ("verify: index `digest()`", s(load, "digest_s"), ""),
        ("verify: store `count(*), sum(id)` of live PDQ rows", s(load, "store_digest_s"), ""),
        ("**ready** (open + load + verify)", s(load, "ready_s"), mib(load, "ready_peak_mib")),
        ("first PDQ query after load", f"{med(load, 'first_query_ms'):.1f} ms", ""),
        (
            "PDQ queries, 1 per call",
            f"{med(load, 'qps_single'):,.0f} q/s",
            mib(load, "query_peak_mib"),
        ),
        ("PDQ queries, 100 per call", f"{med(load, 'qps_batch100'):,.0f} q/s", ""),
        (
            "the same on the index just built in memory (1 / 100 per call)",
            f"{med(new, 'built_qps_single'):,.0f} / {med(new, 'built_qps_batch100'):,.0f} q/s",
            "",
        ),
        (
            "after queries: RSS / PSS (file-backed PSS)",
            f"{med(load, 'after_queries_Rss_mib'):,.0f} / {med(load, 'after_queries_Pss_mib'):,.0f}"
            f" ({med(load, 'after_queries_Pss_File_mib'):,.0f}) MiB",
            "",
        ),
        (
            "full content hash of the checkpoint (`verify_content=True`)",
            s(load, "verify_content_s"),
            "",
        ),
    ]
    speedup = med(old, "build_s") / med(new, "build_s")
    lines = [
        f"### Start-up at {signals:,} PDQ signals (bench/startup.py)",
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {machine(sqlite=True)};"
        f" the machine shared with 4 other agents (load average"
        f" {os.getloadavg()[0]:.1f} at the end). Medians of {len(new)} runs, each phase in a"
        f" child process of its own; page cache warm. Checkpoint {med(new, 'checkpoint_mib'):,.0f}"
        f" MiB on disk, segments {new[0]['segments']}. Reproduce:"
        f" `.venv/bin/python bench/startup.py --signals {signals}`.",
        "",
        "| phase | time | peak RSS of the phase |",
        "|---|---|---|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"New build {speedup:.1f}x faster than the old; start-up from the checkpoint"
        f" {old_path / med(load, 'ready_s'):.0f}x"
        f" faster than from rows. Query hit fraction {med(load, 'query_hit_fraction'):.2f}"
        " (stored hashes with 0-20 bits flipped, and random ones).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        phase, home, ckpt = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
        if phase == "load":
            result = child_load(home, ckpt, float(sys.argv[5]))
        else:
            result = child_build(home, ckpt, phase == "old", float(sys.argv[5]))
        print(json.dumps(result), flush=True)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--signals", type=parse_count, default=10_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0, help="per query measurement")
    p.add_argument("--home", type=Path, help="node home to build or reuse")
    notes = Path("/work/notes")
    p.add_argument(
        "--out", type=Path, default=notes / "bench-startup.md" if notes.is_dir() else None
    )
    args = p.parse_args()
    home = args.home or Path(tempfile.gettempdir()) / f"hashmesh-startup-{args.signals}"
    if not (home / "hashmesh.db").exists():
        shutil.rmtree(home, ignore_errors=True)
        print(f"building a home with {args.signals:,} PDQ signals in {home}", flush=True)
        print(f"  built in {build_home(home, args.signals):.0f} s", flush=True)
    ckpt = home / "index" / "pdq"
    old, new, load = [], [], []
    for i in range(args.repeat):
        print(f"run {i + 1}/{args.repeat}", flush=True)
        old.append(run_child(["--child", "old", str(home), str(ckpt), str(args.seconds)]))
        print("  old:", json.dumps(old[-1]), flush=True)
        new.append(run_child(["--child", "new", str(home), str(ckpt), str(args.seconds)]))
        print("  new:", json.dumps(new[-1]), flush=True)
        load.append(run_child(["--child", "load", str(home), str(ckpt), str(args.seconds)]))
        print("  load:", json.dumps(load[-1]), flush=True)
    text = table(args.signals, old, new, load)
    print(text)
    if args.out is not None:
        previous = args.out.read_text() if args.out.exists() else ""
        args.out.write_text(previous + ("\n" if previous else "") + text)


if __name__ == "__main__":
    main()
