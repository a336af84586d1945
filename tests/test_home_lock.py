"""A node start waits a little for a command that holds its home's lock."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import Cli

from hashmesh.node.config import Home, HomeLock
from hashmesh.testing import ANY_PORT, NodeRun


def test_a_start_waits_for_a_command_holding_the_home_lock(tmp_path: Path, cli: Cli) -> None:
    """An offline CLI command (`peer add`, `trust add`) holds the home's lock for a second
    or two; a node started meanwhile (systemd restarting it, a script) used to exit at once
    with "already in use by a running node". It now waits for the lock, then starts."""
    home = tmp_path / "A"
    cli("init", home, "--name", "A", "--listen", ANY_PORT)
    lock = HomeLock(Home(home))
    assert lock.try_acquire()
    run = NodeRun(home, tmp_path / "a.log")
    try:
        time.sleep(1.0)  # the command's work; the node must still be there after it
        lock.release()
        assert run.wait_ready(timeout=20)
    finally:
        lock.release()
        assert run.stop() == 0
