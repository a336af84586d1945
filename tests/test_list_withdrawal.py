"""Withdrawing a whole list between real nodes: `import-list` publishes N hashes, a later
StopNCII page withdraws them all, and the peer that had matched every one matches none.

An op holds at most 2,048 bytes, so about 28 op ids: the withdrawal must be cut into many
revoke ops (and batches small enough by bytes), where it once failed as a whole above ~30.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import http
from netnodes import NodeProc, wait_for


def values(count: int) -> list[str]:
    return [hashlib.md5(f"withdrawal {i}".encode()).hexdigest() for i in range(count)]


def write_lists(root: Path, hashes: list[str]) -> tuple[Path, Path]:
    published = root / "published.txt"
    published.write_text("".join(f"video_md5 {v}\n" for v in hashes))
    withdrawn = root / "withdrawn.jsonl"
    with withdrawn.open("w") as out:
        for start in range(0, len(hashes), 1000):
            page = [
                {"hashValue": v, "hashStatus": "Withdrawn", "signalType": "VideoMD5"}
                for v in hashes[start : start + 1000]
            ]
            out.write(json.dumps({"hashRecords": page}) + "\n")
    return published, withdrawn


def matched(node: NodeProc, hashes: list[str]) -> int:
    """How many of `hashes` the node matches now, asked 1,000 at a time over its API."""
    count = 0
    for start in range(0, len(hashes), 1000):
        queries = [{"type": "md5", "value": v} for v in hashes[start : start + 1000]]
        answer: Any = http(
            "POST", node.url + "/v1/match", {"queries": queries}, node.admin_token(), timeout=60
        )
        count += sum(1 for r in answer["results"] if r["matches"])
    return count


def live_on(node: NodeProc) -> int:
    return int(node.status()["live_signals"])


def withdraw_between_nodes(root: Path, count: int, made: list[NodeProc]) -> None:
    a, b = NodeProc(root, "hotline"), NodeProc(root, "platform")
    made += [a, b]
    a.peer(b, "csam")
    b.peer(a, "csam")
    b.trust(a, "csam")
    a.start()
    b.start()
    hashes = values(count)
    published, withdrawn = write_lists(root, hashes)

    first = json.loads(a.cli("import-list", "pytx", str(published), "-c", "csam", "--json").stdout)
    assert first["published"] == count
    wait_for(lambda: live_on(b) == count, timeout=120, step=0.5)
    assert matched(b, hashes) == count

    second = a.cli("import-list", "stopncii", str(withdrawn), "-c", "csam", "--json")
    summary = json.loads(second.stdout)
    assert summary["revoked"] == count, second.stderr
    assert live_on(a) == 0
    wait_for(lambda: live_on(b) == 0, timeout=120, step=0.5)
    assert matched(b, hashes) == 0


@pytest.fixture
def nodes() -> Any:
    made: list[NodeProc] = []
    yield made
    for node in made:
        node.kill()


def test_withdrawing_a_10000_hash_list_reaches_the_peer(
    tmp_path: Path, nodes: list[NodeProc]
) -> None:
    """Hundreds of revoke ops in several batches: what broke above ~30 hashes."""
    withdraw_between_nodes(tmp_path, 10_000, nodes)


@pytest.mark.slow
def test_withdrawing_a_100000_hash_list_reaches_the_peer(
    tmp_path: Path, nodes: list[NodeProc]
) -> None:
    """The issue's size (~25 s here): in `make test-slow`."""
    withdraw_between_nodes(tmp_path, 100_000, nodes)
