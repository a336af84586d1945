"""The node harness (hashmesh.testing): a node on 127.0.0.1:0 reports the port it bound,
and the harness believes only the node.json of the process it started."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from conftest import Cli

from hashmesh.node.config import Home
from hashmesh.testing import ANY_PORT, NodeRun, pin_address


def test_port_zero_is_read_back_from_node_json(tmp_path: Path, cli: Cli) -> None:
    home = tmp_path / "A"
    cli("init", home, "--name", "A", "--listen", ANY_PORT)
    run = NodeRun(home, tmp_path / "a.log")
    try:
        api = run.wait_ready()
        runtime = json.loads((home / "node.json").read_text())
        assert runtime["pid"] == run.proc.pid and runtime["api"] == api
        assert run.port != 0
        with socket.create_connection(("127.0.0.1", run.port), timeout=5):
            pass  # the node listens where node.json says
    finally:
        assert run.stop() == 0
    pin_address(home, api)
    config = Home(home).load_config()
    assert (config.listen, config.url) == (f"127.0.0.1:{run.port}", api)
    again = NodeRun(home, tmp_path / "a.log")
    try:
        assert again.wait_ready() == api  # a pinned node keeps its address over a restart
    finally:
        assert again.stop() == 0


def test_a_node_json_left_by_another_process_is_not_taken_for_ready(
    tmp_path: Path, cli: Cli
) -> None:
    """A killed node leaves node.json behind; its address may even answer (here: another
    live node), yet only the file written by the process just started counts."""
    for name in ("A", "B"):
        cli("init", tmp_path / name, "--name", name, "--listen", ANY_PORT)
    b = NodeRun(tmp_path / "B", tmp_path / "b.log")
    try:
        b_api = b.wait_ready()
        (tmp_path / "A" / "node.json").write_text((tmp_path / "B" / "node.json").read_text())
        a = NodeRun(tmp_path / "A", tmp_path / "a.log")
        try:
            a_api = a.wait_ready()
            assert a_api != b_api
            assert json.loads((tmp_path / "A" / "node.json").read_text())["pid"] == a.proc.pid
        finally:
            assert a.stop() == 0
    finally:
        assert b.stop() == 0
