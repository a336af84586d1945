"""What the store checks when it opens a database, and why not always `PRAGMA quick_check`.

`quick_check` reads every page: at 10,000,000 signals it took 19 s of a start-up the issue
wants under 15 s, on every restart. The damage it looks for comes from a storage layer that
lost or tore writes, which shows itself after an unclean stop (crash, kill, power loss), not
after a clean shutdown: WAL with `synchronous=FULL` makes a clean close durable, and SQLite
deletes the -wal file when the last connection closes. So:

- always: a header check (magic, page size, format bytes, a size that is whole pages),
  which costs one 100-byte read and catches a file that is not a database, or was truncated
  or overwritten at the start;
- `quick_check` as before when the database is small enough for it to be cheap
  (QUICK_CHECK_MAX_BYTES, well under a second), or when a -wal file was left behind, i.e.
  the last process did not close it (a crash), or another process has it open (then the
  check is merely not needed, and is run anyway: the cheap mistake);
- the full `PRAGMA integrity_check` stays an operator's action (`Store.integrity_check`;
  `hashmesh backup` and `restore` run it on their copies).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hashmesh.node.errors import HomeError

__all__ = ["QUICK_CHECK_MAX_BYTES", "check_at_open", "closed_cleanly", "read_header"]

QUICK_CHECK_MAX_BYTES = 128 << 20
_MAGIC = b"SQLite format 3\x00"


def closed_cleanly(path: Path) -> bool:
    """Whether no -wal file with content is next to the database; call before connecting."""
    try:
        return Path(f"{path}-wal").stat().st_size == 0
    except FileNotFoundError:
        return True


def check_at_open(conn: sqlite3.Connection, path: Path, clean: bool, size: int) -> str:
    """Check the database just opened, whose header `read_header` passed (`size` is what
    it returned); returns which check ran ("header" or "quick_check").

    Raises HomeError naming the file and what is wrong with it.
    """
    if clean and size > QUICK_CHECK_MAX_BYTES:
        return "header"
    result = conn.execute("PRAGMA quick_check").fetchone()[0]
    if result != "ok":
        raise HomeError(f"database {path} failed its integrity check: {result}")
    return "quick_check"


def read_header(path: Path) -> int:
    """The file's size once its header is a SQLite 3 header; 0 for a new, empty file.

    Call it before this process connects to the database, never while it has a connection
    open: closing the descriptor read here releases every POSIX lock the process holds on
    the file, SQLite's included. A connection that lost its locks looks unused to another
    process, which then checkpoints the database and deletes its -wal and -shm files under
    it (seen as "disk I/O error" on the next connection, 2026-12-02).
    """
    try:
        with open(path, "rb") as f:
            header = f.read(100)
            size = f.seek(0, 2)
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    if len(header) < 100 or header[:16] != _MAGIC:
        raise HomeError(f"database {path} is not a SQLite database (its header is wrong)")
    page = int.from_bytes(header[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        raise HomeError(f"database {path}: header page size {page} is invalid")
    if header[18] not in (1, 2) or header[19] not in (1, 2) or header[21:24] != b"\x40\x20\x20":
        raise HomeError(f"database {path}: header format bytes are invalid")
    if size % page:
        raise HomeError(f"database {path}: {size} bytes is not whole {page}-byte pages (torn?)")
    return size
