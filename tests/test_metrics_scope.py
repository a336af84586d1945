"""The `metrics` scope: a Prometheus scraper reads /metrics and nothing else.

Before it, scraping took the admin token, so the scraper's credentials file could mint
tokens and add peers. A `metrics` token restricted to collections sees only the series
labelled with them (tests/test_access_matrix.py has the status of every endpoint for both
kinds of `metrics` token; this file checks what the answer holds).
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc

from hashmesh.protocol.signing import SigningKey

MD5_CSAM = "5d41402abc4b2a76b9719d911017c592"
MD5_LE = "0cc175b9c0f1b6a831c399e269772661"
SHA256_LE = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    proc = NodeProc(tmp_path_factory.mktemp("metrics"), "hotline")
    proc.cli("add", "md5", MD5_CSAM, "-c", "csam")
    proc.cli("add", "md5", MD5_LE, "-c", "le-only")
    proc.cli("add", "sha256", SHA256_LE, "-c", "le-only")
    proc.cli(
        "peer",
        "add",
        "police",
        "http://127.0.0.1:9",
        SigningKey(os.urandom(32)).node_id,
        "--share",
        "csam",
    )
    proc.start()
    yield proc
    assert proc.stop() == 0


def get(node: NodeProc, path: str, token: str, body: Any = None) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request("GET" if body is None else "POST", path, body=data, headers=headers)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def token(node: NodeProc, name: str, *args: str) -> str:
    return str(node.cli("token", "create", name, "--scope", "metrics", *args).stdout.strip())


def series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_metrics_token_scrapes_everything_an_admin_token_does(node: NodeProc) -> None:
    status, text = get(node, "/metrics", token(node, "scraper"))
    assert status == 200
    assert 'hashmesh_live_signals{collection="csam"} 1.0' in text
    assert 'hashmesh_live_signals{collection="le-only"} 2.0' in text
    assert 'hashmesh_peer_reachable{peer="police"}' in text
    assert "hashmesh_http_requests_total" in text
    _, admin_text = get(node, "/metrics", node.admin_token())
    names = {line.split("{")[0].split(" ")[0] for line in series(text)}
    admin_names = {line.split("{")[0].split(" ")[0] for line in series(admin_text)}
    assert names == admin_names


def test_restricted_metrics_token_sees_only_its_collections_series(node: NodeProc) -> None:
    status, text = get(node, "/metrics", token(node, "scraper-csam", "--collection", "csam"))
    assert status == 200
    assert series(text) == ['hashmesh_live_signals{collection="csam"} 1.0']
    assert "le-only" not in text and "police" not in text
    assert "# HELP hashmesh_live_signals" in text  # still valid exposition text


def test_metrics_token_reaches_nothing_else(node: NodeProc) -> None:
    scraper = token(node, "scraper-only")
    for path, body in [
        ("/v1/status", None),
        ("/v1/admin/tokens", None),
        ("/v1/feed", None),
        ("/v1/status/history", None),
        ("/v1/match", {"queries": [{"type": "md5", "value": MD5_LE}]}),
    ]:
        status, text = get(node, path, scraper, body)
        assert status == 403, (path, status, text)
        assert "lacks the" in json.loads(text)["error"]
        assert MD5_LE not in text
    status, _ = get(node, "/v1/admin/tokens", scraper, {"name": "minted", "scopes": ["admin"]})
    assert status == 403
    listed = node.cli("token", "list", "--json").stdout
    assert "minted" not in listed


def test_cli_creates_and_lists_a_metrics_token(tmp_path: Path) -> None:
    proc = NodeProc(tmp_path, "solo")
    created = json.loads(proc.cli("token", "create", "prom", "--scope", "metrics", "--json").stdout)
    assert created["scopes"] == ["metrics"]
    tokens = json.loads(proc.cli("token", "list", "--json").stdout)
    assert [(t["name"], t["scopes"]) for t in tokens] == [("prom", ["metrics"])]
