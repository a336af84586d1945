"""PDQ matching benchmark: hashmesh's index against numpy brute force and python-threatexchange.

Why it is built this way: every contender sees the same hashes and queries in one run, and
each index is built in a forked child so that its RSS delta is its own memory, not what an
earlier contender left in the allocator. Brute force is the ground truth for recall.

    .venv/bin/python bench/match.py                      # 1M hashes
    .venv/bin/python bench/match.py --sizes 1M,10M --write-docs
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import multiprocessing.connection
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from node.pdq_index import PDQIndex, words_to_hex  # noqa: E402

U64 = npt.NDArray[np.uint64]
Pairs = set[tuple[int, int]]
SECTION = "## Matching (bench/match.py)"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    mult = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


def make_data(n: int, n_queries: int, threshold: int, seed: int) -> tuple[U64, U64]:
    """Random hashes; half the queries are a stored hash with 0..threshold bits flipped."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2**64, size=(n, 4), dtype=np.uint64)
    planted = n_queries // 2
    queries = rng.integers(0, 2**64, size=(n_queries, 4), dtype=np.uint64)
    queries[:planted] = words[rng.integers(0, n, planted)]
    for i in range(planted):
        for b in rng.choice(256, int(rng.integers(0, threshold + 1)), replace=False):
            queries[i, b // 64] ^= np.uint64(1) << np.uint64(63 - b % 64)
    return words, queries


def brute_force(words: U64, queries: U64, threshold: int) -> tuple[Pairs, list[float]]:
    found: Pairs = set()
    lat: list[float] = []
    for i, q in enumerate(queries):
        t = time.perf_counter()
        dist = np.bitwise_count(words ^ q).sum(axis=1, dtype=np.int64)
        hits = np.nonzero(dist <= threshold)[0]
        lat.append(time.perf_counter() - t)
        found.update((i, int(k)) for k in hits)
    return found, lat


# -- contenders: each builds from the shared data and answers one query at a time ------------


def run_hashmesh(words: U64, hexes: list[str], threshold: int) -> dict[str, Any]:
    r0 = rss_bytes()
    t = time.perf_counter()
    index = PDQIndex(threshold=threshold)
    index.add_many(np.arange(len(words)), words)
    build = time.perf_counter() - t
    mem = rss_bytes() - r0

    def one(i: int, h: str) -> list[int]:
        return [k for k, _ in index.query(h)]

    def batch(hs: list[str]) -> None:
        index.query_many(hs)

    return {"build": build, "mem": mem, "one": one, "batch": batch}


def run_te_mih(words: U64, hexes: list[str], threshold: int) -> dict[str, Any]:
    from threatexchange.signal_type.pdq.pdq_index import PDQIndex as TEIndex

    r0 = rss_bytes()
    t = time.perf_counter()
    index = TEIndex(zip(hexes, range(len(hexes)), strict=True))
    build = time.perf_counter() - t
    mem = rss_bytes() - r0
    assert TEIndex.get_match_threshold() == threshold

    def one(i: int, h: str) -> list[int]:
        return [m.metadata for m in index.query(h)]

    def batch(hs: list[str]) -> None:
        index.index.search_with_distance_in_result(hs, threshold)

    return {"build": build, "mem": mem, "one": one, "batch": batch}


def run_te_flat(words: U64, hexes: list[str], threshold: int) -> dict[str, Any]:
    from threatexchange.signal_type.pdq.pdq_index2 import PDQIndex2

    r0 = rss_bytes()
    t = time.perf_counter()
    index = PDQIndex2(entries=zip(hexes, range(len(hexes)), strict=True), threshold=threshold)
    build = time.perf_counter() - t
    mem = rss_bytes() - r0

    def one(i: int, h: str) -> list[int]:
        return [m.metadata for m in index.query(h)]

    return {"build": build, "mem": mem, "one": one, "batch": None}


CONTENDERS: dict[str, tuple[str, Callable[[U64, list[str], int], dict[str, Any]]]] = {
    "hashmesh": ("hashmesh PDQIndex (MIH 16x16, numpy)", run_hashmesh),
    "te-mih": ("threatexchange PDQIndex (faiss IndexBinaryMultiHash)", run_te_mih),
    "te-flat": ("threatexchange PDQIndex2 (faiss IndexFlatL2)", run_te_flat),
}


def child(
    name: str,
    words: U64,
    queries: U64,
    threshold: int,
    conn: multiprocessing.connection.Connection,
) -> None:
    try:
        hexes = words_to_hex(words) if name != "hashmesh" else []
        qhex = words_to_hex(queries)
        res = CONTENDERS[name][1](words, hexes, threshold)
        one = res.pop("one")
        batch = res.pop("batch")
        found: Pairs = set()
        lat: list[float] = []
        for i, h in enumerate(qhex):
            t = time.perf_counter()
            keys = one(i, h)
            lat.append(time.perf_counter() - t)
            found.update((i, int(k)) for k in keys)
        res["lat"] = lat
        res["found"] = found
        if batch is not None:
            t = time.perf_counter()
            batch(qhex)
            res["batch_qps"] = len(qhex) / (time.perf_counter() - t)
        conn.send(res)
    except BaseException as exc:  # reported in the table, the other contenders still run
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def run_child(name: str, words: U64, queries: U64, threshold: int) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    parent, sub = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=(name, words, queries, threshold, sub))
    proc.start()
    sub.close()
    try:
        res: dict[str, Any] = parent.recv()
    except EOFError:
        res = {"error": f"child died (exit code {proc.join() or proc.exitcode})"}
    proc.join()
    return res


def fmt_row(size: int, label: str, r: dict[str, Any], truth: Pairs) -> list[str]:
    if "error" in r:
        return [f"{size:,}", label, "-", "-", "-", "-", "-", "-", "-", r["error"]]
    lat = sorted(r["lat"])
    p50 = statistics.median(lat) * 1e3
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] * 1e3
    qps = len(lat) / sum(lat)
    recall = len(r["found"] & truth) / len(truth) if truth else 1.0
    extra = len(r["found"] - truth)
    batch = f"{r['batch_qps']:,.0f}" if r.get("batch_qps") else "-"
    build = f"{r['build']:.2f}" if r.get("build") is not None else "-"
    mem = r.get("mem")
    bph = f"{mem / size:.0f}" if mem is not None else "-"
    mib = f"{mem / 2**20:,.0f}" if mem is not None else "-"
    note = r.get("note", "")
    if extra:
        note = (note + f"; {extra} results beyond threshold").strip("; ")
    return [
        f"{size:,}",
        label,
        build,
        f"{qps:,.0f}",
        batch,
        f"{p50:.3f}",
        f"{p99:.3f}",
        f"{recall:.4f}",
        f"{mib} / {bph}",
        note,
    ]


HEADER = [
    "hashes",
    "index",
    "build s",
    "queries/s (one by one)",
    "queries/s (batch)",
    "median ms",
    "p99 ms",
    "recall",
    "RSS delta MiB / bytes per hash",
    "note",
]


def render(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, Python {platform.python_version()}"


def versions() -> str:
    out = [f"numpy {np.__version__}"]
    for mod in ("threatexchange", "faiss"):
        try:
            from importlib.metadata import version

            out.append(f"{mod} {version(mod if mod != 'faiss' else 'faiss-cpu')}")
        except Exception:
            out.append(f"{mod} not installed")
    return ", ".join(out)


def write_docs(table: str, args: argparse.Namespace, notes: list[str]) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    body = "\n".join(
        [
            SECTION,
            "",
            f"Measured {date} on {machine()}; {versions()}.",
            f"Command: `.venv/bin/python bench/match.py {' '.join(sys.argv[1:])}`.",
            "",
            f"Random 256-bit hashes; {args.queries:,} queries, half of them a stored hash with "
            f"0..{args.threshold} bits flipped, half random; threshold {args.threshold}. "
            "Latency is one `query` call per hash, batch is one call for all queries. Recall is "
            "against numpy brute force. RSS delta is measured around the build in a forked "
            "child (the input hex strings of threatexchange are made before, so not counted).",
            "",
            table,
            "",
            *[f"- {n}" for n in notes],
            "",
        ]
    )
    text = path.read_text() if path.exists() else "# Benchmarks\n"  # re-read just before writing
    pattern = re.compile(r"^## Matching \(bench/match\.py\)\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: body + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    path.write_text(text.rstrip("\n") + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1M", help="comma-separated, e.g. 1M,10M (default 1M)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threshold", type=int, default=31)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument(
        "--contenders", default="hashmesh,te-mih,te-flat", help=f"any of {','.join(CONTENDERS)}"
    )
    ap.add_argument(
        "--flat-max",
        type=parse_size,
        default=parse_size("1M"),
        help="largest size for te-flat (float32 L2 brute force: 1 KiB per hash, slow)",
    )
    ap.add_argument(
        "--write-docs", action="store_true", help="replace our section of docs/benchmarks.md"
    )
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    notes: list[str] = []
    try:
        import faiss  # noqa: F401
        import threatexchange  # noqa: F401
    except ImportError as exc:
        msg = (
            f"threatexchange/faiss not importable ({exc}); "
            "install with: pip install threatexchange faiss-cpu"
        )
        print(msg)
        notes.append(msg)
        names = [n for n in names if not n.startswith("te-")]

    rows: list[list[str]] = []
    for n in sizes:
        print(f"\n== {n:,} hashes: generating data", flush=True)
        words, queries = make_data(n, args.queries, args.threshold, args.seed)
        print("   brute force (ground truth)", flush=True)
        truth, lat = brute_force(words, queries, args.threshold)
        planted_hits = len({q for q, _ in truth if q < args.queries // 2})
        print(f"   {len(truth)} true pairs; {planted_hits} planted queries matched", flush=True)
        brute = {
            "build": None,
            "mem": words.nbytes,
            "lat": lat,
            "found": truth,
            "note": "input array only, no index",
        }
        rows.append(fmt_row(n, "numpy brute force (bitwise_count)", brute, truth))
        print(render(rows[-1:]), flush=True)
        for name in names:
            label = CONTENDERS[name][0]
            if name == "te-flat" and n > args.flat_max:
                print(f"   skip {name} above --flat-max", flush=True)
                continue
            print(f"   {name}", flush=True)
            r = run_child(name, words, queries, args.threshold)
            rows.append(fmt_row(n, label, r, truth))
            print(render(rows[-1:]), flush=True)
        del words, queries
    if any(n > args.flat_max for n in sizes) and "te-flat" in names:
        notes.append(
            "threatexchange PDQIndex2 (IndexFlatL2, 256 float32 per hash) was skipped above "
            f"{args.flat_max:,} hashes (`--flat-max`)."
        )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    notes.append(
        f"Load average at the end of the run: {load} on {os.cpu_count()} cores "
        "(other jobs on the machine make the timings noisier)."
    )
    table = render(rows)
    print("\n" + table)
    if args.write_docs:
        write_docs(table, args, notes)


if __name__ == "__main__":
    main()
