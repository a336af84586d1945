"""The everyday commands start without loading the store, images, HTTP server or models.

Scripts call `hashmesh` in loops, so `id`, `status` and `match TYPE VALUE` against a running
node must not pay for numpy, Pillow, aiohttp, pydantic, cryptography or sqlite-utils
(together most of a second per call). The speed itself is measured in bench/cli.py; these
tests guard the cause without timing anything: the real console script runs with
`PYTHONPROFILEIMPORTTIME=1`, which makes Python list every module it imports on stderr.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import HASHMESH, Cli, HomeFactory, NodeFactory, clean_env
from testdata import IMAGES

HEAVY = {"numpy", "PIL", "aiohttp", "pydantic", "cryptography", "sqlite_utils", "pdqhash"}
MD5 = "5d41402abc4b2a76b9719d911017c592"
ROOT = Path(__file__).resolve().parent.parent
_IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$")


def heavy_loaded(modules: list[str]) -> list[str]:
    return sorted({m.split(".")[0] for m in modules} & HEAVY)


def run_traced(*args: str | Path, home: Path, expect: int = 0) -> tuple[str, list[str]]:
    """Run the console script; its stdout and the top-level heavy packages it imported."""
    env = clean_env(PYTHONPROFILEIMPORTTIME="1")
    proc = subprocess.run(
        [HASHMESH, "--home", str(home), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == expect, proc.stderr[-2000:]
    modules = [m.group(1) for line in proc.stderr.splitlines() if (m := _IMPORT_LINE.match(line))]
    assert modules, "PYTHONPROFILEIMPORTTIME listed no imports"
    return proc.stdout, heavy_loaded(modules)


def test_importing_the_cli_loads_no_heavy_package() -> None:
    code = "import json, sys, hashmesh.node.cli.main; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules = json.loads(proc.stdout)
    assert "hashmesh.node.cli.platform" in modules  # the token/list commands are still registered
    assert heavy_loaded(modules) == []


def test_id_offline_loads_no_heavy_package(home: HomeFactory) -> None:
    path = home("A")
    out, heavy = run_traced("id", home=path)
    assert out.startswith("ed25519:")
    assert heavy == []


def test_id_status_match_online_load_no_heavy_package(
    home: HomeFactory, start_node: NodeFactory, cli: Cli
) -> None:
    path = home("A")
    start_node(path)
    cli("add", "md5", MD5, "-c", "csam", home=path)
    out, heavy = run_traced("id", home=path)
    assert out.startswith("ed25519:") and heavy == []
    out, heavy = run_traced("status", home=path)
    assert "running   yes" in out and heavy == []
    out, heavy = run_traced("match", "md5", MD5, home=path)
    assert "MATCH md5 " + MD5 in out and heavy == []
    out, heavy = run_traced("match", "md5", "0cc175b9c0f1b6a831c399e269772661", home=path, expect=1)
    assert heavy == []


def test_commands_that_need_them_still_load_them(home: HomeFactory) -> None:
    """The check above can see a heavy import: hashing a picture loads Pillow and numpy."""
    path = home("A")
    picture = IMAGES / "bridge-1-original.jpg"
    out, heavy = run_traced("hash", picture, home=path)
    assert "pdq" in out
    assert {"PIL", "numpy"} <= set(heavy)


@pytest.mark.parametrize(
    ("command", "names"),
    [
        (
            ["token", "create", "x", "--scope", "nosuch"],
            "'read', 'match', 'publish', 'admin', 'metrics'",
        ),
        (["import-list", "nosuch", "x"], "'csv', 'ncmec', 'pytx', 'stopncii'"),
        (["export-list", "nosuch", "x", "-c", "csam"], "'csv', 'hma'"),
    ],
)
def test_choices_read_late_still_name_every_choice(
    home: HomeFactory, cli: Cli, command: list[str], names: str
) -> None:
    result = cli(*command, home=home("A"), expect=2)
    assert f"'nosuch' is not one of {names}" in result.stderr
