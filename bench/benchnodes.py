"""Real `hashmesh run` processes for the benchmarks that start nodes (load, propagation).

Starting, the wait for "up" and stopping are hashmesh.testing's, the one harness the tests
and the demo use too: a node is up when it has written node.json with its own pid and
/v1/healthz at that address answers; stopping sends SIGTERM to all first, so they stop in
parallel.

One exception to that harness's port 0: a benchmark's topology (every node's peers, with
their URLs) is written into the configs before any node starts, so that each node starts
as a deployed one does, with its peers already configured, and what is timed is not
disturbed by re-wiring live nodes. So the port is picked beforehand (benchenv.free_port).
Should another process take it first, the node exits with "address already in use" and
the benchmark stops with that log; and a node.json naming another address is an error.

Like benchenv, this module is imported while bench/ is still on sys.path, before the
scripts drop it (bench/protocol.py would shadow a top-level `protocol`); the hashmesh
package is installed, so importing it here is safe.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from benchenv import free_port, replace_section

from hashmesh.testing import NodeFailed, NodeRun, stop_all


@dataclass(eq=False)
class Node:
    name: str
    home: Path
    port: int
    node_id: str
    token: str
    run: NodeRun | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def proc(self) -> Any:
        return None if self.run is None else self.run.proc

    @property
    def started_at(self) -> float:
        return 0.0 if self.run is None else self.run.started_at


def make_node(root: Path, name: str, **settings: Any) -> Node:
    """A fresh home, made in-process (the init_home that `hashmesh init` calls), with
    `settings` written over the config's defaults."""
    from hashmesh.node.config import Home
    from hashmesh.node.service import init_home

    port = free_port()
    home = root / name
    config = init_home(home, name, f"127.0.0.1:{port}", None)
    for key, value in settings.items():
        if not hasattr(config, key):
            raise AttributeError(f"config has no setting {key!r}")
        setattr(config, key, value)
    h = Home(home)
    h.save_config(config)
    token = h.admin_token_path.read_text().strip()
    return Node(name, home, port, config.node_id, token)


def spawn(node: Node) -> None:
    node.run = NodeRun(node.home, node.home / "run.log")


def stop(nodes: list[Node], timeout: float = 15.0) -> None:
    """SIGTERM to every running node, then wait for all within one shared `timeout`."""
    runs = [n.run for n in nodes if n.run is not None]
    stop_all(runs, timeout)
    for n in nodes:
        n.run = None


async def wait_healthy(session: aiohttp.ClientSession, nodes: list[Node], timeout: float) -> None:
    """Every node up (see the module doc) within one shared `timeout`, polled together."""
    del session  # kept for the callers: the harness probes with its own client
    deadline = time.monotonic() + timeout

    async def one(n: Node) -> None:
        assert n.run is not None, f"node {n.name} was not spawned"
        while not await asyncio.to_thread(n.run.poll_ready):
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {n.name} not healthy within {timeout:.0f} s")
            await asyncio.sleep(0.1)
        if n.run.api != n.url:
            raise NodeFailed(f"node {n.name} listens on {n.run.api}, not {n.url}")

    await asyncio.gather(*(one(n) for n in nodes))


def report_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `run_and_report` reads."""
    parser.add_argument("--keep", action="store_true", help="keep the nodes' homes")
    parser.add_argument("--write-docs", action="store_true", help="into docs/benchmarks.md")


def run_and_report(
    bench: Callable[[Any, Path, list[Node]], Coroutine[Any, Any, dict[str, Any]]],
    args: Any,
    prefix: str,
    render: Callable[[Any, dict[str, Any]], str],
    section: str,
) -> None:
    """Run `bench(args, root, nodes)` in a fresh temporary root, stop every node it started
    whatever happens, print its table and, with --write-docs, put it in docs/benchmarks.md."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    nodes: list[Node] = []
    try:
        result = asyncio.run(bench(args, root, nodes))
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
        replace_section(section, text)
