"""Shared fixtures: the real `hashmesh` console script, node homes, and running nodes.

Everything here drives the installed console script in a subprocess with a clean
environment, so a test sees exactly what an operator's shell sees. Nodes started by the
fixtures bind 127.0.0.1:0 and the harness (hashmesh.testing) reads the bound port back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc, NodeSet

from hashmesh.node.config import Home
from hashmesh.protocol import SigningKey, build_batch
from hashmesh.protocol.batches import Batch
from hashmesh.protocol.bundles import encode_bundle_header
from hashmesh.testing import ANY_PORT, NodeFailed, NodeRun


def _find_hashmesh() -> str:
    candidate = Path(sys.executable).parent / "hashmesh"
    if candidate.exists():
        return str(candidate)
    venv = Path(__file__).resolve().parent.parent / ".venv" / "bin"
    found = shutil.which("hashmesh", path=str(venv)) or shutil.which("hashmesh")
    if found is None:
        raise RuntimeError("the hashmesh console script is not installed (pip install -e .)")
    return found


HASHMESH = _find_hashmesh()


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment: no HASHMESH_HOME or other variables leaking in from the shell."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if "HOME" in os.environ:
        env["HOME"] = os.environ["HOME"]
    env.update(extra)
    return env


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (
            f"hashmesh {' '.join(self.args)} -> exit {self.returncode}\n"
            f"stdout: {self.stdout}\nstderr: {self.stderr}"
        )


class Cli:
    """Runs `hashmesh ARGS...`; `home` prepends `--home HOME`; `expect` checks the exit code."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def __call__(
        self,
        *args: str | Path,
        home: Path | None = None,
        env: dict[str, str] | None = None,
        expect: int | None = 0,
        timeout: float = 120,
    ) -> Result:
        argv = [str(a) for a in args]
        if home is not None:
            argv = ["--home", str(home), *argv]
        proc = subprocess.run(
            [HASHMESH, *argv],
            cwd=self.cwd,
            env=clean_env(**(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        result = Result(argv, proc.returncode, proc.stdout, proc.stderr)
        if expect is not None:
            assert result.returncode == expect, str(result)
        return result

    def json(self, *args: str | Path, home: Path | None = None, expect: int | None = 0) -> Any:
        return self(*args, "--json", home=home, expect=expect).json()


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


HomeFactory = Callable[..., Path]


@pytest.fixture
def home(tmp_path: Path, cli: Cli) -> HomeFactory:
    """`home("A")` creates tmp_path/A with `hashmesh init`, listening on 127.0.0.1:0 (the
    port a started node binds is read back from its node.json) unless `port` is given."""

    def make(name: str = "A", *, port: int | None = None) -> Path:
        path = tmp_path / name
        listen = f"127.0.0.1:{port}" if port is not None else ANY_PORT
        cli("init", path, "--name", name, "--listen", listen)
        return path

    return make


def set_config(path: Path, **values: Any) -> None:
    """Change config fields of a home (e.g. listen, batch_delay_ms) through the node's own code."""
    home = Home(path)
    config = home.load_config()
    for key, value in values.items():
        setattr(config, key, value)
    home.save_config(config)


def http(
    method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 30
) -> Any:
    headers = {}
    data = None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


class NodeProcess:
    """`hashmesh --home H run` as a real subprocess, on 127.0.0.1:0 (hashmesh.testing)."""

    def __init__(self, home: Path, log: Path) -> None:
        self.home = home
        self.log_path = log
        set_config(home, listen=ANY_PORT)
        self.run = NodeRun(home, log, command=(HASHMESH,), env=clean_env())
        self.proc = self.run.proc
        self.api = self.run.wait_ready(timeout=20)
        self.token = (home / "admin.token").read_text().strip()

    def log(self) -> str:
        return self.run.log()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return http(method, self.api + path, body, token=self.token)

    def stop(self) -> int:
        """SIGTERM, then wait: the node must stop cleanly (exit 0) and remove its node.json."""
        try:
            return self.run.stop(timeout=20)
        except NodeFailed as exc:
            raise AssertionError(str(exc)) from None


NodeFactory = Callable[[Path], NodeProcess]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[NodeFactory]:
    """`start_node(home)` runs the node of a home; every node is stopped and checked at teardown."""
    nodes: list[NodeProcess] = []

    def start(path: Path) -> NodeProcess:
        node = NodeProcess(path, tmp_path / f"{path.name}-node-{len(nodes)}.log")
        nodes.append(node)
        return node

    yield start
    failures = []
    for node in nodes:
        running = node.proc.poll() is None
        code = node.stop()
        if running and code != 0:
            failures.append(f"{node.home}: exit {code}\n{node.log()}")
        elif running and (node.home / "node.json").exists():
            failures.append(f"{node.home}: node.json left behind after a clean stop")
    assert not failures, "\n".join(failures)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodeSet]:
    """`nodes.make("a", "b")`: NodeProcs under tmp_path, all killed at teardown."""
    made = NodeSet(tmp_path)
    yield made
    made.kill_all()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProc]:
    """One started node named hotline, which must stop cleanly at teardown (a test file
    with a `node` fixture of its own overrides this one)."""
    hotline = NodeProc(tmp_path, "hotline")
    hotline.start()
    yield hotline
    assert hotline.stop() == 0


# -- building signed data directly with the protocol -------------------------------------


def author_key(n: int) -> SigningKey:
    """A deterministic author key (not a node home): seed n repeated."""
    return SigningKey(bytes([n]) * 32)


def md5_values(count: int, salt: int = 0) -> list[str]:
    """Distinct, deterministic md5-shaped values."""
    return [f"{salt:08x}{i:024x}" for i in range(count)]


def chain(
    key: SigningKey,
    collection: str,
    op_lists: list[list[dict[str, Any]]],
    first_seq: int = 1,
    prev: bytes | None = None,
) -> list[Batch]:
    """Sign consecutive batches of a log, one per op list."""
    batches = []
    for n, ops in enumerate(op_lists):
        batch = build_batch(key, collection, first_seq + n, prev, 1_700_000_000_000 + n, ops)
        batches.append(batch)
        prev = batch.hash
    return batches


def add_ops(values: list[str], signal_type: str = "md5", category: str = "csam") -> list[dict]:
    return [{"op": "add", "type": signal_type, "value": v, "category": category} for v in values]


def write_bundle(path: Path, batches: list[Batch], collection: str) -> Path:
    with open(path, "wb") as fh:
        fh.write(encode_bundle_header({"v": 1, "collection": collection, "logs": []}))
        for batch in batches:
            fh.write(batch.to_bytes())
    return path
