"""Bundles: export, verify and import through the CLI; tampering; trust; a crash mid-import."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import struct
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    HASHMESH,
    Cli,
    HomeFactory,
    NodeFactory,
    Result,
    add_ops,
    author_key,
    chain,
    clean_env,
    md5_values,
    write_bundle,
)

from hashmesh.node.config import Home
from hashmesh.protocol.batches import Batch
from hashmesh.protocol.bundles import BUNDLE_MAGIC

MD5 = "5d41402abc4b2a76b9719d911017c592"
SHA256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
PDQ = "d8f8f0cce0f4a84f0e370a22028f67f0b36e2ed596623e1d33e6b39c4e9c9b22"


def node_id(path: Path) -> str:
    return Home(path).load_config().node_id


def refusal(result: Result) -> str:
    assert result.returncode == 2, str(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hashmesh: "), str(result)
    return lines[0]


def bundle_body_offset(data: bytes) -> int:
    """Where the batch frames start (after magic, manifest length and manifest)."""
    (length,) = struct.unpack_from(">I", data, len(BUNDLE_MAGIC))
    return len(BUNDLE_MAGIC) + 4 + length


# -- round trip -----------------------------------------------------------------------------


def test_export_verify_import_round_trip(cli: Cli, home: HomeFactory, tmp_path: Path) -> None:
    a, b = home("A"), home("B")
    op_md5 = cli(
        "add", "md5", MD5, "-c", "shared", "--category", "csam", "--classification", "A1", home=a
    ).stdout.strip()
    cli("add", "pdq", PDQ, "-c", "shared", "--quality", "90", home=a)
    op_sha = cli("add", "sha256", SHA256, "-c", "shared", home=a).stdout.strip()
    cli("revoke", op_sha, "--reason", "mistake", home=a)
    cli("opinion", op_md5, "confirm", home=a)
    cli("add", "md5", "0" * 32, "-c", "elsewhere", home=a)  # not in the exported collection

    bundle = tmp_path / "shared.hmb"
    exported = cli.json("export", "-c", "shared", bundle, home=a)
    assert exported["batches"] == 5 and exported["collection"] == "shared"
    assert not (tmp_path / "shared.hmb.partial").exists()

    checked = cli.json("verify", bundle)
    assert checked["valid"] is True
    assert (checked["batches"], checked["adds"], checked["revokes"], checked["opinions"]) == (
        5,
        3,
        1,
        1,
    )
    (log,) = checked["logs"]
    assert (log["author"], log["collection"], log["head"]) == (node_id(a), "shared", 5)
    assert checked["manifest"]["exporter"] == node_id(a)
    assert "valid bundle: 5 batches" in cli("verify", bundle).stdout

    cli("trust", "add", node_id(a), "shared", "--name", "A", home=b)
    imported = cli.json("import", bundle, home=b)
    assert (imported["batches"], imported["applied"], imported["refused_untrusted"]) == (5, 5, 0)
    info = cli.json("status", home=b)
    assert info["live_signals"] == 2 and info["batches"] == 5
    assert info["live_by_collection"] == {"shared": 2}
    hit = cli.json("match", "md5", MD5, home=b)["results"][0]["matches"][0]
    assert (hit["op_id"], hit["author_name"], hit["classification"]) == (op_md5, "A", "A1")
    assert hit["opinions"]["confirm"] == 1
    cli("match", "sha256", SHA256, home=b, expect=1)  # the revocation travelled too
    cli("match", "pdq", PDQ, home=b, expect=0)
    cli("match", "md5", "0" * 32, home=b, expect=1)  # other collection: not exported

    again = cli.json("import", bundle, home=b)
    assert (again["applied"], again["duplicate"]) == (0, 5)
    assert cli.json("status", home=b)["feed_cursor"] == info["feed_cursor"]

    # B re-exports A's log byte for byte: the signed bytes are kept, never re-serialised.
    relayed = tmp_path / "relayed.hmb"
    cli("export", "-c", "shared", relayed, home=b)
    original, copy = bundle.read_bytes(), relayed.read_bytes()
    assert original[bundle_body_offset(original) :] == copy[bundle_body_offset(copy) :]
    assert cli.json("verify", relayed)["manifest"]["exporter"] == node_id(b)


def test_export_of_a_collection_not_held_writes_nothing(
    cli: Cli, home: HomeFactory, tmp_path: Path
) -> None:
    a = home("A")
    result = cli("export", "-c", "nothing", tmp_path / "e.hmb", home=a, expect=1)
    assert "holds no batches" in result.stderr
    assert not (tmp_path / "e.hmb").exists()


# -- tampering ------------------------------------------------------------------------------


def frame_spans(data: bytes) -> list[tuple[int, int, int]]:
    """(start, header end, end) of each frame in a bundle."""
    spans = []
    pos = bundle_body_offset(data)
    while pos < len(data):
        (header_len,) = struct.unpack_from(">H", data, pos + 4)
        ops_at = pos + 6 + header_len + 64
        (ops_len,) = struct.unpack_from(">I", data, ops_at)
        spans.append((pos, pos + 6 + header_len, ops_at + 4 + ops_len))
        pos = ops_at + 4 + ops_len
    return spans


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def tampered_variants(data: bytes) -> dict[str, bytes]:
    spans = frame_spans(data)
    first, last = spans[0], spans[-1]
    swapped = bytearray(data[: spans[1][0]])
    swapped += data[spans[2][0] : spans[2][2]] + data[spans[1][0] : spans[1][2]]
    swapped += data[spans[2][2] :]
    return {
        "byte flipped in the middle of the last batch's ops": flip(
            data, (last[1] + 64 + 4 + last[2]) // 2
        ),
        "byte flipped in the first batch's header": flip(data, (first[0] + 6 + first[1]) // 2),
        "byte flipped in a signature": flip(data, spans[1][1] + 10),
        "truncated in the middle of the last batch": data[: (last[0] + last[2]) // 2],
        "truncated in the manifest": data[: bundle_body_offset(data) - 3],
        "garbage appended": data + b"garbage",
        "a long run of garbage appended": data + b"\x00" * 200,
        "magic changed": b"HMBUNDLF" + data[len(BUNDLE_MAGIC) :],
        "two batches swapped": bytes(swapped),
        "a batch repeated": data + data[last[0] : last[2]],
        "empty file": b"",
    }


@pytest.fixture
def signed_bundle(tmp_path: Path) -> tuple[bytes, str]:
    """A 4-batch bundle of a test author: adds, then a revoke in the last batch."""
    key = author_key(5)
    values = md5_values(12, salt=5)
    batches = chain(key, "t", [add_ops(values[i * 4 : i * 4 + 4]) for i in range(3)])
    revoke = [{"op": "revoke", "targets": [str(batches[0].op_id(0))]}, *add_ops(["f" * 32])]
    batches += chain(key, "t", [revoke], first_seq=4, prev=batches[-1].hash)
    path = write_bundle(tmp_path / "signed.hmb", batches, "t")
    return path.read_bytes(), key.node_id


@pytest.mark.slow
def test_tampered_bundles_are_refused_by_verify_and_import(
    cli: Cli, home: HomeFactory, tmp_path: Path, signed_bundle: tuple[bytes, str]
) -> None:
    data, author = signed_bundle
    target = home("T")
    cli("trust", "add", author, "t", home=target)
    before = cli.json("status", home=target)
    for name, bad in tampered_variants(data).items():
        path = tmp_path / "bad.hmb"
        path.write_bytes(bad)
        message = refusal(cli("verify", path, expect=None))
        assert "bad.hmb" in message or "bundle" in message, (name, message)
        message = refusal(cli("import", path, home=target, expect=None))
        assert "nothing imported" in message, (name, message)
        assert cli.json("status", home=target) == before, name
    # Control: the untouched bundle verifies and imports into the same home.
    good = tmp_path / "good.hmb"
    good.write_bytes(data)
    assert cli.json("verify", good)["batches"] == 4
    imported = cli.json("import", good, home=target)
    assert imported["applied"] == 4
    assert cli.json("status", home=target)["live_signals"] == 12


def test_a_tampered_bundle_is_refused_by_a_running_node(
    cli: Cli,
    home: HomeFactory,
    start_node: NodeFactory,
    tmp_path: Path,
    signed_bundle: tuple[bytes, str],
) -> None:
    data, author = signed_bundle
    target = home("T")
    cli("trust", "add", author, "t", home=target)
    start_node(target)
    before = cli.json("status", home=target)
    variants = tampered_variants(data)
    for name in ("byte flipped in the middle of the last batch's ops", "garbage appended"):
        path = tmp_path / "bad.hmb"
        path.write_bytes(variants[name])
        message = refusal(cli("import", path, home=target, expect=None))
        assert "nothing imported" in message, (name, message)
    assert cli.json("status", home=target) == before
    good = tmp_path / "good.hmb"
    good.write_bytes(data)
    assert cli.json("import", good, home=target)["applied"] == 4
    assert cli.json("status", home=target)["live_signals"] == 12


# -- trust -----------------------------------------------------------------------------------


def test_logs_of_untrusted_authors_are_skipped_with_a_message(
    cli: Cli, home: HomeFactory, tmp_path: Path
) -> None:
    a, b, c = home("A"), home("B"), home("C")
    cli("add", "md5", MD5, "-c", "shared", home=b)
    cli("export", "-c", "shared", tmp_path / "b.hmb", home=b)
    cli("trust", "add", node_id(b), "shared", home=a)
    cli("import", tmp_path / "b.hmb", home=a)
    cli("add", "sha256", SHA256, "-c", "shared", home=a)
    cli("export", "-c", "shared", tmp_path / "ab.hmb", home=a)  # A's log and B's log
    assert len(cli.json("verify", tmp_path / "ab.hmb")["logs"]) == 2

    before = cli.json("status", home=c)
    result = cli("import", tmp_path / "ab.hmb", "--json", home=c, expect=1)
    assert result.json()["refused_untrusted"] == 2 and result.json()["applied"] == 0
    assert "not trusted" in result.stderr
    assert f"{node_id(a)}/shared" in result.stderr and f"{node_id(b)}/shared" in result.stderr
    assert cli.json("status", home=c) == before

    # Trust in another collection does not count; trusting A lets A's log in, B's still out.
    cli("trust", "add", node_id(a), "other", home=c)
    assert cli.json("import", tmp_path / "ab.hmb", home=c, expect=1)["applied"] == 0
    cli("trust", "add", node_id(a), "shared", home=c)
    result = cli("import", tmp_path / "ab.hmb", "--json", home=c)
    assert (result.json()["applied"], result.json()["refused_untrusted"]) == (1, 1)
    assert f"{node_id(b)}/shared" in result.stderr and node_id(a) not in result.stderr
    cli("match", "sha256", SHA256, home=c, expect=0)
    cli("match", "md5", MD5, home=c, expect=1)


# -- a crash in the middle of a large import --------------------------------------------------

CRASH_SIGNALS = 200_000
CRASH_BATCH = 5_000


@pytest.fixture(scope="module")
def large_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    key = author_key(9)
    path = tmp_path_factory.mktemp("large") / "large.hmb"
    batches: list[Batch] = []
    prev: bytes | None = None
    for seq in range(1, CRASH_SIGNALS // CRASH_BATCH + 1):
        (batch,) = chain(key, "bulk", [add_ops(md5_values(CRASH_BATCH, salt=seq))], seq, prev)
        batches.append(batch)
        prev = batch.hash
    write_bundle(path, batches, "bulk")
    return path, key.node_id, len(batches)


def check_database(db_path: Path) -> dict[str, int]:
    """The crash invariants: an intact file, and each batch whole or absent."""
    db = sqlite3.connect(db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        # (Grouped in Python: probing `batches` per signal reads its big rows every time.)
        batches = {
            (log_id, seq): op_count
            for log_id, seq, op_count in db.execute("SELECT log_id, seq, op_count FROM batches")
        }
        groups = {
            (log_id, seq): count
            for log_id, seq, count in db.execute(
                "SELECT log_id, seq, count(*) FROM signals GROUP BY log_id, seq"
            )
        }
        orphans = set(groups) - set(batches)
        assert not orphans, f"signals without their batch: {sorted(orphans)}"
        for place, op_count in batches.items():
            assert groups.get(place, 0) == op_count, f"batch {place}: {groups.get(place)} signals"
        signals = db.execute("SELECT count(*) FROM signals").fetchone()[0]
        feed = db.execute("SELECT count(*) FROM feed WHERE kind = 'add'").fetchone()[0]
        assert feed == signals, "feed entries and signals disagree"
        for log_id, head, adds in db.execute("SELECT id, head, adds FROM logs"):
            seqs = [
                r[0]
                for r in db.execute(
                    "SELECT seq FROM batches WHERE log_id = ? ORDER BY seq", (log_id,)
                )
            ]
            assert seqs == list(range(1, head + 1)), f"log {log_id}: head {head}, seqs {seqs}"
            count = db.execute("SELECT count(*) FROM signals WHERE log_id = ?", (log_id,))
            assert count.fetchone()[0] == adds
        return {"batches": len(batches), "signals": signals}
    finally:
        db.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return float("inf")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_import(home: Path, bundle: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [HASHMESH, "--home", str(home), "import", str(bundle), "--json"],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.slow
def test_sigkill_during_a_large_import_loses_nothing_and_leaves_no_half_batch(
    cli: Cli, home: HomeFactory, large_bundle: tuple[Path, str, int]
) -> None:
    bundle, author, batch_count = large_bundle
    # How much CPU a whole import takes, to aim the kills inside it (CPU time, unlike wall
    # time, hardly depends on what else the machine is doing).
    reference = home("R")
    cli("trust", "add", author, "bulk", home=reference)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = run_import(reference, bundle)
    _, err = proc.communicate(timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert proc.returncode == 0, err
    assert check_database(reference / "hashmesh.db") == {
        "batches": batch_count,
        "signals": CRASH_SIGNALS,
    }

    path = home("H")
    cli("add", "md5", MD5, "-c", "local", home=path)  # acknowledged before the crashes
    cli("trust", "add", author, "bulk", home=path)
    seen: list[dict[str, int]] = []
    for fraction in (0.1, 0.25, 0.4):  # later imports can take far less CPU than the reference
        proc = run_import(path, bundle)
        while proc.poll() is None and cpu_seconds(proc.pid) < cpu * fraction:
            time.sleep(0.005)
        assert proc.poll() is None, "the import ended before the kill; nothing was tested"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        state = check_database(path / "hashmesh.db")
        seen.append(state)
        assert state["batches"] in (1, 1 + batch_count), state  # all or nothing, plus ours
        info = cli.json("status", home=path)  # the CLI opens (and checks) the store again
        cli("match", "md5", MD5, home=path, expect=0)
        assert info["live_by_collection"].get("local") == 1

    proc = run_import(path, bundle)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert check_database(path / "hashmesh.db") == {
        "batches": 1 + batch_count,
        "signals": 1 + CRASH_SIGNALS,
    }
    info = cli.json("status", home=path)
    assert info["live_by_collection"] == {"bulk": CRASH_SIGNALS, "local": 1}
    (bulk_log,) = [log for log in info["logs"] if log["collection"] == "bulk"]
    assert bulk_log["head"] == batch_count
    cli("match", "md5", md5_values(1, salt=batch_count)[0], home=path, expect=0)
