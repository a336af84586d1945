"""The operator HTTP API of a running node: matching (JSON batch and image upload) and the
clear 4xx answers to bad input."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc
from PIL import Image
from testdata import IMAGES

BRIDGE = IMAGES / "bridge-1-original.jpg"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    n = NodeProc(tmp_path_factory.mktemp("api"), "hotline")
    n.cli("submit", str(BRIDGE), "-c", "csam", "--category", "csam")
    n.start()
    yield n
    assert n.stop() == 0


def call(
    node: NodeProc,
    path: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    token: str | None = None,
) -> tuple[int, Any]:
    headers = {
        "Authorization": f"Bearer {token or node.admin_token()}",
        "Content-Type": content_type,
    }
    request = urllib.request.Request(
        node.url + path, data=body, headers=headers, method="GET" if body is None else "POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def multipart(data: bytes, filename: str = "upload.jpg") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def reencoded(path: Path) -> bytes:
    with Image.open(path) as image:
        copy = image.convert("RGB").resize((image.width // 2, image.height // 2))
        out = io.BytesIO()
        copy.save(out, format="JPEG", quality=55)
        return out.getvalue()


def test_upload_of_a_reencoded_copy_matches_by_pdq_with_provenance(node: NodeProc) -> None:
    body, ctype = multipart(reencoded(BRIDGE))
    status, result = call(node, "/v1/match/file", body, ctype)
    assert status == 200 and result["matched"] is True
    pdq = next(r for r in result["results"] if r["query"]["type"] == "pdq")
    hit = pdq["matches"][0]
    assert 0 <= hit["distance"] <= 31
    assert hit["author"] == node.node_id and hit["author_name"] == "hotline"
    assert hit["collection"] == "csam" and hit["category"] == "csam"
    assert hit["opinions"] == {"confirm": 0, "dispute": 0, "seen": 0}
    assert result["hashes"]["pdq"] == pdq["query"]["value"]
    # exact hashes of a re-encoded copy differ, so only PDQ matched
    assert all(not r["matches"] for r in result["results"] if r["query"]["type"] != "pdq")


def test_batch_match_answers_each_query(node: NodeProc) -> None:
    hashes = json.loads(node.cli("hash", str(BRIDGE), "--json").stdout)[0]
    queries = [
        {"type": "md5", "value": hashes["md5"].upper()},
        {"type": "sha256", "value": "0" * 64},
        {"type": "pdq", "value": hashes["pdq"]},
    ]
    status, result = call(node, "/v1/match", json.dumps({"queries": queries}).encode())
    assert status == 200
    assert [bool(r["matches"]) for r in result["results"]] == [True, False, True]
    assert result["results"][2]["matches"][0]["distance"] == 0


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "empty"),
        (b"[1, 2]", "JSON object"),
        (b"{not json", "not valid JSON"),
        (
            json.dumps({"queries": [{"type": "pdq", "value": "ab" * 16}]}).encode(),
            "expected 64 hex",
        ),
        (
            json.dumps({"queries": [{"type": "pdq", "value": "zz" * 32}]}).encode(),
            "not a hex digit",
        ),
        (json.dumps({"queries": [{"type": "tlsh", "value": "ab"}]}).encode(), "unknown type"),
        (json.dumps({"queries": []}).encode(), "non-empty list"),
        (
            json.dumps({"queries": [{"type": "md5", "value": "0" * 32}], "threshold": 99}).encode(),
            "threshold",
        ),
        (
            json.dumps({"queries": [{"type": "md5", "value": "0" * 32}], "extra": 1}).encode(),
            "unknown field",
        ),
    ],
)
def test_bad_match_requests_get_a_clear_4xx(node: NodeProc, body: bytes, needle: str) -> None:
    status, result = call(node, "/v1/match", body)
    assert 400 <= status < 500
    assert needle in result["error"]


def test_bad_uploads_get_a_clear_4xx(node: NodeProc) -> None:
    body, ctype = multipart(b"this is not an image at all")
    status, result = call(node, "/v1/match/file", body, ctype)
    assert status == 400 and result["error"].startswith("upload:")
    status, result = call(node, "/v1/match/file", b"{}", "application/json")
    assert status == 400 and "multipart" in result["error"]
    body, ctype = multipart(b"")
    status, result = call(node, "/v1/match/file", body, ctype)
    assert status == 400 and "empty" in result["error"]
    body, ctype = multipart(b"\xff" * (51 * 1024 * 1024))
    status, result = call(node, "/v1/match/file", body, ctype)
    assert status == 413
    assert call(node, "/v1/healthz")[0] == 200


def test_revoked_signal_never_matches_again(node: NodeProc) -> None:
    pdq = "d8f8f0cce0f4a84f0e370a22028f67f0b36e2ed596623e1d33e6b39c4e9c9b22"
    op_id = node.cli("add", "pdq", pdq, "-c", "csam").stdout.strip()
    near = pdq[:-4] + "64dd"  # 16 bits flipped
    query = json.dumps({"queries": [{"type": "pdq", "value": near}]}).encode()
    assert call(node, "/v1/match", query)[1]["matched"] is True
    status, _ = call(node, "/v1/revoke", json.dumps({"op_id": op_id, "reason": "test"}).encode())
    assert status == 200
    assert call(node, "/v1/match", query)[1]["matched"] is False


def test_requests_without_the_admin_token_are_refused(node: NodeProc) -> None:
    status, result = call(node, "/v1/status", token="hm_wrong")
    assert status == 401 and "token" in result["error"]
    status, result = call(node, "/v1/nowhere")
    assert status == 404 and result["error"]


def test_identical_concurrent_adds_publish_one_op(node: NodeProc) -> None:
    from concurrent.futures import ThreadPoolExecutor

    body = json.dumps({"type": "md5", "value": "ab" * 16, "collection": "dupes"}).encode()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: call(node, "/v1/signals", body), range(8)))
    assert all(status == 200 for status, _ in answers)
    assert len({answer["op_id"] for _, answer in answers}) == 1
    assert sum(answer["new"] for _, answer in answers) == 1
    status = node.status()
    assert status["live_by_collection"]["dupes"] == 1
