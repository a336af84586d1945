"""Bounds on one match request (security review): the PDQ threshold ceiling, matches per
query and per request, duplicate queries answered once, and opinions counted only from the
collections the caller's token may read."""

from __future__ import annotations

import json
import random
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import add_ops, author_key, chain
from hostile_peer import raw_post
from netnodes import NodeProc
from platform_util import request

from hashmesh.node.matching.matcher import (
    MAX_MATCHES_PER_QUERY,
    MAX_MATCHES_PER_REQUEST,
    MAX_THRESHOLD,
    Matcher,
)
from hashmesh.node.store.core import Store

RNG = random.Random(20261201)
MD5_SHARED = "5" * 32


def _flip(value: int, bits: int) -> int:
    for b in RNG.sample(range(256), bits):
        value ^= 1 << b
    return value


def _hex(value: int) -> str:
    return f"{value:064x}"


def _base() -> int:
    """A random hash with exactly 128 bits set: clear of every degenerate-hash rule."""
    ones = RNG.sample(range(256), 128)
    return sum(1 << b for b in ones)


BASE = _base()
# 150 hashes within 6 bits of BASE: any query within 10 bits of BASE reaches all of them.
CLUSTER = sorted({_hex(_flip(BASE, 6)) for _ in range(150)})


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    n = NodeProc(tmp_path_factory.mktemp("bounds"), "hotline")
    n.start()
    admin = n.admin_token()
    status, body = request(
        n.url + "/v1/signals/batch",
        "POST",
        admin,
        {
            "collection": "csam",
            "signals": [{"type": "pdq", "value": v, "quality": 100} for v in CLUSTER]
            + [{"type": "md5", "value": MD5_SHARED}],
        },
    )
    assert status == 200, body
    csam_token = n.cli(
        "token", "create", "csam-matcher", "--scope", "match", "--collection", "csam"
    ).stdout.strip()
    yield {"node": n, "admin": admin, "csam": csam_token}
    assert n.stop() == 0


def match(world: dict[str, Any], body: Any, token: str | None = None) -> tuple[int, Any]:
    status, data = request(
        world["node"].url + "/v1/match", "POST", token or world["admin"], body, timeout=120
    )
    return status, json.loads(data)


def pdq_query(value: str) -> dict[str, str]:
    return {"type": "pdq", "value": value}


# -- A: threshold ceiling ------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [MAX_THRESHOLD + 1, 48, 64])
def test_threshold_above_ceiling_is_refused(node: dict[str, Any], threshold: int) -> None:
    status, body = match(node, {"queries": [pdq_query(CLUSTER[0])], "threshold": threshold})
    assert status == 400
    assert body["error"].startswith("threshold:")
    assert f"0-{MAX_THRESHOLD}" in body["error"]


def test_threshold_at_ceiling_is_answered(node: dict[str, Any]) -> None:
    status, body = match(node, {"queries": [pdq_query(CLUSTER[0])], "threshold": MAX_THRESHOLD})
    assert status == 200 and body["threshold"] == MAX_THRESHOLD


def test_upload_threshold_above_ceiling_is_refused(node: dict[str, Any]) -> None:
    boundary = "b0undary"
    raw = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="threshold"\r\n\r\n64\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    status, data = request(
        node["node"].url + "/v1/match/file",
        "POST",
        node["admin"],
        raw=raw,
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    assert status == 400
    assert json.loads(data)["error"].startswith("threshold:")


def test_upload_threshold_part_is_not_read_whole(node: dict[str, Any]) -> None:
    """A `threshold` part declared 64 MiB is refused after its first bytes, not buffered:
    the answer comes while most of the declared body is still unsent."""
    boundary = "b0undary"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="threshold"\r\n\r\n'
    url = urllib.parse.urlsplit(node["node"].url)
    reply, complete = raw_post(
        url.hostname or "127.0.0.1",
        url.port or 80,
        "/v1/match/file",
        {
            "Authorization": f"Bearer {node['admin']}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
        head.encode() + b"1" * (1 << 20),
        length=64 << 20,
        timeout=10,
    )
    assert reply.status == 400 and not complete
    assert json.loads(reply.body)["error"] == "threshold: must be an integer"


def test_cli_threshold_above_ceiling_exits_2(node: dict[str, Any]) -> None:
    result = node["node"].cli("match", "pdq", CLUSTER[0], "--threshold", "64", check=False)
    assert result.returncode == 2
    assert "threshold" in result.stderr


# -- A: matches per query and per request --------------------------------------------------


def test_matches_per_query_are_capped_nearest_first(node: dict[str, Any]) -> None:
    status, body = match(node, {"queries": [pdq_query(_hex(BASE))]})
    assert status == 200
    (result,) = body["results"]
    assert len(result["matches"]) == MAX_MATCHES_PER_QUERY < len(CLUSTER)
    assert result["truncated"] is True and body["truncated"] is True
    distances = [m["distance"] for m in result["matches"]]
    assert distances == sorted(distances)
    everything = sorted(bin(int(v, 16) ^ BASE).count("1") for v in CLUSTER)
    assert distances == everything[:MAX_MATCHES_PER_QUERY]


def test_small_answers_are_not_flagged(node: dict[str, Any]) -> None:
    status, body = match(node, {"queries": [{"type": "md5", "value": MD5_SHARED}]})
    assert status == 200
    assert body["truncated"] is False and "truncated" not in body["results"][0]


def test_matches_per_request_are_capped(node: dict[str, Any]) -> None:
    count = MAX_MATCHES_PER_REQUEST // MAX_MATCHES_PER_QUERY + 10
    queries = list({_hex(_flip(BASE, 4)) for _ in range(count * 2)})[:count]
    assert len(queries) == count
    status, body = match(node, {"queries": [pdq_query(q) for q in queries]})
    assert status == 200
    sizes = [len(r["matches"]) for r in body["results"]]
    assert sum(sizes) == MAX_MATCHES_PER_REQUEST
    assert body["truncated"] is True
    assert all(r.get("truncated") is True for r in body["results"])
    assert sizes[-1] == 0  # the budget ran out before the last queries


def test_duplicate_queries_are_each_answered(node: dict[str, Any]) -> None:
    status, body = match(node, {"queries": [{"type": "md5", "value": MD5_SHARED}] * 50})
    assert status == 200
    assert len(body["results"]) == 50
    assert all(r["matches"] == body["results"][0]["matches"] for r in body["results"])
    assert len(body["results"][0]["matches"]) == 1


def test_duplicates_are_computed_once_and_opinions_read_in_one_query(tmp_path: Path) -> None:
    """In process: the PDQ index sees each distinct hash once, the store one opinions query."""
    store = Store(tmp_path / "hashmesh.db")
    try:
        for batch in chain(author_key(7), "csam", [add_ops(CLUSTER[:40], "pdq")]):
            store.ingest(batch)
        matcher = Matcher(store)
        asked: list[int] = []
        real = matcher.pdq.query_many

        def counting(hexes: Any, threshold: Any = None, limit: Any = None) -> Any:
            asked.append(len(hexes))
            return real(hexes, threshold, limit=limit)

        matcher.pdq.query_many = counting  # type: ignore[method-assign]
        statements: list[str] = []
        store.conn.set_trace_callback(statements.append)
        queries = [pdq_query(CLUSTER[0]), pdq_query(CLUSTER[0].upper()), pdq_query(CLUSTER[1])]
        result = matcher.answer(queries * 20, 31, None, lambda author: author[:8])
        store.conn.set_trace_callback(None)
        assert asked == [2]
        assert sum("FROM opinions" in s for s in statements) == 1
        assert len(result["results"]) == 60
        assert all(len(r["matches"]) == 40 for r in result["results"])
    finally:
        store.close()


# -- B: opinions only from readable collections --------------------------------------------


def test_opinions_from_unreadable_collections_are_not_counted(node: dict[str, Any]) -> None:
    n = node["node"]
    for query in ({"type": "md5", "value": MD5_SHARED}, pdq_query(CLUSTER[0])):
        status, body = match(node, {"queries": [query], "threshold": 0})
        assert status == 200
        op_id = body["results"][0]["matches"][0]["op_id"]
        status, data = request(
            n.url + "/v1/opinions",
            "POST",
            node["admin"],
            {"op_id": op_id, "opinion": "confirm", "collection": "le-only"},
        )
        assert status == 200, data
        status, body = match(node, {"queries": [query], "threshold": 0})
        assert body["results"][0]["matches"][0]["opinions"]["confirm"] == 1
        status, body = match(node, {"queries": [query], "threshold": 0}, node["csam"])
        assert status == 200
        (m,) = body["results"][0]["matches"]
        assert m["collection"] == "csam"
        assert m["opinions"] == {"confirm": 0, "dispute": 0, "seen": 0}
