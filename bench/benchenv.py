"""What machine a benchmark ran on and where its results go.

Every benchmark reports the machine it ran on, needs a free local port for the nodes it
starts and writes its own section of docs/benchmarks.md. Each used to carry its own copy of
these helpers, and the copies had drifted apart (one reported RAM, one did not; each
replaced its section in docs/benchmarks.md its own way). One copy here keeps the reports
comparable and the sections of the shared file out of each other's way.

The scripts run as `python bench/<name>.py`, so bench/ is sys.path[0] and `from benchenv
import ...` finds this module. It imports only the standard library, because some scripts
drop bench/ from sys.path (bench/protocol.py would shadow the protocol package) and must be
able to import it before they do.
"""

from __future__ import annotations

import os
import platform
import re
import socket
import sqlite3
from pathlib import Path

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
