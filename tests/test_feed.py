"""The change feed of a running node: strict cursor order across pages, provenance of
adds, revocations and opinions, snapshots consistent with their cursor, and the live
server-sent-events stream (no gaps, no duplicates across reconnects with Last-Event-ID)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc
from platform_util import SSE, ok_json, request

ADDS = 2500
REVOKED = 40


def md5(n: int) -> str:
    return f"{n:032x}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    root = tmp_path_factory.mktemp("feed")
    n = NodeProc(root, "hotline")
    lines = root / "list.txt"
    lines.write_text("".join(f"md5 {md5(i)}\n" for i in range(ADDS)))
    n.cli("import-list", "pytx", str(lines), "-c", "csam", "--category", "csam")
    n.cli("add", "md5", md5(10**6), "-c", "ncii", "--category", "ncii")
    n.start()
    feed = ok_json(n.url + f"/v1/feed?limit={ADDS}", token=n.admin_token())["entries"]
    for entry in feed[:REVOKED]:
        ok_json(
            n.url + "/v1/revoke",
            "POST",
            n.admin_token(),
            {"op_id": entry["op_id"], "reason": "false positive"},
        )
    ok_json(
        n.url + "/v1/opinions",
        "POST",
        n.admin_token(),
        {"op_id": feed[REVOKED]["op_id"], "opinion": "dispute"},
    )
    yield n
    assert n.stop() == 0


def all_pages(node: NodeProc, limit: int, query: str = "") -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    after = 0
    while True:
        page = ok_json(
            node.url + f"/v1/feed?after={after}&limit={limit}{query}", token=node.admin_token()
        )
        entries += page["entries"]
        if page["entries"]:
            assert page["next"] == page["entries"][-1]["cursor"]
        else:
            assert page["next"] == after
        after = page["next"]
        if not page["more"]:
            return entries


def test_pages_are_strictly_ordered_without_gaps_or_duplicates(node: NodeProc) -> None:
    entries = all_pages(node, 777)
    cursors = [e["cursor"] for e in entries]
    total = ADDS + 1 + REVOKED + 1
    assert cursors == list(range(1, total + 1))
    assert node.status()["feed_cursor"] == total
    kinds = [e["kind"] for e in entries]
    assert kinds.count("add") == ADDS + 1
    assert kinds.count("revoke") == REVOKED
    assert kinds.count("opinion") == 1
    assert all_pages(node, 10_000) == entries


def test_entries_carry_provenance(node: NodeProc) -> None:
    entries = all_pages(node, 10_000)
    first = entries[0]
    assert first["kind"] == "add" and first["collection"] == "csam"
    assert first["type"] == "md5" and first["value"] == md5(0)
    assert first["category"] == "csam"
    assert first["author"] == node.node_id and first["author_name"] == "hotline"
    assert first["op_id"].startswith(f"{node.node_id}/csam/")
    revokes = [e for e in entries if e["kind"] == "revoke"]
    assert revokes[0]["target"] == first["op_id"]
    assert revokes[0]["value"] == md5(0) and revokes[0]["type"] == "md5"
    assert revokes[0]["reason"] == "false positive"
    assert revokes[0]["op_id"] != first["op_id"] and revokes[0]["author"] == node.node_id
    opinion = next(e for e in entries if e["kind"] == "opinion")
    assert opinion["opinion"] == "dispute"
    assert opinion["target"] == entries[REVOKED]["op_id"]
    assert opinion["author_name"] == "hotline"


def test_collection_filter_and_bounds(node: NodeProc) -> None:
    ncii = all_pages(node, 100, "&collection=ncii")
    assert [e["value"] for e in ncii] == [md5(10**6)]
    for query in ("limit=0", "limit=10001", "after=-1", "after=x", "collection=Bad%20Name"):
        status, data = request(node.url + f"/v1/feed?{query}", token=node.admin_token())
        assert status == 400, (query, data)
        assert "error" in json.loads(data)


def snapshot(node: NodeProc, query: str = "") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    status, data = request(node.url + "/v1/snapshot" + query, token=node.admin_token())
    assert status == 200
    lines = [json.loads(line) for line in data.splitlines()]
    assert lines[-1] == {"end": True, "count": len(lines) - 2}
    return lines[0], lines[1:-1]


def test_snapshot_is_the_live_set_at_its_cursor_and_the_feed_continues_it(
    node: NodeProc,
) -> None:
    header, rows = snapshot(node, "?collection=csam")
    live: dict[str, str] = {}
    for entry in all_pages(node, 10_000, "&collection=csam"):
        if entry["cursor"] > header["cursor"]:
            break
        if entry["kind"] == "add":
            live[entry["op_id"]] = entry["value"]
        elif entry["kind"] == "revoke":
            live.pop(entry["target"])
    assert {r["op_id"]: r["value"] for r in rows} == live
    assert len(rows) == ADDS - REVOKED
    assert all(r["collection"] == "csam" and r["author_name"] == "hotline" for r in rows)
    token = node.admin_token()
    added = ok_json(
        node.url + "/v1/signals/batch",
        "POST",
        token,
        {"collection": "csam", "signals": [{"type": "md5", "value": md5(ADDS + 7)}]},
    )
    later = ok_json(node.url + f"/v1/feed?after={header['cursor']}&collection=csam", token=token)
    assert [e["op_id"] for e in later["entries"]] == [added["signals"][0]["op_id"]]
    header2, rows2 = snapshot(node, "?collection=csam")
    assert header2["cursor"] == later["next"] and len(rows2) == len(rows) + 1


def test_stream_catches_up_resumes_by_last_event_id_and_follows_live(node: NodeProc) -> None:
    token = node.admin_token()
    expected = [e["cursor"] for e in all_pages(node, 10_000)]
    stream = SSE(node.url, token, "?heartbeat=1")
    assert stream.status == 200
    first = [stream.next_event()[0] for _ in range(1200)]
    stream.close()
    assert first == expected[:1200]
    resumed = SSE(node.url, token, "?after=0&heartbeat=1", last_event_id=first[-1])
    rest = [cursor for cursor, _ in resumed.events_until_idle()]
    assert first + rest == expected
    published = []
    for n in range(3):
        result = ok_json(
            node.url + "/v1/signals/batch",
            "POST",
            token,
            {"collection": "ncii", "signals": [{"type": "md5", "value": md5(2 * 10**6 + n)}]},
        )
        published.append(result["signals"][0]["op_id"])
        cursor, entry = resumed.next_event(timeout=5)
        while cursor is None:
            cursor, entry = resumed.next_event(timeout=5)
        assert entry["op_id"] == published[-1] and cursor == entry["cursor"]
        last = cursor
    resumed.close()
    missed = []
    for n in range(3, 6):
        missed.append(
            ok_json(
                node.url + "/v1/signals/batch",
                "POST",
                token,
                {"collection": "ncii", "signals": [{"type": "md5", "value": md5(2 * 10**6 + n)}]},
            )
        )
    again = SSE(node.url, token, "?heartbeat=1", last_event_id=last)
    caught = again.events_until_idle()
    again.close()
    assert [e["op_id"] for _, e in caught] == [m["signals"][0]["op_id"] for m in missed]
    assert [c for c, _ in caught] == list(range(last + 1, last + 4))


def test_stream_of_a_stopping_node_ends_cleanly(tmp_path: Path) -> None:
    n = NodeProc(tmp_path, "short")
    n.start()
    stream = SSE(n.url, n.admin_token(), "?heartbeat=60")
    assert stream.status == 200
    assert n.stop() == 0
    with pytest.raises((EOFError, ConnectionError)):
        stream.next_event(timeout=10)
    stream.close()
