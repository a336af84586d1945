"""Backup (SQLite online backup API, with the node running) and restore round trip."""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

from netnodes import NodeProc

MD5 = "%032x"


def test_online_backup_then_restore_round_trip(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "hotline")
    node.cli("add", "md5", MD5 % 1, "-c", "csam")
    node.start()
    try:
        node.cli("add", "md5", MD5 % 2, "-c", "csam")
        backup = tmp_path / "backup.db"
        out = node.json("backup", str(backup))
        assert out["integrity"] == "ok" and backup.stat().st_size == out["bytes"]
        node.cli("add", "md5", MD5 % 3, "-c", "csam")  # after the backup
        refused = node.cli("restore", str(backup), check=False)
        assert refused.returncode == 2 and "running node" in refused.stderr
    finally:
        assert node.stop() == 0
    with sqlite3.connect(backup) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    result = node.json("restore", str(backup))
    assert Path(result["previous"]).exists()
    assert node.matches("md5", MD5 % 1) and node.matches("md5", MD5 % 2)
    assert not node.matches("md5", MD5 % 3)
    # The restored node keeps its chain: a new add continues the log after the backup's head.
    node.cli("add", "md5", MD5 % 4, "-c", "csam")
    log = node.status()["logs"][0]
    assert log["head"] == 3 and log["live"] == 3


def test_restore_refuses_a_file_that_is_not_a_backup(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "hotline")
    node.cli("add", "md5", MD5 % 1, "-c", "csam")
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"definitely not sqlite" * 100)
    result = node.cli("restore", str(bogus), check=False)
    assert result.returncode == 2 and "not a hashmesh database" in result.stderr
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    result = node.cli("restore", str(empty), check=False)
    assert result.returncode == 2 and "not a hashmesh database" in result.stderr
    assert node.matches("md5", MD5 % 1)  # nothing changed


def test_restored_node_recovers_its_later_batches_from_a_peer_before_publishing(
    tmp_path: Path,
) -> None:
    hotline, peer = NodeProc(tmp_path, "hotline"), NodeProc(tmp_path, "peer")
    hotline.peer(peer, "csam")
    peer.peer(hotline, "csam")
    hotline.trust(peer, "csam")  # accepts its own log back from a relay anyway
    peer.trust(hotline, "csam")
    hotline.cli("add", "md5", MD5 % 1, "-c", "csam")
    backup = tmp_path / "backup.db"
    hotline.json("backup", str(backup))
    hotline.cli("add", "md5", MD5 % 2, "-c", "csam")  # published after the backup
    peer.start()
    hotline.start()
    try:
        from netnodes import wait_for

        wait_for(lambda: peer.matches("md5", MD5 % 2))
        assert hotline.stop() == 0
        hotline.json("restore", str(backup))
        refused = hotline.cli("add", "md5", MD5 % 3, "-c", "csam", check=False)
        assert refused.returncode == 2 and "sync with its peers" in refused.stderr
        hotline.start()
        wait_for(lambda: hotline.matches("md5", MD5 % 2))  # given back by the peer
        wait_for(
            lambda: hotline.cli("add", "md5", MD5 % 3, "-c", "csam", check=False).returncode == 0
        )
        assert peer.status()["forks"] == [] and hotline.status()["forks"] == []
        wait_for(lambda: peer.matches("md5", MD5 % 3))
    finally:
        hotline.kill()
        peer.kill()


def _backup_http(node: NodeProc, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    from platform_util import request

    status, data = request(
        node.url + "/v1/admin/backup", "POST", token=node.admin_token(), body=body
    )
    return status, json.loads(data)


HOME_FILES = (
    "node.key",
    "hashmesh.db",
    "hashmesh.db-wal",
    "hashmesh.db-shm",
    "config.toml",
    "admin.token",
    "node.json",
    "node.lock",
    "hashmesh.db.before-restore",
)


def test_backup_refuses_the_nodes_own_files_even_with_overwrite(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "hotline")
    node.cli("add", "md5", MD5 % 1, "-c", "csam")
    key_before = (node.home / "node.key").read_bytes()
    link = tmp_path / "innocent.db"
    link.symlink_to(node.home / "node.key")
    node.start()
    try:
        for name in HOME_FILES:
            target = node.home / name
            for extra in ((), ("--force",), ("--overwrite",)):
                result = node.cli("backup", str(target), *extra, check=False)
                assert result.returncode == 2, (name, result.stdout)
                assert "file:" in result.stderr and "node's" in result.stderr, result.stderr
            status, answer = _backup_http(node, {"file": str(target), "overwrite": True})
            assert status == 400 and str(answer["error"]).startswith("file:"), answer
        status, answer = _backup_http(node, {"file": str(node.home)})
        assert status == 400 and str(answer["error"]).startswith("file:"), answer
        # A symlink out of the home is followed to what it names: still the key.
        status, answer = _backup_http(node, {"file": str(link), "overwrite": True})
        assert status == 400 and "node.key" in str(answer["error"]), answer
        assert (node.home / "node.key").read_bytes() == key_before
        assert node.matches("md5", MD5 % 1)  # the live database is untouched
    finally:
        assert node.stop() == 0
    assert (node.home / "node.key").read_bytes() == key_before
    node.cli("add", "md5", MD5 % 2, "-c", "csam")  # the node still has its key and database


def test_backup_refuses_an_existing_file_unless_asked_and_is_always_0600(
    tmp_path: Path,
) -> None:
    node = NodeProc(tmp_path, "hotline")
    node.cli("add", "md5", MD5 % 1, "-c", "csam")
    precious = tmp_path / "precious.txt"
    precious.write_text("not a backup")
    precious.chmod(0o644)
    offline = node.cli("backup", str(precious), check=False)  # no node running: local backend
    assert offline.returncode == 2 and "already exists" in offline.stderr
    assert "--force" in offline.stderr
    node.start()
    try:
        result = node.cli("backup", str(precious), check=False)
        assert result.returncode == 2 and "file:" in result.stderr
        assert "already exists" in result.stderr
        status, answer = _backup_http(node, {"file": str(precious)})
        assert status == 400 and str(answer["error"]).startswith("file:"), answer
        assert "already exists" in str(answer["error"])
        status, answer = _backup_http(node, {"file": str(precious), "overwrite": "yes"})
        assert status == 400 and str(answer["error"]).startswith("overwrite:"), answer
        assert precious.read_text() == "not a backup"
        fresh = tmp_path / "fresh.db"
        out = node.json("backup", str(fresh))
        assert out["integrity"] == "ok"
        assert stat.S_IMODE(fresh.stat().st_mode) == 0o600
        replaced = node.json("backup", str(precious), "--force")
        assert replaced["bytes"] == precious.stat().st_size
        again = node.json("backup", str(precious), "--overwrite")  # the older spelling
        assert again["bytes"] == precious.stat().st_size
        assert stat.S_IMODE(precious.stat().st_mode) == 0o600
        via_http = tmp_path / "via-http.db"
        status, answer = _backup_http(node, {"file": str(via_http)})
        assert status == 200 and stat.S_IMODE(via_http.stat().st_mode) == 0o600
        status, answer = _backup_http(node, {"file": str(via_http), "overwrite": True})
        assert status == 200, answer
        assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    finally:
        assert node.stop() == 0
    with sqlite3.connect(precious) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    local = tmp_path / "local.db"
    node.cli("backup", str(local))
    assert stat.S_IMODE(local.stat().st_mode) == 0o600
    before = precious.read_bytes()
    refused = node.cli("backup", str(precious), check=False)  # offline, no --force
    assert refused.returncode == 2 and "already exists" in refused.stderr
    assert precious.read_bytes() == before
    node.cli("backup", str(precious), "--force")
    assert stat.S_IMODE(precious.stat().st_mode) == 0o600


def _db_state(node: NodeProc) -> dict[str, object]:
    from contextlib import closing

    files = sorted(p.name for p in node.home.iterdir())
    with closing(sqlite3.connect(node.home / "hashmesh.db")) as db:
        logs = db.execute("SELECT author, collection, head FROM logs ORDER BY 1, 2").fetchall()
        meta = db.execute("SELECT key, value FROM meta ORDER BY key").fetchall()
    return {"files": files, "logs": logs, "meta": meta}


def test_restore_refuses_another_nodes_backup_unless_told(tmp_path: Path) -> None:
    mine, other = NodeProc(tmp_path, "mine"), NodeProc(tmp_path, "other")
    mine.cli("add", "md5", MD5 % 1, "-c", "csam")
    other.cli("add", "md5", MD5 % 2, "-c", "csam")
    backup = tmp_path / "other.db"
    other.cli("backup", str(backup))
    with sqlite3.connect(backup) as db:
        recorded = db.execute("SELECT value FROM meta WHERE key = 'node_id'").fetchone()
    assert recorded == (other.node_id,)
    legacy = tmp_path / "other-legacy.db"  # made before node ids were recorded
    other.cli("backup", str(legacy))
    with sqlite3.connect(legacy) as db:
        db.execute("DELETE FROM meta WHERE key = 'node_id'")
    before = _db_state(mine)
    for candidate in (backup, legacy):
        refused = mine.cli("restore", str(candidate), check=False)
        assert refused.returncode == 2, refused.stdout
        assert other.node_id in refused.stderr and mine.node_id in refused.stderr
        assert "--other-node" in refused.stderr and "nothing was changed" in refused.stderr
        assert _db_state(mine) == before
    assert mine.matches("md5", MD5 % 1) and not mine.matches("md5", MD5 % 2)

    seeded = mine.json("restore", str(backup), "--other-node")
    assert seeded["backup_node_id"] == other.node_id and seeded["node_id"] == mine.node_id
    assert mine.matches("md5", MD5 % 2) and not mine.matches("md5", MD5 % 1)
    with sqlite3.connect(mine.home / "hashmesh.db") as db:
        now = db.execute("SELECT value FROM meta WHERE key = 'node_id'").fetchone()
    assert now == (mine.node_id,)  # the database is this node's from now on
    mine.cli("add", "md5", MD5 % 3, "-c", "csam")  # no peers: may publish at once
    assert mine.matches("md5", MD5 % 3)


def test_a_node_refuses_to_open_another_nodes_database_and_records_its_own(
    tmp_path: Path,
) -> None:
    mine, other = NodeProc(tmp_path, "mine"), NodeProc(tmp_path, "other")
    other.cli("add", "md5", MD5 % 2, "-c", "csam")
    with sqlite3.connect(mine.home / "hashmesh.db") as db:
        db.execute("DELETE FROM meta WHERE key = 'node_id'")  # an older database
    mine.cli("status")
    with sqlite3.connect(mine.home / "hashmesh.db") as db:
        recorded = db.execute("SELECT value FROM meta WHERE key = 'node_id'").fetchone()
    assert recorded == (mine.node_id,)
    # A database copied by hand from another home, bypassing restore.
    copy = tmp_path / "copy.db"
    other.cli("backup", str(copy))
    (mine.home / "hashmesh.db").write_bytes(copy.read_bytes())
    for suffix in ("-wal", "-shm"):
        (mine.home / f"hashmesh.db{suffix}").unlink(missing_ok=True)
    refused = mine.cli("add", "md5", MD5 % 1, "-c", "csam", check=False)
    assert refused.returncode == 2
    assert other.node_id in refused.stderr and mine.node_id in refused.stderr


def test_every_file_backup_and_restore_write_is_0600_under_umask_022(tmp_path: Path) -> None:
    """The staged copy restore writes becomes the home's database (same inode), so its mode
    after the restore is the mode it was created with; nothing is chmod-ed on the way."""
    import os

    old = os.umask(0o022)
    try:
        node = NodeProc(tmp_path, "hotline")
        node.cli("add", "md5", MD5 % 1, "-c", "csam")
        out = tmp_path / "out"
        out.mkdir()
        node.cli("backup", str(out / "b.db"))
        node.cli("add", "md5", MD5 % 2, "-c", "csam")
        node.cli("restore", str(out / "b.db"))
        node.cli("add", "md5", MD5 % 3, "-c", "csam", check=False)
    finally:
        os.umask(old)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in node.home.iterdir()}
    assert "hashmesh.db" in modes and "hashmesh.db.before-restore" in modes
    assert modes == dict.fromkeys(modes, "0o600"), modes
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir()} == {"b.db": "0o600"}
