"""How long a PDQ query waits while the index takes a sync and a revocation, in-process.

    .venv/bin/python bench/index_stall.py [--signals 1M] [--revoke 100k] [--every-ms 80]

A `Matcher` over an empty PDQ index is fed pages of 5,000 random PDQ adds at a fixed pace
(--every-ms apart: 80 ms is about the 60,000 changes/s a node's feed moves during a sync
here), then the revocation of --revoke of them in pages of 5,000, through `Matcher.apply`
as a worker's feed follower calls it; meanwhile another thread queries one PDQ hash every
20 ms through the matcher's index lock and times each query (lock wait included). What it
isolates is the index: no HTTP, no SQLite, no other process. bench/load.py measures the
same through real node and worker processes (its paced PDQ probe).

To compare revisions, run the same script with PYTHONPATH at a git worktree of each:
`PYTHONPATH=/tmp/wt-old .venv/bin/python bench/index_stall.py`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import numpy as np
from benchenv import machine

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT))

from hashmesh.node.matching.matcher import Matcher  # noqa: E402
from hashmesh.node.matching.pdq_index import PDQIndex, words_to_hex  # noqa: E402

PAGE = 5000
PROBE_EVERY_S = 0.02


def parse_count(text: str) -> int:
    t = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--signals", type=parse_count, default=1_000_000)
    parser.add_argument("--revoke", type=parse_count, default=100_000)
    parser.add_argument("--every-ms", type=float, default=80.0)
    args = parser.parse_args()
    sys.setswitchinterval(0.0005)  # as the worker sets it
    rng = np.random.default_rng(18)
    pages = [
        (list(range(s, s + PAGE)), words_to_hex(rng.integers(0, 2**63, (PAGE, 4), np.uint64)))
        for s in range(0, args.signals, PAGE)
    ]
    query = words_to_hex(rng.integers(0, 2**63, (1, 4), np.uint64))
    matcher = Matcher()
    matcher.load(PDQIndex(), 0)
    waits: dict[str, list[float]] = {"sync": [], "revocation": []}
    applies: dict[str, list[float]] = {"sync": [], "revocation": []}
    phase = ["sync"]
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            t = time.perf_counter()
            matcher._pdq_hits(query, 31, 101)
            waits[phase[0]].append(time.perf_counter() - t)
            time.sleep(PROBE_EVERY_S)

    prober = threading.Thread(target=probe)
    prober.start()
    every = args.every_ms / 1000
    start = time.perf_counter()
    for i, (keys, hexes) in enumerate(pages):
        time.sleep(max(0.0, start + i * every - time.perf_counter()))
        t = time.perf_counter()
        matcher.apply(list(zip(keys, hexes, strict=True)), [], i + 1)
        applies["sync"].append(time.perf_counter() - t)
    phase[0] = "revocation"
    start = time.perf_counter()
    for i, s in enumerate(range(0, args.revoke, PAGE)):
        time.sleep(max(0.0, start + i * every - time.perf_counter()))
        t = time.perf_counter()
        matcher.apply([], list(range(s, min(s + PAGE, args.revoke))), len(pages) + i + 1)
        applies["revocation"].append(time.perf_counter() - t)
    time.sleep(1.0)
    done.set()
    prober.join()
    print(f"{machine()}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"{args.signals:,} adds then {args.revoke:,} revocations, pages of {PAGE:,} every")
    print(f"{args.every_ms:g} ms; a PDQ query every {PROBE_EVERY_S * 1000:g} ms\n")
    print("| phase | queries | p50 ms | p99 ms | max ms | slowest apply ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, w in waits.items():
        w.sort()
        slowest = max(applies[name], default=0.0)
        print(
            f"| {name} | {len(w)} | {w[len(w) // 2] * 1000:.1f} | "
            f"{w[int(0.99 * len(w))] * 1000:.1f} | {w[-1] * 1000:.0f} | {slowest * 1000:.0f} |"
        )


if __name__ == "__main__":
    main()
