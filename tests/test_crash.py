"""Crash safety: a node is killed with SIGKILL at random moments while it publishes, ingests
from peers and imports bundles, and must come back whole every time; a full or read-only
disk is reported in one sentence and refused without damage.

After each kill, the database is checked offline (before the restart) with the protocol's
own functions, never with the node's code:

- `PRAGMA integrity_check` is ok;
- every op the node acknowledged (HTTP 200 read in full by the client) is present, every
  acknowledged revocation still revoked, every acknowledged pushed or imported batch held;
- every log is a chain: seqs 1..head contiguous, each header's signature verifies, each
  `prev` is the SHA-256 of the previous stored header bytes, the stored hash and the log's
  head hash match the bytes, no signal belongs to a batch that is not there;
- the feed has no gaps: the AUTOINCREMENT cursor runs 1..max without a hole (SQLite rolls
  the sequence back with the transaction, and nothing deletes feed rows), and every signal,
  revocation and opinion has its feed row.

After the restart the node must catch up with its honest peer (a real node that keeps
publishing). The default variant does KILLS_DEFAULT kills (about fifteen seconds on two cores);
`make test-slow` runs KILLS_SLOW (see docs/robustness.md).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any

import pytest
from conftest import author_key, write_bundle
from netnodes import NodeProc, wait_for

from hashmesh.node.config import Home, Peer, Trust
from hashmesh.protocol.batches import Batch, build_batch, verify_header, verify_parts
from hashmesh.protocol.peerauth import sign_request
from hashmesh.protocol.signing import SigningKey

KILLS_DEFAULT = 8
KILLS_SLOW = 60
MD5 = "%032x"
F_OPS, F_BATCHES_PER_PUSH = 20, 10  # pushed log: 20 adds a batch, 10 batches a request
Y_OPS, Y_BATCHES_PER_BUNDLE = 50, 100  # imported log: 5,000 adds a bundle


def configure(node: NodeProc, **publish: Any) -> None:
    home = Home(node.home)
    config = home.load_config()
    for key, value in publish.items():
        setattr(config, key, value)
    home.save_config(config)


def add_peer(node: NodeProc, name: str, url: str, node_id: str, share: list[str]) -> None:
    home = Home(node.home)
    config = home.load_config()
    config.add_peer(Peer(name=name, url=url, node_id=node_id, share=share))
    home.save_config(config)


def add_trust(node: NodeProc, node_id: str, collection: str) -> None:
    home = Home(node.home)
    config = home.load_config()
    config.add_trust(Trust(node_id=node_id, collection=collection))
    home.save_config(config)


def api(
    node: NodeProc,
    method: str,
    path: str,
    body: Any = None,
    data: bytes | None = None,
    timeout: float = 5.0,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {node.admin_token()}"}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(node.url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def peer_post(
    key: SigningKey, node: NodeProc, path: str, body: bytes, timeout: float = 5.0
) -> tuple[int, bytes]:
    headers = sign_request(
        key, node.node_id, "POST", path, body, int(time.time() * 1000), os.urandom(16)
    )
    request = urllib.request.Request(node.url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Chain:
    """A log signed on demand, batch by batch, so a long run never builds more than it uses."""

    def __init__(self, key: SigningKey, collection: str, ops: int, salt: int) -> None:
        self.key, self.collection, self.ops, self.salt = key, collection, ops, salt
        self.batches: list[Batch] = []

    def get(self, first_seq: int, count: int) -> list[Batch]:
        while len(self.batches) < first_seq - 1 + count:
            seq = len(self.batches) + 1
            prev = self.batches[-1].hash if self.batches else None
            values = [f"{self.salt:08x}{seq:016x}{i:08x}" for i in range(self.ops)]
            ops = [{"op": "add", "type": "md5", "value": v, "category": "csam"} for v in values]
            self.batches.append(
                build_batch(self.key, self.collection, seq, prev, 1_700_000_000_000 + seq, ops)
            )
        return self.batches[first_seq - 1 : first_seq - 1 + count]


@dataclass
class Acked:
    """What the node acknowledged: these must survive every later crash."""

    adds: dict[str, str] = field(default_factory=dict)  # op id -> md5 value
    revoked: set[str] = field(default_factory=set)  # op ids of adds whose revoke was acked
    opinions: set[str] = field(default_factory=set)  # target op ids opined on
    heads: dict[str, int] = field(default_factory=dict)  # "author/collection" -> seq
    lock: threading.Lock = field(default_factory=threading.Lock)

    def head(self, log: str, seq: int) -> None:
        with self.lock:
            self.heads[log] = max(self.heads.get(log, 0), seq)


# -- workloads (threads that run until the node dies) ---------------------------------------


def publisher(
    node: NodeProc, acked: Acked, counter: Iterator[int], stop: threading.Event, rng: random.Random
) -> None:
    attempted: set[str] = set()
    while not stop.is_set():
        try:
            with acked.lock:
                live = [o for o in acked.adds if o not in acked.revoked and o not in attempted]
            roll = rng.random()
            if live and roll < 0.25:
                target = rng.choice(live)
                attempted.add(target)
                status, _ = api(node, "POST", "/v1/revoke", {"op_id": target, "reason": "crash"})
                if status == 200:
                    with acked.lock:
                        acked.revoked.add(target)
            elif live and roll < 0.35:
                target = rng.choice(live)
                status, _ = api(
                    node, "POST", "/v1/opinions", {"op_id": target, "opinion": "confirm"}
                )
                if status == 200:
                    with acked.lock:
                        acked.opinions.add(target)
            else:
                value = MD5 % (0xC0DE << 64 | next(counter))
                status, body = api(
                    node,
                    "POST",
                    "/v1/signals",
                    {"type": "md5", "value": value, "collection": "pub"},
                )
                if status == 200:
                    assert body["new"] is True, body
                    with acked.lock:
                        acked.adds[body["op_id"]] = value
                else:
                    raise AssertionError(f"add refused with {status}: {body}")
        except (OSError, urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            return  # the node is gone


def pusher(
    node: NodeProc, key: SigningKey, chain: Chain, acked: Acked, first: int, stop: threading.Event
) -> None:
    log = f"{key.node_id}/{chain.collection}"
    seq = first
    while not stop.is_set():
        frames = chain.get(seq, F_BATCHES_PER_PUSH)
        try:
            status, data = peer_post(
                key, node, "/v1/peer/batches", b"".join(b.to_bytes() for b in frames)
            )
        except (OSError, urllib.error.URLError, ConnectionError):
            return
        assert status == 200, data
        outcomes = [r["outcome"] for r in json.loads(data)["results"]]
        assert set(outcomes) <= {"applied", "duplicate"}, outcomes
        seq += len(frames)
        acked.head(log, seq - 1)


def importer(
    node: NodeProc, chain: Chain, acked: Acked, first: int, folder: Path, stop: threading.Event
) -> None:
    log = f"{chain.key.node_id}/{chain.collection}"
    seq = first
    while not stop.is_set():
        # A bundle holds its logs from seq 1: the held part comes back as duplicates.
        batches = chain.get(1, seq - 1 + Y_BATCHES_PER_BUNDLE)
        bundle = write_bundle(folder / f"y-{seq}.hmb", batches, chain.collection)
        try:
            status, body = api(node, "POST", "/v1/import", data=bundle.read_bytes(), timeout=30)
        except (OSError, urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            return
        assert status == 200, body
        seq = len(batches) + 1
        acked.head(log, seq - 1)


# -- the offline check ----------------------------------------------------------------------


def check_database(db_path: Path, acked: Acked, full: bool = False) -> dict[str, int]:
    """Everything the crash suite promises, read straight from the file. Returns log heads."""
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        heads: dict[str, int] = {}
        log_ids: dict[str, int] = {}
        for log_id, author, collection, head, head_hash, adds in db.execute(
            "SELECT id, author, collection, head, head_hash, adds FROM logs"
        ).fetchall():
            name = f"{author}/{collection}"
            heads[name], log_ids[name] = head, log_id
            rows = db.execute(
                "SELECT seq, hash, header, sig, ops, op_count FROM batches WHERE log_id = ?"
                " ORDER BY seq",
                (log_id,),
            ).fetchall()
            assert [r[0] for r in rows] == list(range(1, head + 1)), f"{name}: seqs not 1..{head}"
            prev: bytes | None = None
            for seq, stored_hash, header_bytes, sig, ops, op_count in rows:
                header = verify_header(header_bytes, sig)  # the author's signature
                assert (header.author, header.collection, header.seq) == (author, collection, seq)
                assert header.prev == (prev.hex() if prev else None), f"{name}@{seq}: broken link"
                assert header.count == op_count and header.size == len(ops)
                prev = sha256(header_bytes).digest()
                assert stored_hash == prev
                if full:
                    verify_parts(header_bytes, sig, ops)  # Merkle root and every op
            assert head_hash == prev, f"{name}: head hash is not the last header's hash"
            signals = db.execute(
                "SELECT count(*), coalesce(max(seq), 0) FROM signals WHERE log_id = ?", (log_id,)
            ).fetchone()
            assert signals[0] == adds and signals[1] <= head, f"{name}: signals {signals}"
        # The feed: no hole in the cursor, and a row for every change.
        count, low, high = db.execute(
            "SELECT count(*), coalesce(min(cursor), 1), coalesce(max(cursor), 0) FROM feed"
        ).fetchone()
        assert (low, high) == (1, count), f"feed cursor has gaps: {count} rows in {low}..{high}"
        for what, sql in (  # EXCEPT sorts both sides: no quadratic scan of the feed
            ("add", "SELECT id FROM signals EXCEPT SELECT signal_id FROM feed WHERE kind = 'add'"),
            (
                "revoke",
                "SELECT id FROM signals WHERE revoked_by IS NOT NULL EXCEPT"
                " SELECT signal_id FROM feed WHERE kind = 'revoke'",
            ),
            (
                "opinion",
                "SELECT op_id FROM opinions EXCEPT SELECT op_id FROM feed WHERE kind = 'opinion'",
            ),
        ):
            missing = db.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
            assert missing == 0, f"{missing} {what}(s) without their feed row"
        # Everything acknowledged is there.
        with acked.lock:
            adds, revoked, opinions = dict(acked.adds), set(acked.revoked), set(acked.opinions)
            acked_heads = dict(acked.heads)
        for log, seq in acked_heads.items():
            assert heads.get(log, 0) >= seq, f"{log}: acknowledged seq {seq} lost"
        for op_id, value in adds.items():
            author, collection, seq, index = op_id.split("/")
            row = db.execute(
                "SELECT s.value, s.revoked_by FROM signals s JOIN logs l ON l.id = s.log_id"
                " WHERE l.author = ? AND l.collection = ? AND s.seq = ? AND s.idx = ?",
                (author, collection, int(seq), int(index)),
            ).fetchone()
            assert row is not None and row[0] == value, f"acknowledged add {op_id} lost"
            if op_id in revoked:
                assert row[1] is not None, f"acknowledged revocation of {op_id} lost"
        for target in opinions:
            assert db.execute("SELECT 1 FROM opinions WHERE target = ?", (target,)).fetchone(), (
                f"acknowledged opinion on {target} lost"
            )
        return heads
    finally:
        db.close()


@pytest.fixture
def crash_nodes(tmp_path: Path) -> Iterator[tuple[NodeProc, NodeProc]]:
    victim = NodeProc(tmp_path, "victim")
    honest = NodeProc(tmp_path, "honest")
    yield victim, honest
    victim.kill()
    honest.kill()


def run_crash_loop(tmp_path: Path, nodes: tuple[NodeProc, NodeProc], kills: int) -> None:
    victim, honest = nodes
    rng = random.Random(int.from_bytes(os.urandom(4)))
    feeder, imported = author_key(41), author_key(42)
    f_chain = Chain(feeder, "pushed", F_OPS, 0xF0)
    y_chain = Chain(imported, "imported", Y_OPS, 0xA0)
    configure(victim, batch_delay_ms=20)
    victim.peer(honest)
    add_peer(victim, "feeder", "http://127.0.0.1:9", feeder.node_id, [])
    add_trust(victim, honest.node_id, "honest")
    add_trust(victim, feeder.node_id, "pushed")
    add_trust(victim, imported.node_id, "imported")
    honest.peer(victim, "honest")
    honest.start()
    honest_log = f"{honest.node_id}/honest"
    victim_f = f"{feeder.node_id}/pushed"
    victim_y = f"{imported.node_id}/imported"
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    acked = Acked()
    counter = iter(range(10**9))
    modes = ["publish", "push", "import"]
    heads: dict[str, int] = {}
    honest_head = 0
    started = time.monotonic()
    timings: list[tuple[float, ...]] = []
    for n in range(kills):
        # The honest peer publishes while the victim is down: it must catch up after.
        status, _ = api(
            honest,
            "POST",
            "/v1/signals",
            {"type": "md5", "value": MD5 % (0xB0B << 64 | n), "collection": "honest"},
        )
        assert status == 200
        honest_head += 1
        t0 = time.monotonic()
        victim.start()
        t1 = time.monotonic()
        wait_for(lambda h=honest_head: _head(victim, honest_log) >= h, timeout=20, step=0.05)
        t2 = time.monotonic()
        mode = modes[n % len(modes)]
        stop = threading.Event()
        if mode == "publish":
            threads = [
                threading.Thread(
                    target=publisher,
                    args=(victim, acked, counter, stop, random.Random(rng.random())),
                )
                for _ in range(4)
            ]
        elif mode == "push":
            threads = [
                threading.Thread(
                    target=pusher,
                    args=(victim, feeder, f_chain, acked, heads.get(victim_f, 0) + 1, stop),
                )
            ]
        else:
            threads = [
                threading.Thread(
                    target=importer,
                    args=(victim, y_chain, acked, heads.get(victim_y, 0) + 1, bundles, stop),
                )
            ]
        failures: list[BaseException] = []
        for t in threads:
            t.run = _recording(t.run, failures)  # type: ignore[method-assign]
            t.start()
        time.sleep(rng.uniform(0.05, 0.4))
        assert victim.proc is not None
        victim.proc.kill()  # SIGKILL, mid-work
        victim.proc.wait(timeout=10)
        victim.proc = None
        stop.set()
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive()
        assert not failures, failures[0]
        t3 = time.monotonic()
        heads = check_database(victim.home / "hashmesh.db", acked)
        timings.append((t1 - t0, t2 - t1, t3 - t2, time.monotonic() - t3))
        for leftover in bundles.iterdir():
            leftover.unlink()
    elapsed = time.monotonic() - started
    # Finally: a clean run, the full check (every Merkle root and op), and catch-up.
    victim.start()
    wait_for(lambda: _head(victim, honest_log) >= honest_head, timeout=20)
    assert victim.stop() == 0
    check_database(victim.home / "hashmesh.db", acked, full=True)
    assert len(acked.adds) > 0 and acked.heads.get(victim_f, 0) > 0, "no work was acknowledged"
    print(
        f"{kills} kills in {elapsed:.1f} s; acknowledged {len(acked.adds)} adds, "
        f"{len(acked.revoked)} revocations, {len(acked.opinions)} opinions, heads {acked.heads}"
    )
    print("start, catch-up, work+kill, check:", [tuple(round(x, 2) for x in t) for t in timings])


def _recording(run: Any, failures: list[BaseException]) -> Any:
    def wrapped() -> None:
        try:
            run()
        except BaseException as exc:  # a workload's failed assertion fails the test
            failures.append(exc)

    return wrapped


def _head(node: NodeProc, log: str) -> int:
    status, body = api(node, "GET", "/v1/status")
    assert status == 200
    for entry in body["logs"]:
        if f"{entry['author']}/{entry['collection']}" == log:
            return int(entry["head"])
    return 0


def test_sigkill_loop_loses_nothing(tmp_path: Path, crash_nodes: tuple[NodeProc, NodeProc]) -> None:
    run_crash_loop(tmp_path, crash_nodes, KILLS_DEFAULT)


@pytest.mark.slow
def test_sigkill_loop_many_kills(tmp_path: Path, crash_nodes: tuple[NodeProc, NodeProc]) -> None:
    run_crash_loop(tmp_path, crash_nodes, KILLS_SLOW)


# -- a full or read-only disk ---------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that really fills up. Mounting needs root (CI may not have it)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a 4 MiB tmpfs (a real full disk); run as root")
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 512):  # big blocks, then the last bytes
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def test_full_disk_is_reported_refused_and_recovered(small_disk: Path) -> None:
    node = NodeProc(small_disk, "full")
    configure(node, batch_delay_ms=5)
    node.start()
    try:
        acked = Acked()
        status, body = api(
            node, "POST", "/v1/signals", {"type": "md5", "value": MD5 % 1, "collection": "c"}
        )
        assert status == 200
        acked.adds[body["op_id"]] = MD5 % 1
        fill(small_disk / "filler")
        # Publish until the disk refuses (SQLite may first reuse free WAL space).
        errors = []
        for n in range(2, 200):
            signals = [{"type": "md5", "value": MD5 % (n << 32 | i)} for i in range(200)]
            status, body = api(
                node, "POST", "/v1/signals/batch", {"collection": "c", "signals": signals}
            )
            if status != 200:
                errors.append((status, body))
                break
        assert errors, "the disk never filled up"
        status, body = errors[0]
        assert status == 507, body
        assert "disk is full" in body["error"] and "\n" not in body["error"]
        # The CLI: one sentence, exit 2.
        result = node.cli("add", "md5", MD5 % 3, "-c", "c", check=False)
        assert result.returncode == 2, result
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "disk is full" in lines[0], result.stderr
        # Reads keep working.
        assert node.matches("md5", MD5 % 1)
        assert api(node, "GET", "/v1/status")[0] == 200
        # Space returns: writes work again, on an intact chain (the caches were restored).
        (small_disk / "filler").unlink()
        status, body = api(
            node, "POST", "/v1/signals", {"type": "md5", "value": MD5 % 3, "collection": "c"}
        )
        assert status == 200, body
        acked.adds[body["op_id"]] = MD5 % 3
        assert node.matches("md5", MD5 % 3)
        assert node.stop() == 0
        check_database(node.home / "hashmesh.db", acked, full=True)
    finally:
        node.kill()


def test_read_only_database_refuses_writes_and_keeps_reads(tmp_path: Path) -> None:
    """SQLite's "attempt to write a readonly database" (a file or mount turned read-only
    under a running node) becomes a 503 sentence, and the store's caches stay right."""
    from hashmesh.node.errors import StorageUnavailable
    from hashmesh.node.service import NodeService, init_home

    init_home(tmp_path / "ro", "ro", "127.0.0.1:1", None)
    service = NodeService(Home(tmp_path / "ro"))
    try:
        first = service.add("md5", MD5 % 1, "c")["op_id"]
        db = service.store.path
        service.store.conn.close()
        service.store.conn = sqlite3.connect(
            f"file:{db}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        with pytest.raises(StorageUnavailable) as info:
            service.add("md5", MD5 % 2, "c")
        assert info.value.status == 503 and "cannot be written" in str(info.value)
        assert "\n" not in str(info.value)
        with pytest.raises(StorageUnavailable):
            service.revoke(first)
        assert service.match([{"type": "md5", "value": MD5 % 1}])["matched"] is True
        service.store.conn.close()
        service.store.conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        second = service.add("md5", MD5 % 2, "c")["op_id"]
        assert second.endswith("/c/2/0"), second  # seq 2: no phantom head from the failure
        service.revoke(first)
    finally:
        service.close()
    acked = Acked(adds={first: MD5 % 1, second: MD5 % 2}, revoked={first})
    check_database(tmp_path / "ro" / "hashmesh.db", acked, full=True)
