"""Run real `hashmesh --home H run` processes (and `hashmesh matcher` replicas): for the
tests, the benchmarks and the demo.

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
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
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


class MatcherRun:
    """One `hashmesh matcher --follow` replica on 127.0.0.1:0, its files under `root`
    named `name` (the data directory, the token file 0600, the log), its URL read back
    from DIR/matcher.json once the file names this process's pid. `start()` again after a
    stop or kill runs it on the same data (`args` may be edited in between)."""

    def __init__(
        self,
        root: Path,
        name: str,
        follow: str,
        token: str,
        extra: Sequence[str] = (),
        *,
        command: Sequence[str] = PYTHON_M,
    ) -> None:
        self.data = root / name
        token_file = root / f"{name}.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
        self.log_path = root / f"{name}.log"
        self.args = [
            *command,
            "matcher",
            "--follow",
            follow,
            "--token-file",
            str(token_file),
            "--listen",
            ANY_PORT,
            "--data",
            str(self.data),
            *extra,
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> None:
        """Start the process; `poll_url` says when it listens. A HASHMESH_HOME of the
        caller's is not passed on (the replica has no home)."""
        env = {k: v for k, v in os.environ.items() if k != "HASHMESH_HOME"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def poll_url(self) -> str:
        """One look: the URL once this process wrote matcher.json, "" before; NodeFailed
        once it exited."""
        assert self.proc is not None, "not started"
        if self.proc.poll() is not None:
            raise NodeFailed(
                f"matcher at {self.data} exited with {self.proc.returncode}:\n{self.log()[-4000:]}"
            )
        try:
            runtime = json.loads((self.data / "matcher.json").read_text())
        except (OSError, ValueError):
            return ""
        if runtime.get("pid") != self.proc.pid:
            return ""
        self.url = str(runtime["url"])
        return self.url

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; the exit code (subprocess.TimeoutExpired if it ignores it)."""
        assert self.proc is not None, "not started"
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


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


class CountingProxy:
    """A TCP forwarder on 127.0.0.1 that counts the bytes each way and the HTTP requests
    by path: what a node sends another, measured on the wire rather than estimated. A
    peer's URL pointed at `url` carries that node's requests to `target` through it."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        self._lock = threading.Lock()
        self.sent = 0  # client to target
        self.received = 0  # target to client
        self.requests: dict[str, int] = {}
        # (path, first request byte, last answer byte, bytes both ways) per request seen
        self.exchanges: list[list[Any]] = []
        self._open: dict[int, list[Any]] = {}  # upstream socket -> its exchange in flight
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def snapshot(self) -> tuple[int, int, dict[str, int]]:
        with self._lock:
            return self.sent, self.received, dict(self.requests)

    def exchanges_since(self, start: int) -> list[tuple[str, float, float, int]]:
        """Requests from the `start`-th on, each timed from its first byte to the last byte
        of its answer (one request at a time per connection, as a sync round makes them)."""
        with self._lock:
            return [(e[0], e[1], e[2], e[3]) for e in self.exchanges[start:]]

    def close(self) -> None:
        self._closed = True
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while data := src.recv(65536):
                now = time.monotonic()
                with self._lock:
                    if outbound:
                        self.sent += len(data)
                        for line in _REQUEST_LINE.findall(data):
                            path = line.decode("ascii")
                            self.requests[path] = self.requests.get(path, 0) + 1
                            self.exchanges.append([path, now, now, 0])
                            self._open[dst.fileno()] = self.exchanges[-1]
                    else:
                        self.received += len(data)
                    exchange = self._open.get(dst.fileno() if outbound else src.fileno())
                    if exchange is not None:
                        exchange[2] = now
                        exchange[3] += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


_REQUEST_LINE = re.compile(rb"(?:POST|GET) (/[!-~]*) HTTP/1\.1\r\n")


def author_keys(count: int, salt: str = "author") -> list[Any]:
    """Deterministic author keys (not node homes), for many-participant tests and benches."""
    from hashlib import sha256

    from hashmesh.protocol.signing import SigningKey

    return [SigningKey(sha256(f"{salt}/{n}".encode()).digest()) for n in range(count)]


def one_batch_logs(keys: Sequence[Any], collection: str, seq: int = 1) -> list[Any]:
    """One signed batch (one md5 add) per author key, all at `seq` of a chain of such
    batches, so seq 2 continues the log seq 1 began."""
    from hashlib import md5

    from hashmesh.protocol.batches import build_batch

    out = []
    for key in keys:
        prev = None
        for s in range(1, seq + 1):
            value = md5(f"{key.node_id}/{collection}/{s}".encode()).hexdigest()
            ops = [{"op": "add", "type": "md5", "value": value, "category": "csam"}]
            batch = build_batch(key, collection, s, prev, 1_700_000_000_000 + s, ops)
            prev = batch.hash
        out.append(batch)
    return out


def seed_home(home: Path, trust: dict[str, str], batches: Sequence[Any]) -> None:
    """Trust each author (node id -> collection) and store `batches` in a stopped home, in
    process: thousands of `trust add` and `import` commands would take minutes."""
    from hashmesh.node.config import Trust
    from hashmesh.node.service import NodeService

    h = Home(home)
    config = h.load_config()
    config.trust = [
        *config.trust,
        *(
            Trust(node_id=a, collection=c, name=f"author-{n}")
            for n, (a, c) in enumerate(trust.items())
        ),
    ]
    h.save_config(config)
    service = NodeService(h)
    try:
        with service.store.bulk("seed"):
            for batch in batches:
                service.store.ingest(batch, source="seed")
    finally:
        service.close()
