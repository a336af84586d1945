"""The author's review queue (issue 19): `hashmesh disputes` lists this node's own adds
that other authors disputed, confirmed or saw, by whom, with the command that revokes or
confirms each; two real nodes, opinions travelling by sync."""

from __future__ import annotations

import shlex
from typing import Any

import pytest
from netnodes import NodeSet, link, wait_for

DISPUTED = "d15d15d15d15d15d15d15d15d15d15d1"
CONFIRMED = "c0cf1c0cf1c0cf1c0cf1c0cf1c0cf1c0"
UNTOUCHED = "00aa11bb22cc33dd44ee55ff66aa77bb"


def queue(node: Any) -> dict[str, dict[str, Any]]:
    return {e["op_id"]: e for e in node.json("disputes")["disputes"]}


@pytest.mark.slow
def test_disputes_reach_the_author_queue_with_their_commands(nodes: NodeSet) -> None:
    hotline, platform, police = nodes.make("childfocus", "platform", "police")
    link(hotline, platform, "csam")
    link(hotline, police, "csam")
    for other in (platform, police):
        other.trust(hotline, "csam")
        hotline.trust(other, "csam")  # the author takes their opinions
    assert hotline.cli("disputes").stdout.strip() == "no opinions on this node's adds"
    for node in (hotline, platform, police):
        node.start()
    ops = {
        v: hotline.json("add", "md5", v, "-c", "csam")["op_id"]
        for v in (DISPUTED, CONFIRMED, UNTOUCHED)
    }
    for node in (platform, police):
        wait_for(lambda: all(node.matches("md5", v) for v in ops), timeout=30)  # noqa: B023
    platform.cli("opinion", ops[DISPUTED], "dispute")
    police.cli("opinion", ops[DISPUTED], "dispute")
    police.cli("opinion", ops[CONFIRMED], "confirm")
    platform.cli("opinion", ops[CONFIRMED], "seen")

    def arrived() -> bool:
        q = queue(hotline)
        return (
            len(q.get(ops[DISPUTED], {}).get("disputes", [])) == 2
            and len(q.get(ops[CONFIRMED], {}).get("confirms", [])) == 1
            and q[ops[CONFIRMED]]["seen"] == 1
        )

    wait_for(arrived, timeout=30)
    q = queue(hotline)
    assert list(q) == [ops[DISPUTED], ops[CONFIRMED]]  # most disputed first; untouched absent
    entry = q[ops[DISPUTED]]
    assert {w["author_name"] for w in entry["disputes"]} == {"platform", "police"}
    assert entry["type"] == "md5" and entry["value"] == DISPUTED and entry["live"] is True
    assert entry["revoke"] == f"hashmesh revoke {ops[DISPUTED]}"
    assert entry["confirm"] == f"hashmesh opinion {ops[DISPUTED]} confirm"
    text = hotline.cli("disputes").stdout
    assert "disputed by   platform, police" in text or "disputed by   police, platform" in text
    assert f"revoke:  hashmesh revoke {ops[DISPUTED]}" in text
    status = hotline.json("status")
    assert [d["op_id"] for d in status["disputed"]] == [ops[DISPUTED]]
    assert "disputed  1 of this node's adds" in hotline.cli("status").stdout

    # The one command it names, run as printed, revokes the add; the queue says so.
    hotline.cli(*shlex.split(entry["revoke"])[1:])
    assert queue(hotline)[ops[DISPUTED]]["live"] is False
    assert "(revoked)" in hotline.cli("disputes").stdout
    # The platform's own queue is empty: opinions on others' adds are not its to review.
    assert platform.json("disputes")["disputes"] == []
