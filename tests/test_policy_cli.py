"""Policy commands (issue 16, item 1): `peer list|show|add|update|remove|share|unshare`
and `trust list|add|remove`, through the real console script, offline (on the store) and
against a running node (through its admin API), each change printing what now holds."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from netnodes import NodeProc, wait_for

MD5 = "%032x"
# What the walk records for the platform: it never runs there, so its URL is only data.
URL = "http://127.0.0.1:7401"


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[NodeProc, NodeProc]]:
    a, b = NodeProc(tmp_path, "ncmec"), NodeProc(tmp_path, "platform")
    yield a, b
    a.kill()
    b.kill()


def config_text(node: NodeProc) -> str:
    return (node.home / "config.toml").read_text()


def check_policy_cycle(a: NodeProc, b: NodeProc) -> None:
    """The same walk offline and running: the answers must not depend on which backend."""
    added = a.cli("peer", "add", "platform", URL, b.node_id, "--share", "csam").stdout
    assert added.splitlines() == [
        "peer platform (added)",
        f"  url      {URL}",
        f"  node id  {b.node_id}",
        "  reads    csam",
    ]

    # The duplicate name, and the duplicate node id under another name: exit 2, the
    # existing entry named with the commands that would change it, nothing changed.
    before = config_text(a)
    for name in ("platform", "other-name"):
        dup = a.cli("peer", "add", name, URL, b.node_id, "--share", "takeitdown", check=False)
        assert dup.returncode == 2, dup
        assert dup.stdout == ""
        assert dup.stderr.startswith("hashmesh: peer 'platform' already exists with this "), dup
        assert f"url {URL}, node id {b.node_id}, reads: csam" in dup.stderr
        assert "hashmesh peer update platform" in dup.stderr
        assert "hashmesh peer share platform COLLECTION" in dup.stderr
        assert config_text(a) == before

    shared = a.cli("peer", "share", "platform", "takeitdown").stdout
    assert "peer platform (shared)" in shared and "reads    csam, takeitdown" in shared
    assert a.json("peer", "show", "platform")["share"] == ["csam", "takeitdown"]
    unshared = a.cli("peer", "unshare", "platform", "csam").stdout
    assert "peer platform (unshared)" in unshared and "reads    takeitdown" in unshared
    assert f"node id  {b.node_id}" in unshared and f"url      {URL}" in unshared

    moved = a.cli("peer", "update", "platform", "--url", "http://127.0.0.1:9").stdout
    assert "url      http://127.0.0.1:9" in moved and "reads    takeitdown" in moved
    assert a.json("peer", "list")["peers"] == [
        {
            "peer": "platform",
            "name": "platform",
            "url": "http://127.0.0.1:9",
            "node_id": b.node_id,
            "share": ["takeitdown"],
        }
    ]
    a.cli("peer", "update", "platform", "--url", URL, "--share", "csam", "--share", "ncii")
    assert a.json("peer", "show", "platform")["share"] == ["csam", "ncii"]

    missing = a.cli("peer", "share", "nosuch", "csam", check=False)
    assert missing.returncode == 2 and "peer 'nosuch': no such peer" in missing.stderr
    assert "platform" in missing.stderr  # the peers there are

    trusted = a.cli("trust", "add", b.node_id, "csam", "--name", "platform").stdout.strip()
    assert trusted == f"author {b.node_id} (platform) now trusted in csam; trusted in: csam"
    second = a.cli("trust", "add", b.node_id, "ncii").stdout.strip()
    assert second.endswith("now trusted in ncii; trusted in: csam, ncii")
    listed = a.json("trust", "list", b.node_id)["trust"]
    assert [(t["collection"], t["name"]) for t in listed] == [("csam", "platform"), ("ncii", "")]
    removed = a.cli("trust", "remove", b.node_id, "ncii").stdout.strip()
    assert removed.endswith("no longer trusted in ncii; trusted in: csam")
    again = a.cli("trust", "remove", b.node_id, "ncii", check=False)
    assert again.returncode == 2 and "is not trusted in 'ncii'; nothing changed" in again.stderr
    assert "trusted in: csam" in again.stderr

    gone = a.cli("peer", "remove", "platform").stdout
    assert gone.startswith("peer platform removed: it reads nothing from this node any more")
    assert a.json("peer", "list") == {"peers": []}
    assert a.cli("peer", "show", "platform", check=False).returncode == 2


def test_policy_commands_offline(pair: tuple[NodeProc, NodeProc]) -> None:
    a, b = pair
    check_policy_cycle(a, b)


def test_policy_commands_against_a_running_node(pair: tuple[NodeProc, NodeProc]) -> None:
    a, b = pair
    a.start()
    check_policy_cycle(a, b)
    assert a.status()["running"] is True  # the walk above went through the API


def test_share_on_a_running_node_takes_effect_without_restart(
    pair: tuple[NodeProc, NodeProc],
) -> None:
    """`peer share` adds a collection and keeps the others: the peer goes on receiving
    csam and starts receiving takeitdown, and neither node restarts."""
    a, b = pair
    a.peer(b, "csam")
    b.peer(a)
    b.trust(a, "csam")
    b.trust(a, "takeitdown")
    a.start()
    b.start()
    a.cli("add", "md5", MD5 % 0x160, "-c", "csam")
    wait_for(lambda: b.matches("md5", MD5 % 0x160))
    a.cli("add", "md5", MD5 % 0x161, "-c", "takeitdown")
    a.cli("peer", "share", "platform", "takeitdown")
    wait_for(lambda: b.matches("md5", MD5 % 0x161))
    a.cli("add", "md5", MD5 % 0x162, "-c", "csam")
    wait_for(lambda: b.matches("md5", MD5 % 0x162))  # csam still flows
    assert a.json("peer", "show", "platform")["share"] == ["csam", "takeitdown"]


def test_policy_api_refuses_bad_input_and_changes_nothing(
    pair: tuple[NodeProc, NodeProc],
) -> None:
    a, b = pair
    a.peer(b, "csam")
    a.start()
    before = config_text(a)

    def call(method: str, path: str, body: object | None = None) -> tuple[int, dict[str, str]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            a.url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {a.admin_token()}",
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    status, body = call(
        "POST", "/v1/admin/peers", {"name": "platform", "url": URL, "node_id": b.node_id}
    )
    assert status == 409 and "already exists" in body["error"]
    status, body = call("PATCH", "/v1/admin/peers/platform", {"share": "csam"})
    assert status == 400 and body["error"].startswith("share:")
    status, body = call("PATCH", "/v1/admin/peers/platform", {"colour": "red"})
    assert status == 400 and body["error"] == "colour: unknown field"
    status, body = call("POST", "/v1/admin/peers/platform/share", {"collection": "a b"})
    assert status == 400 and "error" in body
    status, body = call("DELETE", "/v1/admin/peers/nosuch")
    assert status == 404 and "no such peer" in body["error"]
    status, body = call("DELETE", f"/v1/admin/trust/{b.node_id}/csam")
    assert status == 404 and "not trusted" in body["error"]
    assert config_text(a) == before
