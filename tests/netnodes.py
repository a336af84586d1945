"""Real node processes on 127.0.0.1 for multi-node tests (no mocks: real HTTP, real SQLite).

A NodeProc's home listens on 127.0.0.1:0; the harness (hashmesh.testing) reads the port
the node bound back from node.json at its first start, and a restart pins it into the
config first (listen and url), so the node keeps its address. Before its first start a
node has no URL, so `a.peer(b)` before b has started adds the peer (name, node id,
shares) with a placeholder URL on which nothing can listen, and b's start replaces it with
b's real URL through `hashmesh peer update`; to an `a` started before b, that looks as b's
not-yet-running node always did: connection refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hashmesh.testing import ANY_PORT, NodeRun, pin_address

HASHMESH = str(Path(sys.executable).with_name("hashmesh"))
# Port 1 needs root to bind, so no test process can be listening on it.
UNSTARTED_URL = "http://127.0.0.1:1"


def free_port() -> int:
    """For processes that are not hashmesh nodes (Postgres, HMA, the README's literal
    commands), which cannot report the port they bound; a node gets port 0 instead."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


def sync_rounds(*pairs: tuple[NodeProc, str], timeout: float = 30.0) -> None:
    """Wait until each (node, peer name) has completed an anti-entropy round that began
    after this call: the positive witness, before asserting that something did not arrive,
    that it had its chance (a fixed sleep proves nothing once a default interval changes)."""
    since = int(time.time() * 1000)

    def done(node: NodeProc, peer: str) -> bool:
        state = next(p for p in node.status()["peers"] if p["name"] == peer)
        began = state.get("last_attempt_ms") or 0
        return bool(began > since and (state.get("last_sync_ms") or 0) >= began)

    for node, peer in pairs:
        wait_for(lambda: done(node, peer), timeout=timeout)  # noqa: B023 - called at once


def both_ways(a: NodeProc, b: NodeProc, timeout: float = 30.0) -> None:
    """A round of a with b and of b with a, each begun after this call (see sync_rounds)."""
    sync_rounds((a, b.name), (b, a.name), timeout=timeout)


def later_record_arrives(author: NodeProc, reader: NodeProc, collection: str) -> None:
    """`author` publishes a fresh md5 to `collection` and this waits until `reader` matches
    it. A log's batches are applied in sequence order, so every batch `author` published to
    that log before has been applied by then: the witness before asserting that an earlier
    change (or a refused one) did not arrive."""
    value = hashlib.md5(os.urandom(16)).hexdigest()
    author.cli("add", "md5", value, "-c", collection)
    wait_for(lambda: reader.matches("md5", value), timeout=30)


class NodeProc:
    """One hashmesh node: its home folder, CLI and (when started) its `run` process."""

    def __init__(self, root: Path, name: str, sync_interval: float = 1.0) -> None:
        self.name = name
        self.home = root / name
        self.run: NodeRun | None = None
        self._api = ""
        self._told: list[NodeProc] = []  # nodes holding our placeholder URL
        out = self.cli("init", str(self.home), "--name", name, "--listen", ANY_PORT, home=False)
        self.node_id = out.stdout.strip()
        config = self.home / "config.toml"
        text = config.read_text().replace("interval_s = 30.0", f"interval_s = {sync_interval}")
        config.write_text(text)

    @property
    def url(self) -> str:
        if not self._api:
            raise AssertionError(f"node {self.name} has no address before its first start")
        return self._api

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return None if self.run is None else self.run.proc

    @proc.setter
    def proc(self, value: None) -> None:
        assert value is None, "proc can only be cleared (after killing it)"
        self.run = None

    def cli(
        self, *args: str, home: bool = True, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        cmd = [HASHMESH, *(["--home", str(self.home)] if home else []), *args]
        env = {k: v for k, v in os.environ.items() if k != "HASHMESH_HOME"}
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def start(self) -> None:
        if self._api:  # written while stopped: a running node would reload it mid-test
            pin_address(self.home, self._api)
        env = {k: v for k, v in os.environ.items() if k != "HASHMESH_HOME"}
        self.run = NodeRun(self.home, self.home / "run.log", command=(HASHMESH,), env=env)
        api = self.run.wait_ready(timeout=20)
        if not self._api:
            self._api = api
            for other in self._told:
                other.cli("peer", "update", self.name, "--url", api)
            self._told.clear()
        assert api == self._api, f"node {self.name} moved from {self._api} to {api}"

    def stop(self) -> int:
        if self.run is None:
            return 0
        code = self.run.stop(timeout=20)
        self.run = None
        return code

    def kill(self) -> None:
        if self.run is not None:
            self.run.kill()
            self.run = None

    def peer(self, other: NodeProc, *share: str) -> None:
        url = other._api or UNSTARTED_URL
        args = ["peer", "add", other.name, url, other.node_id]
        for c in share:
            args += ["--share", c]
        self.cli(*args)
        if not other._api:
            other._told.append(self)

    def trust(self, author: NodeProc, collection: str) -> None:
        self.cli("trust", "add", author.node_id, collection, "--name", author.name)

    def matches(self, signal_type: str, value: str) -> bool:
        result = self.cli("match", signal_type, value, check=False)
        assert result.returncode in (0, 1), result.stderr
        return result.returncode == 0

    def status(self) -> Any:
        return self.json("status")

    def key_seed(self) -> bytes:
        from hashmesh.protocol.encoding import from_b64url

        text = (self.home / "node.key").read_text().strip()
        return from_b64url(text.split(":", 1)[1], "seed", 32)

    def admin_token(self) -> str:
        return (self.home / "admin.token").read_text().strip()

    def store_legacy_restricted_admin(self, name: str) -> str:
        """The row an older version stored for `token create NAME --scope admin
        --collection csam`, now refused at creation: such a token must load powerless."""
        token = "hm_" + hashlib.sha256(name.encode()).hexdigest()[:43]
        with sqlite3.connect(self.home / "hashmesh.db") as db:
            db.execute(
                "INSERT INTO tokens (name, hash, scopes, collections, created_at)"
                " VALUES (?, ?, 'admin', 'csam', 0)",
                (name, hashlib.sha256(token.encode()).hexdigest()),
            )
        return token


class NodeSet(list[NodeProc]):
    """Nodes made under one folder (conftest's `nodes` fixture kills what still runs)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def make(self, *names: str, interval: float = 1.0) -> list[NodeProc]:
        new = [NodeProc(self.root, name, sync_interval=interval) for name in names]
        self.extend(new)
        return new

    def kill_all(self) -> None:
        for node in self:
            node.kill()


def link(a: NodeProc, b: NodeProc, *collections: str) -> None:
    """Each a peer of the other, sharing `collections` both ways."""
    a.peer(b, *collections)
    b.peer(a, *collections)


def peak_rss(pid: int) -> int:
    """A process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")
