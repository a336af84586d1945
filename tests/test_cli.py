"""The `hashmesh` command line, through the installed console script, offline and online.

"offline": no node runs, the CLI works on the store directly. "online": `hashmesh run` runs
the node and the same commands go through its local HTTP API. The contract says either way
the result is the same, so most tests run in both modes and one compares them directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import stat
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, HomeFactory, NodeFactory, NodeProcess, Result
from testdata import IMAGES

MD5 = "5d41402abc4b2a76b9719d911017c592"
MD5_B = "0cc175b9c0f1b6a831c399e269772661"
SHA256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
PDQ = "d8f8f0cce0f4a84f0e370a22028f67f0b36e2ed596623e1d33e6b39c4e9c9b22"
BRIDGE = IMAGES / "bridge-1-original.jpg"
BRIDGE_MODS = IMAGES.parent / "bridge-mods"


@dataclass
class Node:
    path: Path
    online: bool
    process: NodeProcess | None = None


@pytest.fixture(params=["offline", "online"])
def node(request: pytest.FixtureRequest, home: HomeFactory, start_node: NodeFactory) -> Node:
    path = home("A")
    if request.param == "online":
        return Node(path, True, start_node(path))
    return Node(path, False)


@pytest.fixture
def online(home: HomeFactory, start_node: NodeFactory) -> Node:
    """A running node (for tests whose offline side the equivalence test covers)."""
    path = home("A")
    return Node(path, True, start_node(path))


def node_id(path: Path) -> str:
    return str(tomllib.loads((path / "config.toml").read_text())["node_id"])


def one_sentence_error(result: Result) -> str:
    """The contract for a refusal: exit 2, nothing on stdout, one line on stderr."""
    assert result.returncode == 2, str(result)
    assert result.stdout == "", str(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, str(result)
    assert lines[0].startswith("hashmesh: ") and "Traceback" not in result.stderr
    return lines[0]


def status(cli: Cli, path: Path) -> dict[str, Any]:
    data: dict[str, Any] = cli.json("status", home=path)
    return data


def refused(cli: Cli, path: Path, *args: str | Path) -> str:
    """Run a command that must be refused: exit 2, one sentence, the database unchanged."""
    before = status(cli, path)
    message = one_sentence_error(cli(*args, home=path, expect=None))
    assert status(cli, path) == before, f"{args} changed the node"
    return message


# -- init, id, home, key -------------------------------------------------------------------


def test_init_creates_a_home_and_id_prints_its_node_id(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "org"
    result = cli(
        "init", path, "--name", "Org", "--listen", "127.0.0.1:7999", "--url", "https://org.example"
    )
    printed = result.stdout.strip()
    assert re.fullmatch(r"ed25519:[A-Za-z0-9_-]{43}", printed)
    assert cli("id", home=path).stdout.strip() == printed
    assert cli.json("id", home=path) == {"node_id": printed, "name": "Org"}
    for name in ("node.key", "admin.token", "config.toml", "hashmesh.db"):
        assert (path / name).exists(), name
    for secret in ("node.key", "admin.token"):
        assert stat.S_IMODE((path / secret).stat().st_mode) == 0o600, secret
    info = status(cli, path)
    assert (info["node_id"], info["name"]) == (printed, "Org")
    assert (info["listen"], info["url"]) == ("127.0.0.1:7999", "https://org.example")
    assert (info["live_signals"], info["batches"], info["running"]) == (0, 0, False)
    json_init = cli.json("init", tmp_path / "other", "--name", "Other")
    assert json_init["name"] == "Other" and json_init["node_id"] != printed


def test_init_on_an_existing_home_refuses_and_keeps_the_key(cli: Cli, home: HomeFactory) -> None:
    path = home("A")
    key = (path / "node.key").read_bytes()
    config = (path / "config.toml").read_bytes()
    message = one_sentence_error(cli("init", path, "--name", "Again", expect=None))
    assert "refusing to overwrite" in message
    assert (path / "node.key").read_bytes() == key
    assert (path / "config.toml").read_bytes() == config
    # Even when only the key is left (the config was lost), the key is never replaced.
    (path / "config.toml").unlink()
    one_sentence_error(cli("init", path, "--name", "Again", expect=None))
    assert (path / "node.key").read_bytes() == key


def test_init_refuses_bad_arguments(cli: Cli, tmp_path: Path) -> None:
    one_sentence_error(cli("init", tmp_path / "x", "--name", "X", "--listen", "nope", expect=None))
    one_sentence_error(cli("init", tmp_path / "y", "--name", "Y", "--url", "ftp://y", expect=None))
    assert not (tmp_path / "x" / "node.key").exists()
    assert not (tmp_path / "y" / "node.key").exists()


def test_hashmesh_home_environment_variable(cli: Cli, home: HomeFactory) -> None:
    path = home("A")
    env = {"HASHMESH_HOME": str(path)}
    assert cli("id", env=env).stdout.strip() == node_id(path)
    op = cli("add", "md5", MD5, "-c", "test", env=env).stdout.strip()
    assert cli("status", "--json", env=env).json()["live_signals"] == 1
    assert (
        cli("match", "md5", MD5, "--json", env=env).json()["results"][0]["matches"][0]["op_id"]
        == op
    )
    # --home wins over the environment.
    other = home("B")
    assert cli("id", home=other, env=env).stdout.strip() == node_id(other)


def test_no_home_is_a_clear_error(cli: Cli) -> None:
    message = one_sentence_error(cli("status", expect=None))
    assert "--home" in message and "HASHMESH_HOME" in message


def test_a_key_readable_by_others_is_refused(
    cli: Cli, home: HomeFactory, start_node: NodeFactory
) -> None:
    path = home("A")
    cli("add", "md5", MD5, "-c", "test", home=path)
    before = status(cli, path)
    key = path / "node.key"
    os.chmod(key, 0o644)
    for args in (("status",), ("add", "md5", MD5_B, "-c", "test"), ("run",)):
        message = one_sentence_error(cli(*args, home=path, expect=None, timeout=30))
        assert "readable by others" in message and "chmod 600" in message, message
    assert not (path / "node.json").exists()
    os.chmod(key, 0o600)
    assert status(cli, path) == before
    # The admin token gets the same treatment once a node runs.
    start_node(path)
    os.chmod(path / "admin.token", 0o640)
    message = one_sentence_error(cli("status", home=path, expect=None))
    assert "readable by others" in message
    os.chmod(path / "admin.token", 0o600)
    assert status(cli, path)["running"] is True


# -- publishing, matching, revoking --------------------------------------------------------


def test_add_match_revoke_and_exit_codes(cli: Cli, node: Node) -> None:
    path = node.path
    me = node_id(path)
    added = cli.json(
        "add",
        "md5",
        MD5.upper(),
        "-c",
        "test",
        "--category",
        "csam",
        "--classification",
        "A1",
        "--ref",
        "case-17",
        home=path,
    )
    assert added["new"] is True and added["value"] == MD5  # normalised
    op_id = added["op_id"]
    assert op_id.startswith(f"{me}/test/")
    assert cli("add", "md5", MD5, "-c", "test", home=path).stdout.strip() == op_id  # plain

    # Adding a live signal again returns the same op and publishes nothing.
    batches = status(cli, path)["batches"]
    again = cli.json("add", "md5", f"  {MD5} ", "-c", "test", home=path)
    assert (again["op_id"], again["new"]) == (op_id, False)
    assert status(cli, path)["batches"] == batches

    found = cli("match", "md5", MD5, "--json", home=path, expect=0).json()
    assert found["matched"] is True
    (hit,) = found["results"][0]["matches"]
    assert hit["op_id"] == op_id and hit["author"] == me and hit["author_name"] == "A"
    assert (hit["category"], hit["classification"], hit["ref"]) == ("csam", "A1", "case-17")
    assert (hit["distance"], hit["live"], hit["collection"]) == (0, True, "test")
    assert hit["opinions"] == {"confirm": 0, "dispute": 0, "seen": 0}
    human = cli("match", "md5", MD5, home=path, expect=0).stdout
    assert "MATCH" in human and op_id in human

    missing = cli("match", "md5", MD5_B, "--json", home=path, expect=1).json()
    assert missing["matched"] is False and missing["results"][0]["matches"] == []
    assert "no match" in cli("match", "md5", MD5_B, home=path, expect=1).stdout
    one_sentence_error(cli("match", "md5", "xyz", home=path, expect=None))
    one_sentence_error(cli("match", "md5", home=path, expect=None))

    revoked = cli.json("revoke", op_id, "--reason", "false positive", home=path)
    assert revoked["revoked"] == op_id
    assert revoked["op_id"].startswith(f"{me}/test/")
    cli("match", "md5", MD5, home=path, expect=1)
    info = status(cli, path)
    assert info["live_signals"] == 0
    assert [(log["adds"], log["live"]) for log in info["logs"]] == [(1, 0)]
    assert "already revoked" in refused(cli, path, "revoke", op_id)

    # Observed-remove: adding the same signal again makes it live under a new op id.
    new = cli.json("add", "md5", MD5, "-c", "test", home=path)
    assert new["new"] is True and new["op_id"] != op_id
    assert (
        cli("match", "md5", MD5, "--json", home=path, expect=0).json()["results"][0]["matches"][0][
            "op_id"
        ]
        == new["op_id"]
    )


def test_status_reports_logs_and_counts(cli: Cli, node: Node) -> None:
    path = node.path
    cli("add", "md5", MD5, "-c", "one", home=path)
    cli("add", "sha256", SHA256, "-c", "two", home=path)
    cli("add", "pdq", PDQ, "-c", "two", "--quality", "90", home=path)
    info = status(cli, path)
    assert info["running"] is node.online
    assert info["live_signals"] == 3
    assert info["live_by_collection"] == {"one": 1, "two": 2}
    assert info["feed_cursor"] == 3
    assert [(log["collection"], log["live"], log["forked"]) for log in info["logs"]] == [
        ("one", 1, False),
        ("two", 2, False),
    ]
    assert info["forks"] == [] and info["pending_batches"] == 0
    text = cli("status", home=path).stdout
    assert node_id(path) in text and "3 live" in text
    assert ("yes" if node.online else "no") in text.splitlines()[1]


BAD_INPUTS: list[tuple[tuple[str, ...], str]] = [
    (("add", "md5", "not-a-hash", "-c", "test"), "expected 32 hex characters"),
    (("add", "md5", "z" * 32, "-c", "test"), "not a hex digit"),
    (("add", "pdq", "a" * 32, "-c", "test"), "expected 64 hex characters, got 32"),
    (("add", "sha256", "", "-c", "test"), "empty"),
    (("add", "nosuchtype", MD5, "-c", "test"), "unknown type"),
    (("add", "md5", MD5, "-c", "Not A Collection"), "collection"),
    (("add", "md5", MD5, "-c", "test", "--category", "Bad Category"), "category"),
    (("add", "pdq", PDQ, "-c", "test", "--quality", "20"), "below the publishing minimum"),
    (("add", "pdq", PDQ, "-c", "test", "--quality", "101"), "quality"),
    (("add", "md5", MD5, "-c", "test", "--quality", "90"), "only pdq signals"),
    (("revoke", "not-an-op-id"), "AUTHOR/COLLECTION/SEQ/INDEX"),
    (("revoke", "{me}/test/99/0"), "no add with this id"),
    (("revoke", "{me}/test/1/7"), "no add with this id"),
    (("opinion", "{me}/test/99/0", "confirm"), "no add with this id"),
    (("revoke", "{theirs}", "--reason", "mine now"), "only its author can revoke it"),
    (("match", "pdq", "a" * 32), "expected 64 hex characters"),
    (("match", "nosuchtype", MD5), "unknown type"),
    (("trust", "add", "ed25519:nope", "test"), "node id"),
    (("peer", "add", "p", "ftp://x", "ed25519:nope"), "url"),
]


def test_bad_input_is_refused_and_changes_nothing(
    cli: Cli, node: Node, home: HomeFactory, tmp_path: Path
) -> None:
    path = node.path
    mine = cli("add", "md5", MD5_B, "-c", "test", home=path).stdout.strip()
    # Another author's add, received through a bundle from a trusted node.
    other = home("B")
    theirs = cli("add", "md5", MD5, "-c", "test", home=other).stdout.strip()
    cli("export", "-c", "test", tmp_path / "b.hmb", home=other)
    cli("trust", "add", node_id(other), "test", "--name", "B", home=path)
    assert cli.json("import", tmp_path / "b.hmb", home=path)["applied"] == 1
    hit = cli.json("match", "md5", MD5, home=path)["results"][0]["matches"][0]
    assert (hit["op_id"], hit["author_name"]) == (theirs, "B")

    before = status(cli, path)
    for args, expected in BAD_INPUTS:
        argv = [a.replace("{me}", node_id(path)).replace("{theirs}", theirs) for a in args]
        message = one_sentence_error(cli(*argv, home=path, expect=None))
        assert expected in message, (argv, message)
    assert status(cli, path) == before
    cli("match", "md5", MD5, home=path, expect=0)
    cli("match", "md5", MD5_B, home=path, expect=0)
    assert mine.endswith("/test/1/0")


# -- opinions ------------------------------------------------------------------------------


def test_opinions_are_aggregated_in_match(
    cli: Cli, online: Node, home: HomeFactory, tmp_path: Path
) -> None:
    a = online.path
    b = home("B")
    op_id = cli("add", "md5", MD5, "-c", "shared", home=a).stdout.strip()
    cli("export", "-c", "shared", tmp_path / "a.hmb", home=a)
    cli("trust", "add", node_id(a), "shared", home=b)
    cli("import", tmp_path / "a.hmb", home=b)
    disputed = cli.json("opinion", op_id, "dispute", home=b)
    assert disputed["target"] == op_id and disputed["opinion"] == "dispute"
    cli("opinion", op_id, "seen", home=b)
    cli("export", "-c", "shared", tmp_path / "b.hmb", home=b)

    cli("trust", "add", node_id(b), "shared", "--name", "B", home=a)
    cli("import", tmp_path / "b.hmb", home=a)
    cli("opinion", op_id, "confirm", home=a)
    cli("opinion", op_id, "confirm", home=a)  # the same author counts once

    def opinions() -> dict[str, int]:
        result = cli("match", "md5", MD5, "--json", home=a, expect=0).json()
        counts: dict[str, int] = result["results"][0]["matches"][0]["opinions"]
        return counts

    assert opinions() == {"confirm": 1, "dispute": 1, "seen": 1}
    human = cli("match", "md5", MD5, home=a, expect=0).stdout
    assert "confirm=1 dispute=1 seen=1" in human
    cli("opinion", op_id, "retract", home=a)
    assert opinions() == {"confirm": 0, "dispute": 1, "seen": 1}
    # An opinion never deletes: the disputed signal still matches.
    assert status(cli, a)["live_signals"] == 1


# -- hashing and submitting real images -----------------------------------------------------


def test_hash_prints_digests_and_pdq_of_real_images(cli: Cli) -> None:
    files = [BRIDGE, IMAGES / "c.png", IMAGES / "q0003.jpg"]
    result = cli.json("hash", *files)
    expected = dict(
        line.split(",") for line in (IMAGES.parent / "expected.csv").read_text().splitlines()[1:]
    )
    assert [r["file"] for r in result] == [str(f) for f in files]
    for row, path in zip(result, files, strict=True):
        data = path.read_bytes()
        assert row["md5"] == hashlib.md5(data).hexdigest()
        assert row["sha1"] == hashlib.sha1(data).hexdigest()
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert re.fullmatch(r"[0-9a-f]{64}", row["pdq"]) and 0 <= row["quality"] <= 100
        distance = bin(int(row["pdq"], 16) ^ int(expected[path.name], 16)).count("1")
        assert distance <= 16, (path.name, distance)
    assert result[0]["quality"] >= 50 and result[2]["quality"] < 50
    human = cli("hash", BRIDGE).stdout
    assert result[0]["pdq"] in human and result[0]["md5"] in human


def test_hash_of_a_file_that_is_neither_picture_nor_video_is_refused(
    cli: Cli, tmp_path: Path
) -> None:
    """Exit 2 and nothing on stdout (issue 20): its md5 alone would read as a hashed picture."""
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a picture at all")
    result = cli("hash", junk, "--json", expect=2)
    assert result.stdout == ""
    assert "junk.jpg: neither a picture nor a video that can be decoded" in result.stderr
    missing = cli("hash", tmp_path / "missing.jpg", expect=2)  # click's usage error
    assert "does not exist" in missing.stderr and missing.stdout == ""


def test_submit_publishes_hashes_and_match_file_finds_near_duplicates(
    cli: Cli, online: Node
) -> None:
    path = online.path
    low = IMAGES / "q0003.jpg"
    result = cli(
        "submit",
        BRIDGE,
        IMAGES / "q0122.jpg",
        low,
        "-c",
        "csam",
        "--category",
        "csam",
        "--json",
        home=path,
    )
    data = result.json()
    assert "q0003.jpg" in result.stderr and "quality" in result.stderr
    assert data["pdq_skipped_low_quality"] == [str(low)]
    kinds = [(s["type"], s["new"]) for s in data["signals"]]
    assert kinds == [("md5", True), ("sha256", True), ("pdq", True)] * 2 + [
        ("md5", True),
        ("sha256", True),
    ]
    assert data["published"] == 8
    assert len({s["op_id"] for s in data["signals"]}) == 8
    assert status(cli, path)["live_signals"] == 8
    # The submitted pictures themselves are nowhere in the home.
    picture = BRIDGE.read_bytes()[1000:1064]
    assert all(picture not in f.read_bytes() for f in path.iterdir() if f.is_file())

    # Submitting the same file again publishes nothing new.
    again = cli.json("submit", BRIDGE, "-c", "csam", home=path)
    assert again["published"] == 0 and all(not s["new"] for s in again["signals"])

    exact = cli("match", "--file", BRIDGE, "--json", home=path, expect=0).json()
    assert [len(r["matches"]) for r in exact["results"]] == [1, 1, 1]
    blurred = cli(
        "match", "--file", BRIDGE_MODS / "blur-a-lot.jpg", "--json", home=path, expect=0
    ).json()
    by_type = {r["query"]["type"]: r["matches"] for r in blurred["results"]}
    assert by_type["md5"] == [] and by_type["sha256"] == []
    (near,) = by_type["pdq"]
    assert 0 < near["distance"] <= 31 and near["category"] == "csam"
    cli("match", "--file", IMAGES / "q1050.jpg", home=path, expect=1)
    one_sentence_error(cli("match", "--file", BRIDGE, "md5", MD5, home=path, expect=None))


# -- the same commands give the same results offline and online ------------------------------


VOLATILE = {
    "head_hash",
    "head_ts",
    "updated_at",
    "home",
    "api",
    "running",
    "listen",
    "url",
    "created",
    "file",
    "found_at",
}


def normalise(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        out = {k: normalise(v, ids) for k, v in value.items() if k not in VOLATILE}
        if isinstance(out.get("logs"), list):  # ordered by node id, and the ids are random
            out["logs"].sort(key=lambda log: json.dumps(log, sort_keys=True))
        return out
    if isinstance(value, list | tuple):
        return [normalise(v, ids) for v in value]
    if isinstance(value, str):
        for real, alias in ids.items():
            value = value.replace(real, alias)
        return value
    return value


def covers(big: Any, small: Any) -> bool:
    """`big` equals `small` except that its objects may hold extra keys."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            k in big and covers(big[k], v) for k, v in small.items()
        )
    if isinstance(small, list):
        return (
            isinstance(big, list)
            and len(big) == len(small)
            and all(covers(b, s) for b, s in zip(big, small, strict=True))
        )
    return bool(big == small)


def scenario(cli: Cli, path: Path, peer: Path, work: Path) -> list[Any]:
    """Every publishing and reading command, recording (exit code, JSON or stderr)."""
    out: list[Any] = []

    def run(*args: str | Path, as_json: bool = True) -> Result:
        result = cli(*args, *(["--json"] if as_json else []), home=path, expect=None)
        if result.returncode == 2:
            out.append((2, result.stderr))
        elif as_json:
            out.append((result.returncode, result.json()))
        else:
            out.append((result.returncode, result.stdout))
        return result

    op1 = run("add", "md5", MD5, "-c", "test", "--category", "csam").json()["op_id"]
    run("add", "pdq", PDQ, "-c", "test", "--quality", "88")
    run("add", "sha256", SHA256, "-c", "other")
    run("add", "md5", MD5, "-c", "test")
    run("add", "md5", "xyz", "-c", "test")
    run("submit", BRIDGE, IMAGES / "wee.jpg", "-c", "test")
    run("match", "md5", MD5)
    run("match", "pdq", PDQ[:-2] + "00")
    run("match", "md5", MD5_B)
    run("match", "--file", BRIDGE_MODS / "sharpen-a-lot.jpg")
    run("opinion", op1, "seen")
    run("opinion", op1, "confirm")
    run("revoke", op1, "--reason", "oops")
    run("revoke", op1)
    run("match", "md5", MD5)
    run("trust", "add", node_id(peer), "test", "--name", "Peer")
    run("peer", "add", "peer", "http://127.0.0.1:9", node_id(peer), "--share", "test")
    run("import", work / "peer.hmb")
    run("match", "sha1", "a" * 40)
    run("export", "-c", "test", work / f"{path.name}.hmb")
    out.append(cli.json("verify", work / f"{path.name}.hmb"))
    run("status")
    return out


@pytest.mark.slow
def test_offline_and_online_give_the_same_results(
    cli: Cli, home: HomeFactory, start_node: NodeFactory, tmp_path: Path
) -> None:
    peer = home("P")
    cli("add", "sha1", "a" * 40, "-c", "test", home=peer)
    cli("export", "-c", "test", tmp_path / "peer.hmb", home=peer)
    offline, online = home("OFF"), home("ON")
    start_node(online)
    results = {}
    for path in (offline, online):
        ids = {node_id(path): "<self>", node_id(peer): "<peer>", path.name: "<home>"}
        results[path.name] = normalise(scenario(cli, path, peer, tmp_path), ids)
    assert results["OFF"][-1][1]["live_signals"] == 8
    assert len(results["OFF"]) == len(results["ON"])
    for n, (a, b) in enumerate(zip(results["OFF"], results["ON"], strict=True)):
        # The running node may say more (sync state of its peers), never something else.
        assert covers(b, a), f"step {n} differs:\noffline {a}\nonline  {b}"
    assert (tmp_path / "OFF.hmb").read_bytes()[:8] == b"HMBUNDLE"


# -- the running node -----------------------------------------------------------------------


def test_run_refuses_a_second_node_on_the_same_home(
    cli: Cli, home: HomeFactory, start_node: NodeFactory
) -> None:
    path = home("A")
    start_node(path)
    message = one_sentence_error(cli("run", home=path, expect=None, timeout=30))
    assert "in use" in message


def test_a_change_through_the_running_node_is_seen_offline_after_stop(
    cli: Cli, home: HomeFactory, start_node: NodeFactory
) -> None:
    path = home("A")
    node = start_node(path)
    op_id = cli("add", "md5", MD5, "-c", "test", home=path).stdout.strip()
    assert node.stop() == 0
    assert not (path / "node.json").exists()
    info = status(cli, path)
    assert info["running"] is False and info["live_signals"] == 1
    assert cli.json("match", "md5", MD5, home=path)["results"][0]["matches"][0]["op_id"] == op_id


def test_an_acknowledged_add_survives_sigkill(
    cli: Cli, home: HomeFactory, start_node: NodeFactory
) -> None:
    path = home("A")
    node = start_node(path)
    acknowledged = [
        node.call("POST", "/v1/signals", {"type": "md5", "value": f"{n:032x}", "collection": "t"})
        for n in range(5)
    ]
    node.proc.send_signal(signal.SIGKILL)
    node.proc.wait(timeout=10)
    with sqlite3.connect(path / "hashmesh.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for ack in acknowledged:
        found = cli.json("match", "md5", ack["value"], home=path)
        assert [m["op_id"] for m in found["results"][0]["matches"]] == [ack["op_id"]]
    # The node starts again over the stale node.json and stops cleanly.
    again = start_node(path)
    assert again.call("GET", "/v1/status")["live_signals"] == 5


def test_a_single_add_is_published_within_a_second(
    home: HomeFactory, start_node: NodeFactory
) -> None:
    node = start_node(home("A"))
    for n in range(3):
        started = time.monotonic()
        result = node.call(
            "POST", "/v1/signals", {"type": "md5", "value": f"{n:032x}", "collection": "t"}
        )
        elapsed = time.monotonic() - started
        assert result["new"] is True
        assert elapsed < 1.0, elapsed
    assert node.call("GET", "/v1/status")["live_signals"] == 3


def test_concurrent_single_adds_coalesce_into_few_batches(
    cli: Cli, home: HomeFactory, start_node: NodeFactory
) -> None:
    path = home("A")
    node = start_node(path)
    count = 40
    results: list[Any] = [None] * count
    gate = threading.Barrier(count)

    def add(n: int) -> None:
        gate.wait()
        results[n] = node.call(
            "POST", "/v1/signals", {"type": "md5", "value": f"{n:032x}", "collection": "t"}
        )

    threads = [threading.Thread(target=add, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None and r["new"] for r in results)
    op_ids = [r["op_id"] for r in results]
    assert len(set(op_ids)) == count
    info = status(cli, path)
    assert info["live_signals"] == count
    assert info["batches"] < count // 4, info["batches"]
    seqs = {op.split("/")[2] for op in op_ids}
    assert len(seqs) == info["batches"]
