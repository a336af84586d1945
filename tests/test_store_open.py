"""The store's check at open: quick_check when small or after a crash, a header check else."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hashmesh.node.errors import HomeError
from hashmesh.node.store import integrity
from hashmesh.node.store.core import Store

# A real process that writes and is killed (SIGKILL) before it closes: the -wal stays.
_CRASH = """
import os, signal, sys
from hashmesh.node.store.core import Store
store = Store(sys.argv[1])
store.conn.execute("CREATE TABLE IF NOT EXISTS scratch (x)")
store.conn.execute("INSERT INTO scratch VALUES (1)")
os.kill(os.getpid(), signal.SIGKILL)
"""


def big_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every database counts as large, as a 10M-signal one is (checks 19 s long)."""
    monkeypatch.setattr(integrity, "QUICK_CHECK_MAX_BYTES", 0)


def test_small_database_is_quick_checked_every_open(tmp_path: Path) -> None:
    db = tmp_path / "hashmesh.db"
    Store(db).close()
    store = Store(db)
    assert store.open_check == "quick_check"
    store.close()


def test_large_database_closed_cleanly_gets_the_header_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big_enough(monkeypatch)
    db = tmp_path / "hashmesh.db"
    Store(db).close()
    assert not Path(f"{db}-wal").exists()  # SQLite removes it at the last clean close
    store = Store(db)
    assert store.open_check == "header"
    store.close()
    assert Store(db, check=False).open_check == "none"


def test_large_database_after_a_crash_is_quick_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    big_enough(monkeypatch)
    db = tmp_path / "hashmesh.db"
    Store(db).close()
    crashed = subprocess.run([sys.executable, "-c", _CRASH, str(db)], check=False)
    assert crashed.returncode == -9
    assert Path(f"{db}-wal").stat().st_size > 0
    store = Store(db)
    assert store.open_check == "quick_check"
    assert store.conn.execute("SELECT x FROM scratch").fetchall() == [(1,)]
    store.close()
    assert Store(db).open_check == "header"  # that open closed cleanly


@pytest.mark.parametrize(
    ("offset", "data"),
    [(0, b"SQLite format 4"), (16, b"\x03\x00"), (21, b"\x41")],
    ids=["magic", "page-size", "format-bytes"],
)
def test_damaged_header_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offset: int, data: bytes
) -> None:
    big_enough(monkeypatch)
    db = tmp_path / "hashmesh.db"
    Store(db).close()
    raw = bytearray(db.read_bytes())
    raw[offset : offset + len(data)] = data
    db.write_bytes(bytes(raw))
    with pytest.raises(HomeError, match=str(db)):  # SQLite's own check or the header check
        Store(db)


def test_torn_database_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big_enough(monkeypatch)
    db = tmp_path / "hashmesh.db"
    Store(db).close()
    with open(db, "ab") as f:
        f.write(b"\x00" * 100)
    with pytest.raises(HomeError, match="whole"):
        Store(db)
