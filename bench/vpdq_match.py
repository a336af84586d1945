"""vPDQ matching benchmark: the vPDQ index against numpy brute force, 60-frame queries.

Why it is built this way: each indexed video is 60 frames (a minute at vpdq's default of
one frame a second) drawn as a random walk, each frame 6-20 bits from the one before, so a
video's frames sit near each other as a real scene's do and one query frame reaches
several frames of its video; 5 % of frames have a quality under 50. Half the queries are
re-encodes of indexed videos (every frame 0-24 bits away: they must match), half unrelated
walks (they must not). Brute force compares every query frame with every indexed frame
and counts per video by Meta's rule: it is the ground truth for recall, and what a
matcher without an index pays per query.

    .venv/bin/python bench/vpdq_match.py                        # 10k and 100k videos
    .venv/bin/python bench/vpdq_match.py --sizes 10k --queries 40 --write-docs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchenv import load_text, machine, replace_section  # noqa: E402

from hashmesh.node.matching.vpdq_index import (  # noqa: E402
    DISTANCE,
    QUALITY,
    QUERY_PERCENT,
    VideoFrames,
    VPDQIndex,
)

SECTION = "## vPDQ matching (bench/vpdq_match.py)"
FRAMES = 60
U64 = npt.NDArray[np.uint64]


def _flip(words: U64, bits: npt.NDArray[np.int64], rng: np.random.Generator) -> U64:
    """Each row of `words` with bits[i] random bits flipped."""
    out = words.copy()
    view = out.view(np.uint8).reshape(len(words), 32)
    for i, b in enumerate(bits.tolist()):
        pos = rng.choice(256, size=b, replace=False)
        np.bitwise_xor.at(view[i], pos // 8, (1 << (pos % 8)).astype(np.uint8))
    return out


def walk(rng: np.random.Generator, n: int = FRAMES) -> U64:
    """One video's frames: a random start, then 6-20 bits from the frame before."""
    frames = np.empty((n, 4), dtype=np.uint64)
    frames[0] = rng.integers(0, 2**64, size=4, dtype=np.uint64)
    steps = rng.integers(6, 21, size=n)
    for i in range(1, n):
        frames[i] = _flip(frames[i - 1 : i], steps[i : i + 1], rng)[0]
    return frames


def library(n: int, seed: int) -> tuple[U64, npt.NDArray[np.int64]]:
    """All frames of n videos, (n * FRAMES, 4), and their qualities."""
    rng = np.random.default_rng(seed)
    words = np.empty((n * FRAMES, 4), dtype=np.uint64)
    start = rng.integers(0, 2**64, size=(n, 4), dtype=np.uint64)
    # Vectorised walk over all videos at once: flip a random set of bits per step.
    cur = start.copy()
    for f in range(FRAMES):
        if f:
            steps = rng.integers(6, 21, size=n)
            cur_bytes = cur.view(np.uint8).reshape(n, 32)
            for k in range(20):
                active = steps > k
                pos = rng.integers(0, 256, size=n)
                cur_bytes[active, pos[active] // 8] ^= (1 << (pos[active] % 8)).astype(np.uint8)
        words[f::FRAMES] = cur
    quality = np.where(rng.random(n * FRAMES) < 0.05, 30, 100).astype(np.int64)
    return words, quality


def brute(
    query: VideoFrames, words: U64, quality: npt.NDArray[np.int64], n: int
) -> dict[int, float]:
    """Query share of every video the query matches, over every frame pair (frames in
    `words` are distinct within a video, checked by the caller)."""
    q = query.words[query.quality >= QUALITY]
    q = np.unique(q, axis=0)
    keep = quality >= QUALITY
    video = np.repeat(np.arange(n), FRAMES)[keep]
    frames = words[keep]
    q_hit = np.zeros((len(q), n), dtype=np.bool_)
    step = 1 << 14  # (60, step, 4) words of XOR at a time: 31 MiB
    for lo in range(0, len(frames), step):
        block = frames[lo : lo + step]
        d = np.bitwise_count(q[:, None, :] ^ block[None, :, :]).sum(axis=2, dtype=np.int16)
        qi, fi = np.nonzero(d <= DISTANCE)
        q_hit[qi, video[lo + fi]] = True
    share = q_hit.sum(axis=0) * 100 / len(q)
    return {int(v): float(share[v]) for v in np.flatnonzero(share >= QUERY_PERCENT)}


def run(n: int, queries: int, brute_queries: int, seed: int) -> dict[str, float]:
    t0 = time.perf_counter()
    words, quality = library(n, seed)
    seconds = np.tile(np.arange(FRAMES, dtype=np.float64), n)
    gen_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = VPDQIndex()
    index.add_many(
        (
            v,
            VideoFrames(
                words[v * FRAMES : (v + 1) * FRAMES],
                quality[v * FRAMES : (v + 1) * FRAMES],
                seconds[v * FRAMES : (v + 1) * FRAMES],
            ),
        )
        for v in range(n)
    )
    build_s = time.perf_counter() - t0
    assert index.frames == int((quality >= QUALITY).sum()), "frames repeated within a video"
    rng = np.random.default_rng(seed + 1)
    qs: list[tuple[VideoFrames, int | None]] = []
    for i in range(queries):
        q_quality = np.full(FRAMES, 100, dtype=np.int64)
        q_seconds = np.arange(FRAMES, dtype=np.float64)
        if i % 2 == 0:
            v = int(rng.integers(n))
            src = words[v * FRAMES : (v + 1) * FRAMES]
            q_words = _flip(src, rng.integers(0, 25, size=FRAMES), rng)
            qs.append((VideoFrames(q_words, q_quality, q_seconds), v))
        else:
            qs.append((VideoFrames(walk(rng), q_quality, q_seconds), None))
    for q, _ in qs[:4]:  # warm the caches and the executor
        index.query(q)
    lat = []
    answers = []
    for q, _ in qs:
        t = time.perf_counter()
        answers.append(index.query(q))
        lat.append(time.perf_counter() - t)
    found = wanted = 0
    exact = True
    t_brute = 0.0
    for (q, v), got in list(zip(qs, answers, strict=True))[:brute_queries]:
        t = time.perf_counter()
        truth = brute(q, words, quality, n)
        t_brute += time.perf_counter() - t
        mine = {m.key: m.query_percent for m in got}
        exact &= mine == truth
        wanted += len(truth)
        found += len(set(truth) & set(mine))
        if v is not None:
            assert v in truth, "a re-encode did not match its video"
    matched = [len(a) > 0 for a in answers]
    lat_ms = np.array(lat) * 1000
    return {
        "videos": n,
        "frames": index.frames,
        "gen_s": gen_s,
        "build_s": build_s,
        "qps": len(lat) / sum(lat),
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "qps_matched": sum(matched[0::2]) / sum(lat[0::2]),
        "recall": found / wanted if wanted else 1.0,
        "exact": float(exact),
        "checked": float(min(brute_queries, len(qs))),
        "brute_qps": min(brute_queries, len(qs)) / t_brute if t_brute else 0.0,
        "index_mib": index.nbytes / 2**20,
    }


def parse_size(text: str) -> int:
    text = text.strip().lower()
    mult = 1000 if text.endswith("k") else 1
    return int(float(text.rstrip("k")) * mult)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10k,100k")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--brute", type=int, default=20, help="queries checked by brute force")
    ap.add_argument("--seed", type=int, default=20)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    rows = [run(parse_size(s), args.queries, args.brute, args.seed) for s in args.sizes.split(",")]
    head = (
        "| videos | frames indexed | build s | queries/s | p50 ms | p99 ms "
        "| recall (brute-checked queries) | exact | brute force queries/s | index MiB |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {int(r['videos']):,} | {int(r['frames']):,} | {r['build_s']:.1f} "
            f"| {r['qps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
            f"| {r['recall']:.3f} ({int(r['checked'])}) | {'yes' if r['exact'] else 'NO'} "
            f"| {r['brute_qps']:.2f} | {r['index_mib']:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    print(f"machine: {machine()}; load {load_text()}")
    if args.write_docs:
        body = (
            f"{SECTION}\n\n"
            f"{time.strftime('%Y-%m-%d', time.gmtime())}, {machine()}, load {load_text()}.\n"
            f"Each video {FRAMES} frames (a minute at one frame a second), each a random walk"
            " (6-20 bits from the frame before), 5 % of frames under quality 50; queries of"
            f" {FRAMES} frames, half re-encodes of an indexed video (each frame 0-24 bits off),"
            f" half unrelated; {args.queries} queries a size (a query's frames may be split"
            " over idle cores, as the PDQ index does), the first"
            f" {args.brute} checked against brute force over every frame pair (recall and"
            " `exact`: the same videos at the same query share). Meta's rule: quality >= 50,"
            " distance <= 31, >= 80 % of the query's distinct frames.\n\n"
            f"{table}\n"
        )
        replace_section(SECTION, body)


if __name__ == "__main__":
    main()
