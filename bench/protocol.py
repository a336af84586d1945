"""Protocol core throughput: build+sign and verify+apply, per op, on one core.

Run `python bench/protocol.py` (or `make bench`). The numbers are medians of several
repeats, because a single run on a shared machine says more about the neighbours than about
the code. Ops are realistic adds (a mix of signal types with labels), so the cost per op
includes schema validation and signal checks, which are what dominate ingest.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchenv import cpu_model

from hashmesh.node.runtime import tune_gc
from hashmesh.protocol.batches import build_batch, verify_batch
from hashmesh.protocol.ops import AddOp
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.state import State

SIZES = (1, 100, 10_000)


def pin_one_core() -> str:
    """Pin to one CPU so the figure is per core, not whatever the scheduler spreads."""
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})
        return f"pinned to CPU {cpus[-1]}"
    return "not pinned (no sched_setaffinity)"


def make_ops(n: int, salt: int) -> list[AddOp]:
    ops = []
    for i in range(n):
        x = (salt << 32) | i
        kind = i % 4
        if kind == 0:
            ops.append(AddOp.create("md5", f"{x:032x}", category="csam", classification="A1"))
        elif kind == 1:
            ops.append(AddOp.create("sha256", f"{x:064x}", category="csam"))
        elif kind == 2:
            ops.append(AddOp.create("pdq", f"{x:064x}", category="ncii", quality=90))
        else:
            ops.append(AddOp.create("sha1", f"{x:040x}", category="terror", ref=f"case-{i}"))
    return ops


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of fn; what fn returns is freed after the clock stops, because
    tearing down a replica is not part of ingesting into it."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
        del result
    return statistics.median(times)


def run(repeats: int) -> list[tuple[int, float, float, int]]:
    key = SigningKey(bytes(range(1, 33)))
    rows = []
    for size in SIZES:
        batches_per_run = min(2_000, max(2, 20_000 // size))
        ops_sets = [make_ops(size, s) for s in range(batches_per_run)]

        def build(ops_sets: list[list[AddOp]] = ops_sets) -> None:
            for seq, ops in enumerate(ops_sets, start=1):
                build_batch(key, "bench", seq, None if seq == 1 else b"\0" * 32, 0, ops)

        prev = None
        frames = []
        for seq, ops in enumerate(ops_sets, start=1):
            batch = build_batch(key, "bench", seq, prev, 1_700_000_000, ops)
            prev = batch.hash
            frames.append(batch.to_bytes())

        def ingest(frames: list[bytes] = frames) -> State:
            state = State()
            for frame in frames:
                state.receive(verify_batch(frame))
            return state

        total_ops = size * batches_per_run
        t_build = median_seconds(build, repeats)
        t_ingest = median_seconds(ingest, repeats)
        rows.append((size, total_ops / t_build, total_ops / t_ingest, batches_per_run))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's default GC thresholds instead of the node's (node/runtime.py)",
    )
    args = parser.parse_args()
    pinned = pin_one_core()
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores, {pinned}")
    if not args.default_gc:
        tune_gc()
    print(f"python: {platform.python_version()}, median of {args.repeats} repeats")
    setting = "default" if args.default_gc else "as the node runs"
    print(f"gc thresholds: {gc.get_threshold()} ({setting})")
    print()
    print("| ops/batch | batches/run | build+sign ops/s | verify+apply ops/s |")
    print("| ---: | ---: | ---: | ---: |")
    for size, build_rate, ingest_rate, batches in run(args.repeats):
        print(f"| {size:,} | {batches:,} | {build_rate:,.0f} | {ingest_rate:,.0f} |")


if __name__ == "__main__":
    main()
