"""The one way anything writes the node's database: a transaction that commits whole or not
at all, with a refused write named in one sentence.

The store, the case store and the migrations all go through `transaction`, so none of them
can forget the rollback, and a full disk reads the same whichever of them hit it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hashmesh.node.errors import NodeError, StorageFull, StorageUnavailable


def storage_error(path: Path, exc: sqlite3.OperationalError) -> NodeError:
    """One clear sentence for a write the disk refused; the transaction was rolled back."""
    text = str(exc)
    if "full" in text:
        return StorageFull(
            f"database {path}: the disk is full; the change was not saved (free some space, "
            "reads keep working meanwhile)"
        )
    if "readonly" in text or "read-only" in text or "I/O error" in text:
        return StorageUnavailable(
            f"database {path} cannot be written ({text}); the change was not saved "
            "(check the file system and the file's permissions; reads keep working)"
        )
    return StorageUnavailable(f"database {path}: {text}; the change was not saved")


@contextmanager
def transaction(conn: sqlite3.Connection, path: Path, *, nested: bool = False) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or a savepoint inside an open transaction (`nested`).

    IMMEDIATE takes the write lock at the start, so a transaction never fails half way
    because another connection wrote first. Any exception rolls back; a write SQLite itself
    refused (disk full, read-only, I/O, locked) becomes `StorageFull`/`StorageUnavailable`.
    """
    try:
        conn.execute("SAVEPOINT batch" if nested else "BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise storage_error(path, exc) from None
    try:
        yield
        conn.execute("RELEASE batch" if nested else "COMMIT")
    except BaseException as exc:
        rollback(conn, nested)
        if isinstance(exc, sqlite3.OperationalError) and not is_sql_error(exc):
            raise storage_error(path, exc) from None
        raise


def is_sql_error(exc: sqlite3.Error) -> bool:
    """A statement SQLite could not run as written (no such table, syntax): our bug, which
    must surface as one, not read as a disk the operator should go and check."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_ERROR


def rollback(conn: sqlite3.Connection, nested: bool) -> None:
    """Undo the current transaction or savepoint. SQLite may already have rolled the whole
    transaction back by itself (disk full, I/O error): then there is nothing left to undo,
    and a second error must not hide the first one."""
    if not conn.in_transaction:
        return
    try:
        if nested:
            conn.execute("ROLLBACK TO batch")
            conn.execute("RELEASE batch")
        else:
            conn.execute("ROLLBACK")
    except sqlite3.OperationalError:
        if conn.in_transaction and not nested:
            raise
