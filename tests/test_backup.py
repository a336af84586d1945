"""Backup (SQLite online backup API, with the node running) and restore round trip."""

from __future__ import annotations

import sqlite3
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
