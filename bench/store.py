"""Store benchmark: bundle import rate, peak memory, database size, exact-lookup rate.

    .venv/bin/python bench/store.py [--signals 1000000] [--profile] [--no-write]

Builds a bundle of N md5 adds (batches of 5,000, signed with protocol.build_batch), imports
it with the real `hashmesh import` in a child process (wall time, peak RSS of the child,
database size), then measures exact-hash lookups in process: `Store.find_exact` and
`NodeService.match` (one query per call, and 1,000 queries per call). The table is printed
and written to docs/benchmarks.md under "## Store (bench/store.py)".

`--profile` also runs the same import in this process under cProfile and prints where the
time goes.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import pstats
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchenv import machine, replace_section  # noqa: E402

from hashmesh.node.config import Home  # noqa: E402
from hashmesh.node.service import NodeService, init_home  # noqa: E402
from hashmesh.node.store.core import Store  # noqa: E402
from hashmesh.protocol import SigningKey, build_batch  # noqa: E402
from hashmesh.protocol.bundles import encode_bundle_header  # noqa: E402

HASHMESH = Path(sys.executable).parent / "hashmesh"
SECTION = "## Store (bench/store.py)"
BATCH = 5_000
COLLECTION = "bench"


def value(seq: int, index: int) -> str:
    return f"{seq:08x}{index:024x}"


def build_bundle(path: Path, key: SigningKey, signals: int) -> int:
    prev = None
    batches = 0
    with open(path, "wb") as fh:
        fh.write(encode_bundle_header({"v": 1, "collection": COLLECTION, "logs": []}))
        for seq in range(1, (signals + BATCH - 1) // BATCH + 1):
            count = min(BATCH, signals - (seq - 1) * BATCH)
            ops = [
                {"op": "add", "type": "md5", "value": value(seq, i), "category": "csam"}
                for i in range(count)
            ]
            batch = build_batch(key, COLLECTION, seq, prev, 1_700_000_000_000 + seq, ops)
            fh.write(batch.to_bytes())
            prev = batch.hash
            batches += 1
    return batches


def make_home(path: Path, author: str) -> Home:
    init_home(path, "bench", None, None)
    home = Home(path)
    service = NodeService(home)
    service.trust_add(author, COLLECTION, "bench-author")
    service.close()
    return home


def db_size(home: Home) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(home.db_path) + suffix)
        if p.exists():
            total += p.stat().st_size
    return total


def import_child(home: Home, bundle: Path) -> tuple[float, int, dict[str, object]]:
    """Wall seconds, peak RSS (bytes) of the importing child, and its JSON answer."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(HASHMESH), "--home", str(home.path), "import", str(bundle), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate()
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"import failed: {err.decode()}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux: KiB
    return elapsed, rss, json.loads(out)


def profile_import(home: Home, bundle: Path) -> str:
    service = NodeService(home)
    profiler = cProfile.Profile()
    with open(bundle, "rb") as fh:
        profiler.enable()
        service.import_bundle(fh)
        profiler.disable()
    service.close()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)
    return out.getvalue()


def lookups(home: Home, signals: int, count: int) -> dict[str, float]:
    rng = random.Random(7)
    batches = (signals + BATCH - 1) // BATCH
    hits = []
    for _ in range(count):
        seq = rng.randint(1, batches)
        last = min(BATCH, signals - (seq - 1) * BATCH)
        hits.append(value(seq, rng.randrange(last)))
    misses = [value(batches + 1 + n, 0) for n in range(count)]

    store = Store(home.db_path)
    store.find_exact("md5", hits[0])  # warm up
    started = time.perf_counter()
    found = sum(1 for v in hits if store.find_exact("md5", v))
    hit_rate = count / (time.perf_counter() - started)
    assert found == count, f"only {found} of {count} lookups found"
    started = time.perf_counter()
    found = sum(1 for v in misses if store.find_exact("md5", v))
    miss_rate = count / (time.perf_counter() - started)
    assert found == 0
    store.close()

    service = NodeService(Home(home.path))
    single = hits[: max(1, count // 5)]
    started = time.perf_counter()
    for v in single:
        result = service.match([{"type": "md5", "value": v}])
        assert result["matched"]
    match_single = len(single) / (time.perf_counter() - started)
    started = time.perf_counter()
    for start in range(0, count, 1000):
        chunk = [{"type": "md5", "value": v} for v in hits[start : start + 1000]]
        result = service.match(chunk)
        assert all(r["matches"] for r in result["results"])
    match_batched = count / (time.perf_counter() - started)
    service.close()
    return {
        "find_exact_hit": hit_rate,
        "find_exact_miss": miss_rate,
        "match_single": match_single,
        "match_batched": match_batched,
    }


def table(rows: list[tuple[str, str, str]]) -> str:
    lines = ["| measure | result | target |", "| --- | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=100_000)
    parser.add_argument("--profile", action="store_true", help="cProfile an in-process import")
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--workdir", help="where to build (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        key = SigningKey(b"\x42" * 32)
        bundle = work / "bench.hmb"
        started = time.perf_counter()
        batches = build_bundle(bundle, key, args.signals)
        print(
            f"built {bundle.stat().st_size / 1e6:.1f} MB bundle of {args.signals:,} signals"
            f" in {batches} batches in {time.perf_counter() - started:.1f} s",
            flush=True,
        )

        home = make_home(work / "home", key.node_id)
        elapsed, rss, answer = import_child(home, bundle)
        assert answer["applied"] == batches, answer
        size = db_size(home)
        print(f"imported in {elapsed:.2f} s", flush=True)

        rates = lookups(home, args.signals, args.lookups)

        if args.profile:
            print(profile_import(make_home(work / "profiled", key.node_id), bundle))

    rows = [
        (
            "bundle import (`hashmesh import`, child process, wall)",
            f"{args.signals / elapsed:,.0f} signals/s ({elapsed:.1f} s for {args.signals:,})",
            ">= 100,000/s",
        ),
        ("peak RSS of the importing process", f"{rss / 2**20:,.0f} MiB", ""),
        (
            "database size after import",
            f"{size / 2**20:,.0f} MiB ({size / args.signals:.0f} B/signal)",
            "",
        ),
        ("`Store.find_exact`, hits", f"{rates['find_exact_hit']:,.0f} lookups/s", ">= 50,000/s"),
        ("`Store.find_exact`, misses", f"{rates['find_exact_miss']:,.0f} lookups/s", ""),
        ("`NodeService.match`, 1 query per call", f"{rates['match_single']:,.0f} queries/s", ""),
        (
            "`NodeService.match`, 1,000 queries per call",
            f"{rates['match_batched']:,.0f} queries/s",
            "",
        ),
    ]
    rendered = table(rows)
    print()
    print(rendered)
    if not args.no_write:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        section = "\n".join(
            [
                SECTION,
                "",
                f"Measured {stamp} on {machine(sqlite=True)}; load average {os.getloadavg()[0]:.1f}"
                " when the import finished (the machine is shared: other test suites and"
                " benchmarks may run at the same time).",
                f"{args.signals:,} md5 adds in batches of {BATCH:,}, one author, imported from"
                " a bundle into an empty node; lookups of random present values"
                f" ({args.lookups:,}) and of absent ones. Reproduce:"
                " `.venv/bin/python bench/store.py`.",
                "",
                rendered,
            ]
        )
        print()
        replace_section(SECTION, section)


if __name__ == "__main__":
    main()
