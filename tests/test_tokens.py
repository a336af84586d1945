"""Tokens: scopes and collection restrictions on every operator endpoint of a running node
(401 without a valid token, 403 for the wrong scope or collection, and no hash of a
forbidden collection in any answer), and token changes without a restart."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc
from platform_util import SSE, request

PDQ_CSAM = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
MD5_CSAM = "9e107d9d372bb6826bd81d3542a419d6"  # md5 of a pangram; not the empty file
MD5_SECRET = "0cc175b9c0f1b6a831c399e269772661"
SECRET_VALUES = (MD5_SECRET,)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    node = NodeProc(tmp_path_factory.mktemp("tokens"), "hotline")
    node.cli("add", "pdq", PDQ_CSAM, "-c", "csam", "--quality", "90")
    csam_op = node.cli("add", "md5", MD5_CSAM, "-c", "csam").stdout.strip()
    secret_op = node.cli("add", "md5", MD5_SECRET, "-c", "le-only").stdout.strip()
    tokens = {}
    for name, scopes, collections in [
        ("reader-csam", ["read"], ["csam"]),
        ("matcher-csam", ["match"], ["csam"]),
        ("publisher-csam", ["publish"], ["csam"]),
        ("reader-all", ["read"], []),
        ("matcher-all", ["match"], []),
    ]:
        args = ["token", "create", name]
        for s in scopes:
            args += ["--scope", s]
        for c in collections:
            args += ["--collection", c]
        tokens[name] = node.cli(*args).stdout.strip()
    node.start()
    yield {"node": node, "tokens": tokens, "csam_op": csam_op, "secret_op": secret_op}
    assert node.stop() == 0


def endpoints(world: dict[str, Any]) -> list[tuple[str, str, Any, str]]:
    """(method, path, body, scope) of every operator endpoint."""
    return [
        ("GET", "/v1/feed", None, "read"),
        ("GET", "/v1/feed/stream", None, "read"),
        ("GET", "/v1/snapshot", None, "read"),
        ("GET", "/v1/export?collection=csam", None, "read"),
        (
            "POST",
            "/v1/signals",
            {"type": "md5", "value": "1" * 32, "collection": "csam"},
            "publish",
        ),
        ("POST", "/v1/signals/batch", {"collection": "csam", "signals": []}, "publish"),
        ("POST", "/v1/revoke", {"op_id": world["csam_op"]}, "publish"),
        ("POST", "/v1/opinions", {"op_id": world["csam_op"], "opinion": "seen"}, "publish"),
        ("POST", "/v1/lists/import", {"collection": "csam", "adds": []}, "publish"),
        ("POST", "/v1/match", {"queries": [{"type": "md5", "value": MD5_SECRET}]}, "match"),
        ("POST", "/v1/match/file", {}, "match"),
        ("GET", "/v1/status", None, "admin"),
        ("POST", "/v1/import", {}, "admin"),
        ("GET", "/v1/admin/tokens", None, "admin"),
        ("POST", "/v1/admin/tokens", {"name": "x", "scopes": ["read"]}, "admin"),
        ("DELETE", "/v1/admin/tokens/reader-all", None, "admin"),
        (
            "POST",
            "/v1/admin/peers",
            {"name": "p", "url": "http://127.0.0.1:1", "node_id": "x"},
            "admin",
        ),
        ("POST", "/v1/admin/trust", {"node_id": "x", "collection": "csam"}, "admin"),
    ]


def assert_error(status: int, body: bytes, expected: int) -> None:
    assert status == expected, (status, body)
    assert set(json.loads(body)) == {"error"}
    for value in (*SECRET_VALUES, MD5_CSAM, PDQ_CSAM):
        assert value.encode() not in body


def test_missing_and_unknown_tokens_are_refused_with_401(world: dict[str, Any]) -> None:
    node: NodeProc = world["node"]
    for method, path, body, _ in endpoints(world):
        for token in (None, "hm_not-a-token"):
            status, data = request(node.url + path, method, token, body)
            assert_error(status, data, 401)
    status, data = request(node.url + "/v1/feed", token="")
    assert_error(status, data, 401)


def test_each_scope_opens_only_its_endpoints(world: dict[str, Any]) -> None:
    node: NodeProc = world["node"]
    scoped = {
        "read": world["tokens"]["reader-all"],
        "match": world["tokens"]["matcher-all"],
        "publish": world["tokens"]["publisher-csam"],
    }
    for method, path, body, needed in endpoints(world):
        for scope, token in scoped.items():
            if scope == needed:
                continue
            status, data = request(node.url + path, method, token, body)
            assert_error(status, data, 403)
            assert needed in json.loads(data)["error"]


def test_read_scope_sees_only_its_collections(world: dict[str, Any]) -> None:
    node: NodeProc = world["node"]
    token = world["tokens"]["reader-csam"]
    status, data = request(node.url + "/v1/feed", token=token)
    assert status == 200
    entries = json.loads(data)["entries"]
    assert {e["collection"] for e in entries} == {"csam"}
    assert MD5_SECRET.encode() not in data and MD5_CSAM.encode() in data
    for path in (
        "/v1/feed?collection=le-only",
        "/v1/feed/stream?collection=le-only",
        "/v1/snapshot?collection=le-only",
        "/v1/export?collection=le-only",
    ):
        status, data = request(node.url + path, token=token)
        assert_error(status, data, 403)
    status, data = request(node.url + "/v1/snapshot", token=token)
    assert status == 200
    lines = [json.loads(line) for line in data.splitlines()]
    assert lines[0]["collections"] == ["csam"]
    assert {row["value"] for row in lines[1:-1]} == {PDQ_CSAM, MD5_CSAM}
    assert MD5_SECRET.encode() not in data
    status, data = request(node.url + "/v1/export?collection=csam", token=token)
    assert status == 200
    assert MD5_CSAM.encode() in data and MD5_SECRET.encode() not in data
    stream = SSE(node.url, token, "?heartbeat=1")
    try:
        events = stream.events_until_idle()
    finally:
        stream.close()
    assert events and {e["collection"] for _, e in events} == {"csam"}
    assert all(e["value"] != MD5_SECRET for _, e in events)
    everything = json.loads(request(node.url + "/v1/feed", token=world["tokens"]["reader-all"])[1])
    assert {e["collection"] for e in everything["entries"]} == {"csam", "le-only"}


def test_match_scope_never_returns_a_forbidden_collection(world: dict[str, Any]) -> None:
    node: NodeProc = world["node"]
    queries = {
        "queries": [{"type": "md5", "value": MD5_SECRET}, {"type": "md5", "value": MD5_CSAM}]
    }
    token = world["tokens"]["matcher-csam"]
    status, data = request(node.url + "/v1/match", "POST", token, queries)
    assert status == 200
    result = json.loads(data)
    assert result["results"][0]["matches"] == []
    assert [m["collection"] for m in result["results"][1]["matches"]] == ["csam"]
    assert world["secret_op"].encode() not in data
    only_secret = {"queries": [{"type": "md5", "value": MD5_SECRET}]}
    status, data = request(
        node.url + "/v1/match", "POST", world["tokens"]["matcher-csam"], only_secret
    )
    assert json.loads(data)["matched"] is False
    status, data = request(
        node.url + "/v1/match", "POST", world["tokens"]["matcher-all"], only_secret
    )
    assert json.loads(data)["matched"] is True


def test_publish_scope_writes_only_its_collections(world: dict[str, Any]) -> None:
    node: NodeProc = world["node"]
    token = world["tokens"]["publisher-csam"]
    refused = [
        ("/v1/signals", {"type": "md5", "value": "2" * 32, "collection": "le-only"}),
        (
            "/v1/signals/batch",
            {"collection": "le-only", "signals": [{"type": "md5", "value": "2" * 32}]},
        ),
        ("/v1/revoke", {"op_id": world["secret_op"]}),
        ("/v1/opinions", {"op_id": world["secret_op"], "opinion": "dispute"}),
        ("/v1/opinions", {"op_id": world["csam_op"], "opinion": "seen", "collection": "le-only"}),
        (
            "/v1/lists/import",
            {"collection": "le-only", "adds": [{"type": "md5", "value": "2" * 32}]},
        ),
        ("/v1/signals", {"type": "md5", "value": "2" * 32}),
    ]
    cursor = node.status()["feed_cursor"]
    for path, body in refused:
        status, data = request(node.url + path, "POST", token, body)
        assert_error(status, data, 403)
    assert node.status()["feed_cursor"] == cursor
    status, data = request(
        node.url + "/v1/signals",
        "POST",
        token,
        {"type": "md5", "value": "3" * 32, "collection": "csam"},
    )
    assert status == 200 and json.loads(data)["new"] is True


def test_tokens_created_and_revoked_while_running_take_effect_at_once(
    world: dict[str, Any],
) -> None:
    node: NodeProc = world["node"]
    token = node.cli("token", "create", "late", "--scope", "read").stdout.strip()
    status, _ = request(node.url + "/v1/feed", token=token)
    assert status == 200
    listed = json.loads(node.cli("token", "list", "--json").stdout)
    assert token not in json.dumps(listed)
    assert {"late", "reader-csam"} <= {t["name"] for t in listed if t["live"]}
    node.cli("token", "revoke", "late")
    status, data = request(node.url + "/v1/feed", token=token)
    assert_error(status, data, 401)
    again = node.cli("token", "revoke", "late", check=False)
    assert again.returncode == 2 and "no such live token" in again.stderr
    status, data = request(node.url + "/v1/status", token=node.admin_token())
    assert status == 200


def test_tokens_offline_are_stored_hashed_and_validated(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "offline")
    created = json.loads(
        node.cli(
            "token", "create", "p1", "--scope", "match", "--collection", "csam", "--json"
        ).stdout
    )
    assert created["token"].startswith("hm_") and created["scopes"] == ["match"]
    with sqlite3.connect(node.home / "hashmesh.db") as db:
        stored = db.execute("SELECT hash FROM tokens").fetchall()
        dump = "\n".join(db.iterdump())
    assert created["token"] not in dump
    assert stored == [(hashlib.sha256(created["token"].encode()).hexdigest(),)]
    duplicate = node.cli("token", "create", "p1", "--scope", "read", check=False)
    assert duplicate.returncode == 2 and "already exists" in duplicate.stderr
    bad_scope = node.cli("token", "create", "p2", "--scope", "everything", check=False)
    assert bad_scope.returncode == 2
    bad_collection = node.cli(
        "token", "create", "p3", "--scope", "read", "--collection", "A B", check=False
    )
    assert bad_collection.returncode == 2 and "collection" in bad_collection.stderr
    revoked = json.loads(node.cli("token", "revoke", str(created["id"]), "--json").stdout)
    assert revoked["live"] is False
    node.start()
    try:
        status, data = request(
            node.url + "/v1/match",
            "POST",
            created["token"],
            {"queries": [{"type": "md5", "value": MD5_CSAM}]},
        )
        assert_error(status, data, 401)
    finally:
        assert node.stop() == 0


def test_admin_restricted_to_collections_is_refused_at_creation(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "hotline")
    for scopes in (["admin"], ["admin", "read"]):
        args = ["token", "create", "boss"]
        for s in scopes:
            args += ["--scope", s]
        offline = node.cli(*args, "--collection", "csam", check=False)
        assert offline.returncode == 2 and "--collection" in offline.stderr, offline.stderr
        assert offline.stderr.count("\n") == 1 and "admin" in offline.stderr
    node.start()
    try:
        online = node.cli(
            "token", "create", "boss", "--scope", "admin", "--collection", "csam", check=False
        )
        assert online.returncode == 2 and "--collection" in online.stderr, online.stderr
        status, data = request(
            node.url + "/v1/admin/tokens",
            "POST",
            node.admin_token(),
            {"name": "boss", "scopes": ["admin"], "collections": ["csam"]},
        )
        assert status == 400 and json.loads(data)["error"].startswith("collections:"), data
        listed = json.loads(node.cli("token", "list", "--json").stdout)
        assert "boss" not in {t["name"] for t in listed}
        # Unrestricted admin, and restricted non-admin scopes, are still fine.
        node.cli("token", "create", "boss", "--scope", "admin")
        node.cli("token", "create", "reader", "--scope", "read", "--collection", "csam")
    finally:
        assert node.stop() == 0


def test_stored_restricted_admin_token_has_no_admin_rights(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "hotline")
    node.cli("add", "md5", MD5_SECRET, "-c", "le-only")
    node.cli("token", "list")  # creates the tokens table, as any older version did
    token = node.store_legacy_restricted_admin("legacy-boss")
    node.start()
    try:
        admin_calls: list[tuple[str, str, Any]] = [
            ("GET", "/v1/status", None),
            ("GET", "/metrics", None),
            ("GET", "/v1/admin/tokens", None),
            ("POST", "/v1/admin/tokens", {"name": "minted", "scopes": ["admin"]}),
            (
                "POST",
                "/v1/admin/peers",
                {
                    "name": "p",
                    "url": "http://127.0.0.1:9",
                    "node_id": node.node_id,
                    "share": ["le-only"],
                },
            ),
            ("POST", "/v1/admin/backup", {"file": str(tmp_path / "stolen.db")}),
        ]
        for method, path, body in admin_calls:
            status, data = request(node.url + path, method, token, body)
            assert_error(status, data, 403)
            assert "restricted" in json.loads(data)["error"], data
        for path in ("/v1/feed", "/v1/snapshot"):
            status, data = request(node.url + path, token=token)
            assert_error(status, data, 403)
            assert MD5_SECRET.encode() not in data
        assert not (tmp_path / "stolen.db").exists()
        listed = json.loads(node.cli("token", "list", "--json").stdout)
        assert "minted" not in {t["name"] for t in listed}
        legacy = next(t for t in listed if t["name"] == "legacy-boss")
        assert "no admin rights" in legacy["warning"]
        assert "no admin rights" in (node.home / "run.log").read_text()
    finally:
        assert node.stop() == 0
