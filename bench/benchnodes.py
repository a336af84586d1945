"""Real `hashmesh run` processes for the benchmarks that start nodes (load, propagation).

Both used to carry their own node record, home set-up, spawn, stop and health wait, and
the copies had drifted (one waited for node.json, one stopped nodes one by one). One copy
keeps them measuring the same thing: a node counts as up when /v1/healthz answers and it
has written node.json, and stopping sends SIGTERM to all first, so they stop in parallel.

Like benchenv, this module is imported while bench/ is still on sys.path, before the
scripts drop it (bench/protocol.py would shadow the protocol package); so the node
package is imported inside `make_node`, once the caller has put the repository on the path.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from benchenv import free_port

HASHMESH = str(Path(sys.executable).with_name("hashmesh"))


@dataclass
class Node:
    name: str
    home: Path
    port: int
    node_id: str
    token: str
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


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
    log = open(node.home / "run.log", "ab")  # noqa: SIM115 - the child keeps it
    try:
        node.proc = subprocess.Popen(
            [HASHMESH, "--home", str(node.home), "run"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log.close()
    node.started_at = time.monotonic()


def stop(nodes: list[Node], timeout: float = 15.0) -> None:
    """SIGTERM to every running node, then wait for all within one shared `timeout`."""
    targets = [n for n in nodes if n.proc is not None]
    for n in targets:
        assert n.proc is not None
        if n.proc.poll() is None:
            try:
                n.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for n in targets:
        assert n.proc is not None
        try:
            n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            n.proc.kill()
            n.proc.wait(timeout=10)
        n.proc = None


async def wait_healthy(session: aiohttp.ClientSession, nodes: list[Node], timeout: float) -> None:
    deadline = time.monotonic() + timeout

    async def one(n: Node) -> None:
        while True:
            if n.proc is not None and n.proc.poll() is not None:
                log = (n.home / "run.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"node {n.name} exited with {n.proc.returncode}:\n{log}")
            try:
                async with session.get(n.url + "/v1/healthz") as r:
                    if r.status == 200 and (n.home / "node.json").exists():
                        return
            except (aiohttp.ClientError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {n.name} not healthy within {timeout:.0f} s")
            await asyncio.sleep(0.1)

    await asyncio.gather(*(one(n) for n in nodes))
