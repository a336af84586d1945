"""Propagation and bootstrap benchmark with real `hashmesh run` processes on 127.0.0.1.

Three measures:

1. Propagation. For each N in --sizes, N nodes in a seeded random connected graph where
   every node has 3 or 4 peers; every pair of neighbours shares `csam` both ways and every
   node trusts every node as a `csam` author. --publications single adds are made on
   randomly chosen nodes through the node's HTTP API (POST /v1/signals with the admin
   bearer token, so no CLI start-up is in the numbers), one at a time. For each, the clock
   starts when the add's HTTP response arrives and stops when POST /v1/match has answered
   "matched": true on every node (each node polled every --poll-ms until it matches).
   Anti-entropy stays at the product default (sync.interval_s = 30, written explicitly
   into each node's config), so what is measured is eager push (fanout 3) and relaying.
   As a cross-check that needs no polling, each batch's `received_at` (written by each
   node's store when it applies the batch) is read from every database after the run.

2. Bootstrap. A home holding --bootstrap-signals md5 signals (batches of 5,000 ops) is
   built offline with NodeService.publish, then run. A fresh node that trusts its author
   is started; once it is healthy the seed is added as its peer through the admin API
   (POST /v1/admin/peers, which starts a sync round at once) and the clock runs until the
   fresh node's /v1/status shows the seed's log at its full head with every signal live.

    .venv/bin/python bench/propagation.py                           # 8,16,32 nodes, 1M bootstrap
    .venv/bin/python bench/propagation.py --sizes 8 --bootstrap-signals 100k
    .venv/bin/python bench/propagation.py --write-docs

4. Key revocation (--revocations R, on --revocation-size N nodes, default 32). The same
   random graph, every node's key certified by one org key (installed on its node through
   POST /v1/admin/statements, which co-signs it). For each of R runs, another node
   publishes two adds (seq 1 and 2) and the clock waits until every node matches the
   second; then the org's revocation of that node's key after seq 1 is installed on a
   random other node (POST /v1/admin/statements) and the clock runs from its answer until
   POST /v1/match of the second add answers "matched": false on every node: the
   revocation reached the node (eager push of statements, at sync.interval_s = 30) and
   took effect there (the held batch withdrawn from matching).

3. Scale in participants (--scale-logs 100,1000,10000). Two nodes, each holding the same
   N one-batch logs of N authors it trusts in `csam`, each the other's peer, with
   sync.interval_s = 1. Each node's peer URL points at a counting TCP proxy
   (hashmesh.testing.CountingProxy), so the bytes and requests of every sync round are
   counted on the wire. Idle rounds (nothing changes) are measured over --scale-window
   seconds: bytes both ways per round, the proxy's time from a round's first request byte
   to its answer's last byte, and CPU seconds of both node processes divided by their
   rounds. Then a feed page (GET /v1/feed?limit=1000), and /v1/status: time and bytes
   (medians of 5). The same pair is run with --scale-old REV's code (a `git archive`,
   its homes built by that code) and with the working tree, side by side.

Every node process is stopped (SIGTERM, then SIGKILL) on exit, error or Ctrl-C; homes live
in a temporary folder that is removed afterwards unless --keep is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

# benchenv and benchnodes are found in bench/ (sys.path[0]): imported before bench/ leaves sys.path
import benchnodes
from benchenv import machine, replace_section
from benchnodes import Node, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
# bench/protocol.py would shadow the protocol package; ROOT goes after PYTHONPATH, so a
# snapshot of the tree given there wins over the working tree.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.append(str(ROOT))

from hashmesh.node.config import Home, Peer, Trust  # noqa: E402
from hashmesh.node.service import NodeService  # noqa: E402
from hashmesh.protocol.ops import AddOp, OpId  # noqa: E402

SECTION = "## Propagation (bench/propagation.py)"
COLLECTION = "csam"
SYNC_INTERVAL_S = 30.0  # the product default, written explicitly into every config
FANOUT = 3  # the product default
BATCH_SIZE = 5000
BATCH_DELAY_MS = 200  # the product default


# -- nodes -----------------------------------------------------------------------------------


def make_node(root: Path, name: str) -> Node:
    """A fresh home with this benchmark's settings written explicitly into its config."""
    return benchnodes.make_node(
        root,
        name,
        sync_interval_s=SYNC_INTERVAL_S,
        fanout=FANOUT,
        batch_size=BATCH_SIZE,
        batch_delay_ms=BATCH_DELAY_MS,
    )


def configure(node: Node, peers: list[Node], authors: list[Node]) -> None:
    h = Home(node.home)
    config = h.load_config()
    for p in peers:
        config.add_peer(Peer(name=p.name, url=p.url, node_id=p.node_id, share=[COLLECTION]))
    for a in authors:
        if a.node_id != node.node_id:
            config.add_trust(Trust(node_id=a.node_id, collection=COLLECTION, name=a.name))
    h.save_config(config)


class Procs:
    """Every node process this run started; all of them are stopped on exit."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def spawn(self, node: Node) -> None:
        benchnodes.spawn(node)
        self.nodes.append(node)

    def stop(self, nodes: list[Node] | None = None, timeout: float = 15.0) -> None:
        benchnodes.stop(nodes if nodes is not None else self.nodes, timeout)
        self.nodes = [n for n in self.nodes if n.proc is not None]


# -- topology --------------------------------------------------------------------------------


def random_graph(n: int, rng: random.Random) -> list[set[int]]:
    """A connected graph where every vertex has 3 or 4 neighbours (n >= 5).

    A random Hamiltonian cycle makes it connected (degree 2 everywhere); random chords are
    then added between vertices still below their target degree (3 or 4, drawn per vertex).
    Retried until every vertex has at least 3 neighbours."""
    if n < 5:
        raise ValueError("need at least 5 nodes for degree 3-4")
    for _ in range(1000):
        order = list(range(n))
        rng.shuffle(order)
        adj: list[set[int]] = [set() for _ in range(n)]
        for i in range(n):
            a, b = order[i], order[(i + 1) % n]
            adj[a].add(b)
            adj[b].add(a)
        target = [rng.choice((3, 4)) for _ in range(n)]
        for _ in range(20 * n):
            low = [v for v in range(n) if len(adj[v]) < target[v]]
            if len(low) < 2:
                break
            a, b = rng.sample(low, 2)
            if b not in adj[a]:
                adj[a].add(b)
                adj[b].add(a)
        # vertices still at 2: join them to any vertex with room below 4
        for v in range(n):
            while len(adj[v]) < 3:
                room = [u for u in range(n) if u != v and u not in adj[v] and len(adj[u]) < 4]
                if not room:
                    break
                u = rng.choice(room)
                adj[v].add(u)
                adj[u].add(v)
        if all(3 <= len(s) <= 4 for s in adj) and len(hops_from(adj, 0)) == n:
            return adj
    raise RuntimeError("could not build a degree 3-4 connected graph")


def hops_from(adj: list[set[int]], start: int) -> dict[int, int]:
    dist = {start: 0}
    todo = deque([start])
    while todo:
        v = todo.popleft()
        for u in adj[v]:
            if u not in dist:
                dist[u] = dist[v] + 1
                todo.append(u)
    return dist


def diameter(adj: list[set[int]]) -> int:
    return max(max(hops_from(adj, v).values()) for v in range(len(adj)))


# -- propagation -----------------------------------------------------------------------------


@dataclass
class Publication:
    origin: int
    value: str
    sent: float = 0.0
    acked: float = 0.0
    author: str = ""
    seq: int = 0
    done_at: dict[int, float] = field(default_factory=dict)

    @property
    def complete(self) -> float | None:
        """Seconds from the add's response to matchable on the last node, or None."""
        if not self.done_at:
            return None
        return max(self.done_at.values()) - self.acked


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


async def propagation_run(
    n: int, args: argparse.Namespace, root: Path, procs: Procs
) -> dict[str, Any]:
    rng = random.Random(f"{args.seed}/{n}")
    adj = random_graph(n, rng)
    run_root = root / f"net{n}"
    run_root.mkdir()
    nodes = [make_node(run_root, f"n{i:02d}") for i in range(n)]
    for i, node in enumerate(nodes):
        configure(node, [nodes[j] for j in sorted(adj[i])], nodes)
    degrees = [len(s) for s in adj]
    print(
        f"\n[N={n}] {sum(degrees) // 2} links, degree {min(degrees)}-{max(degrees)} "
        f"(mean {statistics.mean(degrees):.2f}), diameter {diameter(adj)}; starting nodes...",
        flush=True,
    )
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=8)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        t = time.monotonic()
        for node in nodes:
            procs.spawn(node)
        try:
            await wait_healthy(session, nodes, timeout=60 + 3 * n)
            print(f"  {n} nodes healthy in {time.monotonic() - t:.1f} s", flush=True)
            await asyncio.sleep(2.0)  # let the first (empty) anti-entropy round finish
            pubs = await publish_and_watch(session, nodes, args, rng)
        finally:
            procs.stop(nodes)
    received = read_received(nodes)
    return summarise(n, adj, nodes, pubs, received, args)


async def publish_and_watch(
    session: aiohttp.ClientSession,
    nodes: list[Node],
    args: argparse.Namespace,
    rng: random.Random,
) -> list[Publication]:
    poll = args.poll_ms / 1000
    pubs: list[Publication] = []
    total = args.warmup + args.publications
    for k in range(total):
        pub = Publication(origin=rng.randrange(len(nodes)), value=rng.randbytes(16).hex())
        origin = nodes[pub.origin]
        body = {"type": "md5", "value": pub.value, "collection": COLLECTION, "category": "csam"}
        pub.sent = time.monotonic()
        async with session.post(origin.url + "/v1/signals", json=body, headers=origin.auth) as r:
            answer = await r.json()
            if r.status != 200:
                raise RuntimeError(f"add on {origin.name} answered {r.status}: {answer}")
        pub.acked = time.monotonic()
        op = answer["op_id"]  # author/collection/seq/index, see protocol.ops.OpId
        pub.author, pub.seq = origin.node_id, _seq_of(op)
        query = json.dumps({"queries": [{"type": "md5", "value": pub.value}]}).encode()
        deadline = pub.acked + args.timeout

        async def watch(
            i: int,
            node: Node,
            pub: Publication = pub,
            query: bytes = query,
            deadline: float = deadline,
        ) -> None:
            headers = {**node.auth, "Content-Type": "application/json"}
            while True:
                async with session.post(node.url + "/v1/match", data=query, headers=headers) as r:
                    matched = (await r.json()).get("matched")
                now = time.monotonic()
                if matched:
                    pub.done_at[i] = now
                    return
                if now > deadline:
                    return
                await asyncio.sleep(poll)

        await asyncio.gather(*(watch(i, node) for i, node in enumerate(nodes)))
        if k >= args.warmup:
            pubs.append(pub)
            if len(pub.done_at) < len(nodes):
                print(
                    f"  publication {k}: only {len(pub.done_at)}/{len(nodes)} nodes "
                    f"matched within {args.timeout} s",
                    flush=True,
                )
        await asyncio.sleep(args.gap_ms / 1000)
    return pubs


def _seq_of(op_id: str) -> int:
    return int(OpId.parse(op_id).seq)


def read_received(nodes: list[Node]) -> dict[tuple[str, int], dict[int, int]]:
    """(author, seq) -> {node index: received_at ms} from every node's database."""
    out: dict[tuple[str, int], dict[int, int]] = {}
    for i, node in enumerate(nodes):
        conn = sqlite3.connect(f"file:{node.home / 'hashmesh.db'}?mode=ro", uri=True)
        try:
            for author, seq, at in conn.execute(
                "SELECT l.author, b.seq, b.received_at FROM batches b JOIN logs l"
                " ON l.id = b.log_id WHERE l.collection = ?",
                (COLLECTION,),
            ):
                out.setdefault((author, seq), {})[i] = at
        finally:
            conn.close()
    return out


def summarise(
    n: int,
    adj: list[set[int]],
    nodes: list[Node],
    pubs: list[Publication],
    received: dict[tuple[str, int], dict[int, int]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    complete = [p.complete for p in pubs if p.complete is not None and len(p.done_at) == n]
    missed = len(pubs) - len(complete)
    add_rtt = [p.acked - p.sent for p in pubs]
    store_spread: list[float] = []
    per_hop: dict[int, list[float]] = {}
    for p in pubs:
        at = received.get((p.author, p.seq), {})
        if len(at) < n or p.origin not in at:
            continue
        t0 = at[p.origin]
        store_spread.append((max(at.values()) - t0) / 1000)
        for v, h in hops_from(adj, p.origin).items():
            if h:
                per_hop.setdefault(h, []).append((at[v] - t0) / 1000)
    row: dict[str, Any] = {
        "n": n,
        "links": sum(len(s) for s in adj) // 2,
        "diameter": diameter(adj),
        "pubs": len(pubs),
        "missed": missed,
        "add_rtt_p50": statistics.median(add_rtt),
    }
    if complete:
        row |= {
            "p50": statistics.median(complete),
            "p99": percentile(complete, 99),
            "max": max(complete),
        }
    if store_spread:
        row |= {
            "store_p50": statistics.median(store_spread),
            "store_p99": percentile(store_spread, 99),
            "store_max": max(store_spread),
        }
    row["per_hop"] = {h: statistics.median(v) for h, v in sorted(per_hop.items())}
    return row


# -- bootstrap -------------------------------------------------------------------------------


class BootstrapFailed(RuntimeError):
    pass


def build_seed(root: Path, signals: int, seed: int) -> tuple[Node, float]:
    """A home holding `signals` md5 adds in batches of BATCH_SIZE, published offline."""
    node = make_node(root, "seed")
    rng = random.Random(f"{seed}/bootstrap")
    t = time.monotonic()
    service = NodeService(Home(node.home))
    try:
        done = 0
        while done < signals:
            count = min(BATCH_SIZE, signals - done)
            ops = [
                AddOp.create("md5", rng.randbytes(16).hex(), category="csam") for _ in range(count)
            ]
            service.publish(COLLECTION, list(ops))
            done += count
            if done % 200_000 == 0:
                print(f"  seed: {done:,} signals", flush=True)
    finally:
        service.close()
    return node, time.monotonic() - t


async def bootstrap_once(
    session: aiohttp.ClientSession,
    seed: Node,
    root: Path,
    procs: Procs,
    run: int,
    expect_head: int,
    expect_live: int,
    poll_s: float,
    timeout_s: float,
) -> dict[str, float]:
    fresh = make_node(root, f"fresh{run}")
    configure(fresh, [], [seed])
    # the seed must know the fresh node as a peer that may read csam (config reload: 1 s)
    configure(seed, [fresh], [])
    procs.spawn(fresh)
    try:
        await wait_healthy(session, [fresh], timeout=60)
        await asyncio.sleep(1.5)  # the seed's config watcher picks up the new peer
        started_proc = fresh.started_at
        peer = {"name": seed.name, "url": seed.url, "node_id": seed.node_id, "share": [COLLECTION]}
        t0 = time.monotonic()
        async with session.post(fresh.url + "/v1/admin/peers", json=peer, headers=fresh.auth) as r:
            if r.status != 200:
                raise RuntimeError(f"peer add answered {r.status}: {await r.text()}")
        while True:
            async with session.get(fresh.url + "/v1/status", headers=fresh.auth) as r:
                status = await r.json()
            logs = [lg for lg in status["logs"] if lg["author"] == seed.node_id]
            if logs and logs[0]["head"] >= expect_head and status["live_signals"] >= expect_live:
                break
            if time.monotonic() - t0 > timeout_s:
                errors = {p["name"]: p.get("last_error", "") for p in status["peers"]}
                have = logs[0]["head"] if logs else 0
                raise BootstrapFailed(
                    f"at {have}/{expect_head} batches after {timeout_s:.0f} s; "
                    f"fresh node's peer errors: {errors}"
                )
            await asyncio.sleep(poll_s)
        t1 = time.monotonic()
    finally:
        procs.stop([fresh])
    return {
        "sync_s": t1 - t0,
        "rate": expect_live / (t1 - t0),
        "from_spawn_s": t1 - started_proc,
    }


async def bootstrap(args: argparse.Namespace, root: Path, procs: Procs) -> dict[str, Any]:
    signals = args.bootstrap_signals
    boot_root = root / "bootstrap"
    boot_root.mkdir()
    print(f"\n[bootstrap] building a seed home with {signals:,} signals...", flush=True)
    seed, build_s = build_seed(boot_root, signals, args.seed)
    head = -(-signals // BATCH_SIZE)
    db_mb = (seed.home / "hashmesh.db").stat().st_size / 2**20
    print(
        f"  built in {build_s:.1f} s ({signals / build_s:,.0f} signals/s), "
        f"{head} batches, database {db_mb:.0f} MiB",
        flush=True,
    )
    runs: list[dict[str, float]] = []
    error = ""
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        procs.spawn(seed)
        try:
            await wait_healthy(session, [seed], timeout=300)
            print(f"  seed running after {time.monotonic() - seed.started_at:.1f} s", flush=True)
            for run in range(args.bootstrap_runs):
                try:
                    result = await bootstrap_once(
                        session,
                        seed,
                        boot_root,
                        procs,
                        run,
                        head,
                        signals,
                        args.status_poll_ms / 1000,
                        args.bootstrap_timeout,
                    )
                except BootstrapFailed as exc:
                    print(f"  run {run + 1}: did not complete: {exc}", flush=True)
                    error = str(exc)
                    break
                print(
                    f"  run {run + 1}: {result['sync_s']:.1f} s from peering, "
                    f"{result['rate']:,.0f} signals/s "
                    f"({result['from_spawn_s']:.1f} s from process start)",
                    flush=True,
                )
                runs.append(result)
        finally:
            procs.stop([seed])
    out: dict[str, Any] = {
        "signals": signals,
        "batches": head,
        "build_s": build_s,
        "db_mb": db_mb,
        "runs": runs,
        "error": error,
    }
    if not runs:
        return out
    return out | {
        "sync_s": statistics.median(r["sync_s"] for r in runs),
        "rate": statistics.median(r["rate"] for r in runs),
        "from_spawn_s": statistics.median(r["from_spawn_s"] for r in runs),
    }


# -- scale in participants --------------------------------------------------------------------

SCALE_HEADING = "### Scale in participants (`--scale-logs`)"
SCALE_INTERVAL_S = 1.0

# Run in a child process with the code under test first on sys.path (the old tree's or the
# working tree's), so the homes are made by the code that will run them (an old node
# refuses a database a newer schema wrote). Only APIs both revisions have.
_MAKE_PAIR = r"""
import hashlib, json, sys
root, n = sys.argv[1], int(sys.argv[2])
ports, proxies = sys.argv[3].split(","), sys.argv[4].split(",")
from pathlib import Path
import hashmesh.node.service as service_mod
assert service_mod.__file__.startswith(sys.path[0]), service_mod.__file__
from hashmesh.node.config import Home, Peer, Trust
from hashmesh.node.service import NodeService, init_home
from hashmesh.protocol import SigningKey, build_batch
keys = [SigningKey(hashlib.sha256(b"scale/%d" % i).digest()) for i in range(n)]
batches = []
for i, k in enumerate(keys):
    value = hashlib.md5(b"scale/%d" % i).hexdigest()
    ops = [{"op": "add", "type": "md5", "value": value, "category": "csam"}]
    batches.append(build_batch(k, "csam", 1, None, 1_700_000_000_000, ops))
made = []
for name, port in zip(("a", "b"), ports):
    config = init_home(Path(root) / name, name, "127.0.0.1:" + port, None)
    made.append(config.node_id)
for i, name in enumerate(("a", "b")):
    home = Home(Path(root) / name)
    config = home.load_config()
    config.sync_interval_s = float(sys.argv[5])
    other = 1 - i
    url = "http://127.0.0.1:" + proxies[other]
    config.peers = [Peer(name="ab"[other], url=url, node_id=made[other], share=["csam"])]
    config.trust = [
        Trust(node_id=k.node_id, collection="csam", name="author-%d" % j)
        for j, k in enumerate(keys)
    ]
    home.save_config(config)
    service = NodeService(home)
    try:
        with service.store.bulk("bench"):
            for b in batches:
                service.store.ingest(b, source="bench")
    finally:
        service.close()
print(json.dumps(made))
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def scale_run(
    n: int, code: str, tree: Path | None, args: argparse.Namespace, root: Path, procs: Procs
) -> dict[str, Any]:
    from hashmesh.testing import CountingProxy, NodeRun

    run_root = root / f"scale-{code}-{n}"
    run_root.mkdir()
    ports = [benchnodes.free_port(), benchnodes.free_port()]
    targets = [f"http://127.0.0.1:{p}" for p in ports]
    # proxy i carries the requests of the other node to node i
    proxies = [CountingProxy(t) for t in targets]
    proxy_ports = [p.url.rsplit(":", 1)[1] for p in proxies]
    path = str(tree) if tree else str(ROOT)
    t0 = time.monotonic()
    made = subprocess.run(
        [
            sys.executable,
            "-P",
            "-c",
            f"import sys; sys.path.insert(0, {path!r})\n" + _MAKE_PAIR,
            str(run_root),
            str(n),
            ",".join(map(str, ports)),
            ",".join(proxy_ports),
            str(SCALE_INTERVAL_S),
        ],
        capture_output=True,
        text=True,
    )
    if made.returncode:
        raise RuntimeError(f"making the homes ({code}) failed: {made.stderr[-2000:]}")
    print(f"  [{code} N={n}] homes made in {time.monotonic() - t0:.1f} s", flush=True)
    nodes: list[Node] = []
    for name, port in zip(("a", "b"), ports, strict=True):
        home = run_root / name
        token = (home / "admin.token").read_text().strip()
        node = Node(name, home, port, "", token)
        if tree is None:
            node.run = NodeRun(
                home, home / "run.log", command=(sys.executable, "-P", "-m", "hashmesh")
            )
        else:
            env = {**os.environ, "PYTHONPATH": str(tree)}
            node.run = NodeRun(
                home, home / "run.log", command=(sys.executable, "-P", "-m", "hashmesh"), env=env
            )
        procs.nodes.append(node)
        nodes.append(node)
    round_path = "/v1/peer/sync" if tree is not None else "/v1/peer/reconcile"
    timeout = aiohttp.ClientTimeout(total=300)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await wait_healthy(session, nodes, timeout=300)

            def rounds() -> int:
                return sum(p.snapshot()[2].get(round_path, 0) for p in proxies)

            deadline = time.monotonic() + 120
            while rounds() < 4:  # the first rounds exchange whole views: not idle
                if time.monotonic() > deadline:
                    raise RuntimeError(f"[{code} N={n}] no sync rounds: {nodes[0].home}/run.log")
                await asyncio.sleep(0.2)
            await asyncio.sleep(SCALE_INTERVAL_S * 1.5)
            start = [p.snapshot() for p in proxies]
            marks = [len(p.exchanges) for p in proxies]
            r0, cpu0 = rounds(), sum(cpu_seconds(x.proc.pid) for x in nodes)
            await asyncio.sleep(args.scale_window)
            r1, cpu1 = rounds(), sum(cpu_seconds(x.proc.pid) for x in nodes)
            end = [p.snapshot() for p in proxies]
            done = max(1, r1 - r0)
            wire = sum((e[0] - s[0]) + (e[1] - s[1]) for s, e in zip(start, end, strict=True))
            other = {
                path: sum(
                    e[2].get(path, 0) - s[2].get(path, 0) for s, e in zip(start, end, strict=True)
                )
                for path in (
                    "/v1/peer/fetch",
                    "/v1/peer/batches",
                    "/v1/peer/sync",
                    "/v1/peer/statements/fetch",
                    "/v1/peer/statements/push",
                )
                if path != round_path
            }
            times = [
                x[2] - x[1]
                for p, m in zip(proxies, marks, strict=True)
                for x in p.exchanges_since(m)
                if x[0] == round_path
            ]
            a = nodes[0]
            feed_ms, status_ms, status_bytes = [], [], []
            for _ in range(5):
                t = time.perf_counter()
                async with session.get(a.url + "/v1/feed?limit=1000", headers=a.auth) as r:
                    body = await r.read()
                    assert r.status == 200, body[:300]
                feed_ms.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                async with session.get(a.url + "/v1/status", headers=a.auth) as r:
                    body = await r.read()
                    assert r.status == 200, body[:300]
                status_ms.append((time.perf_counter() - t) * 1000)
                status_bytes.append(len(body))
            pages_ms = None
            if tree is None:  # every log through /v1/status/logs, 1000 a page
                t, after, count = time.perf_counter(), "", 0
                while True:
                    query = f"?limit=1000&after={after}" if after else "?limit=1000"
                    async with session.get(a.url + "/v1/status/logs" + query, headers=a.auth) as r:
                        page = await r.json()
                    count += len(page["logs"])
                    if not page["next"]:
                        break
                    after = page["next"]
                assert count == n, count
                pages_ms = (time.perf_counter() - t) * 1000
    finally:
        procs.stop(nodes)
        for p in proxies:
            p.close()
    row = {
        "n": n,
        "code": code,
        "rounds": done,
        "bytes": wire / done,
        "round_ms": statistics.median(times) if times else None,
        "cpu_ms": (cpu1 - cpu0) * 1000 / done,
        "other": other,
        "feed_ms": statistics.median(feed_ms),
        "status_ms": statistics.median(status_ms),
        "status_bytes": statistics.median(status_bytes),
        "pages_ms": pages_ms,
    }
    print(f"  {row}", flush=True)
    return row


async def scale(args: argparse.Namespace, root: Path, procs: Procs) -> list[dict[str, Any]]:
    from benchenv import Tree

    sizes = [parse_count(s) for s in args.scale_logs.split(",") if s.strip()]
    tree = Tree.archive(args.scale_old, root / "old-tree") if args.scale_old else None
    rows = []
    for n in sizes:
        print(f"\n[scale N={n}]", flush=True)
        if tree is not None:
            rows.append(await scale_run(n, f"old {tree.rev}", tree.path, args, root, procs))
        rows.append(await scale_run(n, "new", None, args, root, procs))
    return rows


def scale_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| logs | code | idle round bytes (both ways) | idle round ms (request to answer) "
        "| CPU ms per round (both nodes) | other requests in idle rounds | feed page ms "
        "(1,000 entries) | /v1/status ms | /v1/status bytes | every log paged, ms |",
        "| ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        other = ", ".join(f"{p.rsplit('/', 1)[1]} {c}" for p, c in r["other"].items() if c)
        lines.append(
            f"| {r['n']:,} | {r['code']} | {r['bytes']:,.0f} | "
            f"{'-' if r['round_ms'] is None else format(r['round_ms'] * 1000, ',.1f')} | "
            f"{r['cpu_ms']:,.1f} | {other or 'none'} | {r['feed_ms']:,.0f} | "
            f"{r['status_ms']:,.0f} | {r['status_bytes']:,.0f} | "
            f"{'-' if r['pages_ms'] is None else format(r['pages_ms'], ',.0f')} |"
        )
    return "\n".join(lines)


def scale_report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> str:
    date = subprocess.run(["date", "-u"], capture_output=True, text=True).stdout.strip()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        "\n".join(
            [
                SCALE_HEADING,
                "",
                f"Measured {date} on {machine()}, load average {load} at the end.",
                f"Command: `{command()}`.",
                "",
                "Two real `hashmesh run` processes, each holding the same N one-batch logs of N "
                "authors it trusts in `csam` and each the other's peer (sync.interval_s = "
                f"{SCALE_INTERVAL_S:g}), every request between them through a counting TCP proxy. "
                f"Idle rounds over {args.scale_window:g} s: bytes on the wire per round (request "
                "and answer, headers included), the proxy's median time from a round's request "
                "to the end of its answer, CPU of both processes divided by their rounds (all "
                "their work in the window). Then, on one node, medians of 5: a feed page of 1,000 "
                "entries and `/v1/status` (time and bytes); for the new code also every log "
                "paged through `/v1/status/logs` 1,000 at a time. `old` is the code before this "
                f"change (`git archive {args.scale_old}`), its homes made by that code; both run "
                "in the same invocation, one pair after the other.",
                "",
                scale_table(rows),
                "",
                *[f"- {note}" for note in args.note],
            ]
        ).rstrip("\n")
        + "\n"
    )


def replace_scale_subsection(body: str) -> None:
    """Our subsection at the end of the Propagation section; the rest stays as it was."""
    from benchenv import DOCS

    text = DOCS.read_text()
    start = text.index(SECTION + "\n")
    end = text.find("\n## ", start + len(SECTION))
    end = len(text) if end < 0 else end + 1
    section = text[start:end]
    at = section.find(SCALE_HEADING + "\n")
    if at >= 0:
        after = section.find("\n## ", at + len(SCALE_HEADING))
        nxt = section.find("\n### ", at + len(SCALE_HEADING))
        stop = min(x for x in (after, nxt, len(section) - 1) if x >= 0) + 1
        section = section[:at] + body + "\n" + section[stop:].lstrip("\n")
    else:
        section = section.rstrip("\n") + "\n\n" + body + "\n"
    DOCS.write_text(text[:start] + section + text[end:])


# -- report ----------------------------------------------------------------------------------


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:,.0f}"


def propagation_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| nodes | links | diameter | publications | p50 ms | p99 ms | max ms | not all "
        "matched | store-side p50 / p99 / max ms | add round trip p50 ms |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['links']} | {r['diameter']} | {r['pubs']} | {ms(r.get('p50'))} | "
            f"{ms(r.get('p99'))} | {ms(r.get('max'))} | {r['missed']} | "
            f"{ms(r.get('store_p50'))} / {ms(r.get('store_p99'))} / {ms(r.get('store_max'))} | "
            f"{ms(r['add_rtt_p50'])} |"
        )
    return "\n".join(lines)


def hop_table(rows: list[dict[str, Any]]) -> str:
    hops = sorted({h for r in rows for h in r["per_hop"]})
    lines = [
        "| nodes | " + " | ".join(f"{h} hop{'s' if h > 1 else ''}" for h in hops) + " |",
        "| ---: | " + " | ".join("---:" for _ in hops) + " |",
    ]
    for r in rows:
        cells = [ms(r["per_hop"].get(h)) for h in hops]
        lines.append(f"| {r['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bootstrap_table(b: dict[str, Any]) -> str:
    if not b["runs"]:
        return f"Bootstrap of {b['signals']:,} signals did not complete: {b['error']}"
    runs = ", ".join(f"{r['rate']:,.0f}" for r in b["runs"])
    return "\n".join(
        [
            "| signals | batches | runs | median sync s | median signals/s | runs (signals/s) "
            "| median s from process start |",
            "| ---: | ---: | ---: | ---: | ---: | --- | ---: |",
            f"| {b['signals']:,} | {b['batches']} | {len(b['runs'])} | {b['sync_s']:.1f} | "
            f"{b['rate']:,.0f} | {runs} | {b['from_spawn_s']:.1f} |",
        ]
    )


def report(
    args: argparse.Namespace, rows: list[dict[str, Any]], boot: dict[str, Any] | None
) -> str:
    date = subprocess.run(["date"], capture_output=True, text=True).stdout.strip()
    parts = [
        SECTION,
        "",
        f"Measured {date} on {machine()}.",
        f"Command: `{command()}`.",
        "",
    ]
    if rows:
        parts += [
            f"Real `hashmesh run` processes on 127.0.0.1 in a seeded random connected graph "
            f"(seed {args.seed}), every node with 3 or 4 peers sharing `{COLLECTION}` both ways "
            f"and trusting every node as a `{COLLECTION}` author. Config written explicitly "
            f"into each node: sync.interval_s = {SYNC_INTERVAL_S:g} (product default, so "
            f"anti-entropy plays no part and eager push is what is measured), sync.fanout = "
            f"{FANOUT}, publish.batch_size = {BATCH_SIZE}, publish.batch_delay_ms = "
            f"{BATCH_DELAY_MS}. {args.publications} single md5 adds (after {args.warmup} "
            f"warm-up adds), one at a time, each on a randomly chosen node, made through the "
            f"HTTP API (POST /v1/signals with the admin token, not the CLI, so Python start-up "
            f"is not in the numbers). Time runs from the add's HTTP response (which comes "
            f"after the {BATCH_DELAY_MS} ms batching delay and the local commit) to the "
            f"moment POST /v1/match answers matched on every node; each node is polled every "
            f"{args.poll_ms} ms until it matches, so the resolution is about one poll "
            f'interval plus a request. "Store-side" is the same spread taken from the '
            f"`received_at` each node's store wrote when it applied the batch (last node "
            f"minus origin), which needs no polling. Percentiles are nearest-rank over the "
            f"{args.publications} publications.",
            "",
            propagation_table(rows),
            "",
            "Median store-side delay by hop distance from the origin (ms):",
            "",
            hop_table(rows),
            "",
        ]
    if boot:
        parts += [
            f"Bootstrap: a seed home with {boot['signals']:,} md5 signals in "
            f"{boot['batches']} batches of {BATCH_SIZE:,} ops (built offline with "
            f"NodeService.publish in {boot['build_s']:.0f} s; database "
            f"{boot['db_mb']:.0f} MiB) is run; a fresh node that trusts the seed's author is "
            f"started, and once healthy the seed is added as its peer through "
            f"POST /v1/admin/peers, which starts a sync round at once. Time runs from that "
            f"request to the fresh node's /v1/status showing the seed's log at its full "
            f"head and all signals live; a new fresh node each run.",
            "",
            bootstrap_table(boot),
            "",
        ]
    targets = []
    for r in rows:
        if r["n"] == 32 and "p99" in r:
            ok = "met" if r["p99"] <= 2.0 else "MISSED"
            targets.append(f"p99 <= 2 s at 32 nodes: {ok} ({ms(r['p99'])} ms)")
    if boot and not boot["runs"]:
        targets.append("bootstrap >= 50,000 signals/s: MISSED (did not complete)")
    elif boot:
        ok = "met" if boot["rate"] >= 50_000 else "MISSED"
        targets.append(f"bootstrap >= 50,000 signals/s: {ok} ({boot['rate']:,.0f} signals/s)")
    if targets:
        parts += ["Targets: " + "; ".join(targets) + ".", ""]
    parts += [f"- {note}" for note in args.note]
    return "\n".join(parts)


async def revocation_run(args: argparse.Namespace, root: Path, procs: Procs) -> dict[str, Any]:
    from hashmesh.node.keys import create_key
    from hashmesh.protocol.certificates import CertBody, KeyRevokeBody
    from hashmesh.protocol.kinds import REGISTRY
    from hashmesh.protocol.statements import sign_statement

    n = args.revocation_size
    rng = random.Random(f"{args.seed}/revoke/{n}")
    adj = random_graph(n, rng)
    run_root = root / f"revoke{n}"
    run_root.mkdir()
    org = create_key(run_root / "org.key")
    nodes = [make_node(run_root, f"r{i:02d}") for i in range(n)]
    for i, node in enumerate(nodes):
        configure(node, [nodes[j] for j in sorted(adj[i])], nodes)
    print(f"\n[revocation, N={n}] diameter {diameter(adj)}; starting nodes...", flush=True)
    poll = args.poll_ms / 1000
    times: list[float] = []
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=8)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def post(node: Node, path: str, body: Any) -> Any:
            async with session.post(node.url + path, json=body, headers=node.auth) as r:
                answer = await r.json()
                if r.status != 200:
                    raise RuntimeError(f"{path} on {node.name} answered {r.status}: {answer}")
                return answer

        async def matched(node: Node, value: str) -> bool:
            query = {"queries": [{"type": "md5", "value": value}]}
            return bool((await post(node, "/v1/match", query)).get("matched"))

        async def until_all(value: str, want: bool, deadline: float) -> float:
            async def one(node: Node) -> float:
                while True:
                    if await matched(node, value) == want:
                        return time.monotonic()
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{node.name}: {value} still matched={not want}")
                    await asyncio.sleep(poll)

            return max(await asyncio.gather(*(one(node) for node in nodes)))

        for node in nodes:
            procs.spawn(node)
        try:
            await wait_healthy(session, nodes, timeout=60 + 3 * n)
            now = int(time.time())
            for node in nodes:
                body = CertBody(
                    ts=now, org=org.node_id, key=node.node_id, not_before=now - 60,
                    not_after=now + 86400,
                )  # fmt: skip
                cert = sign_statement(body, [org], REGISTRY)
                await post(
                    node, "/v1/admin/statements", {"statement": cert.to_json(), "kind": "cert"}
                )
            await asyncio.sleep(2.0)
            for run in range(args.revocations):
                author = nodes[run % n]
                values = [rng.randbytes(16).hex() for _ in range(2)]
                for value in values:  # one batch each: seq 1, seq 2 of its log
                    body = {"type": "md5", "value": value, "collection": COLLECTION}
                    await post(author, "/v1/signals", body)
                    await asyncio.sleep(BATCH_DELAY_MS / 1000 + 0.1)
                await until_all(values[1], True, time.monotonic() + args.timeout)
                revoke = sign_statement(
                    KeyRevokeBody(
                        ts=int(time.time()), org=org.node_id, key=author.node_id,
                        collection="*", after=1, reason="bench",
                    ),
                    [org],
                    REGISTRY,
                )  # fmt: skip
                at = nodes[rng.choice([i for i in range(n) if nodes[i] is not author])]
                await post(
                    at,
                    "/v1/admin/statements",
                    {"statement": revoke.to_json(), "kind": "key-revoke"},
                )
                start = time.monotonic()
                done = await until_all(values[1], False, start + args.timeout)
                times.append(done - start)
                print(f"  run {run}: revocation of {author.name} in force on all {n} nodes after "
                      f"{(done - start) * 1000:.0f} ms", flush=True)  # fmt: skip
        finally:
            procs.stop(nodes)
    return {"n": n, "runs": times}


def revocation_report(args: argparse.Namespace, row: dict[str, Any]) -> str:
    runs = row["runs"]
    return (
        f"### Key revocation to every node\n\nMachine: {machine()}\n\n"
        f"{row['n']} nodes, {len(runs)} revocations:"
        f" median {statistics.median(runs) * 1000:.0f} ms,"
        f" max {max(runs) * 1000:.0f} ms (each run: from the answer of the install on one"
        f" node to every node's match of the revoked key's later add answering false;"
        f" match polled every {args.poll_ms} ms). Command: `{command()}`.\n"
    )


def command() -> str:
    env = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    argv_in, argv = sys.argv[1:], []
    while argv_in:
        a = argv_in.pop(0)
        if a == "--note":
            argv_in = argv_in[1:]
        elif not a.startswith("--note="):
            argv.append(a if a and " " not in a else repr(a))
    return f"{env}.venv/bin/python bench/propagation.py {' '.join(argv)}".rstrip()


def parse_count(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmM]?)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return int(float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2).lower()])


async def amain(args: argparse.Namespace, root: Path, procs: Procs) -> None:
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()] if args.sizes else []
    rows = []
    for n in sizes:
        row = await propagation_run(n, args, root, procs)
        rows.append(row)
        print(propagation_table([row]), flush=True)
    boot = await bootstrap(args, root, procs) if args.bootstrap_signals > 0 else None
    scaled = await scale(args, root, procs) if args.scale_logs else []
    if args.revocations:
        print("\n" + revocation_report(args, await revocation_run(args, root, procs)))
    if rows or boot:
        body = report(args, rows, boot)
        print("\n" + body)
        if args.write_docs:
            replace_section(SECTION, body)
    if scaled:
        body = scale_report(args, scaled)
        print("\n" + body)
        if args.write_docs:
            replace_scale_subsection(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="8,16,32", help="network sizes (default 8,16,32; '' skips)")
    ap.add_argument("--publications", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=3, help="adds before measuring (not counted)")
    ap.add_argument("--poll-ms", type=int, default=10, help="match poll interval per node")
    ap.add_argument("--gap-ms", type=int, default=100, help="pause between publications")
    ap.add_argument("--timeout", type=float, default=60.0, help="per publication, seconds")
    ap.add_argument("--bootstrap-signals", type=parse_count, default=1_000_000, help="0 skips")
    ap.add_argument("--bootstrap-runs", type=int, default=3)
    ap.add_argument("--bootstrap-timeout", type=float, default=300.0, help="per run, seconds")
    ap.add_argument("--status-poll-ms", type=int, default=100)
    ap.add_argument("--scale-logs", default="100,1000,10000", help="logs per scale run ('' skips)")
    ap.add_argument("--scale-window", type=float, default=12.0, help="idle seconds measured")
    ap.add_argument(
        "--scale-old", default="f58055c", help="revision run beside the working tree ('' none)"
    )
    ap.add_argument("--revocations", type=int, default=0, help="key revocation runs (0 skips)")
    ap.add_argument("--revocation-size", type=int, default=32, help="nodes for --revocations")
    ap.add_argument("--note", action="append", default=[], help="a line added to the docs")
    ap.add_argument("--seed", type=int, default=20240601)
    ap.add_argument("--keep", action="store_true", help="keep the temporary homes")
    ap.add_argument(
        "--write-docs", action="store_true", help="replace our section of docs/benchmarks.md"
    )
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="hashmesh-propagation-"))
    procs = Procs()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        asyncio.run(amain(args, root, procs))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping nodes", file=sys.stderr)
        sys.exit(130)
    finally:
        procs.stop()
        if args.keep:
            print(f"homes kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
