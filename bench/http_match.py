"""Exact matches over HTTP at the node's match address, measured with wrk (a C load
generator: Python clients on the same two cores would measure themselves).

    .venv/bin/python bench/http_match.py [--signals 100k] [--workers 0,1,2] [--duration 10]
        [--servers fast,aiohttp] [--ceilings] [--ingest-rate 0]

For each --workers value a node home holding --signals MD5 adds (published offline
through NodeService, one copy per configuration) is started with that many matcher
workers; wrk (1 thread, --connections keep-alive connections) posts `POST /v1/match` with
one MD5 query each, half of them hashes the node holds, half misses. Two phases per
configuration, side by side:

1. idle: matches only;
2. ingest: the same while this process publishes batches of 1,000 new MD5 adds through
   `POST /v1/signals/batch` as fast as the node takes them (ingest rate reported).

Each worker count above 0 runs once per --servers value: `fast` is the matcher processes'
own path (web/fastmatch.py: httptools on uvloop), `aiohttp` the path before it (every route
through aiohttp on the stock loop; HASHMESH_MATCH_SERVER=aiohttp in the node's environment,
which its workers inherit). --ceilings first measures bare hello-world servers with the same
wrk script (one process, a constant answer): what the HTTP stack alone allows here.

wrk's own latency distribution gives p50/p99 (it corrects for coordinated omission only in
wrk2; wrk reports what its connections saw). Debian's `wrk` package must be installed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from benchenv import free_port, machine
from benchnodes import Node, make_node, stop, wait_healthy

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.append(str(ROOT))

from hashmesh.node.config import Config, Home  # noqa: E402
from hashmesh.node.service import NodeService  # noqa: E402
from hashmesh.protocol.ops import AddOp  # noqa: E402
from hashmesh.testing import NodeRun, read_runtime  # noqa: E402

HELLO = {
    "aiohttp (asyncio)": ("aiohttp", False),
    "aiohttp (uvloop)": ("aiohttp", True),
    "httptools (uvloop)": ("httptools", True),
}
HELLO_CODE = """
import asyncio, sys
kind, port, fast_loop = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
BODY = b'{"threshold": 31, "matched": false, "results": []}'
async def aiohttp_server():
    from aiohttp import web
    async def match(request):
        await request.read()
        return web.Response(body=BODY, content_type="application/json")
    app = web.Application()
    app.router.add_post("/v1/match", match)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()
async def httptools_server():
    import httptools
    head = b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
    head += b"Content-Length: %d\\r\\n\\r\\n"
    answer = head % len(BODY) + BODY
    class Protocol(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.parser = httptools.HttpRequestParser(self)
        def data_received(self, data):
            self.parser.feed_data(data)
        def on_message_complete(self):
            self.transport.write(answer)
    await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", port)
    await asyncio.Event().wait()
main = aiohttp_server if kind == "aiohttp" else httptools_server
if fast_loop:
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""

LUA = """
local hits = {%(hits)s}
local auth = "Bearer %(token)s"
math.randomseed(%(seed)d)
request = function()
  local v
  if math.random() < 0.5 then
    v = hits[math.random(#hits)]
  else
    v = string.format("%%08x%%08x%%08x%%08x", math.random(0, 0x7fffffff),
      math.random(0, 0x7fffffff), math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  end
  local body = '{"queries":[{"type":"md5","value":"' .. v .. '"}]}'
  return wrk.format("POST", "/v1/match",
    {["Content-Type"] = "application/json", ["Authorization"] = auth}, body)
end
"""


def parse_count(text: str) -> int:
    t = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if scale > 1 else t) * scale)


def wrk(url: str, script: Path, connections: int, duration: int, nice: int = 0) -> dict[str, Any]:
    out = subprocess.run(
        (["nice", "-n", str(nice)] if nice else [])
        + ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]

    def ms(label: str) -> float:
        m = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)\b", out)
        assert m is not None, out
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:(.*)", out)
    return {
        "rps": rps,
        "p50": ms("50"),
        "p99": ms("99"),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
    }


async def ingest(
    node: Node, stop_event: asyncio.Event, rng: random.Random, rate: float = 0.0
) -> int:
    """Batches of 1,000 adds, as fast as the node takes them, or at `rate` adds a second
    (each batch on a fixed schedule) so that the ingest takes a known share of the cores."""
    added = 0
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        while not stop_event.is_set():
            if rate:
                due = started + (added + 1000) / rate
                if (wait := due - time.monotonic()) > 0:
                    try:
                        await asyncio.wait_for(stop_event.wait(), wait)
                        break
                    except TimeoutError:
                        pass
            signals = [{"type": "md5", "value": rng.randbytes(16).hex()} for _ in range(1000)]
            body = {"collection": "csam", "signals": signals}
            async with session.post(
                node.url + "/v1/signals/batch", json=body, headers=node.auth
            ) as r:
                await r.read()
                if r.status == 200:
                    added += len(signals)
    return added


def write_script(path: Path, hits: list[str], token: str) -> Path:
    path.write_text(
        LUA % {"hits": ",".join(f'"{v}"' for v in hits[:2000]), "token": token, "seed": 18}
    )
    return path


def ceilings(root: Path, hits: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Bare hello-world servers on this machine, one process each, with the same wrk load."""
    script = write_script(root / "hello.lua", hits, "x")
    out = {}
    for name, (kind, fast_loop) in HELLO.items():
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-c", HELLO_CODE, kind, str(port), "1" if fast_loop else "0"]
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            cpu = cpu_s([proc.pid])
            out[name] = wrk(f"http://127.0.0.1:{port}", script, args.connections, args.duration)
            out[name]["cpu_us"] = per_match(cpu_s([proc.pid]) - cpu, out[name], args.duration)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
        print(name, json.dumps(out[name]), flush=True)
    return out


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes have used (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """User + system CPU seconds of this process's finished children (wrk)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def per_match(cpu: float, run: dict[str, Any], duration: int) -> float:
    """Microseconds of the matcher processes' CPU per answered request: what the other
    users of a shared machine's cores change least."""
    return 1e6 * cpu / max(1.0, run["rps"] * duration)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def one_config(
    template: Path,
    root: Path,
    workers: int,
    server: str,
    hits: list[str],
    args: argparse.Namespace,
    nice: int = 0,
) -> dict[str, Any]:
    home = root / f"w{workers}-{server}-n{nice}"
    shutil.copytree(template, home)
    h = Home(home)
    config = h.load_config()
    port = free_port()
    config.listen = f"127.0.0.1:{port}"
    config.match_workers = workers
    config.match_worker_nice = nice
    config.match_listen = "127.0.0.1:0"
    h.save_config(config)
    node = Node(f"w{workers}", home, port, config.node_id, h.admin_token_path.read_text().strip())
    env = {**os.environ, "HASHMESH_MATCH_SERVER": server}
    node.run = NodeRun(node.home, node.home / "run.log", env=env)
    try:
        async with aiohttp.ClientSession() as session:
            await wait_healthy(session, [node], 120)
            url = node.url
            if workers:
                runtime = read_runtime(home) or {}
                url = runtime["match"]
                seen: set[int] = set()
                deadline = time.monotonic() + 60
                while seen != set(runtime.get("workers", [])) and time.monotonic() < deadline:
                    async with session.get(url + "/healthz") as r:
                        if r.status == 200:
                            seen.add((await r.json())["pid"])
                    runtime = read_runtime(home) or {}
        script = write_script(root / "match.lua", hits, node.token)
        wrk_nice = nice if args.wrk_at_workers_nice and workers else 0
        assert node.run is not None
        pids = (read_runtime(home) or {}).get("workers", []) if workers else [node.run.proc.pid]
        cpu = cpu_s(pids)
        result = {
            "idle": await asyncio.to_thread(
                wrk, url, script, args.connections, args.duration, wrk_nice
            )
        }
        result["idle"]["load"] = loadavg()
        result["idle"]["cpu_us"] = per_match(cpu_s(pids) - cpu, result["idle"], args.duration)
        cpu = cpu_s(pids)
        rest = [node.run.proc.pid] if workers else []
        rest_cpu, own_cpu = cpu_s(rest), time.process_time()
        wrk_cpu = children_cpu_s()
        stop_event = asyncio.Event()
        feeder = asyncio.create_task(
            ingest(node, stop_event, random.Random(workers), args.ingest_rate)
        )
        t = time.monotonic()
        loaded = await asyncio.to_thread(
            wrk, url, script, args.connections, args.duration, wrk_nice
        )
        stop_event.set()
        added = await feeder
        elapsed = time.monotonic() - t
        loaded["ingest_per_s"] = added / elapsed
        # What the matchers could not have: the node's ingest, wrk and this process.
        others = cpu_s(rest) - rest_cpu + children_cpu_s() - wrk_cpu
        others += time.process_time() - own_cpu
        loaded["others_cores"] = others / elapsed
        if workers:
            loaded["matcher_cores"] = (cpu_s(pids) - cpu) / elapsed
        loaded["load"] = loadavg()
        if workers:  # the node's own CPU would count the ingest too
            loaded["cpu_us"] = per_match(cpu_s(pids) - cpu, loaded, args.duration)
        result["ingest"] = loaded
        return result
    finally:
        stop([node])


def build_template(root: Path, signals: int) -> tuple[Path, list[str]]:
    node = make_node(root, "template")
    rng = random.Random(signals)
    values = [rng.randbytes(16).hex() for _ in range(signals)]
    service = NodeService(Home(node.home))
    try:
        for start in range(0, signals, 5000):
            service.publish(
                "csam",
                [AddOp.create("md5", v, category="csam") for v in values[start : start + 5000]],
            )
    finally:
        service.close()
    return node.home, values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--signals", type=parse_count, default=100_000)
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--servers", default="fast,aiohttp", help="for worker counts above 0")
    parser.add_argument(
        "--nice",
        default=str(Config.match_worker_nice),
        help="match_worker_nice values, as 0,10 (default: the node's default)",
    )
    parser.add_argument(
        "--wrk-at-workers-nice",
        action="store_true",
        help="run wrk at the workers' nice value: a load generator on the matchers' cores"
        " then does not outrank them (on a platform the clients are other machines)",
    )
    parser.add_argument("--ceilings", action="store_true", help="bare hello worlds first")
    parser.add_argument(
        "--ingest-rate", type=float, default=0.0, help="adds/s in the ingest phase (0: flat out)"
    )
    args = parser.parse_args()
    nices = [int(x) for x in args.nice.split(",")]
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (apt-get install wrk)")
    root = Path(tempfile.mkdtemp(prefix="hashmesh-http-match-"))
    try:
        t = time.monotonic()
        template, values = build_template(root, args.signals)
        print(f"template of {args.signals:,} md5 built in {time.monotonic() - t:.0f} s", flush=True)
        hello = ceilings(root, values, args) if args.ceilings else {}
        results: dict[tuple[int, str, int], Any] = {}
        for nice in nices:
            for w in (int(x) for x in args.workers.split(",")):
                for server in args.servers.split(",") if w else ["node"]:
                    if nice and not w:
                        continue  # the nice value is the workers'
                    results[w, server, nice] = asyncio.run(
                        one_config(template, root, w, server, values, args, nice)
                    )
                    print(w, server, nice, json.dumps(results[w, server, nice]), flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {machine()}")
    print(
        f"{args.signals:,} md5 signals; wrk -t1 -c{args.connections} -d{args.duration}s"
        + (", at the workers' nice value" if args.wrk_at_workers_nice else "")
        + "\n"
    )
    if hello:
        print("| bare server (1 process) | requests/s | p50 ms | p99 ms | CPU us/request |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, x in hello.items():
            print(f"| {name} | {x['rps']:,.0f} | {x['p50']:.2f} | {x['p99']:.2f} |"
                  f" {x['cpu_us']:.0f} |")  # fmt: skip
        print()
    rate = f"{args.ingest_rate:,.0f} adds/s" if args.ingest_rate else "flat out"
    print(f"ingest phase: batches of 1,000 adds, {rate}\n")
    print("| workers | server | nice | phase | matches/s | p50 ms | p99 ms | non-2xx |"
          " ingest adds/s | matcher CPU us/match | matcher cores |"
          " node ingest + wrk + client cores | load average |")  # fmt: skip
    print("| ---: | --- | ---: | --- |" + " ---: |" * 8 + " --- |")
    for (w, server, nice), r in results.items():
        for phase in ("idle", "ingest"):
            x = r[phase]
            ing = f"{x['ingest_per_s']:,.0f}" if "ingest_per_s" in x else ""
            cpu = f"{x['cpu_us']:.0f}" if "cpu_us" in x else ""
            cores = f"{x['matcher_cores']:.2f}" if "matcher_cores" in x else ""
            others = f"{x['others_cores']:.2f}" if "others_cores" in x else ""
            print(f"| {w} | {server} | {nice} | {phase} | {x['rps']:,.0f} | {x['p50']:.2f} | "
                  f"{x['p99']:.2f} | {x['non2xx']} | {ing} | {cpu} | {cores} | {others} |"
                  f" {x['load']} |")  # fmt: skip
    for server in args.servers.split(","):
        for nice in nices:
            one, two = results.get((1, server, nice)), results.get((2, server, nice))
            if one and two:
                for phase in ("idle", "ingest"):
                    ratio = two[phase]["rps"] / one[phase]["rps"]
                    print(f"\n{server}, nice {nice}: 2 workers / 1 worker ({phase}): {ratio:.2f}x",
                          end="")  # fmt: skip
    print()


if __name__ == "__main__":
    main()
