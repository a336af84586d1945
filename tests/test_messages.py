"""Messages a person can act on (issue 16 item 10), read through the real console script and
real node processes: what the operator sees, not what the code raises internally."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import set_config
from netnodes import HASHMESH, NodeProc, wait_for

from hashmesh.protocol.errors import SignatureError
from hashmesh.protocol.names import validate_node_id

MD5 = "5d41402abc4b2a76b9719d911017c592"
PDQ = "d8f8f0cce0f4a84f0e370a22028f67f0b36e2ed596623e1d33e6b39c4e9c9b22"
SHAPE = "a node id is 'ed25519:' followed by 43 base64url characters"


@pytest.mark.parametrize(
    "node_id",
    [
        "ed25519:abc=",  # padded, too short
        "ed25519:" + "A" * 42 + "B",  # 43 characters, stray bits in the last one
        "ed25519:" + "A" * 42 + "*",
        "ed25519:" + "A" * 44,
        "AAAA",
    ],
)
def test_a_malformed_node_id_says_what_a_node_id_looks_like(tmp_path: Path, node_id: str) -> None:
    node = NodeProc(tmp_path, "a")
    result = node.cli("trust", "add", node_id, "csam", check=False)
    assert result.returncode == 2, result
    assert SHAPE in result.stderr and "hashmesh id" in result.stderr, result.stderr
    assert "padding or stray bits" not in result.stderr
    with pytest.raises(SignatureError, match=SHAPE):
        validate_node_id(node_id)


def test_a_valid_node_id_still_passes(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "a")
    assert validate_node_id(node.node_id) == node.node_id


def test_port_in_use_names_the_address_and_what_to_change(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "a")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        set_config(node.home, listen=f"127.0.0.1:{port}")
        result = subprocess.run(
            [HASHMESH, "--home", str(node.home), "run"], capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 2, result
    assert (
        f"hashmesh: cannot listen on 127.0.0.1:{port}: address already in use "
        "(another node or program is using it; change listen in config.toml)"
    ) in result.stderr, result.stderr
    assert "error while attempting to bind" not in result.stderr


def test_a_bad_config_names_the_key_offline(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "a")
    config = node.home / "config.toml"
    config.write_text(config.read_text().replace("batch_size = 5000", 'batch_size = "ten"'))
    result = node.cli("status", check=False)
    assert result.returncode == 2
    assert "publish.batch_size: expected an integer, got 'ten'" in result.stderr, result.stderr


def _api_status(node: NodeProc) -> Any:
    request = urllib.request.Request(
        node.url + "/v1/status", headers={"Authorization": f"Bearer {node.admin_token()}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _log(node: NodeProc) -> str:
    return (node.home / "run.log").read_text()


def test_a_running_node_logs_a_bad_config_once_and_keeps_the_last_good(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "a")
    config = node.home / "config.toml"
    good = config.read_text()
    node.start()
    try:
        config.write_text(good.replace("fanout = 3", 'fanout = "many"'))
        error = "sync.fanout: expected an integer, got 'many'"
        wait_for(lambda: error in _log(node))
        # The node answers with the last good config meanwhile .
        # For three of the node's one-second re-reads it keeps answering with the last good
        # config; a watcher that logged on every re-read would have logged three more times.
        until = time.monotonic() + 3.5
        while time.monotonic() < until:
            assert _api_status(node)["name"] == "a"
            time.sleep(0.25)
        config.write_text(good)
        wait_for(lambda: "is valid again" in _log(node))
        log = _log(node)
        assert log.count(error) == 1, log
        assert "still running with the last good config" in log
    finally:
        node.stop()


def test_match_errors_use_the_cli_words_not_api_fields(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "a")
    for running in (False, True):
        if running:
            node.start()
        try:
            result = node.cli("match", "pdq", "abc", check=False)
            assert result.returncode == 2
            assert result.stderr.strip() == (
                "hashmesh: pdq value: expected 64 hex characters, got 3"
            ), result.stderr
            bad = node.cli("match", "md5", MD5, "--threshold", "99", check=False)
            assert bad.returncode == 2 and bad.stderr.startswith("hashmesh: --threshold: ")
        finally:
            node.stop()


def test_revoke_opinion_and_match_print_readable_sentences(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "a")
    node.start()
    try:
        op = node.cli("add", "pdq", PDQ, "-c", "test", "--category", "csam").stdout.strip()
        out = node.cli("match", "pdq", PDQ).stdout
        lines = out.splitlines()
        assert lines[0] == f"MATCH pdq {PDQ}"
        assert "  distance  0" in lines
        assert "  author    a" in lines
        assert "  in        test (csam)" in lines
        assert "  opinions  confirm=0 dispute=0 seen=0" in lines
        assert f"  op id     {op}" in lines
        assert max(len(line) for line in lines) <= 100, out

        said = node.cli("opinion", op, "dispute").stdout
        assert said.startswith(f"disputed pdq {PDQ} in test (add {op})\nop id: "), said
        gone = node.cli("revoke", op, "--reason", "mistake").stdout
        assert gone.startswith(f"revoked pdq {PDQ} in test (add {op})\nop id: "), gone
    finally:
        node.stop()


def test_revoke_and_opinion_json_only_add_fields(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "a")
    op = node.cli("add", "md5", MD5, "-c", "test").stdout.strip()
    said = node.json("opinion", op, "confirm")
    assert {"op_id", "target", "opinion"} <= said.keys() and said["target"] == op
    assert (said["type"], said["value"], said["collection"]) == ("md5", MD5, "test")
    gone = node.json("revoke", op)
    assert {"op_id", "revoked"} <= gone.keys() and gone["revoked"] == op
    assert (gone["type"], gone["value"], gone["collection"]) == ("md5", MD5, "test")


def test_an_unreachable_plain_http_peer_is_named_without_aiohttp_internals(
    tmp_path: Path,
) -> None:
    a = NodeProc(tmp_path, "a")
    b = NodeProc(tmp_path, "b")  # never started
    closed = socket.socket()  # bound, never listening: a connection to it is refused
    closed.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    a.cli("peer", "add", "b", url, b.node_id, "--share", "test")
    a.start()
    try:

        def last_error() -> str:
            peers = a.status()["peers"]
            return str(peers[0].get("last_error") or "")

        text = wait_for(last_error, timeout=30)
        assert text.startswith(f"cannot reach peer b at {url}: connection refused"), text
        assert "ssl:default" not in text and "Cannot connect to host" not in text
    finally:
        a.stop()
        closed.close()
