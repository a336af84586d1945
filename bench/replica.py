"""Replica freshness: how soon an add applied on the node matches on a matcher replica, and
how soon a revocation stops matching there (issue 18: p99 <= 500 ms for both).

A node, a `hashmesh matcher --follow` replica of it (a process of its own, following the
node's feed stream) and a seed node holding --signals PDQ adds (built offline), all real
processes on 127.0.0.1. Phases, side by side in one run:

1. quiet: nothing else happens for --duration s;
2. sync: the node pulls the seed's --signals adds; the replica follows, so it applies them
   too, in feed order, ahead of any add published after them;
3. revocation: the seed withdraws --revoke of them (one list withdrawal); the node ingests
   the revocations and the replica follows.

Throughout, a probe in this process publishes one md5 add on the node every 250 ms
(`/v1/signals/batch`, published at once), polls the replica's `/v1/match` until the add
matches (add freshness, timed from the node's answer), then revokes it (`/v1/revoke`) and
polls until it no longer matches (revocation freshness, from that answer). A second task
reads the replica's `/healthz` every 100 ms for its lag (`behind`, `lag_s`) and counts 503s.
`--clients N` adds a saturating PDQ flood on the replica (load.py's clients, half matches,
half misses), so the probe's polls queue behind it as a platform's would.

    .venv/bin/python bench/replica.py                              # 1M PDQ, 100k revoked
    .venv/bin/python bench/replica.py --signals 300k --revoke 30k --clients 1
    .venv/bin/python bench/replica.py --write-docs                 # into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import re
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

# load, benchenv and benchnodes are found in bench/ (sys.path[0]); load drops bench/ after
from benchenv import machine
from benchnodes import Node, make_node, report_arguments, run_and_report, spawn, stop, wait_healthy
from load import (
    COLLECTION,
    add_peer,
    client_main,
    connect,
    parse_count,
    percentile,
    publish_offline,
    random_pdq,
    seed_copy,
    wait_live,
)

from hashmesh.testing import MatcherRun

SECTION = "## Replica freshness (bench/replica.py)"
PROBE = "probe"
PROBE_EVERY_S = 0.25
POLL_S = 0.005
FRESH_TIMEOUT_S = 30.0
PHASES = ("warm-up", "quiet", "sync", "revocation")


class Replica(MatcherRun):
    """The `hashmesh matcher` process under test (hashmesh.testing's), waited for here
    until its /healthz says the PDQ index is loaded."""

    def __init__(self, root: Path, node: Node, token: str, extra: list[str]) -> None:
        super().__init__(root, "replica", node.url, token, extra)

    async def up(self, timeout: float = 120.0) -> None:
        self.start()
        deadline = time.monotonic() + timeout
        while not self.poll_url():
            if time.monotonic() > deadline:
                raise RuntimeError("replica did not write matcher.json")
            await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.get(self.url + "/healthz") as r:
                    if r.status == 200 and (await r.json()).get("pdq_ready"):
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError("replica not healthy")
                await asyncio.sleep(0.1)

    def down(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.stop(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()


async def create_token(node: Node, name: str, scopes: list[str]) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            node.url + "/v1/admin/tokens", json={"name": name, "scopes": scopes}, headers=node.auth
        ) as r,
    ):
        assert r.status == 200, await r.text()
        return str((await r.json())["token"])


class Probe:
    """Add, wait until the replica matches it, revoke, wait until it does not; repeat."""

    def __init__(self, node: Node, replica_url: str, match_token: str) -> None:
        self.node = node
        self.replica_url = replica_url
        self.match_auth = {"Authorization": f"Bearer {match_token}"}
        self.add_ms: dict[str, list[float]] = {}
        self.revoke_ms: dict[str, list[float]] = {}
        self.misses: Counter[str] = Counter()
        self.phase = PHASES[0]
        self.rng = random.Random(7)

    async def _matched(self, session: aiohttp.ClientSession, value: str) -> bool | None:
        body = {"queries": [{"type": "md5", "value": value}]}
        async with session.post(
            self.replica_url + "/v1/match", json=body, headers=self.match_auth
        ) as r:
            if r.status != 200:
                self.misses[f"replica match HTTP {r.status} ({self.phase})"] += 1
                return None
            return bool((await r.json())["matched"])

    async def _until(self, session: aiohttp.ClientSession, value: str, want: bool) -> float | None:
        start = time.perf_counter()
        while time.perf_counter() - start < FRESH_TIMEOUT_S:
            if await self._matched(session, value) is want:
                return (time.perf_counter() - start) * 1000
            await asyncio.sleep(POLL_S)
        self.misses[f"{'add' if want else 'revocation'} not seen in {FRESH_TIMEOUT_S:g} s"] += 1
        return None

    async def run(self, stop_event: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop_event.is_set():
                t = time.perf_counter()
                phase = self.phase
                value = self.rng.randbytes(16).hex()
                body = {
                    "collection": PROBE,
                    "signals": [{"type": "md5", "value": value, "category": "csam"}],
                }
                async with session.post(
                    self.node.url + "/v1/signals/batch", json=body, headers=self.node.auth
                ) as r:
                    if r.status != 200:
                        self.misses[f"publish HTTP {r.status}"] += 1
                        await asyncio.sleep(PROBE_EVERY_S)
                        continue
                    answer = await r.json()
                if answer.get("applied") is False:
                    # Timed from the answer all the same: the node's own apply is inside.
                    self.misses[f"publish answered before applied, timed from it ({phase})"] += 1
                op_id = answer["signals"][0]["op_id"]
                ms = await self._until(session, value, True)
                if ms is not None:
                    self.add_ms.setdefault(phase, []).append(ms)
                async with session.post(
                    self.node.url + "/v1/revoke", json={"op_id": op_id}, headers=self.node.auth
                ) as r:
                    if r.status != 200:
                        self.misses[f"revoke HTTP {r.status}"] += 1
                        continue
                ms = await self._until(session, value, False)
                if ms is not None:
                    self.revoke_ms.setdefault(self.phase, []).append(ms)
                wait = PROBE_EVERY_S - (time.perf_counter() - t)
                if wait > 0:
                    try:
                        await asyncio.wait_for(stop_event.wait(), timeout=wait)
                    except TimeoutError:
                        pass


class LagWatch:
    """The replica's /healthz every 100 ms: the largest lag it reported per phase."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.phase = PHASES[0]
        self.behind: dict[str, int] = {}
        self.lag_s: dict[str, float] = {}
        self.refusing: Counter[str] = Counter()

    async def run(self, stop_event: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while not stop_event.is_set():
                async with session.get(self.url + "/healthz") as r:
                    health = await r.json()
                    if r.status != 200:
                        reason = str(health.get("reason", r.status))
                        reason = re.sub(r"^(its answers are )?[\d.]+ ", r"\1N ", reason)
                        self.refusing[f"{self.phase}: {reason}"] += 1
                p = self.phase
                self.behind[p] = max(self.behind.get(p, 0), int(health.get("behind") or 0))
                self.lag_s[p] = max(self.lag_s.get(p, 0.0), float(health.get("lag_s") or 0.0))
                try:
                    await asyncio.wait_for(stop_event.wait(), timeout=0.1)
                except TimeoutError:
                    pass


async def run(args: argparse.Namespace, root: Path, nodes: list[Node]) -> dict[str, Any]:
    rng = random.Random(args.seed)
    template = make_node(root, "seed-template")
    print(f"building the seed: {args.signals:,} PDQ signals offline ...", flush=True)
    values = [random_pdq(rng) for _ in range(args.signals)]
    build_s = publish_offline(template.home, COLLECTION, values)
    print(f"  built in {build_s:.0f} s", flush=True)
    seed = seed_copy(template.home, root, "seed")
    settings: dict[str, Any] = {"match_workers": args.match_workers} if args.match_workers else {}
    node = make_node(root, "node", **settings)
    nodes += [seed, node]
    local = [random_pdq(rng) for _ in range(args.local)]
    publish_offline(node.home, "local", local)
    connect(seed, node)
    for n in (seed, node):
        spawn(n)
    async with aiohttp.ClientSession() as session:
        await wait_healthy(session, [seed, node], timeout=120)
    follow_token = await create_token(node, "replica", ["read", "replicate"])
    match_token = await create_token(node, "platform", ["match"])
    extra = ["--max-lag", str(args.max_lag)] if args.max_lag is not None else []
    replica = Replica(root, node, follow_token, extra)
    t = time.monotonic()
    await replica.up()
    print(f"  replica ready in {time.monotonic() - t:.1f} s at {replica.url}", flush=True)

    phase = mp.Value("i", 0)
    out: mp.Queue[dict[str, Any]] = mp.Queue()
    clients = [
        mp.Process(
            target=client_main,
            args=(replica.url, match_token, local, args.concurrency, phase, out, n),
        )
        for n in range(args.clients)
    ]
    for c in clients:
        c.start()
    probe = Probe(node, replica.url, match_token)
    watch = LagWatch(replica.url)
    stop_event = asyncio.Event()
    tasks = [asyncio.create_task(probe.run(stop_event)), asyncio.create_task(watch.run(stop_event))]
    durations: dict[str, float] = {}
    loads: dict[str, float] = {}

    def enter(index: int) -> float:
        phase.value = index
        probe.phase = watch.phase = PHASES[index]
        return time.monotonic()

    try:
        await asyncio.sleep(args.warmup)
        t0 = enter(1)
        await asyncio.sleep(args.duration)
        durations["quiet"] = time.monotonic() - t0
        loads["quiet"] = os.getloadavg()[0]

        t0 = enter(2)
        await add_peer(node, seed)
        sync_s, live = await wait_live(node, args.signals, args.ingest_timeout, "sync")
        durations["sync"] = time.monotonic() - t0
        print(f"  sync: {sync_s:.1f} s ({live:,} live)", flush=True)
        loads["sync"] = os.getloadavg()[0]

        t0 = enter(3)
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session,
            session.post(
                seed.url + "/v1/lists/import",
                json={
                    "collection": COLLECTION,
                    "revoke_signals": [["pdq", v] for v in values[: args.revoke]],
                },
                headers=seed.auth,
            ) as r,
        ):
            assert r.status == 200, await r.text()
        revoke_s, live = await wait_live(
            node, args.signals - args.revoke, args.ingest_timeout, "revocation"
        )
        # The replica's own catch-up after the node: the probe keeps running until the
        # replica holds the node's head, so the revocations' tail is inside this phase.
        await asyncio.sleep(max(0.0, args.tail))
        durations["revocation"] = time.monotonic() - t0
        print(f"  revocation: {revoke_s:.1f} s on the node", flush=True)
        loads["revocation"] = os.getloadavg()[0]
    finally:
        phase.value = -1
        stop_event.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        flood = [out.get(timeout=120) for _ in clients]
        for c in clients:
            c.join(timeout=30)
            if c.is_alive():
                c.kill()
        replica.down()
        stop([seed, node])
    floods: dict[str, dict[str, float]] = {}
    errors: Counter[str] = Counter(probe.misses)
    for f in flood:
        errors.update(f["errors"])
    for index, name in enumerate(PHASES):
        lat = sorted(x for f in flood for x in f["latencies"][index])
        if name in durations and lat:
            floods[name] = {
                "rps": len(lat) / durations[name],
                "p50": percentile(lat, 0.5),
                "p99": percentile(lat, 0.99),
            }
    return {
        "build_s": build_s,
        "durations": durations,
        "sync_s": sync_s,
        "revoke_s": revoke_s,
        "add": {k: sorted(v) for k, v in probe.add_ms.items()},
        "revoke": {k: sorted(v) for k, v in probe.revoke_ms.items()},
        "behind": watch.behind,
        "lag_s": watch.lag_s,
        "refusing": dict(watch.refusing),
        "flood": floods,
        "errors": dict(errors),
        "load": loads,
    }


def _ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q):.0f}" if values else "-"


def render(args: argparse.Namespace, result: dict[str, Any]) -> str:
    command = (
        f"`.venv/bin/python bench/replica.py --signals {args.signals} --revoke {args.revoke}"
        f" --clients {args.clients} --match-workers {args.match_workers}`"
    )
    lines = [
        SECTION,
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d %H:%M %Z')}. Command: {command}"
        f" (seed of {args.signals:,} PDQ adds built offline in {result['build_s']:.0f} s; "
        f"sync {result['sync_s']:.1f} s, revocation {result['revoke_s']:.1f} s on the node).",
        "",
        "| phase | seconds | adds | add to matchable p50 / p99 / max ms | revocations |"
        " revocation to unmatched p50 / p99 / max ms | replica's largest lag (changes / s) |"
        " flood matches/s (p99 ms) | load average |",
        "| --- | ---: | ---: | --- | ---: | --- | --- | --- | ---: |",
    ]
    for name in PHASES[1:]:
        if name not in result["durations"]:
            continue
        add = result["add"].get(name, [])
        rev = result["revoke"].get(name, [])
        flood = result["flood"].get(name)
        lines.append(
            f"| {name} | {result['durations'][name]:.1f} | {len(add)} | {_ms(add, 0.5)} / "
            f"{_ms(add, 0.99)} / {_ms(add, 1.0)} | {len(rev)} | {_ms(rev, 0.5)} / "
            f"{_ms(rev, 0.99)} / {_ms(rev, 1.0)} | {result['behind'].get(name, 0):,} / "
            f"{result['lag_s'].get(name, 0.0):.2f} | "
            + (f"{flood['rps']:,.0f} ({flood['p99']:.0f})" if flood else "-")
            + f" | {result['load'].get(name, 0.0):.1f} |"
        )
    refusing = result["refusing"]
    lines += [
        "",
        "Replica /healthz refusing (polls of every 100 ms, by phase and reason): "
        + (", ".join(f"{k}: {v}" for k, v in sorted(refusing.items())) or "never")
        + ". Errors and misses: "
        + (", ".join(f"{k}: {v}" for k, v in sorted(result["errors"].items())) or "none")
        + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signals", type=parse_count, default=1_000_000)
    parser.add_argument("--revoke", type=parse_count, default=100_000)
    parser.add_argument("--local", type=parse_count, default=10_000)
    parser.add_argument("--clients", type=int, default=0, help="PDQ flood processes on the replica")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--match-workers", type=int, default=0, help="the node's match_workers")
    parser.add_argument("--max-lag", type=int, default=None, help="the replica's --max-lag")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the quiet phase")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--tail", type=float, default=3.0, help="seconds kept after revocation")
    parser.add_argument("--ingest-timeout", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    report_arguments(parser)
    args = parser.parse_args()
    run_and_report(run, args, "hm-replica-", render, SECTION)


if __name__ == "__main__":
    main()
