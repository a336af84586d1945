"""`POST /v1/lists/import?format=` (security review): a list file sent as the raw body is
spooled to disk and parsed from there, so a list of tens of megabytes does not cost the
node tens of times its size in memory; the JSON plan form is kept for small plans only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from netnodes import NodeProc, peak_rss
from platform_util import request

from hashmesh.node.net.bodies import MAX_JSON_BODY

LIST_BYTES = 60 << 20
DISTINCT = 10_000


def md5s(count: int, salt: int) -> list[str]:
    return [f"{salt:08x}{i:024x}" for i in range(count)]


def pytx_list(values: list[str], size: int) -> bytes:
    """`size` bytes of pytx lines cycling through `values`: appended exports repeat."""
    block = "".join(f"video_md5 {v}\n" for v in values).encode()
    return block * (size // len(block) + 1)


def import_raw(
    node: NodeProc, data: bytes, query: str, token: str | None = None
) -> tuple[int, dict[str, Any]]:
    status, raw = request(
        f"{node.url}/v1/lists/import?{query}",
        "POST",
        token or node.admin_token(),
        raw=data,
        content_type="application/octet-stream",
        timeout=300,
    )
    return status, json.loads(raw)


def live_md5s(node: NodeProc, collection: str) -> set[str]:
    status, raw = request(
        f"{node.url}/v1/snapshot?collection={collection}", "GET", node.admin_token()
    )
    assert status == 200
    rows = [json.loads(line) for line in raw.splitlines()]
    assert rows[-1].get("end") is True
    return {r["value"] for r in rows[1:-1] if r.get("type") == "md5"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    n = NodeProc(tmp_path_factory.mktemp("stream"), "stream")
    n.start()
    yield n
    n.stop()


@pytest.mark.slow
def test_large_list_body_is_parsed_in_bounded_memory(node: NodeProc) -> None:
    """The warm-up publishes as many signals from a small file, so what the big list adds
    to the peak is what its size costs (SQLite's page cache and the plan are bounded by
    the signals, the same in both)."""
    assert node.proc is not None
    warm = md5s(DISTINCT, 1)
    status, result = import_raw(node, pytx_list(warm, 1 << 20), "format=pytx&collection=warm")
    assert status == 200, result
    assert result["published"] == DISTINCT
    before = peak_rss(node.proc.pid)
    values = md5s(DISTINCT, 2)
    data = pytx_list(values, LIST_BYTES)
    status, result = import_raw(node, data, "format=pytx&collection=big&category=csam")
    grown = peak_rss(node.proc.pid) - before
    assert status == 200, result
    assert result["published"] == DISTINCT and result["already_live"] == 0
    assert result["records"] == data.count(b"\n") and result["invalid"] == 0
    assert grown < len(data) // 3, f"peak RSS grew {grown >> 20} MiB for {len(data) >> 20} MiB"
    assert live_md5s(node, "big") == set(values)
    again = import_raw(node, pytx_list(values[:100], 1 << 16), "format=pytx&collection=big")[1]
    assert again["published"] == 0 and again["already_live"] == 100


def test_invalid_entries_abort_unless_skipped(node: NodeProc) -> None:
    data = b"video_md5 " + md5s(1, 3)[0].encode() + b"\nvideo_md5 nothex\n"
    status, result = import_raw(node, data, "format=pytx&collection=bad")
    assert status == 400 and "nothing imported" in result["error"]
    assert "line 2" in result["error"]
    assert live_md5s(node, "bad") == set()
    status, result = import_raw(node, data, "format=pytx&collection=bad&on_error=skip")
    assert status == 200, result
    assert result["published"] == 1 and result["invalid"] == 1
    assert result["issues"][0].startswith("line 2")


def test_csv_body_and_query_checks(node: NodeProc) -> None:
    values = md5s(3, 4)
    data = ("type,value,submitter\n" + "".join(f"md5,{v},x\n" for v in values)).encode()
    status, result = import_raw(node, data, "format=csv&collection=csv1")
    assert status == 200, result
    assert result["published"] == 3 and result["notes"]
    assert import_raw(node, data, "format=nope&collection=csv1")[0] == 400
    assert import_raw(node, data, "format=csv")[0] == 400
    assert import_raw(node, data, "format=csv&collection=csv1&extra=1")[0] == 400


def test_json_plan_form_still_works_but_is_bounded(node: NodeProc) -> None:
    plan = {"collection": "plan", "adds": [{"type": "md5", "value": md5s(1, 5)[0]}]}
    status, raw = request(f"{node.url}/v1/lists/import", "POST", node.admin_token(), body=plan)
    assert status == 200 and json.loads(raw)["published"] == 1
    big = b'{"collection": "plan", "adds": [' + b" " * MAX_JSON_BODY + b"]}"
    status, raw = request(f"{node.url}/v1/lists/import", "POST", node.admin_token(), raw=big)
    assert status == 413, raw
