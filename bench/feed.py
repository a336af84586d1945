"""Feed benchmark: a subscriber paging through 1,000,000 changes, and the delay from
publication to the live stream event.

    .venv/bin/python bench/feed.py [--changes 1000000] [--page 10000] [--events 500]

Builds a node home with N adds (offline, through NodeService, in signed batches), runs
the node as a real process on 127.0.0.1, then
  1. pages GET /v1/feed?after=..&limit=PAGE to the end over one keep-alive connection,
     decoding every page's JSON (what a subscriber does), and reports changes/s;
  2. holds GET /v1/feed/stream open and publishes single adds (POST /v1/signals/batch,
     one signal each, so the batching delay of POST /v1/signals does not count), and
     reports the delay from sending the publish request to receiving its event, and from
     the store's commit timestamp (`at`) to receipt.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchenv import free_port, machine  # noqa: E402

from hashmesh.node.config import Home  # noqa: E402
from hashmesh.node.service import NodeService, init_home  # noqa: E402
from hashmesh.protocol.ops import AddOp  # noqa: E402

HASHMESH = str(Path(sys.executable).with_name("hashmesh"))


def populate(home: Path, changes: int) -> float:
    service = NodeService(Home(home))
    start = time.perf_counter()
    chunk = 50_000
    for base in range(0, changes, chunk):
        ops = [
            AddOp.create("md5", f"{n:032x}", category="csam")
            for n in range(base, min(changes, base + chunk))
        ]
        service.publish("csam", ops)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - start
    service.close()
    return elapsed


def start_node(home: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [HASHMESH, "--home", str(home), "run", "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL,
        stderr=open(home.parent / "node.log", "wb"),  # noqa: SIM115
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (home / "node.json").exists():
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode}")
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("node did not start")


def page_through(port: int, token: str, page: int) -> tuple[int, float, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {token}"}
    after = 0
    total = 0
    size = 0
    start = time.perf_counter()
    while True:
        conn.request("GET", f"/v1/feed?after={after}&limit={page}", headers=headers)
        response = conn.getresponse()
        body = response.read()
        size += len(body)
        data = json.loads(body)
        total += len(data["entries"])
        after = data["next"]
        if not data["more"]:
            break
    elapsed = time.perf_counter() - start
    conn.close()
    return total, elapsed, size


def stream_delays(port: int, token: str, events: int) -> tuple[list[float], list[float]]:
    head_conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"}
    head_conn.request("GET", "/v1/status", headers=headers)
    head = json.loads(head_conn.getresponse().read())["feed_cursor"]
    stream = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    stream.request(
        "GET", "/v1/feed/stream?heartbeat=60", headers={**headers, "Last-Event-ID": str(head)}
    )
    response = stream.getresponse()
    received: dict[str, tuple[float, int]] = {}
    done = threading.Event()

    def reader() -> None:
        while len(received) < events:
            line = response.fp.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                now = time.perf_counter()
                wall = time.time_ns() // 1_000_000
                entry = json.loads(line[6:])
                received[entry["value"]] = (now, wall - entry["at"])
        done.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    sent: dict[str, float] = {}
    publish = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for n in range(events):
        value = f"{10**12 + n:032x}"
        body = json.dumps({"collection": "live", "signals": [{"type": "md5", "value": value}]})
        sent[value] = time.perf_counter()
        publish.request(
            "POST",
            "/v1/signals/batch",
            body=body,
            headers={**headers, "Content-Type": "application/json"},
        )
        publish.getresponse().read()
        time.sleep(0.005)
    done.wait(30)
    end_to_end = [(received[v][0] - t) * 1000 for v, t in sent.items() if v in received]
    commit = [float(received[v][1]) for v in sent if v in received]
    stream.close()
    return end_to_end, commit


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--page", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hashmesh-feed-bench-") as tmp:
        home = Path(tmp) / "node"
        port = free_port()
        init_home(home, "bench", f"127.0.0.1:{port}", None)
        build_s = populate(home, args.changes)
        token = (home / "admin.token").read_text().strip()
        proc = start_node(home)
        try:
            total, elapsed, size = page_through(port, token, args.page)
            end_to_end, commit = stream_delays(port, token, args.events)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    rows: list[tuple[str, Any]] = [
        ("machine", machine()),
        ("changes in the feed", f"{total:,} (built offline in {build_s:.1f} s)"),
        (f"paged read, limit {args.page:,}, JSON decoded", f"{elapsed:.2f} s"),
        ("paged read rate", f"{total / elapsed:,.0f} changes/s ({size / elapsed / 1e6:.0f} MB/s)"),
        (
            f"stream delay, publish request -> event (n={len(end_to_end)})",
            f"p50 {pct(end_to_end, 50):.1f} ms, p99 {pct(end_to_end, 99):.1f} ms",
        ),
        (
            "stream delay, commit (`at`, ms clock) -> event",
            f"p50 {pct(commit, 50):.0f} ms, p99 {pct(commit, 99):.0f} ms",
        ),
    ]
    print("| measure | result |")
    print("| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if total != args.changes:
        print(f"WARNING: read {total} changes, expected {args.changes}", file=sys.stderr)
    if end_to_end:
        print(f"(median of all {statistics.median(end_to_end):.1f} ms)", file=sys.stderr)


if __name__ == "__main__":
    main()
