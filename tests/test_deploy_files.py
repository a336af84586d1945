"""deploy/ works on first use: the image needs no compiler, compose-init.sh reads clean node
ids, the systemd unit is valid and the files lint clean.

No container engine can fetch a base image here, so the Containerfile is not built; what
made it fail (a runtime dependency without binary wheels, pdqhash, on a slim image with no
compiler) is checked instead: here from the sources, and under `make test-deploy` against
PyPI for the image's Python and platform. The linters run when present; `.ci/run`
installs them and sets HASHMESH_REQUIRE_DEPLOY_LINT=1, which turns a missing one into a
failure rather than a skip.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
HASHMESH = str(Path(sys.executable).with_name("hashmesh"))
NODE_ID = re.compile(r"^ed25519:[A-Za-z0-9_-]{43}$")


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    if os.environ.get("HASHMESH_REQUIRE_DEPLOY_LINT"):
        pytest.fail(f"{name} is required (HASHMESH_REQUIRE_DEPLOY_LINT is set) but not installed")
    pytest.skip(f"{name} not installed (.ci/run installs it)")


def _runtime_requirements() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


def test_no_runtime_dependency_needs_a_compiler_and_the_node_never_imports_pdqhash() -> None:
    names = {re.split(r"[<>=!~ \[;]", r, maxsplit=1)[0].lower() for r in _runtime_requirements()}
    assert "pdqhash" not in names  # no wheels on PyPI: python:3.11-slim cannot build it
    for package in ("node", "protocol"):
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    imported = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    imported = [node.module or ""]
                else:
                    continue
                assert not any(m.split(".")[0] == "pdqhash" for m in imported), path


@pytest.mark.deploy
def test_every_runtime_dependency_has_a_wheel_for_the_image(tmp_path: Path) -> None:
    """What `pip install --only-binary :all: .` in the Containerfile resolves, for its base."""
    base = re.search(r"^FROM python:(\d+\.\d+)-slim", (DEPLOY / "Containerfile").read_text(), re.M)
    assert base, "the Containerfile's base is no longer python:X.Y-slim"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed"),
            *("--only-binary", ":all:", "--implementation", "cp"),
            *("--platform", "manylinux2014_x86_64", "--python-version", base.group(1)),
            *("--target", str(tmp_path / "t"), str(REPO)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Would install" in result.stdout


def test_containerfile_lints_clean() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DEPLOY / "Containerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_compose_init_lints_clean() -> None:
    result = subprocess.run(
        [_tool("shellcheck"), str(DEPLOY / "compose-init.sh")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_unit_verifies_and_leaves_a_writable_backup_folder(tmp_path: Path) -> None:
    """`systemd-analyze verify` checks every key and value; the venv path the unit names is
    swapped for this venv's hashmesh (verify also checks that ExecStart exists)."""
    text = (DEPLOY / "hashmesh.service").read_text()
    assert "ExecStart=/opt/hashmesh/.venv/bin/hashmesh run" in text
    unit = tmp_path / "hashmesh.service"
    unit.write_text(text.replace("/opt/hashmesh/.venv/bin/hashmesh", HASHMESH))
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    # The folder the comments tell operators to back up into is writable in the sandbox.
    assert "hashmesh backup /var/backups/hashmesh/" in text
    writable = [
        p.lstrip("-")
        for line in text.splitlines()
        if line.startswith("ReadWritePaths=")
        for p in line.split("=", 1)[1].split()
    ]
    assert "/var/backups/hashmesh" in writable
    assert "install -d -o hashmesh -g hashmesh -m 0700 /var/lib/hashmesh" in text
    assert "python3 -m venv /opt/hashmesh/.venv" in text


COMPOSE_SHIM = r'''#!{python}
"""`compose run --rm --no-deps [-T] SERVICE ARGS...` as compose runs it, with the real
hashmesh CLI in place of the container: /data is the service's folder, and without -T the
command gets a terminal, as compose gives it (the terminal turns each \n into \r\n)."""
import os, pty, subprocess, sys
args = sys.argv[1:]
assert args[:3] == ["run", "--rm", "--no-deps"], args
args = args[3:]
tty = True
if args[0] == "-T":
    tty, args = False, args[1:]
service, rest = args[0], args[1:]
data = os.path.join({root!r}, service)
os.makedirs(data, exist_ok=True)
rest = [a.replace("/data/", data + "/") for a in rest]
cmd = [{hashmesh!r}, *rest]
env = {{**os.environ, "HASHMESH_HOME": os.path.join(data, "node")}}
if not tty:
    sys.exit(subprocess.run(cmd, env=env).returncode)
pid, fd = pty.fork()
if pid == 0:
    os.execve(cmd[0], cmd, env)
try:
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        sys.stdout.buffer.write(chunk)
except OSError:
    pass
sys.stdout.flush()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
'''


def test_compose_init_wires_clean_node_ids_into_peers_and_trust(tmp_path: Path) -> None:
    """The script itself, run end to end with a compose that behaves as compose does."""
    shim = tmp_path / "compose"
    shim.write_text(
        COMPOSE_SHIM.format(python=sys.executable, root=str(tmp_path / "data"), hashmesh=HASHMESH)
    )
    shim.chmod(0o755)
    result = subprocess.run(
        ["bash", str(DEPLOY / "compose-init.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COMPOSE": str(shim)},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    configs = {
        name: tomllib.loads((tmp_path / "data" / name / "node" / "config.toml").read_text())
        for name in ("ncmec", "childfocus", "platform", "police")
    }
    ids = {name: c["node_id"] for name, c in configs.items()}
    assert all(NODE_ID.match(i) for i in ids.values()), ids
    peers = {name: {p["name"]: p for p in c.get("peers", [])} for name, c in configs.items()}
    assert set(peers["ncmec"]) == {"childfocus", "platform", "police"}
    assert set(peers["platform"]) == {"ncmec"}
    assert peers["police"]["ncmec"]["share"] == ["csam", "le-only"]
    for name, entries in peers.items():
        for peer_name, peer in entries.items():
            assert peer["node_id"] == ids[peer_name], (name, peer)
            assert peer["url"] == f"http://{peer_name}:7400"
    trust = {
        name: {(t["node_id"], t["collection"]) for t in c.get("trust", [])}
        for name, c in configs.items()
    }
    assert (ids["police"], "le-only") in trust["ncmec"]
    assert (ids["ncmec"], "le-only") in trust["police"]
    assert not any(collection == "le-only" for _, collection in trust["platform"])
    assert {(ids["ncmec"], "csam"), (ids["childfocus"], "csam")} <= trust["platform"]
