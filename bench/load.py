"""Load: sustained HTTP match requests while the node ingests a large sync.

A seed home holding --signals md5 adds (batches of 5,000 ops) is built offline with
NodeService.publish, and a target home holding --local own md5 signals (the hits). Both
run as real `hashmesh run` processes on 127.0.0.1. --clients client processes, each an
aiohttp session with keep-alive and --concurrency requests in flight, post
`POST /v1/match` (one md5 query, half hits, half misses) to the target for the whole run.

Phases, measured on the same client processes:

1. without ingest: --duration seconds of matches while nothing else happens;
2. during ingest: the seed is added as the target's peer (POST /v1/admin/peers starts a
   sync round at once) and matches continue until the target's /v1/status shows every
   seed signal live (or --ingest-timeout passes).

For each phase: requests/s, p50/p99/max latency, errors. --py-spy N records the target
with py-spy for N seconds during ingest and prints the hottest functions.

    .venv/bin/python bench/load.py                         # 1,000,000 signals
    .venv/bin/python bench/load.py --signals 200k --duration 10
    .venv/bin/python bench/load.py --write-docs            # the table into docs/benchmarks.md

Every node process is stopped on exit; homes live in a temporary folder that is removed
afterwards unless --keep is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

# benchenv and benchnodes are found in bench/ (sys.path[0]): imported before bench/ leaves sys.path
from benchenv import machine, replace_section
from benchnodes import Node, make_node, spawn, stop, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
# bench/protocol.py would shadow the protocol package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.append(str(ROOT))

from hashmesh.node.config import Home, Peer, Trust  # noqa: E402
from hashmesh.node.service import NodeService  # noqa: E402
from hashmesh.protocol.ops import AddOp  # noqa: E402

SECTION = "## Load (bench/load.py)"
COLLECTION = "csam"
LOCAL = "local"
BATCH_SIZE = 5000
PHASES = ("warmup", "without ingest", "during ingest", "after")


def parse_count(text: str) -> int:
    text = text.lower().replace("_", "").replace(",", "")
    for suffix, factor in (("k", 1000), ("m", 1_000_000)):
        if text.endswith(suffix):
            return int(float(text[:-1]) * factor)
    return int(text)


def publish_offline(node: Node, collection: str, values: list[str]) -> float:
    t = time.monotonic()
    service = NodeService(Home(node.home))
    try:
        for start in range(0, len(values), BATCH_SIZE):
            chunk = values[start : start + BATCH_SIZE]
            service.publish(collection, [AddOp.create("md5", v, category="csam") for v in chunk])
    finally:
        service.close()
    return time.monotonic() - t


# -- load clients (separate processes) ------------------------------------------------------


def client_main(
    url: str, token: str, values: list[str], concurrency: int, phase: Any, out: Any, seed: int
) -> None:
    """Post matches until phase is -1; latencies (ms) are kept per phase at send time."""
    rng = random.Random(seed)
    misses = [rng.randbytes(16).hex() for _ in range(len(values))]
    bodies = [
        json.dumps({"queries": [{"type": "md5", "value": v}]}).encode()
        for pair in zip(values, misses, strict=True)
        for v in pair
    ]
    rng.shuffle(bodies)
    latencies: dict[int, list[float]] = {i: [] for i in range(len(PHASES))}
    errors: Counter[str] = Counter()

    async def worker(session: aiohttp.ClientSession, start: int) -> None:
        i = start
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        while True:
            p = phase.value
            if p < 0:
                return
            body = bodies[i % len(bodies)]
            i += 7
            t = time.perf_counter()
            try:
                async with session.post(url + "/v1/match", data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors[f"HTTP {r.status}"] += 1
                        continue
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)
                continue
            latencies[p].append((time.perf_counter() - t) * 1000)

    async def run() -> None:
        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(worker(session, n) for n in range(concurrency)))

    asyncio.run(run())
    out.put({"latencies": latencies, "errors": dict(errors)})


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# -- the run --------------------------------------------------------------------------------


async def status_of(node: Node) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(node.url + "/v1/status", headers=node.auth) as r,
    ):
        return dict(await r.json())


async def add_peer(target: Node, seed: Node) -> None:
    body = {"name": seed.name, "url": seed.url, "node_id": seed.node_id, "share": []}
    async with (
        aiohttp.ClientSession() as session,
        session.post(target.url + "/v1/admin/peers", json=body, headers=target.auth) as r,
    ):
        assert r.status == 200, await r.text()


def py_spy(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    exe = Path(sys.executable).with_name("py-spy")
    if not exe.exists():
        print("py-spy not found next to the interpreter; no profile")
        return None
    return subprocess.Popen(
        [
            str(exe),
            "record",
            "-p",
            str(pid),
            "-d",
            str(seconds),
            "-r",
            "200",
            "-f",
            "raw",
            "-o",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarise_profile(raw: Path, top: int = 15) -> list[tuple[str, float, float]]:
    """(function, self %, inclusive %) of the hottest functions in a py-spy raw file."""
    self_counts: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        n = int(count_text)
        frames = stack.split(";")
        total += n
        names = [re.sub(r" \(.*?:\d+\)$", "", f).strip() + " " + _file(f) for f in frames]
        self_counts[names[-1]] += n
        for name in set(names):
            incl[name] += n
    return [
        (name, 100 * c / total, 100 * incl[name] / total)
        for name, c in self_counts.most_common(top)
    ]


def _file(frame: str) -> str:
    m = re.search(r"\((.*?):\d+\)$", frame)
    return f"({Path(m.group(1)).name})" if m else ""


async def main_async(args: argparse.Namespace, root: Path, nodes: list[Node]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    seed = make_node(root, "seed")
    target = make_node(root, "target")
    nodes += [seed, target]
    print(f"building the seed: {args.signals:,} md5 signals offline ...", flush=True)
    build_s = publish_offline(
        seed, COLLECTION, [rng.randbytes(16).hex() for _ in range(args.signals)]
    )
    local = [rng.randbytes(16).hex() for _ in range(args.local)]
    publish_offline(target, LOCAL, local)
    print(f"  built in {build_s:.0f} s", flush=True)
    h = Home(seed.home)
    config = h.load_config()
    config.add_peer(
        Peer(name=target.name, url=target.url, node_id=target.node_id, share=[COLLECTION])
    )
    h.save_config(config)
    h = Home(target.home)
    config = h.load_config()
    config.add_trust(Trust(node_id=seed.node_id, collection=COLLECTION, name=seed.name))
    h.save_config(config)
    for n in (seed, target):
        spawn(n)
    async with aiohttp.ClientSession() as session:
        await wait_healthy(session, [seed, target], timeout=60)

    phase = mp.Value("i", 0)
    out: mp.Queue[dict[str, Any]] = mp.Queue()
    ctx_procs = [
        mp.Process(
            target=client_main,
            args=(target.url, target.token, local, args.concurrency, phase, out, n),
        )
        for n in range(args.clients)
    ]
    for p in ctx_procs:
        p.start()
    durations: dict[str, float] = {}
    ingest: dict[str, Any] = {}
    profile: list[tuple[str, float, float]] = []
    try:
        await asyncio.sleep(args.warmup)
        phase.value = 1
        t0 = time.monotonic()
        loads = [os.getloadavg()[0]]
        await asyncio.sleep(args.duration)
        durations["without ingest"] = time.monotonic() - t0
        loads.append(os.getloadavg()[0])

        phase.value = 2
        t0 = time.monotonic()
        await add_peer(target, seed)
        spy = None
        raw = root / "target.pyspy.txt"
        if args.py_spy and target.proc is not None:
            spy = py_spy(target.proc.pid, args.py_spy, raw)
        live = 0
        while time.monotonic() - t0 < args.ingest_timeout:
            await asyncio.sleep(1.0)
            status = await status_of(target)
            live = int(status["live_by_collection"].get(COLLECTION, 0))
            print(
                f"  ingest: {live:,} / {args.signals:,} live after {time.monotonic() - t0:.0f} s",
                flush=True,
            )
            if live >= args.signals:
                break
        durations["during ingest"] = time.monotonic() - t0
        loads.append(os.getloadavg()[0])
        ingest = {
            "seconds": durations["during ingest"],
            "live": live,
            "complete": live >= args.signals,
        }
        phase.value = 3
        if spy is not None:
            spy.wait(timeout=args.py_spy + 30)
            if raw.exists():
                profile = summarise_profile(raw)
    finally:
        phase.value = -1
        results = [out.get(timeout=120) for _ in ctx_procs]
        for p in ctx_procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()

    table: dict[str, dict[str, float]] = {}
    errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
    for index, name in enumerate(PHASES):
        if name not in durations:
            continue
        lat = sorted(x for r in results for x in r["latencies"][index])
        table[name] = {
            "requests": len(lat),
            "rps": len(lat) / durations[name],
            "p50": percentile(lat, 0.50),
            "p99": percentile(lat, 0.99),
            "max": lat[-1] if lat else float("nan"),
            "seconds": durations[name],
        }
    return {
        "table": table,
        "errors": dict(errors),
        "ingest": ingest,
        "build_s": build_s,
        "profile": profile,
        "load": loads,
    }


def render(args: argparse.Namespace, result: dict[str, Any]) -> str:
    t = result["table"]
    ingest = result["ingest"]
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d %H:%M %Z')}. Load average "
        f"(1 min) at the start / after the no-ingest phase / after ingest: "
        + " / ".join(f"{x:.2f}" for x in result["load"])
        + ".",
        "",
        f"Command: `.venv/bin/python bench/load.py --signals {args.signals} --clients "
        f"{args.clients} --concurrency {args.concurrency} --duration {args.duration:g}"
        + (f" --py-spy {args.py_spy}" if args.py_spy else "")
        + "`. "
        f"{args.clients} client processes (aiohttp, keep-alive, {args.concurrency} requests "
        "in flight each) post `POST /v1/match` with one md5 query (half hits among "
        f"{args.local:,} local signals, half misses) to a target node, on the same machine. "
        f"During ingest the target pulls a seed's {args.signals:,} md5 signals (built "
        f"offline in {result['build_s']:.0f} s, batches of {BATCH_SIZE:,}); ingest "
        + (
            f"completed in {ingest['seconds']:.1f} s "
            f"({ingest['live'] / ingest['seconds']:,.0f} signals/s)."
            if ingest.get("complete")
            else f"did not complete: {ingest.get('live', 0):,} live after "
            f"{ingest.get('seconds', 0):.0f} s."
        ),
        "",
        "| phase | requests | seconds | matches/s | p50 ms | p99 ms | max ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("without ingest", "during ingest"):
        if name in t:
            r = t[name]
            lines.append(
                f"| {name} | {r['requests']:,} | {r['seconds']:.1f} | {r['rps']:,.0f} | "
                f"{r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.0f} |"
            )
    lines.append("")
    lines.append(f"Errors: {result['errors'] or 'none'}.")
    during = t.get("during ingest")
    if during:
        ok = during["rps"] >= 2000 and during["p99"] <= 50
        lines.append(
            f"Target (>= 2,000 matches/s with p99 <= 50 ms while ingesting): "
            f"{'met' if ok else 'MISSED'} ({during['rps']:,.0f}/s, p99 "
            f"{during['p99']:.1f} ms)."
        )
    if result["profile"]:
        lines += ["", "py-spy on the target during ingest (self %, inclusive %):", ""]
        for name, self_pct, incl_pct in result["profile"][:12]:
            lines.append(f"- `{name}`: {self_pct:.1f} % self, {incl_pct:.1f} % inclusive")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signals", type=parse_count, default=1_000_000)
    parser.add_argument("--local", type=parse_count, default=10_000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--ingest-timeout", type=float, default=300.0)
    parser.add_argument("--py-spy", type=int, default=0, help="seconds of py-spy during ingest")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="hm-load-"))
    nodes: list[Node] = []
    try:
        result = asyncio.run(main_async(args, root, nodes))
    finally:
        stop(nodes, timeout=20)
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"homes kept in {root}")
    text = render(args, result)
    print()
    print(text)
    if args.write_docs:
        replace_section(SECTION, text)


if __name__ == "__main__":
    main()
