"""Signed collection membership between real node processes (issue 22): a hub follows
the membership of `csam` (2 of 3 stewards pinned), and takes its writers from the document
in force instead of trust entries. A change signed by one steward is refused and changes
nothing; signed by two it applies; an attacker replaying an old document, as the operator
or as a peer gossiping it, changes nothing."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hostile_peer import HostilePeer
from netnodes import NodeProc, NodeSet, wait_for

from hashmesh.node.keys import create_key
from hashmesh.protocol.statementsync import decode_push_answer, encode_statements

C = "csam"
MD5 = "%032x"


def together(*calls: Callable[[], object]) -> None:
    with ThreadPoolExecutor(len(calls)) as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


class Stewards:
    """Three steward org keys, kept outside every node's home, and the ceremony's files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.keys = [root / f"steward{i}.key" for i in range(3)]
        self.ids = [create_key(path).node_id for path in self.keys]

    def draft(self, node: NodeProc, version: int, writers: list[str], readers: list[str]) -> Path:
        out = self.root / f"v{version}.json"
        args = ["membership", "draft", C, "--version", str(version), "--threshold", "2"]
        for s in self.ids:
            args += ["--steward", s]
        for w in writers:
            args += ["--writer", w]
        for r in readers:
            args += ["--reader", r]
        if version > 1:
            args += ["--prev", str(self.root / f"v{version - 1}.json")]
        node.cli(*args, "--out", str(out), home=False)
        return out

    def sign(self, node: NodeProc, file: Path, *which: int) -> None:
        for i in which:
            node.cli("membership", "sign", str(file), "--key-file", str(self.keys[i]), home=False)


def _refused_untrusted(node: NodeProc, sender: NodeProc) -> int:
    peers = node.status()["peers"]
    entry = next(p for p in peers if p["node_id"] == sender.node_id)
    return int(entry.get("refused", {}).get("untrusted", 0))


def _in_force(node: NodeProc) -> dict[str, Any]:
    shown: dict[str, Any] = node.json("membership", "show")["memberships"][0]
    return shown


def _setup(nodes: NodeSet, tmp_path: Path) -> tuple[NodeProc, NodeProc, NodeProc, Stewards]:
    hub, x, y = nodes.make("hub", "xnode", "ynode")
    stewards = Stewards(tmp_path)
    follow = ["membership", "follow", C, "--threshold", "2"]
    for s in stewards.ids:
        follow += ["--steward", s]
    together(
        lambda: (hub.cli(*follow), hub.peer(x, C), hub.peer(y, C)),
        lambda: (x.cli(*follow), x.peer(hub, C)),  # x follows too: documents gossip to it
        lambda: y.peer(hub, C),
    )
    together(hub.start, x.start, y.start)
    return hub, x, y, stewards


@pytest.mark.slow  # three node processes: 20-30 s on the loaded 2-core machine
def test_a_change_signed_by_one_of_three_stewards_is_refused_by_two_applied(
    nodes: NodeSet, tmp_path: Path
) -> None:
    hub, x, y, stewards = _setup(nodes, tmp_path)
    readers = [hub.node_id, x.node_id, y.node_id]
    v1 = stewards.draft(hub, 1, [x.node_id], readers)
    stewards.sign(hub, v1, 0, 1)
    added = hub.json("membership", "add", str(v1))
    assert added["outcome"] == "new" and added["in_force"] == 1
    x.cli("add", "md5", MD5 % 1, "-c", C, "--category", "csam")
    wait_for(lambda: hub.matches("md5", MD5 % 1))  # x writes by version 1
    wait_for(lambda: _in_force(x)["version"] == 1)  # gossiped from the hub to a follower

    v2 = stewards.draft(hub, 2, [x.node_id, y.node_id], readers)
    stewards.sign(hub, v2, 0)  # one of three
    refused = hub.cli("membership", "add", str(v2), check=False)
    assert refused.returncode == 2
    assert "signed by 1 of the stewards of version 1, needs 2 of 3" in refused.stderr
    assert _in_force(hub)["version"] == 1
    y.cli("add", "md5", MD5 % 2, "-c", C, "--category", "csam")
    wait_for(lambda: _refused_untrusted(hub, y) >= 1)  # y's batch came and was refused
    assert not hub.matches("md5", MD5 % 2)
    # the status page lists the refusal while the document in force still holds it
    assert [r["author"] for r in hub.status()["refusals"] if r["collection"] == C] == [y.node_id]

    stewards.sign(hub, v2, 2)  # a second steward
    applied = hub.json("membership", "add", str(v2))
    assert applied["outcome"] == "new" and applied["in_force"] == 2
    shown = _in_force(hub)
    assert shown["version"] == 2 and shown["writers"] == sorted([x.node_id, y.node_id])
    wait_for(lambda: hub.matches("md5", MD5 % 2))  # y's batch is fetched and accepted now
    assert not [r for r in hub.status()["refusals"] if r["collection"] == C]  # and unlisted
    wait_for(lambda: _in_force(x)["version"] == 2)  # and version 2 reaches the follower


@pytest.mark.slow  # three node processes: 20-30 s on the loaded 2-core machine
def test_replaying_an_old_membership_document_changes_nothing(
    nodes: NodeSet, tmp_path: Path
) -> None:
    hub, x, y, stewards = _setup(nodes, tmp_path)
    both = [x.node_id, y.node_id]
    readers = [hub.node_id, *both]
    v1 = stewards.draft(hub, 1, both, readers)
    stewards.sign(hub, v1, 0, 1)
    hub.json("membership", "add", str(v1))
    y.cli("add", "md5", MD5 % 1, "-c", C, "--category", "csam")
    wait_for(lambda: hub.matches("md5", MD5 % 1))  # y writes by version 1
    v2 = stewards.draft(hub, 2, [x.node_id], readers)  # y loses write access
    stewards.sign(hub, v2, 1, 2)
    assert hub.json("membership", "add", str(v2))["in_force"] == 2

    # the operator's replay: the old file again
    again = hub.json("membership", "add", str(v1))
    assert again["outcome"] == "same" and again["in_force"] == 2
    # a peer's replay: version 1 gossiped to the hub by a node it peers with
    seed = os.urandom(32)
    attacker = HostilePeer("attacker", hub, hub.node_id, seed)
    hub.cli("peer", "add", "attacker", "http://127.0.0.1:9", attacker.node_id, "--share", C)
    statement = json.loads(v1.read_text())
    reply = wait_for(
        lambda: (
            (r := attacker.send("/v1/peer/statements/push", encode_statements([statement]))).status
            == 200
            and r
        )
    )
    assert decode_push_answer(reply.body) == 0  # nothing new, nothing changed
    shown = _in_force(hub)
    assert shown["version"] == 2 and shown["writers"] == [x.node_id]

    before = _refused_untrusted(hub, y)
    y.cli("add", "md5", MD5 % 2, "-c", C, "--category", "csam")
    x.cli("add", "md5", MD5 % 3, "-c", C, "--category", "csam")
    wait_for(lambda: hub.matches("md5", MD5 % 3))  # x still writes
    wait_for(lambda: _refused_untrusted(hub, y) > before)  # y's new batch: refused
    assert not hub.matches("md5", MD5 % 2)
