"""PDQ matching and hashing benchmark: hashmesh against numpy brute force and python-threatexchange.

Why it is built this way: every contender sees the same hashes and queries in one run, and
each index is built in a forked child so that its peak RSS is its own memory, not what an
earlier contender left in the allocator. Brute force is the ground truth for recall. Two
datasets, because uniform random hashes flatter multi-index methods (every bucket is
equally full): `clustered` draws hashes around a few thousand centres and adds near-blank
images' hashes, which pile into a few buckets as real collections do.

    .venv/bin/python bench/match.py                                  # 1M, both datasets
    .venv/bin/python bench/match.py --sizes 1M,10M --queries 300 --write-docs
    .venv/bin/python bench/match.py --sizes 0 --hashing 60           # JPEG hashing only
    .venv/bin/python bench/match.py --baseline old_pdq_index.py      # before/after, same run
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import multiprocessing as mp
import multiprocessing.connection
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchenv import load_text, machine, replace_section  # noqa: E402

from hashmesh.node.matching.pdq_index import PDQIndex, words_to_hex  # noqa: E402

U64 = npt.NDArray[np.uint64]
Pairs = set[tuple[int, int]]
SECTION = "## Matching (bench/match.py)"
PDQ_IMAGES = Path(os.environ.get("HASHMESH_PDQ_TESTDATA", "/work/shared/testdata/pdq")) / "images"


# -- memory ---------------------------------------------------------------------------------


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak_rss() -> int:
    """Restart the kernel's peak-RSS counter (VmHWM); returns the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status("VmRSS:")


def peak_rss() -> int:
    return _status("VmHWM:")


def steady_allocator() -> None:
    """Undo main()'s fixed 128 KiB mmap threshold once the builds are measured.

    That setting makes each build's peak RSS its own, but for the timed queries it turns
    every temporary array over 128 KiB into a fresh mmap and its page faults, which a running
    process does not pay: glibc's default threshold grows up to 32 MiB as big blocks are
    freed. Set the grown values (mmap 32 MiB, trim 64 MiB) for every contender alike.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 64 << 20)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    mult = {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()]
    return int(float(m.group(1)) * mult)


# -- datasets -------------------------------------------------------------------------------


def flip_bits(rng: np.random.Generator, words: U64, k: npt.NDArray[np.int64]) -> U64:
    """Each row with about k[i] random bits flipped (each bit flips with chance k/256)."""
    out = words.copy()
    block = 1 << 16
    for s in range(0, len(words), block):
        kb = k[s : s + block].astype(np.int16)
        draw = rng.integers(0, 256, size=(len(kb), 256), dtype=np.uint8)
        mask = np.packbits(draw < kb[:, None], axis=1).view(">u8").astype(np.uint64)
        out[s : s + block] ^= mask
    return out


def near_blank_patterns() -> U64:
    """Real PDQ hashes of flat images: PDQ maps them onto a few fixed patterns."""
    import pdqhash  # type: ignore[import-untyped]

    pats = []
    for level in (0, 8, 32, 64, 100, 128, 160, 200, 240, 255):
        for tint in ((0, 0, 0), (6, -4, 2)):
            px = np.clip(np.full((256, 256, 3), level, np.int16) + tint, 0, 255).astype(np.uint8)
            bits, _ = pdqhash.compute(px)
            pats.append(np.packbits(np.asarray(bits, dtype=np.uint8)).view(">u8"))
    return np.unique(np.array(pats).astype(np.uint64), axis=0)


def sample_clustered(
    rng: np.random.Generator, n: int, centres: U64, blanks: U64, blank_share: float
) -> U64:
    """Centre plus 0..40 flipped bits; `blank_share` of rows a near-blank pattern plus 0..16."""
    is_blank = rng.random(n) < blank_share
    base = centres[rng.integers(0, len(centres), n)]
    base[is_blank] = blanks[rng.integers(0, len(blanks), int(is_blank.sum()))]
    k = np.where(is_blank, rng.integers(0, 17, n), rng.integers(0, 41, n))
    return flip_bits(rng, base, k)


def make_data(
    dataset: str, n: int, n_queries: int, threshold: int, seed: int
) -> tuple[U64, U64, str]:
    """Stored hashes and queries; half the queries are a stored hash with 0..threshold flips."""
    rng = np.random.default_rng(seed)
    planted = n_queries // 2
    if dataset == "random":
        words = rng.integers(0, 2**64, size=(n, 4), dtype=np.uint64)
        others = rng.integers(0, 2**64, size=(n_queries - planted, 4), dtype=np.uint64)
        desc = "uniform random 256-bit hashes; the other half of the queries random"
    elif dataset == "clustered":
        centres = rng.integers(0, 2**64, size=(3000, 4), dtype=np.uint64)
        blanks = near_blank_patterns()
        words = sample_clustered(rng, n, centres, blanks, 0.10)
        others = sample_clustered(rng, n_queries - planted, centres, blanks, 0.10)
        desc = (
            "3,000 random centres, each hash a centre with 0..40 random bits flipped, plus 10% "
            f"near-blank hashes ({len(blanks)} real PDQ patterns of flat images, 0..16 bits "
            "flipped); the other half of the queries drawn from the same mixture"
        )
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    near = flip_bits(
        rng, words[rng.integers(0, n, planted)], rng.integers(0, threshold + 1, planted)
    )
    return words, np.concatenate([near, others]), desc


def distances(words: U64, q: U64) -> npt.NDArray[np.uint64]:
    """Hamming distances; the 4 popcounts summed by one multiply (a length-4 sum is slow)."""
    counts = np.bitwise_count(words ^ q).astype(np.uint16)
    return (counts.view(np.uint64)[:, 0] * np.uint64(0x0001_0001_0001_0001)) >> np.uint64(48)


def brute_force(words: U64, queries: U64, threshold: int) -> Pairs:
    """Exact pairs, both cores over row blocks (numpy releases the GIL)."""
    block = 1 << 18

    def scan(s: int) -> list[tuple[int, int]]:
        w = words[s : s + block]
        out: list[tuple[int, int]] = []
        for i, q in enumerate(queries):
            hits = np.flatnonzero(distances(w, q) <= threshold)
            out.extend((i, s + int(r)) for r in hits)
        return out

    with ThreadPoolExecutor(os.cpu_count() or 1) as ex:
        parts = ex.map(scan, range(0, len(words), block))
        return {p for part in parts for p in part}


def brute_latency(words: U64, queries: U64, threshold: int) -> list[float]:
    lat: list[float] = []
    for q in queries:
        t = time.perf_counter()
        np.flatnonzero(distances(words, q) <= threshold)
        lat.append(time.perf_counter() - t)
    return lat


# -- contenders: each builds from the shared data and answers one query at a time ------------


def _load_module(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("baseline_pdq_index", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _hashmesh(cls: Any, words: U64, threshold: int) -> dict[str, Any]:
    keys = np.arange(len(words), dtype=np.int64)
    r0 = reset_peak_rss()
    t = time.perf_counter()
    index = cls(threshold=threshold)
    index.add_many(keys, words)
    res: dict[str, Any] = {"build": time.perf_counter() - t, "peak": peak_rss() - r0}
    res["mem"] = _status("VmRSS:") - r0

    def one(h: str) -> list[int]:
        return [k for k, _ in index.query(h)]

    def batch(hs: list[str]) -> None:
        index.query_many(hs)

    res.update(one=one, batch=batch)
    return res


def run_hashmesh(words: U64, hexes: list[str], threshold: int, args: Any) -> dict[str, Any]:
    return _hashmesh(PDQIndex, words, threshold)


def run_baseline(words: U64, hexes: list[str], threshold: int, args: Any) -> dict[str, Any]:
    return _hashmesh(_load_module(args.baseline).PDQIndex, words, threshold)


def run_te_mih(words: U64, hexes: list[str], threshold: int, args: Any) -> dict[str, Any]:
    from threatexchange.signal_type.pdq.pdq_index import PDQIndex as TEIndex

    r0 = reset_peak_rss()
    t = time.perf_counter()
    index = TEIndex(zip(hexes, range(len(hexes)), strict=True))
    build = time.perf_counter() - t
    peak, mem = peak_rss() - r0, _status("VmRSS:") - r0
    assert TEIndex.get_match_threshold() == threshold

    def one(h: str) -> list[int]:
        return [m.metadata for m in index.query(h)]

    def batch(hs: list[str]) -> None:
        index.index.search_with_distance_in_result(hs, threshold)

    return {"build": build, "peak": peak, "mem": mem, "one": one, "batch": batch}


def run_te_flat(words: U64, hexes: list[str], threshold: int, args: Any) -> dict[str, Any]:
    from threatexchange.signal_type.pdq.pdq_index2 import PDQIndex2

    r0 = reset_peak_rss()
    t = time.perf_counter()
    index = PDQIndex2(entries=zip(hexes, range(len(hexes)), strict=True), threshold=threshold)
    build = time.perf_counter() - t
    peak, mem = peak_rss() - r0, _status("VmRSS:") - r0

    def one(h: str) -> list[int]:
        return [m.metadata for m in index.query(h)]

    return {"build": build, "peak": peak, "mem": mem, "one": one, "batch": None}


Runner = Callable[[U64, list[str], int, Any], dict[str, Any]]
CONTENDERS: dict[str, tuple[str, Runner]] = {
    "hashmesh": ("hashmesh PDQIndex (MIH; 16x16 or 11x23-24 bits by size)", run_hashmesh),
    "baseline": ("hashmesh before (--baseline)", run_baseline),
    "te-mih": ("threatexchange PDQIndex (faiss IndexBinaryMultiHash)", run_te_mih),
    "te-flat": ("threatexchange PDQIndex2 (faiss IndexFlatL2)", run_te_flat),
}


def child(
    names: list[str],
    words: U64,
    queries: U64,
    threshold: int,
    args: Any,
    conn: multiprocessing.connection.Connection,
) -> None:
    """Build every contender in one process, then time them in alternating rounds.

    The machine is shared: interleaving the rounds exposes each contender to the same load,
    so the ratios hold even when the absolute numbers drift. Each build's peak RSS is its
    own (the high-water mark is reset before it).
    """
    qhex = words_to_hex(queries)
    hexes = words_to_hex(words) if any(n.startswith("te-") for n in names) else []
    built: dict[str, dict[str, Any]] = {}
    for name in names:
        try:
            built[name] = CONTENDERS[name][1](words, hexes, threshold, args)
            print(f"   built {name} in {built[name]['build']:.1f} s", flush=True)
        except BaseException as exc:  # reported in the table, the other contenders still run
            built[name] = {"error": f"{type(exc).__name__}: {exc}"}
    steady_allocator()
    out: dict[str, dict[str, Any]] = {}
    for name, res in built.items():
        limit = args.flat_queries if name == "te-flat" else len(qhex)
        out[name] = {k: v for k, v in res.items() if k not in ("one", "batch")}
        out[name].update(lat=[], found=set(), rounds=[], limit=limit)
    for _ in range(args.rounds):
        for name, res in built.items():
            if "error" in res:
                continue
            o = out[name]
            lat: list[float] = []
            for i, h in enumerate(qhex[: o["limit"]]):
                t = time.perf_counter()
                keys = res["one"](h)
                lat.append(time.perf_counter() - t)
                o["found"].update((i, int(k)) for k in keys)
            o["lat"] += lat
            o["rounds"].append(len(lat) / sum(lat))
            if res.get("batch") is not None:
                t = time.perf_counter()
                res["batch"](qhex)
                o.setdefault("batch_runs", []).append(len(qhex) / (time.perf_counter() - t))
    for o in out.values():
        if "batch_runs" in o:
            o["batch_qps"] = statistics.median(o["batch_runs"])
    conn.send(out)
    conn.close()


def run_children(
    names: list[str], words: U64, queries: U64, threshold: int, args: Any
) -> dict[str, dict[str, Any]]:
    ctx = mp.get_context("fork")
    parent, sub = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child, args=(names, words, queries, threshold, args, sub))
    proc.start()
    sub.close()
    try:
        res: dict[str, dict[str, Any]] = parent.recv()
    except EOFError:
        proc.join()
        res = {n: {"error": f"child died (exit code {proc.exitcode})"} for n in names}
    proc.join()
    return res


def fmt_row(dataset: str, size: int, label: str, r: dict[str, Any], truth: Pairs) -> list[str]:
    if "error" in r:
        return [dataset, f"{size:,}", label, *["-"] * 8, r["error"]]
    lat = sorted(r["lat"])
    p50 = statistics.median(lat) * 1e3
    p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))] * 1e3
    qps = statistics.median(r["rounds"]) if r.get("rounds") else len(lat) / sum(lat)
    if r.get("limit") is not None:
        truth = {p for p in truth if p[0] < r["limit"]}
    recall = len(r["found"] & truth) / len(truth) if truth else 1.0
    extra = len(r["found"] - truth)

    def num(key: str, fmt: str) -> str:
        v = r.get(key)
        return format(v, fmt) if v is not None else "-"

    mib = lambda v: f"{v / 2**20:,.0f}" if v is not None else "-"  # noqa: E731
    note = r.get("note", "")
    if extra:
        note = (note + f"; {extra} results beyond threshold").strip("; ")
    return [
        dataset,
        f"{size:,}",
        label,
        num("build", ".2f"),
        f"{qps:,.0f}",
        num("batch_qps", ",.0f"),
        f"{p50:.3f}",
        f"{p99:.3f}",
        f"{recall:.4f}",
        mib(r.get("peak")),
        mib(r.get("mem")),
        note,
    ]


HEADER = [
    "data",
    "hashes",
    "index",
    "build s",
    "q/s one by one",
    "q/s batch",
    "median ms",
    "p99 ms",
    "recall",
    "peak RSS MiB",
    "RSS after build MiB",
    "note",
]


def render(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# -- JPEG hashing -------------------------------------------------------------------------------


def make_jpegs(directory: Path, count: int, seed: int) -> list[Path]:
    """1-3 MP photos: reference images upscaled, cropped, with sensor-like noise, q 85-95."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = sorted(PDQ_IMAGES.glob("*.jpg"))
    if not sources:
        raise FileNotFoundError(f"no reference JPEGs in {PDQ_IMAGES}")
    paths = []
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as src:
            im = src.convert("RGB")
        pixels, aspect = rng.uniform(1.0, 3.0) * 1e6, rng.uniform(0.6, 1.6)
        w = int((pixels * aspect) ** 0.5)
        h = int(pixels / w)
        scale = max(w / im.width, h / im.height) * rng.uniform(1.0, 1.3)
        big = im.resize(
            (int(im.width * scale) + 1, int(im.height * scale) + 1), Image.Resampling.BICUBIC
        )
        x, y = int(rng.integers(0, big.width - w + 1)), int(rng.integers(0, big.height - h + 1))
        noisy = np.asarray(big.crop((x, y, x + w, y + h)), dtype=np.int16)
        noisy = noisy + rng.normal(0, 6, noisy.shape).astype(np.int16)
        path = directory / f"photo{i:03d}.jpg"
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(
            path, quality=int(rng.integers(85, 96))
        )
        paths.append(path)
    return paths


def full_decode_pdq(path: Path) -> tuple[str, int]:
    """PDQ of the 512 thumbnail of a full (no DCT scaling) decode: the accuracy yardstick."""
    import pdqhash
    from PIL import Image

    from hashmesh.node.hashing.hasher import _to_rgb

    with Image.open(path) as im:
        im.load()
        rgb = _to_rgb(im)
        rgb.thumbnail((512, 512))
        bits, quality = pdqhash.compute(np.ascontiguousarray(np.asarray(rgb)))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality)


def hashing_child(
    paths: list[Path],
    module_path: str | None,
    rounds: int,
    conn: multiprocessing.connection.Connection,
) -> None:
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        if module_path is None:
            from hashmesh.node.hashing.hasher import hash_file
        else:
            spec = importlib.util.spec_from_file_location("baseline_hashing", module_path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            hash_file = mod.hash_file
        rates, hashes = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            hashes = [hash_file(p).pdq for p in paths]
            rates.append(len(paths) / (time.perf_counter() - t))
        conn.send({"rates": rates, "hashes": hashes})
    except BaseException as exc:
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
    finally:
        conn.close()


def bench_hashing(args: argparse.Namespace) -> tuple[str, list[str]]:
    from hashmesh.protocol.hashing import pdq_distance

    with tempfile.TemporaryDirectory(prefix="hashmesh-jpegs-") as tmp:
        print(f"\n== hashing: making {args.hashing} JPEGs of 1-3 MP", flush=True)
        paths = make_jpegs(Path(tmp), args.hashing, args.seed)
        sizes = [p.stat().st_size for p in paths]
        full = [full_decode_pdq(p) for p in paths]
        good = [i for i, (_, q) in enumerate(full) if q >= 50]
        variants: list[tuple[str, str | None]] = [("hashmesh.node.hashing.hasher.hash_file", None)]
        if args.hashing_baseline:
            variants.insert(0, ("before (--hashing-baseline)", args.hashing_baseline))
        # A fresh interpreter without the fixed mmap threshold main() sets for the RSS
        # figures: with it every decoded picture is a new mmap and its page faults, which
        # cost ~20% of the hashing time and is not how a node runs.
        ctx = mp.get_context("spawn")
        os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
        results: dict[str, list[float]] = {}
        rows = []
        # Alternate the variants round by round, so load changes hit both alike.
        for _ in range(args.hashing_rounds):
            for label, module in variants:
                parent, sub = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=hashing_child, args=(paths, module, 1, sub))
                proc.start()
                sub.close()
                res = parent.recv()
                proc.join()
                if "error" in res:
                    raise RuntimeError(res["error"])
                results.setdefault(label, []).extend(res["rates"])
                results[label + " hashes"] = res["hashes"]
        for label, _ in variants:
            hashes = results[label + " hashes"]
            d_all = [pdq_distance(h, f) for h, (f, _) in zip(hashes, full, strict=True)]
            d_good = [d_all[i] for i in good]
            rates = results[label]
            rows.append(
                [
                    label,
                    f"{statistics.median(rates):.1f}",
                    ", ".join(f"{r:.0f}" for r in rates),
                    f"{max(d_good)} / {statistics.median(d_good):g}",
                    f"{max(d_all)}",
                ]
            )
            print(render(HASH_HEADER, rows[-1:]), flush=True)
    desc = (
        f"{len(paths)} JPEGs, {min(sizes) / 1e6:.2f}-{max(sizes) / 1e6:.2f} MB "
        f"(median {statistics.median(sizes) / 1e6:.2f} MB), 1-3 MP, quality 85-95, made from "
        "the reference images (upscaled, cropped, Gaussian noise sigma 6). `hash_file` "
        "(md5+sha1+sha256+PDQ) in a child pinned to one core; distance is to the PDQ of the 512 "
        f"thumbnail of a full decode, over the {len(good)} images with PDQ quality >= 50 "
        "(publishable) and over all."
    )
    return desc, [render(HASH_HEADER, rows)]


HASH_HEADER = [
    "hasher",
    "images/s, one core (median)",
    "each round",
    "bits from full decode, quality >= 50: max / median",
    "max, all images",
]


# -- docs -----------------------------------------------------------------------------------


def versions() -> str:
    from importlib.metadata import version

    out = [f"numpy {np.__version__}"]
    for dist in ("threatexchange", "faiss-cpu", "pillow", "pdqhash"):
        try:
            out.append(f"{dist} {version(dist)}")
        except Exception:
            out.append(f"{dist} not installed")
    return ", ".join(out)


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # A fixed mmap threshold stops glibc from serving big arrays out of heap pages an
        # earlier stage left resident, which would hide them from the RSS measurements.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 17)}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1M", help="comma-separated, e.g. 1M,10M; 0 for none")
    ap.add_argument("--datasets", default="random,clustered", help="random, clustered or both")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threshold", type=int, default=31)
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument(
        "--contenders", default="hashmesh,te-mih", help=f"any of {','.join(CONTENDERS)}"
    )
    ap.add_argument(
        "--baseline",
        help="an older hashmesh/node/matching/pdq_index.py to run as contender 'baseline'",
    )
    ap.add_argument(
        "--flat-max",
        type=parse_size,
        default=parse_size("1M"),
        help="largest size for te-flat (float32 L2 brute force: 1 KiB per hash, slow)",
    )
    ap.add_argument("--brute-queries", type=int, default=50, help="queries timed for brute force")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    ap.add_argument("--flat-queries", type=int, default=100, help="queries timed for te-flat")
    ap.add_argument("--hashing", type=int, default=0, help="also time hash_file on N JPEGs")
    ap.add_argument("--hashing-rounds", type=int, default=3)
    ap.add_argument(
        "--hashing-baseline", help="an older hashmesh/node/hashing/hasher.py to compare"
    )
    ap.add_argument(
        "--write-docs", action="store_true", help="replace our section of docs/benchmarks.md"
    )
    args = ap.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",") if parse_size(s) > 0]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    names = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if args.baseline and "baseline" not in names:
        names.insert(1, "baseline")
    notes: list[str] = []
    try:
        import faiss  # noqa: F401
        import threatexchange  # noqa: F401
    except ImportError as exc:
        msg = f"threatexchange/faiss not importable ({exc}); pip install threatexchange faiss-cpu"
        print(msg)
        notes.append(msg)
        names = [n for n in names if not n.startswith("te-")]

    rows: list[list[str]] = []
    descs: dict[str, str] = {}
    loads: list[str] = []
    for dataset in datasets:
        for n in sizes:
            print(f"\n== {dataset}, {n:,} hashes: generating data", flush=True)
            words, queries, descs[dataset] = make_data(
                dataset, n, args.queries, args.threshold, args.seed
            )
            print("   brute force (ground truth, both cores)", flush=True)
            truth = brute_force(words, queries, args.threshold)
            lat = brute_latency(words, queries[: args.brute_queries], args.threshold)
            found = {p for p in truth if p[0] < args.brute_queries}
            per_query = len(truth) / len(queries)
            print(f"   {len(truth)} true pairs ({per_query:.1f} per query)", flush=True)
            brute = {
                "lat": lat,
                "found": found,
                "mem": words.nbytes,
                "note": f"input array only; {len(lat)} queries timed; {per_query:.1f} "
                "true matches per query",
            }
            rows.append(
                fmt_row(dataset, n, "numpy brute force (bitwise_count, no index)", brute, found)
            )
            print(rows[-1], flush=True)
            run = [m for m in names if not (m == "te-flat" and n > args.flat_max)]
            results = run_children(run, words, queries, args.threshold, args)
            for name in run:
                rows.append(fmt_row(dataset, n, CONTENDERS[name][0], results[name], truth))
                print(rows[-1], flush=True)
            loads.append(f"{dataset} {n:,}: {load_text()}")
            del words, queries, truth
    parts: list[str] = []
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    parts += [
        f"Measured {date} on {machine()}; {versions()}.",
        f"Command: `.venv/bin/python bench/match.py {' '.join(sys.argv[1:])}`.",
        "",
    ]
    if rows:
        parts += [
            f"Threshold {args.threshold}; {args.queries:,} queries per dataset, half of them a "
            f"stored hash with 0..{args.threshold} bits flipped. Datasets: "
            + "; ".join(f"**{d}**: {desc}" for d, desc in descs.items())
            + ". All contenders are built in one forked child and timed in "
            f"{args.rounds} alternating rounds (so they share the machine's load); q/s are "
            "the median round, latencies pooled over rounds. One by one is one `query` call "
            "per hash; batch is one call for all queries. Recall is against numpy brute force. "
            "Peak "
            "RSS is the rise of the kernel's high-water mark (VmHWM, reset just before each "
            "build), i.e. the build's own peak; RSS after build is the steady rise. "
            "threatexchange's input hex strings are made before the reset.",
            "",
            render(HEADER, rows),
            "",
            "Load average (1, 5, 15 min) after each block: " + "; ".join(loads) + ".",
            "",
        ]
    if args.hashing:
        desc, tables = bench_hashing(args)
        parts += ["### Hashing JPEGs (`--hashing`)", "", desc, "", *tables, ""]
        parts += [f"Load average after hashing: {load_text()}.", ""]
    parts += [f"- {n}" for n in notes]
    print("\n" + "\n".join(parts))
    if args.write_docs:
        replace_section(SECTION, "\n".join([SECTION, "", *parts, ""]))


if __name__ == "__main__":
    main()
