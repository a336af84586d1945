"""Copies of the database: a consistent backup of a live one, and the checks a file must
pass before a restore puts it in the node's place.

A restore refuses a file of a newer schema version than this code knows before anything
is replaced: put in place, it would leave a node that no longer opens.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from hashmesh.node.errors import NodeError
from hashmesh.node.store.schema import MIGRATIONS, user_version

NODE_ID_KEY = "node_id"
_TABLES = {"meta", "batches", "signals", "logs", "feed"}


def backup_database(source: sqlite3.Connection, target: Path) -> None:
    """Copy `source` into `target`, which the caller has already created 0600 (SQLite gives
    the copy's journal the mode of the file it belongs to). The copy leaves WAL mode, so it
    is one self-contained file that opening it read-only leaves no -wal or -shm beside.
    The page copy carries the schema version (user_version is in the file's header)."""
    dest = sqlite3.connect(target)
    try:
        source.backup(dest, pages=4096)
        dest.execute("PRAGMA journal_mode=DELETE")
        check = dest.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise NodeError(f"backup {target} failed its integrity check: {check}")
    finally:
        dest.close()


def database_node_id(conn: sqlite3.Connection) -> str | None:
    """The node a database belongs to: recorded in its meta since node ids were, and for an
    older database the single author of the batches it published itself (None when it has
    published nothing)."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (NODE_ID_KEY,)).fetchone()
    if row is not None:
        return str(row[0])
    authors = conn.execute(
        "SELECT DISTINCT logs.author FROM batches JOIN logs ON logs.id = batches.log_id"
        " WHERE batches.source = 'local' LIMIT 2"
    ).fetchall()
    return str(authors[0][0]) if len(authors) == 1 else None


def open_backup(path: Path, name: str) -> sqlite3.Connection:
    """`path` read-only, once it proved to be an intact hashmesh database this code can
    open; `name` is how the caller named the file, for the error."""
    try:
        source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise NodeError(f"backup {name}: {exc}") from None
    try:
        try:
            check = source.execute("PRAGMA integrity_check").fetchone()[0]
            tables = {r[0] for r in source.execute("SELECT name FROM sqlite_master")}
            version = user_version(source)
        except sqlite3.DatabaseError as exc:
            raise NodeError(f"backup {name} is not a hashmesh database: {exc}") from None
        if check != "ok":
            raise NodeError(f"backup {name} failed its integrity check: {check}")
        if not tables >= _TABLES:
            raise NodeError(f"backup {name} is not a hashmesh database")
        if version > len(MIGRATIONS):
            raise NodeError(
                f"backup {name} has schema version {version}, but this hashmesh knows versions"
                f" up to {len(MIGRATIONS)} only: restore it with the release that made it;"
                " nothing was changed"
            )
    except BaseException:
        source.close()
        raise
    return source


def checkpoint(db: Path) -> None:
    """Fold the WAL into the database file, so the file alone is the whole database."""
    conn = sqlite3.connect(db)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
