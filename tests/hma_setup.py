"""Install what tests/test_hma_e2e.py needs (run by `make test-hma`, idempotent).

PostgreSQL from Debian's packages when it is missing (as root; otherwise it says what to
install and exits 2, so the target fails rather than skip), and a venv of HMA's own:
HMA's source snapshot (HMA_SRC, default the vendored ../shared/vendor copy) copied into
the venv, as its Dockerfile copies `src/`, with its dependencies (pytx from PyPI) and
hashmesh[threatexchange] from this working tree. The venv is rebuilt when the snapshot's
version or this project's pyproject.toml changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hma_harness import HMA_VENV, REPO, postgres_bindir

HMA_VERSION = "1.1.7"
_CANDIDATES = [
    REPO.parent / "shared" / "vendor" / "hasher-matcher-actioner",
    Path("/work/shared/vendor/hasher-matcher-actioner"),
]


def fail(message: str) -> None:
    print(f"hma_setup: {message}", file=sys.stderr)
    raise SystemExit(2)


def find_source() -> Path:
    given = os.environ.get("HMA_SRC")
    for candidate in [Path(given)] if given else _CANDIDATES:
        if (candidate / "src" / "OpenMediaMatch" / "app.py").is_file():
            version = (candidate / "version.txt").read_text().strip()
            if version != HMA_VERSION:
                fail(f"{candidate} is HMA {version}, the tests are pinned to {HMA_VERSION}")
            return candidate
    fail(f"HMA {HMA_VERSION} source not found (set HMA_SRC); looked in {given or _CANDIDATES}")
    raise AssertionError


def ensure_postgres() -> None:
    if postgres_bindir() is not None and shutil.which("pg_config") and shutil.which("cc"):
        return
    packages = ["postgresql", "libpq-dev", "gcc"]  # libpq-dev, gcc: HMA's psycopg2 builds
    if os.geteuid() != 0:
        fail(f"PostgreSQL is missing: install the Debian packages {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env)
    if postgres_bindir() is None:
        fail("apt-get installed postgresql but no initdb was found")


def ensure_venv(source: Path) -> None:
    stamp = HMA_VENV / ".hma-stamp"
    want = {
        "hma": HMA_VERSION,
        "source": str(source.resolve()),
        "repo": str(REPO),
        "pyproject": hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest(),
    }
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return
    shutil.rmtree(HMA_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(HMA_VENV)], check=True)
    shutil.copytree(
        source,
        HMA_VENV / "hma",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".git"),
    )
    pip = [str(HMA_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{HMA_VENV / 'hma'}[all]"], check=True)
    subprocess.run([*pip, "-e", f"{REPO}[threatexchange]"], check=True)
    stamp.write_text(json.dumps(want))


def main() -> None:
    ensure_postgres()
    ensure_venv(find_source())
    print(f"hma_setup: PostgreSQL in {postgres_bindir()}, HMA {HMA_VERSION} venv in {HMA_VENV}")


if __name__ == "__main__":
    main()
