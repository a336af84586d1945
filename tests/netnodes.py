"""Real node processes on 127.0.0.1 for multi-node tests (no mocks: real HTTP, real SQLite)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HASHMESH = str(Path(sys.executable).with_name("hashmesh"))


def free_port() -> int:
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


class NodeProc:
    """One hashmesh node: its home folder, CLI and (when started) its `run` process."""

    def __init__(self, root: Path, name: str, sync_interval: float = 1.0) -> None:
        self.name = name
        self.home = root / name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        out = self.cli(
            "init", str(self.home), "--name", name, "--listen", f"127.0.0.1:{self.port}", home=False
        )
        self.node_id = out.stdout.strip()
        config = self.home / "config.toml"
        text = config.read_text().replace("interval_s = 30.0", f"interval_s = {sync_interval}")
        config.write_text(text)

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
        with open(self.home / "run.log", "ab") as log:
            self.proc = subprocess.Popen(
                [HASHMESH, "--home", str(self.home), "run"], stdout=log, stderr=log
            )
        wait_for(self._healthy, timeout=20)

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"node {self.name} exited: {(self.home / 'run.log').read_text()}")
        try:
            insecure = ssl._create_unverified_context()  # only a liveness probe
            with urllib.request.urlopen(self.url + "/v1/healthz", timeout=1, context=insecure) as r:
                return r.status == 200 and (self.home / "node.json").exists()
        except OSError:
            return False

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def peer(self, other: NodeProc, *share: str) -> None:
        args = ["peer", "add", other.name, other.url, other.node_id]
        for c in share:
            args += ["--share", c]
        self.cli(*args)

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


def peak_rss(pid: int) -> int:
    """A process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")
