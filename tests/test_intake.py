"""The intake journal (node/intake.py): a running node's adds are signed and made durable
in intake.db without waiting for the store thread, and the store holds exactly what a
direct publish would have stored.

The service tests drive a real NodeService on a real home (real SQLite files, real
signatures) and stop it between journalling and applying, which is what a node killed
at that moment leaves; the node tests run the real node process over HTTP.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import http
from netnodes import NodeProc

from hashmesh.node.config import Home
from hashmesh.node.errors import NodeError
from hashmesh.node.intake import JOURNAL_FILE, NotPrimed, Tip
from hashmesh.node.service import NodeService, restore_home
from hashmesh.node.store.core import StoreReader
from hashmesh.protocol.batches import LogKey, header_hash, verify_batch

COLLECTION = "csam"


def md5(n: int) -> str:
    return hashlib.md5(f"intake-{n}".encode()).hexdigest()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return NodeProc(tmp_path, "hotline").home


@pytest.fixture
def service(home: Path) -> Iterator[NodeService]:
    svc = NodeService(Home(home))
    svc.open_intake()
    yield svc
    svc.close()


def journal(svc: NodeService, values: list[str]) -> tuple[list[str], list[int]]:
    """Adds signed and journalled as the running node's publisher does, not applied."""
    ops = [svc.prepare_add("md5", v, COLLECTION) for v in values]
    try:
        op_ids, frames = svc.journal_publish(COLLECTION, list(ops))
    except NotPrimed:
        svc.prime_intake(COLLECTION)
        op_ids, frames = svc.journal_publish(COLLECTION, list(ops))
    return [str(o) for o in op_ids], frames


def stored_values(svc: NodeService) -> set[str]:
    rows = svc.store.conn.execute(
        "SELECT value FROM signals WHERE type = 'md5' AND revoked_by IS NULL"
    ).fetchall()
    return {str(r[0]) for r in rows}


def journal_rows(home: Path) -> int:
    conn = sqlite3.connect(home / JOURNAL_FILE)
    try:
        return int(conn.execute("SELECT count(*) FROM frames").fetchone()[0])
    finally:
        conn.close()


def own_log(svc: NodeService) -> LogKey:
    return LogKey(svc.node_id, COLLECTION)


def assert_chain_intact(svc: NodeService, log_key: LogKey) -> None:
    """Every batch of the log verifies and names its predecessor's header: no fork."""
    head = svc.store.head(log_key)
    prev = None
    for seq, frame in enumerate(svc.store.batch_frames(log_key, after=0, limit=head), start=1):
        batch = verify_batch(frame)
        assert batch.seq == seq
        assert batch.header.prev == prev, f"seq {seq} does not continue seq {seq - 1}"
        prev = batch.hash.hex()
    assert seq == head


def test_adds_journalled_before_a_stop_are_stored_at_the_next_start(home: Path) -> None:
    svc = NodeService(Home(home))
    svc.open_intake()
    first, _ = journal(svc, [md5(1), md5(2)])
    journal(svc, [md5(3)])
    assert stored_values(svc) == set()  # journalled only: the node "dies" here
    assert svc.intake.pending() == 2
    svc.close()
    assert journal_rows(home) == 2

    again = NodeService(Home(home))
    try:
        assert stored_values(again) == {md5(1), md5(2), md5(3)}
        assert journal_rows(home) == 0
        signal = again.store.signal(
            again.store.find_own_live(again.node_id, COLLECTION, "md5", md5(1)) or 0
        )
        assert signal is not None and str(signal["op_id"]) == first[0]
        assert_chain_intact(again, own_log(again))
    finally:
        again.close()
    third = NodeService(Home(home))  # nothing left to replay, nothing stored twice
    try:
        assert third.store.head(own_log(third)) == 2
        assert stored_values(third) == {md5(1), md5(2), md5(3)}
    finally:
        third.close()


def test_a_replayed_frame_the_store_already_holds_is_a_duplicate(home: Path) -> None:
    svc = NodeService(Home(home))
    svc.open_intake()
    journal(svc, [md5(1)])
    frames = svc.intake.journal.frames() if svc.intake.journal else []
    svc.apply_intake()
    svc.close()
    conn = sqlite3.connect(home / JOURNAL_FILE)  # a stop between apply and the delete
    with conn:
        conn.executemany("INSERT INTO frames (id, frame) VALUES (?, ?)", frames)
    conn.close()
    again = NodeService(Home(home))
    try:
        assert again.store.head(own_log(again)) == 1
        assert stored_values(again) == {md5(1)}
        assert journal_rows(home) == 0
    finally:
        again.close()


def test_a_journalled_add_is_held_before_it_is_stored(service: NodeService) -> None:
    op_ids, _ = journal(service, [md5(1)])
    op = service.prepare_add("md5", md5(1), COLLECTION)
    assert service.journal_held(COLLECTION, op) == op_ids[0]
    assert service.held_add(COLLECTION, op) == op_ids[0]  # the store thread's rule too
    answer, frames = service.journal_add_many(
        COLLECTION, [{"type": "md5", "value": md5(1)}, {"type": "md5", "value": md5(2)}]
    )
    assert answer["published"] == 1 and len(frames) == 1
    assert answer["signals"][0] == {
        "type": "md5",
        "value": md5(1),
        "new": False,
        "op_id": op_ids[0],
    }
    service.apply_intake()
    assert service.journal_held(COLLECTION, op) == op_ids[0]  # now from the store
    assert stored_values(service) == {md5(1), md5(2)}


def test_the_held_check_finds_an_add_by_its_value_not_by_walking_the_log(
    service: NodeService, home: Path
) -> None:
    """Every add of a batch asks whether it is held already; a plan that walks the log
    through signals_position made each batch cost as much as the whole log (a 30th batch
    of 1,000 adds took 2.1 s instead of 0.03 s)."""
    op_ids, _ = journal(service, [md5(n) for n in range(50)])
    service.apply_intake()
    reader = StoreReader(Home(home).db_path)
    statements: list[str] = []
    reader.conn.set_trace_callback(statements.append)
    try:
        assert reader.own_live_op(service.node_id, COLLECTION, "md5", md5(7)) == op_ids[7]
        assert reader.own_live_op(service.node_id, COLLECTION, "md5", md5(99)) is None
        plans = [
            " / ".join(str(row[3]) for row in reader.conn.execute("EXPLAIN QUERY PLAN " + sql))
            for sql in statements
            if "value = " in sql
        ]
    finally:
        reader.close()
    assert plans
    for plan in plans:
        assert "signals_value" in plan and "signals_position" not in plan, plan


def test_a_store_thread_publish_continues_the_journalled_frames(service: NodeService) -> None:
    journal(service, [md5(1)])
    journal(service, [md5(2)])
    op_ids, _ = service.publish(COLLECTION, [service.prepare_add("md5", md5(3), COLLECTION)])
    assert str(op_ids[0]).split("/")[-2] == "3"
    revoked = service.revoke(str(op_ids[0]))
    assert revoked
    _, frames = journal(service, [md5(4)])
    service.apply_intake()
    assert service.intake.outcome(frames) is True
    log_key = own_log(service)
    assert service.store.head(log_key) == 5
    assert_chain_intact(service, log_key)
    assert stored_values(service) == {md5(1), md5(2), md5(4)}


def test_key_rotation_with_frames_pending_hands_over_after_them(service: NodeService) -> None:
    journal(service, [md5(1)])
    old_key = service.signing_key.node_id
    service.key_rotate(False, False, None)
    assert service.signing_key.node_id != old_key
    _, frames = journal(service, [md5(2)])
    service.apply_intake()
    assert service.intake.outcome(frames) is True
    assert stored_values(service) == {md5(1), md5(2)}
    log_key = own_log(service)
    head = service.store.head(log_key)
    (frame,) = service.store.batch_frames(log_key, after=head - 1, limit=1)
    last = verify_batch(frame)
    assert last.header.signed_by == service.signing_key.node_id
    assert_chain_intact(service, log_key)


def test_a_refused_frame_fails_its_callers_and_the_next_publish_starts_from_the_store(
    service: NodeService,
) -> None:
    journal(service, [md5(1)])
    service.apply_intake()
    log_key = own_log(service)
    # our own bug, injected: a tip past the store's head, so the frame leaves a gap
    service.intake.set_tip(COLLECTION, Tip(log_key, 7, header_hash(b"not a header")))
    _, refused = journal(service, [md5(2)])
    _, after = journal(service, [md5(3)])
    service.apply_intake()
    with pytest.raises(NodeError, match="publishing to csam failed"):
        service.intake.outcome(refused)
    with pytest.raises(NodeError, match="publishing to csam failed"):
        service.intake.outcome(after)
    assert service.intake.tip(COLLECTION) is None
    assert stored_values(service) == {md5(1)}
    _, frames = journal(service, [md5(2)])  # primed again from the store
    service.apply_intake()
    assert service.intake.outcome(frames) is True
    assert service.store.head(log_key) == 2
    assert_chain_intact(service, log_key)


def test_a_restore_sets_the_journal_aside_with_the_database_it_replaces(
    home: Path, tmp_path: Path
) -> None:
    svc = NodeService(Home(home))
    svc.open_intake()
    svc.publish(COLLECTION, [svc.prepare_add("md5", md5(1), COLLECTION)])
    svc.backup(str(tmp_path / "backup.db"))
    journal(svc, [md5(2)])  # seq 2, signed after the backup, and not stored: a crash
    svc.close()
    restore_home(Home(home), str(tmp_path / "backup.db"))
    assert not (home / JOURNAL_FILE).exists()
    aside = sqlite3.connect(home / (JOURNAL_FILE + ".before-restore"))
    assert aside.execute("SELECT count(*) FROM frames").fetchone()[0] == 1
    aside.close()
    again = NodeService(Home(home))
    try:  # the restored log ends at the backup: its seq 2 comes from the peers
        assert again.store.head(own_log(again)) == 1
        assert stored_values(again) == {md5(1)}
    finally:
        again.close()


def test_the_journal_file_is_0600(home: Path) -> None:
    old = os.umask(0o022)
    try:
        svc = NodeService(Home(home))
        svc.open_intake()
        journal(svc, [md5(1)])
        svc.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((home / JOURNAL_FILE).stat().st_mode) == 0o600


def test_a_running_nodes_adds_are_applied_and_matchable_at_once(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "hotline")
    node.start()
    token = node.admin_token()
    try:
        add = {"type": "md5", "value": md5(1), "collection": COLLECTION}
        one = http("POST", node.url + "/v1/signals", add, token=token)
        assert one["new"] is True and one["applied"] is True
        signals = [{"type": "md5", "value": md5(1)}, {"type": "md5", "value": md5(2)}]
        body = {"collection": COLLECTION, "signals": signals}
        many = http("POST", node.url + "/v1/signals/batch", body, token=token)
        assert many["applied"] is True and many["published"] == 1
        assert many["signals"][0]["op_id"] == one["op_id"]
        queries = {"queries": [{"type": "md5", "value": md5(n)} for n in (1, 2)]}
        found = http("POST", node.url + "/v1/match", queries, token=token)
        assert [bool(r["matches"]) for r in found["results"]] == [True, True]
    finally:
        assert node.stop() == 0
    assert journal_rows(node.home) == 0  # a clean stop leaves nothing to replay
