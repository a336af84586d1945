"""The database's schema, and the migrations that bring an older database up to it.

`PRAGMA user_version` (in the file's header, so a backup carries it) is the number of
migrations applied. At open, before anything else reads or writes, the missing ones run in
order inside one transaction: a crash or an error part way leaves the database exactly as it
was, at its old version. A database of a newer version than this code knows is refused
rather than guessed at: its tables may mean something this code would misread, and writing
to it could break it for the release that made it.

Version 1 is the schema of release 0.1, which had no user_version (0) and recorded
`schema_version` = 1 in `meta` instead; its statements are idempotent (IF NOT EXISTS) so
they adopt a 0.1 database as they find it and create a new one from nothing. A later change
is a new entry at the end of MIGRATIONS, never an edit of an earlier one: each database
must end the same whatever version it started from.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hashmesh.node.errors import HomeError
from hashmesh.node.store.bridges import BRIDGES_V5
from hashmesh.node.store.policies import POLICY_V2, POLICY_V3, POLICY_V4
from hashmesh.node.store.quarantine import QUARANTINE_V3
from hashmesh.node.store.statements import STATEMENTS_V6
from hashmesh.node.store.transaction import transaction
from hashmesh.node.store.witness import WITNESS_V7

STORE_V1 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS logs (
    id INTEGER PRIMARY KEY,
    author TEXT NOT NULL,
    collection TEXT NOT NULL,
    head INTEGER NOT NULL DEFAULT 0,
    head_hash BLOB,
    head_ts INTEGER,
    forked INTEGER NOT NULL DEFAULT 0,
    adds INTEGER NOT NULL DEFAULT 0,
    live INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER,
    UNIQUE (author, collection)
);
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY,
    log_id INTEGER NOT NULL REFERENCES logs(id),
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    header BLOB NOT NULL,
    sig BLOB NOT NULL,
    ops BLOB NOT NULL,
    op_count INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    source TEXT NOT NULL,
    UNIQUE (log_id, seq)
);
CREATE TABLE IF NOT EXISTS signals (
    id INTEGER PRIMARY KEY,
    log_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    type TEXT NOT NULL,
    value TEXT NOT NULL,
    quality INTEGER,
    category TEXT NOT NULL,
    classification TEXT,
    ref TEXT,
    revoked_by TEXT,
    revoked_reason TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS signals_position ON signals (log_id, seq, idx);
CREATE INDEX IF NOT EXISTS signals_value ON signals (value);
CREATE TABLE IF NOT EXISTS opinions (
    target TEXT NOT NULL,
    author TEXT NOT NULL,
    collection TEXT NOT NULL,
    verdict TEXT,
    seen INTEGER NOT NULL DEFAULT 0,
    op_id TEXT NOT NULL,
    PRIMARY KEY (target, author, collection)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending (
    log_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    hash BLOB NOT NULL,
    frame BLOB NOT NULL,
    received_at INTEGER NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (log_id, seq, hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forks (
    id TEXT PRIMARY KEY,
    log_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    evidence BLOB NOT NULL,
    found_at INTEGER NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS feed (
    cursor INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    collection TEXT NOT NULL,
    signal_id INTEGER,
    op_id TEXT,
    target TEXT,
    detail TEXT,
    at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS feed_collection ON feed (collection, cursor);
"""

TOKENS_V1 = """
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    collections TEXT,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;
"""

SELFREPORT_V1 = """
CREATE TABLE IF NOT EXISTS selfreport_cases (
    case_number TEXT PRIMARY KEY,
    secret_salt BLOB NOT NULL,
    secret_hash BLOB NOT NULL,
    category TEXT NOT NULL,
    created_day TEXT NOT NULL,
    withdrawn_day TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS selfreport_ops (
    case_number TEXT NOT NULL REFERENCES selfreport_cases(case_number),
    op_id TEXT NOT NULL,
    type TEXT NOT NULL,
    PRIMARY KEY (case_number, op_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS selfreport_ops_op ON selfreport_ops (op_id);
CREATE TABLE IF NOT EXISTS selfreport_sizes (
    case_number TEXT PRIMARY KEY REFERENCES selfreport_cases(case_number),
    hashes INTEGER NOT NULL
) WITHOUT ROWID;
"""

# Version 4: the reason an opinion op gave (protocol `reason`), kept with the stance it set.
OPINIONS_V4 = """
ALTER TABLE opinions ADD COLUMN reason TEXT;
"""

Step = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Migration:
    """One step: `run` takes the database from `version - 1` to `version`, inside the
    transaction `migrate` opened (it must not commit)."""

    version: int
    what: str
    run: Step


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Each statement of `script` in turn: `executescript` would commit the transaction a
    migration runs in, and a failure after that could not be rolled back."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement in a migration: {statement.strip()[:60]}")


def _version_1(conn: sqlite3.Connection) -> None:
    run_script(conn, STORE_V1 + TOKENS_V1 + SELFREPORT_V1)
    # 0.1's marker; user_version is the one record of the version from now on.
    conn.execute("DELETE FROM meta WHERE key = 'schema_version'")


def _version_2(conn: sqlite3.Connection) -> None:
    run_script(conn, POLICY_V2)


def _version_3(conn: sqlite3.Connection) -> None:
    run_script(conn, POLICY_V3 + QUARANTINE_V3)


def _version_4(conn: sqlite3.Connection) -> None:
    run_script(conn, POLICY_V4 + OPINIONS_V4)


def _version_5(conn: sqlite3.Connection) -> None:
    run_script(conn, BRIDGES_V5)


def _version_6(conn: sqlite3.Connection) -> None:
    run_script(conn, STATEMENTS_V6)


def _version_7(conn: sqlite3.Connection) -> None:
    run_script(conn, WITNESS_V7)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "release 0.1's tables: logs, batches, signals, feed, tokens, cases", _version_1),
    Migration(2, "match_policy: per-collection match policy (issue 19)", _version_2),
    Migration(3, "quarantine on a match spike: its table, policy spike knobs", _version_3),
    Migration(
        4, "opinion reasons; quorum by organisation or country, dispute on spike", _version_4
    ),
    Migration(5, "bridges: upstream checkpoints, bridged items, forwarded feedback", _version_5),
    Migration(
        6, "statements: certificates, handovers, key revocations, membership (issue 22)", _version_6
    ),
    Migration(7, "witness_equivocations: a witness's two signed heads at one seq", _version_7),
)


def user_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def refuse_newer(version: int, path: Path, latest: int) -> None:
    if version > latest:
        raise HomeError(
            f"database {path} has schema version {version}, but this hashmesh knows versions"
            f" up to {latest} only: a newer release wrote it. Run that release (or a newer"
            " one) on this home, or restore a backup made with this release; nothing was"
            " changed"
        )


def migrate(
    conn: sqlite3.Connection, path: Path, migrations: Sequence[Migration] = MIGRATIONS
) -> list[int]:
    """Bring the database on `conn` to the last version of `migrations`, all steps in one
    transaction; the versions applied, in order (empty when it was already there)."""
    latest = len(migrations)
    if [m.version for m in migrations] != list(range(1, latest + 1)):
        raise ValueError("migrations must be numbered 1, 2, 3 ... in order")
    refuse_newer(user_version(conn), path, latest)
    if user_version(conn) == latest:
        return []
    applied: list[int] = []
    with transaction(conn, path):
        # Read again under the write lock: another process may have migrated meanwhile.
        current = user_version(conn)
        refuse_newer(current, path, latest)
        for migration in migrations[current:]:
            migration.run(conn)
            applied.append(migration.version)
        conn.execute(f"PRAGMA user_version = {latest:d}")
    return applied
