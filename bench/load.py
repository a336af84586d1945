"""Load: a saturating match flood while the node ingests a large sync and a revocation.

The question (issue 18): does matching at full speed slow down what the node exists to do
(ingest, publish, revoke), and does ingest stall matching? Each configuration of
--match-workers (0: matching in the node's own process, as before; N: N matcher worker
processes on the node's match socket) runs the same phases side by side in one run:

1. sync alone: a fresh target pulls the seed's --signals PDQ adds with no flood (the
   reference time);
2. flood: --clients client processes post `POST /v1/match` (one PDQ query: half
   near-duplicates of the target's own signals, half random misses) for --duration s;
   --concurrency requests in flight each (saturating), or with --flood-rate R, R requests
   a second in all on a fixed schedule (a platform below capacity; timed from when due);
3. flood + sync: a second fresh target pulls the same seed under the flood;
4. flood + revocation: the seed withdraws --revoke of its signals (one list withdrawal)
   and the target ingests the revocations under the flood.

Throughout 2-4 a paced PDQ probe (a process of its own) sends --pdq-probe-rate matching
PDQ queries a second on a fixed schedule, each timed from when it was due, and reports per
phase p50/p99/max and the longest gap between two answers: the flood measures throughput
at saturation (its latency is its own queue), the probe what a platform sending at a
steady rate sees, stalls included. --clients 0 runs the phases with no flood, the probe
alone beside the ingest.

Throughout 2-4 a probe in this process publishes one operator add every 250 ms, timing it,
and then polls the match address until the add matches (freshness: how long after its
publish call returned an add is matchable where platforms match). It posts to
`/v1/signals/batch`, which publishes at once: `/v1/signals` waits up to batch_delay_ms
(200 ms by default) on purpose, to coalesce single adds into one batch.

Each configuration starts from its own copy of the seed (built once, offline, with
NodeService.publish) so the revocations of one do not change the next. Memory: PSS of the
target and its worker processes (from /proc/PID/smaps_rollup) at the end of each
configuration.

    .venv/bin/python bench/load.py                                   # 1M PDQ, workers 0 and 2
    .venv/bin/python bench/load.py --signals 200k --duration 10 --match-workers 0,1,2
    .venv/bin/python bench/load.py --write-docs                      # into docs/benchmarks.md

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
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp

# benchenv and benchnodes are found in bench/ (sys.path[0]): imported before bench/ leaves sys.path
from benchenv import free_port, machine
from benchnodes import Node, make_node, report_arguments, run_and_report, spawn, stop, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
# bench/protocol.py would shadow the protocol package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.append(str(ROOT))

from hashmesh.node.config import Home, Peer, Trust  # noqa: E402
from hashmesh.node.service import NodeService  # noqa: E402
from hashmesh.protocol.ops import AddOp  # noqa: E402
from hashmesh.testing import read_runtime  # noqa: E402

SECTION = "## Load (bench/load.py)"
COLLECTION = "csam"
LOCAL = "local"
PROBE = "probe"
BATCH_SIZE = 5000
PROBE_EVERY_S = 0.25
FRESH_TIMEOUT_S = 10.0
PHASES = ("idle", "flood", "flood + sync", "flood + revocation")


def parse_count(text: str) -> int:
    text = text.lower().replace("_", "").replace(",", "")
    for suffix, factor in (("k", 1000), ("m", 1_000_000)):
        if text.endswith(suffix):
            return int(float(text[:-1]) * factor)
    return int(text)


def random_pdq(rng: random.Random) -> str:
    return rng.randbytes(32).hex()


def near(rng: random.Random, value: str, bits: int = 8) -> str:
    n = int(value, 16)
    for b in rng.sample(range(256), bits):
        n ^= 1 << b
    return f"{n:064x}"


def publish_offline(home: Path, collection: str, values: list[str]) -> float:
    t = time.monotonic()
    service = NodeService(Home(home))
    try:
        for start in range(0, len(values), BATCH_SIZE):
            chunk = values[start : start + BATCH_SIZE]
            service.publish(
                collection, [AddOp.create("pdq", v, category="csam", quality=100) for v in chunk]
            )
    finally:
        service.close()
    return time.monotonic() - t


# -- load clients (separate processes) ------------------------------------------------------


async def on_schedule(
    rate: float,
    phase: Any,
    send: Callable[[int, float, int], Coroutine[Any, Any, None]],
    first_phase: int = 0,
) -> None:
    """`send(n, due, phase)` as a task `rate` times a second on a fixed schedule, whatever
    the sends before are doing, until phase is -1 (none before `first_phase`); then wait
    for those in flight. Open loop: a slow answer never delays the next send."""
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    n = 0
    while (p := phase.value) >= 0:
        due = start + n / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        if p >= first_phase:
            task = asyncio.create_task(send(n, due, p))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks, return_exceptions=True)


def client_main(
    url: str,
    token: str,
    values: list[str],
    concurrency: int,
    phase: Any,
    out: Any,
    seed: int,
    rate: float = 0.0,
) -> None:
    """Post matches until phase is -1; latencies (ms) are kept per phase at send time.

    rate 0: closed loop, `concurrency` requests always in flight (saturating: latency is
    the flood's own queue). rate > 0: open loop, `rate` requests a second on a fixed
    schedule whatever the answers do (at most `concurrency` connections), each timed from
    when it was due: a platform sending its uploads at a steady rate below capacity."""
    rng = random.Random(seed)
    bodies = []
    for v in values:
        for q in (near(rng, v), random_pdq(rng)):
            bodies.append(json.dumps({"queries": [{"type": "pdq", "value": q}]}).encode())
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
                        await asyncio.sleep(0.01)
                        continue
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)
                continue
            ms = (time.perf_counter() - t) * 1000
            latencies[p].append(ms)

    async def paced_one(session: aiohttp.ClientSession, body: bytes, due: float, p: int) -> None:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            async with session.post(url + "/v1/match", data=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    errors[f"HTTP {r.status}"] += 1
                    return
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            errors[type(exc).__name__] += 1
            return
        latencies[p].append((time.perf_counter() - due) * 1000)

    async def run() -> None:
        connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            if rate > 0:
                await on_schedule(
                    rate,
                    phase,
                    lambda n, due, p: paced_one(session, bodies[n % len(bodies)], due, p),
                )
            else:
                await asyncio.gather(*(worker(session, n) for n in range(concurrency)))

    asyncio.run(run())
    out.put({"latencies": latencies, "errors": dict(errors)})


def pdq_probe_main(
    url: str, token: str, values: list[str], rate: float, phase: Any, out: Any, seed: int
) -> None:
    """The paced PDQ probe: one PDQ query (an 8-bit near-duplicate of a local signal, so
    it matches) every 1/rate s on a fixed schedule, each sent on time whatever the ones
    before it are doing (its own connection from a pool), latency counted from when it
    was due: a stall shows in full instead of holding back the sends that would see it
    (coordinated omission). Per phase: each latency, and the longest gap between two
    answers (a stall of the matcher shows as a gap however many requests were queued)."""
    rng = random.Random(seed)
    bodies = [
        json.dumps({"queries": [{"type": "pdq", "value": near(rng, v)}]}).encode()
        for v in values[:2000]
    ]
    latencies: dict[int, list[float]] = {i: [] for i in range(len(PHASES))}
    gaps: dict[int, float] = {i: 0.0 for i in range(len(PHASES))}
    errors: Counter[str] = Counter()
    last_answer: list[float] = [0.0, -1]  # time, phase

    async def one(session: aiohttp.ClientSession, body: bytes, due: float, p: int) -> None:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        try:
            async with session.post(url + "/v1/match", data=body, headers=headers) as r:
                answer = await r.json() if r.status == 200 else None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            errors[f"probe {type(exc).__name__}"] += 1
            return
        now = time.perf_counter()
        if answer is None or not answer.get("matched"):
            errors["probe: not matched" if answer else f"probe HTTP {r.status}"] += 1
            return
        latencies[p].append((now - due) * 1000)
        if last_answer[1] == p:
            gaps[p] = max(gaps[p], (now - last_answer[0]) * 1000)
        last_answer[:] = [now, p]

    async def run() -> None:
        connector = aiohttp.TCPConnector(limit=256)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await on_schedule(
                rate,
                phase,
                lambda n, due, p: one(session, bodies[n % len(bodies)], due, p),
                first_phase=1,  # phase 0 is the warm-up
            )

    asyncio.run(run())
    out.put({"latencies": latencies, "gaps": gaps, "errors": dict(errors)})


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


# -- probes in this process -----------------------------------------------------------------


class Probe:
    """One operator add every PROBE_EVERY_S, timed, then how long until it matches at the
    match address (exact md5: the freshness of the matcher, not PDQ search time)."""

    def __init__(self, node: Node, match_url: str, rng: random.Random) -> None:
        self.node = node
        self.match_url = match_url
        self.rng = rng
        self.publish_ms: dict[str, list[float]] = {}
        self.fresh_ms: dict[str, list[float]] = {}
        self.misses: Counter[str] = Counter()
        self.phase = ""

    async def run(self, stop_event: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while not stop_event.is_set():
                phase = self.phase
                value = self.rng.randbytes(16).hex()
                signal = {"type": "md5", "value": value, "category": "csam"}
                body = {"collection": PROBE, "signals": [signal]}
                t = time.perf_counter()
                async with session.post(
                    self.node.url + "/v1/signals/batch", json=body, headers=self.node.auth
                ) as r:
                    answer = await r.json() if r.status == 200 else {}
                    ok = r.status == 200
                done = time.perf_counter()
                if not ok:
                    self.misses[f"publish HTTP {r.status}"] += 1
                    continue
                if answer.get("applied") is False:  # journalled, stored after the answer
                    self.misses[f"publish answered before stored ({phase})"] += 1
                self.publish_ms.setdefault(phase, []).append((done - t) * 1000)
                query = {"queries": [{"type": "md5", "value": value}]}
                while time.perf_counter() - done < FRESH_TIMEOUT_S:
                    async with session.post(
                        self.match_url + "/v1/match", json=query, headers=self.node.auth
                    ) as r:
                        answer = await r.json() if r.status == 200 else {}
                    if answer.get("matched"):
                        self.fresh_ms.setdefault(phase, []).append(
                            (time.perf_counter() - done) * 1000
                        )
                        break
                    await asyncio.sleep(0.005)
                else:
                    self.misses["not matchable within 10 s"] += 1
                wait = PROBE_EVERY_S - (time.perf_counter() - t)
                if wait > 0:
                    try:
                        await asyncio.wait_for(stop_event.wait(), timeout=wait)
                    except TimeoutError:
                        pass


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


async def wait_live(node: Node, want: int, timeout: float, label: str) -> tuple[float, int]:
    t0 = time.monotonic()
    live = -1
    while time.monotonic() - t0 < timeout:
        await asyncio.sleep(0.5)
        status = await status_of(node)
        live = int(status["live_by_collection"].get(COLLECTION, 0))
        if live == want:
            return time.monotonic() - t0, live
    print(f"  {label}: {live:,} live, wanted {want:,}, after {timeout:.0f} s", flush=True)
    return time.monotonic() - t0, live


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def match_url_of(node: Node, workers: int) -> str:
    if workers == 0:
        return node.url
    runtime = read_runtime(node.home) or {}
    url = runtime.get("match")
    if not isinstance(url, str):
        raise RuntimeError(f"{node.name}: node.json has no match address: {runtime}")
    return url


def worker_settings(workers: int, nice: int | None = None) -> dict[str, Any]:
    """0 workers is the node's default (matching in its own process), and no nice means
    the node's default nice: left unset, so the same script also measures a revision
    that has no such setting."""
    settings: dict[str, Any] = {"match_workers": workers} if workers else {}
    return settings | ({"match_worker_nice": nice} if workers and nice is not None else {})


def seed_copy(template: Path, root: Path, name: str) -> Node:
    home = root / name
    shutil.copytree(template, home)
    h = Home(home)
    config = h.load_config()
    port = free_port()
    config.listen = f"127.0.0.1:{port}"
    h.save_config(config)
    token = h.admin_token_path.read_text().strip()
    return Node(name, home, port, config.node_id, token)


def connect(seed: Node, target: Node) -> None:
    h = Home(seed.home)
    config = h.load_config()
    config.peers = [p for p in config.peers if p.name != target.name]
    config.add_peer(
        Peer(name=target.name, url=target.url, node_id=target.node_id, share=[COLLECTION])
    )
    h.save_config(config)
    h = Home(target.home)
    config = h.load_config()
    config.add_trust(Trust(node_id=seed.node_id, collection=COLLECTION, name=seed.name))
    h.save_config(config)


async def one_config(
    args: argparse.Namespace,
    root: Path,
    nodes: list[Node],
    template: Path,
    seed_values: list[str],
    workers: int,
) -> dict[str, Any]:
    rng = random.Random(args.seed + workers)
    result: dict[str, Any] = {"workers": workers}

    # 1. the sync alone
    seed = seed_copy(template, root, f"seed-w{workers}-a")
    quiet = make_node(root, f"quiet-w{workers}", **worker_settings(workers, args.worker_nice))
    nodes += [seed, quiet]
    connect(seed, quiet)
    for n in (seed, quiet):
        spawn(n)
    async with aiohttp.ClientSession() as session:
        await wait_healthy(session, [seed, quiet], timeout=120)
    await add_peer(quiet, seed)
    alone_s, live = await wait_live(quiet, args.signals, args.ingest_timeout, "sync alone")
    result["sync_alone_s"] = alone_s if live == args.signals else None
    print(f"  [{workers} workers] sync alone: {alone_s:.1f} s", flush=True)
    stop([seed, quiet])

    # 2-4. under the flood
    seed = seed_copy(template, root, f"seed-w{workers}-b")
    target = make_node(root, f"target-w{workers}", **worker_settings(workers, args.worker_nice))
    nodes += [seed, target]
    local = [random_pdq(rng) for _ in range(args.local)]
    publish_offline(target.home, LOCAL, local)
    connect(seed, target)
    for n in (seed, target):
        spawn(n)
    async with aiohttp.ClientSession() as session:
        await wait_healthy(session, [seed, target], timeout=120)
    match_url = match_url_of(target, workers)
    # A worker's PDQ index loads after its listener opens: wait until a PDQ query answers.
    async with aiohttp.ClientSession() as session:
        deadline = time.monotonic() + 120
        body = {"queries": [{"type": "pdq", "value": local[0]}]}
        while time.monotonic() < deadline:
            async with session.post(match_url + "/v1/match", json=body, headers=target.auth) as r:
                if r.status == 200 and (await r.json())["matched"]:
                    break
            await asyncio.sleep(0.2)

    phase = mp.Value("i", 0)
    out: mp.Queue[dict[str, Any]] = mp.Queue()
    procs = [
        mp.Process(
            target=client_main,
            args=(match_url, target.token, local, args.concurrency, phase, out, n),
            kwargs={"rate": args.flood_rate / max(1, args.clients)},
        )
        for n in range(args.clients)
    ]
    pdq_out: mp.Queue[dict[str, Any]] = mp.Queue()
    pdq_probe = None
    if args.pdq_probe_rate > 0:
        pdq_probe = mp.Process(
            target=pdq_probe_main,
            args=(match_url, target.token, local, args.pdq_probe_rate, phase, pdq_out, 99),
        )
        procs.append(pdq_probe)
    for p in procs:
        p.start()
    probe = Probe(target, match_url, rng)
    probe_stop = asyncio.Event()
    probe_task = asyncio.create_task(probe.run(probe_stop))
    durations: dict[str, float] = {}
    loads = [os.getloadavg()[0]]
    try:
        await asyncio.sleep(args.warmup)
        phase.value = 1
        probe.phase = "flood"
        t0 = time.monotonic()
        await asyncio.sleep(args.duration)
        durations["flood"] = time.monotonic() - t0

        phase.value = 2
        probe.phase = "flood + sync"
        t0 = time.monotonic()
        await add_peer(target, seed)
        sync_s, live = await wait_live(target, args.signals, args.ingest_timeout, "flood + sync")
        durations["flood + sync"] = time.monotonic() - t0
        result["sync_flood_s"] = sync_s if live == args.signals else None
        print(f"  [{workers} workers] sync under flood: {sync_s:.1f} s", flush=True)
        loads.append(os.getloadavg()[0])

        phase.value = 3
        probe.phase = "flood + revocation"
        t0 = time.monotonic()
        withdrawn = seed_values[: args.revoke]
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session,
            session.post(
                seed.url + "/v1/lists/import",
                json={"collection": COLLECTION, "revoke_signals": [["pdq", v] for v in withdrawn]},
                headers=seed.auth,
            ) as r,
        ):
            assert r.status == 200, await r.text()
        revoke_s, live = await wait_live(
            target, args.signals - args.revoke, args.ingest_timeout, "flood + revocation"
        )
        durations["flood + revocation"] = time.monotonic() - t0
        result["revoke_flood_s"] = revoke_s
        loads.append(os.getloadavg()[0])
        pids = [target.proc.pid, *children(target.proc.pid)] if target.proc else []
        result["pss_mb"] = sum(pss_kb(pid) for pid in pids) / 1024
        result["processes"] = len(pids)
        if args.settle > 0:
            # The node's next checkpoint, and the workers' remap of it (matching/checkpoint.py).
            await asyncio.sleep(args.settle)
            result["pss_settled_mb"] = sum(pss_kb(pid) for pid in pids) / 1024
    finally:
        phase.value = -1
        probe_stop.set()
        await probe_task
        results = [out.get(timeout=120) for _ in range(args.clients)]
        paced = pdq_out.get(timeout=120) if pdq_probe is not None else None
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        stop([seed, target])
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
    probe_table: dict[str, dict[str, float]] = {}
    if paced is not None:
        errors.update(paced["errors"])
        for index, name in enumerate(PHASES):
            lat = sorted(paced["latencies"][index])
            if name in durations and lat:
                probe_table[name] = {
                    "requests": len(lat),
                    "p50": percentile(lat, 0.50),
                    "p99": percentile(lat, 0.99),
                    "max": lat[-1],
                    "gap": paced["gaps"][index],
                }
    result.update(
        table=table,
        pdq_probe=probe_table,
        errors=dict(errors) | dict(probe.misses),
        publish={k: sorted(v) for k, v in probe.publish_ms.items()},
        fresh={k: sorted(v) for k, v in probe.fresh_ms.items()},
        load=loads,
    )
    return result


async def main_async(args: argparse.Namespace, root: Path, nodes: list[Node]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    template = make_node(root, "seed")
    print(f"building the seed: {args.signals:,} PDQ signals offline ...", flush=True)
    values = [random_pdq(rng) for _ in range(args.signals)]
    build_s = publish_offline(template.home, COLLECTION, values)
    print(f"  built in {build_s:.0f} s", flush=True)
    configs = []
    for workers in args.match_workers:
        configs.append(await one_config(args, root, nodes, template.home, values, workers))
    return {"build_s": build_s, "configs": configs}


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.0f}" if values else "-"


def render(args: argparse.Namespace, result: dict[str, Any]) -> str:
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        "",
        f"Command: `.venv/bin/python bench/load.py --signals {args.signals} --revoke "
        f"{args.revoke} --clients {args.clients} --concurrency {args.concurrency} --duration "
        f"{args.duration:g} --pdq-probe-rate {args.pdq_probe_rate:g} --match-workers "
        f"{','.join(map(str, args.match_workers))}"
        + (f" --worker-nice {args.worker_nice}" if args.worker_nice is not None else "")
        + (f" --flood-rate {args.flood_rate:g}" if args.flood_rate > 0 else "")
        + "`. "
        + (
            f"{args.clients} client processes (aiohttp, keep-alive, {args.concurrency} requests"
            " in flight each)"
            if args.flood_rate <= 0
            else f"{args.clients} client processes ({args.flood_rate:g} requests/s in all on a"
            " fixed schedule, each timed from when it was due)"
        )
        + " post `POST /v1/match` with one PDQ query (half 8-bit near-duplicates of "
        f"{args.local:,} local PDQ signals, half random misses) to the target's match address "
        "(the node itself with 0 workers, its match socket otherwise). The seed's "
        f"{args.signals:,} PDQ adds were built offline in {result['build_s']:.0f} s (batches "
        f"of {BATCH_SIZE:,}); every configuration syncs its own copy of it. Everything (seed, "
        "target, workers, clients) shares the machine's cores.",
        "",
        "| workers | phase | seconds | matches/s | p50 ms | p99 ms | max ms |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in result["configs"]:
        for name in PHASES[1:]:
            r = c["table"].get(name)
            if r:
                lines.append(
                    f"| {c['workers']} | {name} | {r['seconds']:.1f} | {r['rps']:,.0f} | "
                    f"{r['p50']:.1f} | {r['p99']:.1f} | {r['max']:.0f} |"
                )
    lines += [
        "",
        f"| workers | sync alone s | sync under flood s | ratio | {args.revoke:,} revocation"
        " under flood s"
        " | publish p50 / p99 / max ms | freshness p50 / p99 ms | PSS MB (processes) |"
        " PSS MB settled |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in result["configs"]:
        alone, flood = c.get("sync_alone_s"), c.get("sync_flood_s")
        ratio = f"{flood / alone:.2f}x" if alone and flood else "-"
        pub = [x for v in c["publish"].values() for x in v]
        fresh = [x for v in c["fresh"].values() for x in v]
        pub.sort()
        fresh.sort()
        lines.append(
            f"| {c['workers']} | {alone or float('nan'):.1f} | {flood or float('nan'):.1f} | "
            f"{ratio} | {c.get('revoke_flood_s', float('nan')):.1f} | {_ms(pub, 0.5)} / "
            f"{_ms(pub, 0.99)} / {_ms(pub, 1.0)} | {_ms(fresh, 0.5)} / {_ms(fresh, 0.99)} | "
            f"{c.get('pss_mb', 0):,.0f} ({c.get('processes', 0)}) | "
            f"{c.get('pss_settled_mb', float('nan')):,.0f} |"
        )
    if any(c.get("pdq_probe") for c in result["configs"]):
        lines += [
            "",
            f"Paced PDQ probe ({args.pdq_probe_rate:g} queries/s on a fixed schedule, each"
            " timed from when it was due; gap: the longest time between two answers):",
            "",
            "| workers | phase | answered | p50 ms | p99 ms | max ms | longest gap ms |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for c in result["configs"]:
            for name in PHASES[1:]:
                r = c.get("pdq_probe", {}).get(name)
                if r:
                    lines.append(
                        f"| {c['workers']} | {name} | {r['requests']:.0f} | {r['p50']:.1f} | "
                        f"{r['p99']:.1f} | {r['max']:.0f} | {r['gap']:.0f} |"
                    )
    lines += [
        "",
        "Operator publish (one add every 250 ms through `/v1/signals/batch`) by phase:",
        "",
        "| workers | phase | publishes | p50 ms | p99 ms | max ms |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for c in result["configs"]:
        for name in PHASES[1:]:
            pub = c["publish"].get(name, [])
            if pub:
                lines.append(
                    f"| {c['workers']} | {name} | {len(pub)} | {_ms(pub, 0.5)} | "
                    f"{_ms(pub, 0.99)} | {pub[-1]:.0f} |"
                )
    errors = {c["workers"]: c["errors"] for c in result["configs"] if c["errors"]}
    loads = {c["workers"]: " / ".join(f"{x:.1f}" for x in c["load"]) for c in result["configs"]}
    lines += [
        "",
        f"Load average (1 min) before the flood, after the sync, after the revocation: {loads}.",
    ]
    lines += ["", f"Errors: {errors or 'none'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signals", type=parse_count, default=1_000_000)
    parser.add_argument("--revoke", type=parse_count, default=100_000)
    parser.add_argument("--local", type=parse_count, default=10_000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--flood-rate",
        type=float,
        default=0.0,
        help="matches/s the clients send in all, paced (0: closed loop, saturating)",
    )
    parser.add_argument(
        "--pdq-probe-rate",
        type=float,
        default=50.0,
        help="paced PDQ queries/s beside the flood, timed from when each was due (0: off)",
    )
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--ingest-timeout", type=float, default=600.0)
    parser.add_argument(
        "--match-workers",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[0, 2],
        help="comma-separated match_workers values, run side by side",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=75.0,
        help="seconds to wait after the last phase before measuring PSS again (0: skip)",
    )
    parser.add_argument(
        "--worker-nice",
        type=int,
        default=None,
        help="match_worker_nice for the target (0-19; default: the node's default)",
    )
    parser.add_argument("--seed", type=int, default=1)
    report_arguments(parser)
    args = parser.parse_args()
    run_and_report(main_async, args, "hm-load-", render, SECTION)


if __name__ == "__main__":
    main()
