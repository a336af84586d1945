"""Start-up of a real node process holding a large PDQ index, with its matcher workers.

    .venv/bin/python bench/node_startup.py --home DIR [--workers 2] [--repeat 2] [--rows]

DIR is a home built by bench/startup.py (10M: `--signals 10m --home DIR`, kept). Each run
starts `hashmesh run` on it (match_workers = --workers, both listeners on 127.0.0.1:0) and
polls every 20 ms from the moment the process is spawned:

- listening: the first /healthz answered (with `pdq_ready` false while the index loads);
- while loading: an exact match (md5) and a feed page, timed: they must answer;
- ready: /healthz says `pdq_ready`, and every worker's /healthz is 200 (current);
- then one PDQ query through the match address, the PSS of the node and its workers
  together (/proc/PID/smaps_rollup: shared file pages divided between the processes
  mapping them) and each process's peak RSS (VmHWM).

`--rows` first removes the index checkpoint, so the first run builds from rows (the cost
of a node's first start after an upgrade); the runs after it load the checkpoint that
run wrote. The table is printed; results go into docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchenv import machine  # noqa: E402

from hashmesh.node.config import Home  # noqa: E402

HASHMESH = Path(sys.executable).parent / "hashmesh"
POLL_S = 0.02


def call(url: str, token: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, headers=headers), timeout=30
        ) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def kib(pid: int, path: str, field: str) -> int:
    for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def one_run(home: Path, workers: int, token: str) -> dict[str, Any]:
    h = Home(home)
    config = h.load_config()
    config.listen = "127.0.0.1:0"
    config.match_workers = workers
    config.match_listen = "127.0.0.1:0"
    h.save_config(config)
    log = open(home.parent / "node-startup.log", "ab")  # noqa: SIM115
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(HASHMESH), "--home", str(home), "run"], stdout=log, stderr=log)
    r: dict[str, Any] = {"exact_ms": [], "feed_ms": []}
    api = ""
    try:
        while True:
            assert proc.poll() is None, "node exited"
            if not api:
                try:
                    runtime = json.loads(h.runtime_path.read_text())
                    if runtime.get("pid") == proc.pid:
                        api = runtime["api"]
                except (OSError, ValueError):
                    pass
            if api:
                try:
                    status, health = call(api + "/healthz", token)
                except OSError:
                    status, health = 0, {}
                if status == 200:
                    r.setdefault("listening_s", time.perf_counter() - t0)
                    if health.get("pdq_ready"):
                        r["pdq_ready_s"] = time.perf_counter() - t0
                        break
                    t = time.perf_counter()
                    md5 = "%032x" % random.getrandbits(128)
                    status, _ = call(
                        api + "/v1/match", token, {"queries": [{"type": "md5", "value": md5}]}
                    )
                    assert status == 200, status
                    r["exact_ms"].append((time.perf_counter() - t) * 1000)
                    t = time.perf_counter()
                    status, _ = call(api + "/v1/feed?limit=100", token)
                    assert status == 200, status
                    r["feed_ms"].append((time.perf_counter() - t) * 1000)
            time.sleep(POLL_S)
        runtime = json.loads(h.runtime_path.read_text())
        if workers:
            seen: set[int] = set()
            while seen != set(runtime.get("workers", [])) or not seen:
                try:
                    status, health = call(runtime["match"] + "/healthz", token)
                    if status == 200:
                        seen.add(health["pid"])
                except OSError:
                    pass
                runtime = json.loads(h.runtime_path.read_text())
                time.sleep(POLL_S)
            r["workers_ready_s"] = time.perf_counter() - t0
        match_url = runtime.get("match", api)
        pdq = "%064x" % random.getrandbits(256)
        t = time.perf_counter()
        status, answer = call(
            match_url + "/v1/match", token, {"queries": [{"type": "pdq", "value": pdq}]}
        )
        assert status == 200, answer
        r["first_pdq_ms"] = (time.perf_counter() - t) * 1000
        pids = [proc.pid, *runtime.get("workers", [])]
        r["pss_mib"] = sum(kib(p, "smaps_rollup", "Pss") for p in pids) / 1024
        r["peak_rss_mib"] = [kib(p, "status", "VmHWM") / 1024 for p in pids]
        r["how"] = next(
            (
                line.split("from ", 1)[1].rsplit(", ", 1)[0]
                for line in (home.parent / "node-startup.log").read_text().splitlines()[::-1]
                if "PDQ index ready" in line
            ),
            "?",
        )
    finally:
        proc.terminate()
        proc.wait(timeout=120)
        log.close()
    return r


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--rows", action="store_true")
    args = parser.parse_args()
    home = args.home
    token = (home / "admin.token").read_text().strip()
    if args.rows:
        shutil.rmtree(home / "index", ignore_errors=True)
    runs = []
    for n in range(args.repeat + (1 if args.rows else 0)):
        r = one_run(home, args.workers, token)
        print(f"run {n}: {json.dumps(r, default=str)[:400]}", flush=True)
        runs.append(r)
    print(f"\n{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(f"workers {args.workers}\n")
    print(
        "| index from | listening s | exact match while loading ms (median, n) | feed page ms "
        "| pdq_ready s | workers ready s | first PDQ ms | PSS node+workers MiB | peak RSS MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in runs:
        ex, fd = r["exact_ms"], r["feed_ms"]
        print(
            f"| {r['how']} | {r['listening_s']:.2f} | "
            f"{statistics.median(ex) if ex else float('nan'):.1f} ({len(ex)}) | "
            f"{statistics.median(fd) if fd else float('nan'):.1f} | {r['pdq_ready_s']:.2f} | "
            f"{r.get('workers_ready_s', float('nan')):.2f} | {r['first_pdq_ms']:.1f} | "
            f"{r['pss_mib']:,.0f} | {', '.join(f'{x:,.0f}' for x in r['peak_rss_mib'])} |"
        )


if __name__ == "__main__":
    main()
