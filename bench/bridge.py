"""Bridge benchmark: an NCMEC list through a bridging node and on to a peer platform.

    .venv/bin/python bench/bridge.py [--entries 100000] [--deletions 10] [--write-docs]
                                     [--kind ncmec|threatexchange]

--kind threatexchange runs the same with a fake ThreatExchange Graph API instead
(tests/upstream_fakes.py: threat_updates pages of 500 as python-threatexchange asks, one
HASH_MD5 indicator with one descriptor per entry, a window's updates in no time order),
read by python-threatexchange's ThreatExchangeAPI; its results go to the section "## Bridge,
ThreatExchange (bench/bridge.py --kind threatexchange)".

A fake NCMEC hash-sharing API (tests/upstream_fakes.py: the v2 entries XML, 1,000 entries
a page as NCMEC pages, a window's entries in no time order) holds ENTRIES image entries of
one md5 each. Two real `hashmesh run` processes on 127.0.0.1: the bridge node, whose
config names an `ncmec` bridge to the fake (python-threatexchange's unchanged client,
poll interval --interval), and a platform node that trusts the bridge node in `csam` and
syncs with it (eager push, anti-entropy every second).

1. Initial fill: the clock starts when both nodes answer /v1/healthz (the bridge starts
   with its node) and stops when the platform holds every entry as a live signal (its
   database read read-only every 0.2 s); the bridge node's own fill time is read from its
   bridge state. Signals/s end to end = ENTRIES / that time.
2. Deletion delay: --deletions entries are deleted upstream one at a time; for each the
   clock runs from the deletion until the platform's POST /v1/match says "no match"
   (polled every 50 ms). The bridge waits 5 s behind NCMEC's clock (entries of the last
   seconds may still be written, as python-threatexchange does) and polls every
   --interval seconds, so the delay is about 5 s + up to one interval + propagation.

Results are printed; with --write-docs they replace the section "## Bridge
(bench/bridge.py)" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import benchnodes
from benchenv import load_text, machine, replace_section

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT / "tests"))

from upstream_fakes import (  # noqa: E402
    FakeNCMEC,
    FakeThreatExchange,
    NCMECEntry,
    TEDescriptor,
    TEIndicator,
)

from hashmesh.node.config import Bridge, Home, Peer, Trust  # noqa: E402

HEADING = "## Bridge (bench/bridge.py)"
TX_HEADING = "## Bridge, ThreatExchange (bench/bridge.py --kind threatexchange)"


def md5(n: int) -> str:
    return hashlib.md5(f"bridge bench {n}".encode()).hexdigest()


def live_from(db: Path, author: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(live), 0) FROM logs WHERE author = ? AND collection = 'csam'",
                (author,),
            ).fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0])


def matches(node: benchnodes.Node, value: str) -> bool:
    body = json.dumps({"queries": [{"type": "md5", "value": value}]}).encode()
    request = urllib.request.Request(
        node.url + "/v1/match",
        data=body,
        headers={**node.auth, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return bool(json.loads(response.read())["matched"])


def bridge_state(db: Path) -> dict[str, object]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        row = conn.execute("SELECT counts, last_success_ms FROM bridge_state").fetchone()
    return {"counts": json.loads(row[0]), "last_success_ms": row[1]} if row else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--deletions", type=int, default=10)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--kind", choices=("ncmec", "threatexchange"), default="ncmec")
    args = parser.parse_args()
    tx = args.kind == "threatexchange"

    fake: FakeNCMEC | FakeThreatExchange
    fake = FakeThreatExchange() if tx else FakeNCMEC(page_size=1000)
    fake.start()
    base = int(time.time()) - 10 * 86_400
    made = time.perf_counter()
    for n in range(args.entries):
        ts = base + n * 86_400 // args.entries
        if isinstance(fake, FakeThreatExchange):
            fake.indicators[str(10**9 + n)] = TEIndicator(
                str(10**9 + n), "HASH_MD5", md5(n), ts, [TEDescriptor(str(2 * 10**9 + n), 777)]
            )
        else:
            fake.entries[(42, f"e{n}")] = NCMECEntry(
                42, f"e{n}", ts, "image", classification="A1", fingerprints={"md5": md5(n)}
            )
    print(f"fake {args.kind} holds {args.entries:,} entries ({time.perf_counter() - made:.1f} s)")
    with tempfile.TemporaryDirectory(prefix="bench-bridge-") as tmp:
        root = Path(tmp)
        creds = root / "upstream.creds"
        if isinstance(fake, FakeThreatExchange):
            creds.write_text(fake.token + "\n")
        else:
            creds.write_text(f"{fake.user}:{fake.password}\n")
        os.chmod(creds, 0o600)
        bridge = benchnodes.make_node(root, "bridge", sync_interval_s=1.0)
        platform = benchnodes.make_node(root, "platform", sync_interval_s=1.0)
        for me, other in ((bridge, platform), (platform, bridge)):
            home = Home(me.home)
            config = home.load_config()
            config.peers.append(Peer(other.name, other.url, other.node_id, ["csam"]))
            if me is platform:
                config.trust.append(Trust(bridge.node_id, "csam", "bridge"))
            elif isinstance(fake, FakeThreatExchange):
                config.bridges.append(
                    Bridge(
                        "tx", "threatexchange", "csam", url=fake.url, credentials_file=str(creds),
                        interval_s=args.interval, privacy_group=str(fake.privacy_group),
                    )
                )  # fmt: skip
            else:
                config.bridges.append(
                    Bridge(
                        "ncmec", "ncmec", "csam", url=fake.url, credentials_file=str(creds),
                        interval_s=args.interval,
                    )
                )  # fmt: skip
            home.save_config(config)
        nodes = [bridge, platform]
        try:
            for node in nodes:
                benchnodes.spawn(node)
            for node in nodes:
                assert node.run is not None
                node.run.wait_ready(timeout=60)
            start = time.perf_counter()
            start_ms = int(time.time() * 1000)
            db = platform.home / "hashmesh.db"
            deadline = start + args.timeout
            while live_from(db, bridge.node_id) < args.entries:
                if time.perf_counter() > deadline:
                    raise SystemExit(f"fill not done within {args.timeout:.0f} s")
                time.sleep(0.2)
            fill_s = time.perf_counter() - start
            state = bridge_state(bridge.home / "hashmesh.db")
            bridge_s = (int(str(state["last_success_ms"])) - start_ms) / 1000
            print(
                f"initial fill: {args.entries:,} entries on the platform in {fill_s:.1f} s"
                f" ({args.entries / fill_s:,.0f} signals/s end to end); the bridge node's last"
                f" page {bridge_s:.1f} s after start"
            )
            delays = []
            for k in range(args.deletions):
                n = k * 997 % args.entries
                value = md5(n)
                assert matches(platform, value)
                if isinstance(fake, FakeThreatExchange):
                    fake.delete(str(10**9 + n), int(time.time()))
                else:
                    fake.delete(42, f"e{n}", int(time.time()))
                t0 = time.perf_counter()
                while matches(platform, value):
                    if time.perf_counter() - t0 > 120:
                        raise SystemExit("deletion did not arrive within 120 s")
                    time.sleep(0.05)
                delays.append(time.perf_counter() - t0)
                print(f"deletion {k + 1}: no match on the platform after {delays[-1]:.2f} s")
        finally:
            benchnodes.stop(nodes)
            fake.stop()
    median = statistics.median(delays) if delays else 0.0
    rows = [
        "| measure | result |",
        "| --- | --- |",
        f"| initial fill, upstream to platform | {args.entries:,} entries in {fill_s:.1f} s:"
        f" **{args.entries / fill_s:,.0f} signals/s** end to end |",
        f"| bridge node's own fill (last page applied) | {bridge_s:.1f} s |",
        f"| deletion upstream to no match on the platform ({len(delays)} deletions, poll"
        f" interval {args.interval:g} s) | median {median:.2f} s, min {min(delays):.2f} s,"
        f" max {max(delays):.2f} s |",
    ]
    print("\n".join(rows))
    if args.write_docs and tx:
        body = "\n".join(
            [
                TX_HEADING,
                "",
                f"Measured {datetime.date.today().isoformat()} on {machine()} (load average"
                f" {load_text()} at the end), `python bench/bridge.py --kind threatexchange"
                f" --entries {args.entries} --interval {args.interval:g}`.",
                "",
                "As the NCMEC run above, with a fake ThreatExchange Graph API"
                " (tests/upstream_fakes.py: threat_updates JSON pages of 500, the page size"
                " python-threatexchange asks for, a window's updates in no time order, one"
                " HASH_MD5 indicator with one descriptor per entry) read by"
                " python-threatexchange's unchanged ThreatExchangeAPI; the bridge stays 5 s"
                " behind the clock and drains windows as for NCMEC.",
                "",
                *rows,
                "",
            ]
        )
        replace_section(TX_HEADING, body)
    elif args.write_docs:
        body = "\n".join(
            [
                HEADING,
                "",
                f"Measured {datetime.date.today().isoformat()} on {machine()} (load average"
                f" {load_text()} at the end), `python bench/bridge.py --entries {args.entries}"
                f" --interval {args.interval:g}`.",
                "",
                "A fake NCMEC hash-sharing API (tests/upstream_fakes.py: v2 entries XML, 1,000"
                " entries a page, a window's entries in no time order) holding one md5 per"
                " entry, read by python-threatexchange's unchanged client in a bridging"
                " `hashmesh run` node, which publishes into `csam`; a platform node trusts"
                " it and syncs with it. The fill is timed from both nodes healthy to every"
                " entry live on the platform. A deletion is timed from the fake's change to"
                " the platform's POST /v1/match answering no match; the bridge stays 5 s"
                " behind NCMEC's clock (as python-threatexchange does: entries of the last"
                " seconds may still be written), so the delay is about 5 s plus up to one"
                " poll interval plus propagation.",
                "",
                *rows,
                "",
            ]
        )
        replace_section(HEADING, body)


if __name__ == "__main__":
    main()
