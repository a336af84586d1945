"""Protocol core throughput: build+sign and verify+apply, per op, on one core.

Run `python bench/protocol.py` (or `make bench`); `--trust` adds the cost of deciding a
batch by certificates, hand-overs and revocations (protocol/authority.py) beside plain
verification, in the same run. The numbers are medians of several
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
from hashmesh.protocol.authority import Authority
from hashmesh.protocol.batches import Batch, Header, build_batch, verify_batch
from hashmesh.protocol.certificates import CertBody, HandoverBody, KeyRevokeBody
from hashmesh.protocol.kinds import REGISTRY, parse
from hashmesh.protocol.ops import AddOp, AnyOp
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.state import State
from hashmesh.protocol.statements import Statement, add_signatures, sign_statement

SIZES = (1, 100, 10_000)


def pin_one_core() -> str:
    """Pin to one CPU so the figure is per core, not whatever the scheduler spreads."""
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})
        return f"pinned to CPU {cpus[-1]}"
    return "not pinned (no sched_setaffinity)"


def make_ops(n: int, salt: int) -> list[AnyOp]:
    ops: list[AnyOp] = []
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

        def build(ops_sets: list[list[AnyOp]] = ops_sets) -> None:
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


TS = 1_700_000_000


def _cert(org: SigningKey, key: SigningKey) -> Statement:
    body = CertBody(
        ts=TS, org=org.node_id, key=key.node_id, not_before=TS, not_after=TS + 86400 * 365
    )
    return add_signatures(sign_statement(body, [org], REGISTRY), [key])


def _handover(author: str, key: SigningKey, nxt: SigningKey, seq: int) -> Statement:
    body = HandoverBody(
        ts=TS, author=author, collection="bench", key=key.node_id, next=nxt.node_id,
        seq=seq, head="ab" * 32,
    )  # fmt: skip
    return sign_statement(body, [key, nxt], REGISTRY)


def _frames(key: SigningKey, size: int, count: int, author: str | None, first: int) -> list[bytes]:
    out = []
    for i in range(count):
        seq = first + i
        batch: Batch = build_batch(
            key, "bench", seq, b"\0" * 32, (TS + 60) * 1000, make_ops(size, seq), author=author
        )
        out.append(batch.to_bytes())
    return out


def run_trust(repeats: int, size: int) -> list[tuple[str, float, float]]:
    """(case, batches/s, ops/s): the same batches verified alone, then verified and decided."""
    org = SigningKey(bytes([0xC0]) * 32)
    keys = [SigningKey(bytes([0xD0 + i]) * 32) for i in range(4)]
    a = keys[0]
    count = max(50, 5_000 // size)
    plain = _frames(a, size, count, None, 2)
    rotated = _frames(keys[3], size, count, a.node_id, 40)  # signed by the 4th key of a chain
    orgs = frozenset({org.node_id})
    one_cert = Authority([_cert(org, a)])
    chain = Authority(
        [_cert(org, k) for k in keys]
        + [_handover(a.node_id, keys[i], keys[i + 1], 10 * (i + 1)) for i in range(3)]
    )
    crowd_keys = [SigningKey((i + 7).to_bytes(2, "big") * 16) for i in range(1_000)]
    crowd = [_cert(org, k) for k in crowd_keys] + [_cert(org, a)]
    revokes = [
        sign_statement(
            KeyRevokeBody(
                ts=TS, org=org.node_id, key=k.node_id, collection="*", after=3, reason="bench"
            ),
            [org],
            REGISTRY,
        )
        for k in crowd_keys[:100]
    ]
    big = Authority(crowd + revokes)

    def verify(frames: list[bytes]) -> Callable[[], None]:
        def go() -> None:
            for frame in frames:
                verify_batch(frame)

        return go

    def decided(frames: list[bytes], auth: Authority) -> Callable[[], None]:
        def go() -> None:
            for frame in frames:
                batch = verify_batch(frame)
                if auth.check_header(batch.header, orgs) is not None:
                    raise AssertionError("refused")

        return go

    cases = [
        ("verify alone (today)", verify(plain)),
        ("verify + authority, 1 certificate", decided(plain, one_cert)),
        ("verify alone, signer header (4th key)", verify(rotated)),
        ("verify + authority, 3-step rotation chain", decided(rotated, chain)),
        ("verify + authority, 1,001 certs + 100 revocations", decided(plain, big)),
    ]
    # interleaved: each round times every case once, so load that drifts on a shared
    # machine hits all cases alike; the median round per case is reported
    times: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(repeats):
        for name, fn in cases:
            times[name].append(median_seconds(fn, 1))
    rows = []
    for name, _ in cases:
        t = statistics.median(times[name])
        rows.append((name, count / t, count * size / t))
    # the decision alone, on headers verified once: what the authority adds per batch
    plain_headers = [verify_batch(f).header for f in plain]
    rotated_headers = [verify_batch(f).header for f in rotated]
    for name, headers, auth in [
        ("authority decision alone, 1 certificate", plain_headers, one_cert),
        ("authority decision alone, 3-step rotation chain", rotated_headers, chain),
        ("authority decision alone, 1,001 certs + 100 revocations", plain_headers, big),
    ]:

        def decide(headers: list[Header] = headers, auth: Authority = auth) -> None:
            for _ in range(20):
                for header in headers:
                    auth.check_header(header, orgs)

        t = median_seconds(decide, repeats)
        rows.append((name, 20 * count / t, 0.0))

    wires = [s.to_wire() for s in crowd[:200]]

    def parse_statements() -> None:
        for wire in wires:
            parse(wire)

    t = median_seconds(parse_statements, repeats)
    rows.append(("parse + verify a co-signed cert statement", len(wires) / t, 0.0))
    everything = crowd + revokes

    def rebuild() -> None:
        auth = Authority(everything)
        auth.check_header(verify_batch(plain[0]).header, orgs)

    t = median_seconds(rebuild, repeats)
    rows.append(("build an authority of 1,101 statements + first decision", 1 / t, 0.0))
    # a node learning one more statement (a page of gossip) and deciding the next batch
    extra = [_cert(org, SigningKey((i + 3000).to_bytes(2, "big") * 16)) for i in range(200)]
    header = verify_batch(plain[0]).header

    def learn_one() -> None:
        auth = Authority(everything)
        auth.check_header(header, orgs)
        for statement in extra:
            auth.add(statement)
            auth.check_header(header, orgs)
            auth.revocations()

    base = median_seconds(lambda: Authority(everything).check_header(header, orgs), repeats)
    t = (median_seconds(learn_one, repeats) - base) / len(extra)
    rows.append(("add 1 statement to 1,101 held, decide, list revocations", 1 / t, 0.0))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--default-gc",
        action="store_true",
        help="keep CPython's default GC thresholds instead of the node's (node/runtime.py)",
    )
    parser.add_argument(
        "--trust",
        action="store_true",
        help="also: verification with certificates, hand-overs and revocations",
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
    if args.trust:
        for size in (1, 100):
            print()
            print(f"Deciding batches of {size} op(s) by certificate (same run):")
            print()
            print("| case | per second | ops/s |")
            print("| --- | ---: | ---: |")
            for name, rate, ops_rate in run_trust(args.repeats, size):
                ops_cell = f"{ops_rate:,.0f}" if ops_rate else "-"
                print(f"| {name} | {rate:,.0f} | {ops_cell} |")


if __name__ == "__main__":
    main()
