"""What machine a benchmark ran on and where its results go.

Every benchmark reports the machine it ran on, needs a free local port for the nodes it
starts and writes its own section of docs/benchmarks.md; those that compare with an old
revision run that revision's code from a `git archive` of it (Tree). Each used to carry
its own copy of these helpers, and the copies had drifted apart (one reported RAM, one did
not; each replaced its section in docs/benchmarks.md its own way). One copy here keeps the
reports comparable and the sections of the shared file out of each other's way.

The scripts run as `python bench/<name>.py`, so bench/ is sys.path[0] and `from benchenv
import ...` finds this module. It imports only the standard library, because some scripts
drop bench/ from sys.path (bench/protocol.py would shadow the protocol package) and must be
able to import it before they do.
"""

from __future__ import annotations

import importlib
import os
import platform
import re
import socket
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def cpu_model() -> str:
    """The CPU's marketing name, because a core count alone does not say what ran."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(*, sqlite: bool = False) -> str:
    """One line that makes a figure comparable with one taken elsewhere; the SQLite version
    matters only to benchmarks whose numbers are mostly SQLite's."""
    parts = [cpu_model(), f"{os.cpu_count()} cores"]
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        parts.append(f"{ram:.0f} GiB RAM")
    except (AttributeError, ValueError, OSError):
        pass  # no sysconf figure on this platform: better no RAM than a wrong one
    parts.append(f"Python {platform.python_version()}")
    if sqlite:
        parts.append(f"SQLite {sqlite3.sqlite_version}")
    return ", ".join(parts)


def free_port() -> int:
    """A port for a node to listen on; loopback only, because a benchmark node is never
    meant to be reachable from another machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_text() -> str:
    """The 1, 5 and 15 minute load averages, because on a shared machine a figure means
    little without the load it was taken under."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def replace_section(heading: str, body: str) -> None:
    """Put body (the whole section, starting with its heading line) in place of the section
    under heading, or at the end of the file if it has none.

    Every benchmark shares docs/benchmarks.md and owns only its own section, so the rest of
    the file is kept byte for byte; it is read just before writing so that a section another
    benchmark wrote meanwhile is not lost."""
    if body.split("\n", 1)[0] != heading:
        # the next run would not find the section again and would append a second copy
        raise ValueError(f"the section must start with its heading line {heading!r}")
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    section = body.rstrip("\n") + "\n"
    found = re.search(rf"^{re.escape(heading)}$", text, re.MULTILINE)
    if found is None:
        gap = "" if not text or text.endswith("\n\n") else "\n" if text.endswith("\n") else "\n\n"
        text = text + gap + section
    else:
        following = re.compile(r"^## ", re.MULTILINE).search(text, found.end())
        if following is None:
            text = text[: found.start()] + section
        else:
            text = text[: found.start()] + section + "\n" + text[following.start() :]
    DOCS.write_text(text)
    print(f"wrote {DOCS.relative_to(DOCS.parent.parent)}")


# -- an old revision to compare with -------------------------------------------------------

ROOT = DOCS.parent.parent

#: Where a module of today's layout lived before the code became one `hashmesh` package
#: (commit 5cffe44): a baseline from before then has top-level `node` and `protocol`
#: packages, and a module missing here only lost its `hashmesh.` prefix.
BEFORE_PACKAGE = {
    "hashmesh.integrations": "node.integrations",
    "hashmesh.integrations.threatexchange": "node.integrations.threatexchange",
    "hashmesh.node.cli": "node.cli",
    "hashmesh.node.cli.main": "node.cli",
    "hashmesh.node.cli.backends": "node.client",
    "hashmesh.node.cli.demo": "node.demo",
    "hashmesh.node.cli.platform": "node.cli_platform",
    "hashmesh.node.cli.platform_backends": "node.platform_client",
    "hashmesh.node.hashing.degenerate": "node.degenerate",
    "hashmesh.node.hashing.hasher": "node.hashing",
    "hashmesh.node.hashing.pdq": "node.pdq",
    "hashmesh.node.lists.feed": "node.feed",
    "hashmesh.node.lists.importers": "node.importers",
    "hashmesh.node.lists.listfiles": "node.lists",
    "hashmesh.node.matching.matcher": "node.matcher",
    "hashmesh.node.matching.pdq_index": "node.pdq_index",
    "hashmesh.node.net.bodies": "node.bodies",
    "hashmesh.node.net.peers": "node.peers",
    "hashmesh.node.net.sync": "node.sync",
    "hashmesh.node.store.core": "node.store",
    "hashmesh.node.web.access": "node.access",
    "hashmesh.node.web.api": "node.api",
    "hashmesh.node.web.metrics": "node.metrics",
    "hashmesh.node.web.platform": "node.platform_api",
    "hashmesh.node.web.selfreport": "node.selfreport",
    "hashmesh.node.web.status": "node.statuspage",
}


class Tree:
    """The code of one revision, unpacked from `git archive`, for a benchmark to run as its
    baseline next to the working tree.

    The baseline must really be the old code: a child process that puts an old tree first
    on sys.path and imports `hashmesh...` silently gets the installed (new) package when
    the tree predates the package, and measures the new code twice. `load` imports by
    today's module name, maps it to the tree's layout and refuses a module from anywhere
    but the tree; `cli` starts the tree's own console-script entry point."""

    def __init__(self, path: Path, rev: str = "") -> None:
        self.path = Path(path).resolve()
        self.rev = rev
        #: True for trees with the `hashmesh` package, False for top-level node/protocol.
        self.packaged = (self.path / "hashmesh" / "__init__.py").exists()
        if not self.packaged and not (self.path / "node" / "__init__.py").exists():
            raise ValueError(f"{self.path}: neither hashmesh/ nor node/ is a package here")

    @classmethod
    def archive(cls, rev: str, into: Path) -> Tree:
        """Unpack the code of `rev` (its packages and pyproject.toml) into `into`."""
        top = git("ls-tree", "--name-only", rev).split()
        wanted = [p for p in ("hashmesh", "node", "protocol", "pyproject.toml") if p in top]
        if "hashmesh" in wanted:
            wanted = [p for p in wanted if p not in ("node", "protocol")]
        into.mkdir(parents=True, exist_ok=True)
        data = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, *wanted], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=data, check=True)
        return cls(into, git("rev-parse", "--short", rev).strip())

    def module_name(self, name: str) -> str:
        """Today's module name `name` in this tree's layout."""
        if self.packaged or not name.startswith("hashmesh."):
            return name
        return BEFORE_PACKAGE.get(name, name.removeprefix("hashmesh."))

    def use(self) -> None:
        """Put the tree first on sys.path (in the process that will `load` from it), and
        drop bench/ from it, whose protocol.py would shadow the protocol package."""
        here = Path(__file__).resolve().parent
        sys.path[:] = [str(self.path)] + [p for p in sys.path if Path(p or ".").resolve() != here]

    def load(self, name: str) -> ModuleType:
        """Import today's module `name` from this tree (after `use`); an import that
        resolves outside the tree is an error, not a silent measurement of other code."""
        module = importlib.import_module(self.module_name(name))
        where = Path(module.__file__ or "").resolve()
        if not where.is_relative_to(self.path):
            raise ImportError(f"{name}: imported from {where}, not from the tree {self.path}")
        return module

    def cli(self, args: list[str]) -> list[str]:
        """argv that runs `hashmesh ARGS` with this tree's code, through the entry point its
        own pyproject.toml declares (node.cli:main before the package, now
        hashmesh.node.cli:main)."""
        module, func = self.entry_point().split(":")
        code = (
            f"import sys; sys.path.insert(0, {str(self.path)!r});"
            f" sys.argv = ['hashmesh', *{args!r}];"
            f" import {module} as m; assert m.__file__.startswith({str(self.path)!r}), m;"
            f" m.{func}()"
        )
        return [sys.executable, "-c", code]

    def entry_point(self) -> str:
        try:
            with (self.path / "pyproject.toml").open("rb") as fh:
                scripts = tomllib.load(fh).get("project", {}).get("scripts", {})
        except OSError:
            scripts = {}
        default = "hashmesh.node.cli:main" if self.packaged else "node.cli:main"
        return str(scripts.get("hashmesh", default))


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True
    ).stdout
