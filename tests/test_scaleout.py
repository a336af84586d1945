"""Scale-out on standard parts: a real node, two `hashmesh matcher` replicas following it and
HAProxy in front of them, all on 127.0.0.1, run with deploy/haproxy.cfg itself (only its
addresses swapped for this machine's). A client keeps several match requests in flight
through HAProxy while one replica is SIGKILLed and later restarted on the same data
directory and port: every request gets a 200 with the node's own answer (none lost), the
kill is felt (HAProxy retried or redispatched), and the restarted replica serves again.

HAProxy is Debian's package; `.ci/run` installs it. Without it the test skips, or fails
when HASHMESH_REQUIRE_DEPLOY_LINT or CI is set (as tests/test_deploy_files.py's lints).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc, free_port, wait_for
from platform_util import request
from test_replica import MatcherProc, md5, near, pdq_values, publish, token

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "deploy" / "haproxy.cfg"
CLIENTS = 6  # requests in flight at once
WAIT_S = 20.0  # every "until" below is bounded by this


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    if os.environ.get("HASHMESH_REQUIRE_DEPLOY_LINT") or os.environ.get("CI"):
        pytest.fail("haproxy is required (HASHMESH_REQUIRE_DEPLOY_LINT or CI is set)")
    pytest.skip("haproxy not installed (.ci/run installs Debian's package)")


def local_config(
    shipped: str, front: int, metrics: int, sock: Path, servers: list[str], node: str
) -> str:
    """deploy/haproxy.cfg with its listening addresses, stats socket and server lines
    swapped for 127.0.0.1 ones; every other directive is the shipped file's. Each swap must
    hit exactly what it expects, so a reshaped shipped file fails here, not silently."""

    def swap(text: str, pattern: str, new: str, count: int = 1) -> str:
        out, n = re.subn(pattern, new, text, flags=re.M)
        assert n == count, f"deploy/haproxy.cfg: expected {count} line(s) matching {pattern!r}"
        return out

    text = swap(shipped, r"^(\s+)bind :7500$", rf"\g<1>bind 127.0.0.1:{front}")
    text = swap(text, r"^(\s+)bind :8405$", rf"\g<1>bind 127.0.0.1:{metrics}")
    text = swap(text, r"^(\s+stats socket )\S+", rf"\g<1>{sock}")
    lines = [f"    server m{i + 1} {hostport} check" for i, hostport in enumerate(servers)]
    text = swap(text, r"^(\s+server matcher\d .*\n)+", "\n".join(lines) + "\n")
    return swap(text, r"^(\s+server node )node:7400 check", rf"\g<1>{node} check", count=2)


class HAProxy:
    """One HAProxy process in the foreground (-db), its stats read from its socket."""

    def __init__(self, root: Path, servers: list[str], node: str) -> None:
        self.root = root
        self.servers = servers
        self.node = node
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock = root / "haproxy.sock"
        self.log_path = root / "haproxy.log"
        self.url = ""

    def start(self) -> None:
        """Port 0 cannot be given to HAProxy: free ports are picked and, if another process
        took one in between (HAProxy exits saying it cannot bind), picked again."""
        binary = haproxy_binary()
        for _ in range(5):
            front, metrics = free_port(), free_port()
            config = self.root / "haproxy.cfg"
            config.write_text(
                local_config(
                    SHIPPED.read_text(), front, metrics, self.sock, self.servers, self.node
                )
            )
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [binary, "-db", "-f", str(config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            self.url = f"http://127.0.0.1:{front}"
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self.sock.exists() and self._listening(front):
                    return
                time.sleep(0.05)
            if self.proc.poll() is None:
                break
            if "cannot bind" not in self.log() and "Address already in use" not in self.log():
                break
        raise AssertionError(f"haproxy did not start:\n{self.log()[-3000:]}")

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def stats(self, backend: str = "matchers") -> dict[str, dict[str, str]]:
        """`show stat` of one backend: row per server name (and BACKEND)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.sock))
            s.sendall(b"show stat\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {r["svname"]: r for r in rows if r["pxname"] == backend}

    def status(self, server: str, backend: str = "matchers") -> str:
        return self.stats(backend)[server]["status"]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Node, two replicas and HAProxy, every one killed at the end whatever happened."""
    made: dict[str, Any] = {"matchers": []}
    try:
        node = NodeProc(tmp_path, "hotline")
        made["node"] = node
        node.start()
        yield made
    finally:
        if made.get("haproxy") is not None:
            made["haproxy"].kill()
        for m in made["matchers"]:
            m.kill()
        if made.get("node") is not None:
            made["node"].kill()


def pin_port(replica: MatcherProc) -> None:
    """Restart on the port it bound first: HAProxy's server line names that port."""
    i = replica.args.index("--listen")
    replica.args[i + 1] = replica.url.removeprefix("http://")


def test_killing_a_replica_behind_haproxy_loses_no_request(
    tmp_path: Path, stack: dict[str, Any]
) -> None:
    haproxy_binary()
    node: NodeProc = stack["node"]
    pdqs = pdq_values(6)
    for value in pdqs:
        publish(node, "pdq", value, "csam")
    for i in range(20):
        publish(node, "md5", md5(i), "csam" if i % 2 else "ncii")
    follow = token(node, "replicas", ["read", "replicate"])
    platform = token(node, "platform", ["match"])
    queries = [{"type": "md5", "value": md5(i)} for i in range(0, 20, 3)]
    queries += [{"type": "pdq", "value": near(v)} for v in pdqs]
    queries.append({"type": "md5", "value": md5(99, 7)})  # matches nothing
    status, body = request(node.url + "/v1/match", "POST", platform, {"queries": queries})
    assert status == 200, body
    expected = json.loads(body)
    assert sum(bool(r["matches"]) for r in expected["results"]) == len(queries) - 1

    replicas = [MatcherProc(tmp_path, node, follow, data=f"m{i}") for i in (1, 2)]
    stack["matchers"].extend(replicas)
    for r in replicas:
        r.start()
        pin_port(r)
    proxy = HAProxy(
        tmp_path,
        [r.url.removeprefix("http://") for r in replicas],
        node.url.removeprefix("http://"),
    )
    stack["haproxy"] = proxy
    proxy.start()
    wait_for(lambda: proxy.status("m1") == "UP" and proxy.status("m2") == "UP", WAIT_S)
    # Every other route goes to the node: a platform needs one address.
    wait_for(lambda: proxy.status("node", "node") == "UP", WAIT_S)
    feed = "/v1/feed?limit=50"
    through = request(proxy.url + feed, token=node.admin_token())
    assert through == request(node.url + feed, token=node.admin_token())
    assert through[0] == 200 and len(json.loads(through[1])["entries"]) == 26

    outcomes: list[tuple[int, str]] = []  # (status, what was wrong or "")
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                status, raw = request(
                    proxy.url + "/v1/match", "POST", platform, {"queries": queries}, timeout=10
                )
            except OSError as exc:  # a refused or reset connection from HAProxy is a loss
                status, raw = 0, repr(exc).encode()
            wrong = ""
            if status != 200:
                wrong = raw[:300].decode(errors="replace")
            elif json.loads(raw) != expected:
                wrong = "answer differs from the node's"
            with lock:
                outcomes.append((status, wrong))

    def answered() -> int:
        with lock:
            return len(outcomes)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: answered() >= 100, WAIT_S)
        victim = replicas[0]
        victim.kill()  # SIGKILL: no clean stop, no last checkpoint
        wait_for(lambda: proxy.status("m1").startswith("DOWN"), WAIT_S)
        before = answered()
        wait_for(lambda: answered() >= before + 100, WAIT_S)  # all on m2 meanwhile
        victim.start()  # same --data and port; healthy once caught up
        wait_for(lambda: proxy.status("m1") == "UP", WAIT_S)
        served = int(proxy.stats()["m1"]["stot"])
        wait_for(lambda: int(proxy.stats()["m1"]["stot"]) >= served + 20, WAIT_S)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert not any(t.is_alive() for t in threads)

    lost = [o for o in outcomes if o[0] != 200 or o[1]]
    assert not lost, f"{len(lost)} of {len(outcomes)} requests lost, e.g. {lost[:3]}"
    backend = proxy.stats()["BACKEND"]
    felt = int(backend["wretr"] or 0) + int(backend["wredis"] or 0)
    assert felt > 0, "no request was retried or redispatched: the kill was not felt"
