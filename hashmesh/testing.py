"""Run real `hashmesh --home H run` processes: for the tests, the benchmarks and the demo.

One copy of starting, waiting and stopping, so the three agree on what "up" means: the
process has written node.json naming its own pid, and /v1/healthz at the address in it
answers with the PDQ index loaded. A node is started on 127.0.0.1:0 and the port it
actually bound is read back from node.json. Picking a free port first (bind, close, hand
the number to the node) is a race: another process can take the port between the close and
the node's bind.

Like aiohttp.test_utils this ships in the package, because `hashmesh demo` uses it too.
"""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from hashmesh.node.config import Home

ANY_PORT = "127.0.0.1:0"
PYTHON_M = (sys.executable, "-m", "hashmesh")


class NodeFailed(RuntimeError):
    """The node process exited, or did not become ready in time; carries its log's tail."""


def read_runtime(home: Path) -> dict[str, Any] | None:
    """HOME/node.json, or None while it is absent or half-written."""
    try:
        data = json.loads((home / "node.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def pin_address(home: Path, api: str) -> None:
    """Write the address a node bound into its config (listen and url), so a restart binds
    the same port and peers that were told it keep reaching it, as with an operator's node.
    Call it while the node is stopped: a running node re-reads a changed config.toml."""
    parts = urlsplit(api)
    h = Home(home)
    config = h.load_config()
    config.listen = f"{parts.hostname}:{parts.port}"
    config.url = api
    h.save_config(config)


class NodeRun:
    """One `run` process of a home, its output appended to `log`."""

    def __init__(
        self,
        home: Path,
        log: Path,
        *,
        command: Sequence[str] = PYTHON_M,
        env: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self.log_path = log
        self._log: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen(
            [*command, "--home", str(home), "run"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.started_at = time.monotonic()
        self.api = ""

    @property
    def port(self) -> int:
        port = urlsplit(self.api).port
        if port is None:
            raise NodeFailed(f"node at {self.home} has no address until it is ready")
        return port

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def poll_ready(self) -> bool:
        """One look: True once this process wrote node.json and its /v1/healthz answers. A
        node.json from an earlier, killed process of the home does not count (its pid)."""
        if self.proc.poll() is not None:
            raise NodeFailed(
                f"node at {self.home} exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
            )
        runtime = read_runtime(self.home)
        if runtime is None or runtime.get("pid") != self.proc.pid:
            return False
        api = str(runtime.get("api", ""))
        # Only a liveness probe: a test node's TLS certificate is self-signed.
        insecure = ssl._create_unverified_context() if api.startswith("https:") else None
        try:
            with urllib.request.urlopen(api + "/v1/healthz", timeout=2, context=insecure) as r:
                body = json.loads(r.read())
                # Ready means matching too: the PDQ index loads after the listener opens.
                if r.status != 200 or body.get("ok") is not True or not body.get("pdq_ready"):
                    return False
        except (OSError, ValueError):
            return False
        self.api = api
        return True

    def wait_ready(self, timeout: float = 20.0) -> str:
        """Block until ready; the API's base URL (with the port the node bound)."""
        deadline = time.monotonic() + timeout
        while not self.poll_ready():
            if time.monotonic() > deadline:
                self.kill()
                raise NodeFailed(
                    f"node at {self.home} not ready within {timeout:.0f} s:\n{self.log()[-4000:]}"
                )
            time.sleep(0.05)
        return self.api

    def terminate(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; a node that ignores it is killed and NodeFailed is raised."""
        self.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            tail = self.log()[-4000:]
            raise NodeFailed(f"node at {self.home} ignored SIGTERM:\n{tail}") from None
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()


def stop_all(runs: Sequence[NodeRun], timeout: float = 20.0) -> dict[NodeRun, int]:
    """SIGTERM to every node first, so they stop in parallel, then wait for all within one
    shared `timeout`; a node still running then is killed (its code is negative)."""
    for run in runs:
        run.terminate()
    deadline = time.monotonic() + timeout
    codes: dict[NodeRun, int] = {}
    for run in runs:
        try:
            codes[run] = run.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            run._log.close()
        except subprocess.TimeoutExpired:
            run.kill()
            codes[run] = run.proc.returncode
    return codes
