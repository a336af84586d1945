"""Schema versions and migrations: a real 0.1 database opens, a newer one is refused.

tests/data/hashmesh-0.1.db.gz is the database of a node made with release 0.1 (commit
179643c, `git archive 179643c node protocol`, run with PYTHONPATH at the copy): hotline-a
trusted hotline-b in csam and imported its bundle (one PDQ add), added an md5 (ref
case-1) to csam and a sha256 (A1) to ncii, revoked the sha256 ("false positive"), confirmed
and marked as seen hotline-b's PDQ, created the token platform-x (read, match; csam only)
and recorded one self-report case (QRTHNZ4S, salt b"salt", secret hash b"secret-hash").
0.1 had no PRAGMA user_version (0) and wrote meta schema_version = 1.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import Cli, HomeFactory

from hashmesh.node.errors import HomeError
from hashmesh.node.keys import hash_token
from hashmesh.node.store.core import Store
from hashmesh.node.store.schema import MIGRATIONS, Migration, migrate, user_version
from hashmesh.node.tokens import TokenStore
from hashmesh.protocol import LogKey
from hashmesh.protocol.batches import verify_batch
from hashmesh.protocol.ops import OpId

FIXTURE = Path(__file__).parent / "data" / "hashmesh-0.1.db.gz"
A = "ed25519:hl_OAgKGadRsTXZ-z8ooc8mjWIw4o1Zo1gjwrvsGJHQ"
B = "ed25519:TZWG-sOwty1UU84gTFGRE9AP-KT9YCYIoVI1kA6q5Wo"
PDQ = "d8f8f0cce0f4a84f0e370a22028f67f0b36e2ed596623e1d33e6b39c4e9c9b22"
TOKEN = "hm_BytzjtQBicistU4YNjxNPWL-VPDzwpGmYT2HNw5cNy8"
LATEST = len(MIGRATIONS)


def old_database(tmp_path: Path) -> Path:
    path = tmp_path / "hashmesh.db"
    with gzip.open(FIXTURE) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def signal(store: Store, op_id: str) -> dict[str, object]:
    signal_id = store.signal_id(OpId.parse(op_id))
    assert signal_id is not None, op_id
    found = store.signal(signal_id)
    assert found is not None
    return found


def test_a_0_1_database_opens_with_everything_in_it(tmp_path: Path) -> None:
    path = old_database(tmp_path)
    raw = sqlite3.connect(path)
    assert user_version(raw) == 0
    assert raw.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("1",)
    raw.close()

    store = Store(path)
    try:
        assert user_version(store.conn) == LATEST
        assert store.meta("schema_version") is None  # user_version is the one record now
        assert store.meta("node_id") == A
        heads = {(log["author"], log["collection"]): log["head"] for log in store.logs()}
        assert heads == {(A, "csam"): 3, (A, "ncii"): 3, (B, "csam"): 1}
        assert store.counts()["live_by_collection"] == {"csam": 2, "ncii": 1}
        # The signed bytes are intact: every stored batch verifies as it was received.
        for log in (LogKey(A, "csam"), LogKey(A, "ncii"), LogKey(B, "csam")):
            assert [verify_batch(f).seq for f in store.batch_frames(log)] == list(
                range(1, store.head(log) + 1)
            )

        md5 = signal(store, f"{A}/csam/1/0")
        assert (md5["type"], md5["ref"], md5["live"]) == ("md5", "case-1", True)
        sha = signal(store, f"{A}/ncii/1/0")
        assert sha["classification"] == "A1" and sha["live"] is False
        assert sha["revoked_by"] == f"{A}/ncii/2/0" and sha["revoked_reason"] == "false positive"
        pdq = signal(store, f"{B}/csam/1/0")
        assert (pdq["value"], pdq["quality"]) == (PDQ, 90)
        assert store.opinions_on(f"{B}/csam/1/0") == [
            {"author": A, "collection": "csam", "verdict": "confirm", "seen": True,
             "op_id": f"{A}/csam/3/0"}
        ]  # fmt: skip
        assert store.find_exact("pdq", PDQ) == [pdq["id"]]

        grant = TokenStore(store).grants()[hash_token(TOKEN)]
        assert grant.name == "platform-x" and grant.scopes == {"read", "match"}
        assert grant.collections == {"csam"}

        assert store.cases.secret_of("QRTHNZ4S") == (b"salt", b"secret-hash")
        (case_op,) = store.cases.ops("QRTHNZ4S")
        assert signal(store, case_op)["classification"] == "self-reported"
        assert store.cases.report("2000-01-01")["totals"]["cases"] == 1
        assert store.integrity_check() == "ok"
    finally:
        store.close()


def test_a_second_open_changes_nothing(tmp_path: Path) -> None:
    path = old_database(tmp_path)
    Store(path).close()
    migrated = digest(path)
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, path) == []
    conn.close()
    Store(path).close()
    assert digest(path) == migrated


def test_the_0_1_database_takes_new_writes_after_its_migration(tmp_path: Path) -> None:
    """Migrated, the old database is a working one: the token table's constraints and the
    store's caches are the current code's."""
    store = Store(old_database(tmp_path))
    try:
        tokens = TokenStore(store)
        made = tokens.create("platform-y", ["read"])
        assert [t["name"] for t in tokens.list()] == ["platform-x", "platform-y"]
        assert made["id"] == 2
    finally:
        store.close()


def _add_label_column(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE signals ADD COLUMN reviewed INTEGER NOT NULL DEFAULT 0")
    conn.execute("UPDATE signals SET reviewed = 1 WHERE type = 'pdq'")


def _broken(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE half_done (x)")
    conn.execute("SELECT * FROM no_such_table")


def test_a_migration_step_runs_on_an_old_database(tmp_path: Path) -> None:
    """From 0.1 (version 0) through every release's step to a test-only one, in one open."""
    path = old_database(tmp_path)
    steps = [*MIGRATIONS, Migration(LATEST + 1, "signals.reviewed", _add_label_column)]
    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(conn, path, steps) == list(range(1, LATEST + 2))
    assert user_version(conn) == LATEST + 1
    reviewed = conn.execute("SELECT type, reviewed FROM signals ORDER BY type").fetchall()
    assert reviewed == [("md5", 0), ("md5", 0), ("pdq", 1), ("sha256", 0)]
    assert migrate(conn, path, steps) == []
    conn.close()


def test_a_failed_step_leaves_the_database_at_its_old_version(tmp_path: Path) -> None:
    path = old_database(tmp_path)
    before = digest(path)
    steps = [
        *MIGRATIONS,
        Migration(LATEST + 1, "signals.reviewed", _add_label_column),
        Migration(LATEST + 2, "broken", _broken),
    ]
    conn = sqlite3.connect(path, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        migrate(conn, path, steps)
    assert user_version(conn) == 0
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "half_done" not in tables
    columns = {r[1] for r in conn.execute("PRAGMA table_info(signals)")}
    assert "reviewed" not in columns
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    conn.close()
    assert digest(path) == before


def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hashmesh.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 6}")
    conn.commit()
    conn.close()
    before = digest(path)
    with pytest.raises(HomeError) as refused:
        Store(path)
    text = str(refused.value)
    assert f"schema version {LATEST + 6}" in text and f"up to {LATEST} only" in text
    assert "newer release" in text and "nothing was changed" in text
    assert digest(path) == before


def test_the_cli_refuses_a_newer_database_with_exit_2(cli: Cli, home: HomeFactory) -> None:
    path = home("A")
    conn = sqlite3.connect(path / "hashmesh.db")
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.commit()
    conn.close()
    result = cli("status", home=path, expect=2)
    assert f"schema version {LATEST + 1}" in result.stderr, result
    assert "Traceback" not in result.stderr


def test_migration_numbers_are_checked(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    with pytest.raises(ValueError, match="numbered"):
        migrate(conn, tmp_path / "x.db", [*MIGRATIONS, Migration(LATEST + 2, "gap", _broken)])
    assert user_version(conn) == 0
    conn.close()


def test_a_new_database_is_created_at_the_latest_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "hashmesh.db")
    try:
        assert user_version(store.conn) == LATEST
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master")}
        assert {"logs", "signals", "feed", "tokens", "selfreport_cases"} <= tables
        assert store.meta("schema_version") is None
    finally:
        store.close()


def test_a_restore_refuses_a_backup_newer_than_the_code(cli: Cli, home: HomeFactory) -> None:
    """Put in place, such a backup would leave a node that no longer opens: it is refused
    before anything is replaced."""
    path = home("A")
    cli("add", "md5", "5d41402abc4b2a76b9719d911017c592", "-c", "csam", home=path)
    backup = path.parent / "newer.db"
    cli("backup", backup, home=path)
    conn = sqlite3.connect(backup)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.commit()
    conn.close()
    db = path / "hashmesh.db"
    before = digest(db)
    result = cli("restore", backup, home=path, expect=2)
    assert f"schema version {LATEST + 1}" in result.stderr, result
    assert "nothing was changed" in result.stderr
    assert digest(db) == before
    assert not (path / "hashmesh.db.before-restore").exists()
