"""Access control, table-driven: every endpoint x every credential gives the documented
answer, and no hash of a restricted collection ever reaches a caller who may not read it.

MATRIX below is the single source: the test walks it against a running node, and the
"Access control matrix" section of docs/api.md is exactly `matrix_markdown()` (a test
keeps them equal). Requests that carry a collection target `le-only`, so the `@csam`
columns show a token whose scope fits but whose collections do not.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc
from testdata import IMAGES

from hashmesh.protocol.certificates import CertBody
from hashmesh.protocol.encoding import canonical
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.peerauth import sign_request
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import sign_statement
from hashmesh.protocol.statementsync import encode_fetch, encode_index_request, encode_statements
from hashmesh.protocol.sync import (
    decode_page,
    encode_fetch_request,
    encode_reconcile_request,
    encode_sync_request,
)
from hashmesh.protocol.witness import HeaderRequest

IMAGE = IMAGES / "bridge-1-original.jpg"
# The image's PDQ with 4 bits changed: /v1/match/file finds it, yet it is never the
# hash the node computes and echoes back for the upload.
PDQ_SECRET = "d8f8f0cce0f4a84f0e370a22028f67f0b36e2ed596623e1d33e6b39c4e9c9b2d"
MD5_SECRET = "5ec2e75ec2e75ec2e75ec2e75ec2e700"
SHA256_SECRET = "5ec2e7" * 10 + "beef"
SECRETS = (PDQ_SECRET, MD5_SECRET, SHA256_SECRET)
MD5_CSAM = "c5a0c5a0c5a0c5a0c5a0c5a0c5a0c5a0"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "api.md"

CREDENTIALS = (
    "none",
    "wrong",
    "revoked",
    "peer-key",
    "read",
    "match",
    "publish",
    "admin",
    "read@csam",
    "match@csam",
    "publish@csam",
    "admin@csam",
    "metrics",
    "metrics@csam",
)
#: Credentials that may read `le-only`; every other one must never see its hashes.
MAY_READ_SECRET = {"read", "match", "admin"}
OPEN = "open"  # no token needed, by design: the same answer for every credential

# Cell values: an HTTP status, or OPEN. Columns in the order of CREDENTIALS.
# fmt: off
MATRIX: list[tuple[str, tuple[int | str, ...]]] = [
    # (endpoint, (none, wrong, revoked, peer-key, read, match, publish, admin,
    #             read@csam, match@csam, publish@csam, admin@csam, metrics, metrics@csam))
    ("GET /v1/healthz",                        (OPEN,)*14),
    ("GET /healthz",                           (OPEN,)*14),
    ("GET /status",                            (OPEN,)*14),
    ("GET /takeitdown/api/info",               (OPEN,)*14),
    ("GET /v1/status",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/status/logs?limit=1000",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/status/history",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/status/recent?limit=500",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /metrics",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 200, 200)),
    # A matcher replica's poll (grants, heads, names): `replicate` only, which no column has.
    ("GET /v1/replica/state",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/signals",
     (401, 401, 401, 401, 403, 403, 200, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/signals/batch",
     (401, 401, 401, 401, 403, 403, 200, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/revoke",
     (401, 401, 401, 401, 403, 403, 200, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/opinions",
     (401, 401, 401, 401, 403, 403, 200, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/lists/import",
     (401, 401, 401, 401, 403, 403, 200, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/match",
     (401, 401, 401, 401, 403, 200, 403, 200, 403, 200, 403, 403, 403, 403)),
    ("POST /v1/match/file",
     (401, 401, 401, 401, 403, 200, 403, 200, 403, 200, 403, 403, 403, 403)),
    ("GET /v1/feed",
     (401, 401, 401, 401, 200, 403, 403, 200, 200, 403, 403, 403, 403, 403)),
    ("GET /v1/feed?collection=le-only",
     (401, 401, 401, 401, 200, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/feed/stream",
     (401, 401, 401, 401, 200, 403, 403, 200, 200, 403, 403, 403, 403, 403)),
    ("GET /v1/feed/stream?collection=le-only",
     (401, 401, 401, 401, 200, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/snapshot",
     (401, 401, 401, 401, 200, 403, 403, 200, 200, 403, 403, 403, 403, 403)),
    ("GET /v1/snapshot?collection=le-only",
     (401, 401, 401, 401, 200, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/export?collection=csam",
     (401, 401, 401, 401, 200, 403, 403, 200, 200, 403, 403, 403, 403, 403)),
    ("GET /v1/export?collection=le-only",
     (401, 401, 401, 401, 200, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/import",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/admin/tokens",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/admin/tokens",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/admin/tokens admin@csam",
     (401, 401, 401, 401, 403, 403, 403, 400, 403, 403, 403, 403, 403, 403)),
    ("DELETE /v1/admin/tokens/{name}",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/admin/peers",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/admin/trust",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/admin/statements",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/admin/key/prepare",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/admin/peers",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/admin/peers/{name}",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("PATCH /v1/admin/peers/{name}",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("DELETE /v1/admin/peers/{name}",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/admin/peers/{name}/share",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("DELETE /v1/admin/peers/{name}/share/{collection}",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/admin/trust",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("DELETE /v1/admin/trust/{node_id}/{collection}",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    # Match policy (issue 19): the node's own rules, told only to its operator.
    ("GET /v1/admin/policy",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/admin/policy/{collection}",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("PUT /v1/admin/policy/{collection}",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/admin/quarantine",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/admin/disputes",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    # Nothing is under quarantine in this world: admin's lift is the 404 naming the target.
    ("POST /v1/admin/quarantine/lift",
     (401, 401, 401, 401, 403, 403, 403, 404, 403, 403, 403, 403, 403, 403)),
    ("POST /v1/admin/backup",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/admin/selfreport",
     (401, 401, 401, 401, 403, 403, 403, 200, 403, 403, 403, 403, 403, 403)),
    ("GET /v1/no-such-route",
     (401, 401, 401, 401, 403, 403, 403, 404, 403, 403, 403, 403, 403, 403)),
]

PEER_CREDENTIALS = (
    "unsigned", "bearer admin", "bad signature", "replayed nonce", "unknown node",
    "peer without le-only", "peer with le-only",
)
PEER_MATRIX: list[tuple[str, tuple[int, ...]]] = [
    # endpoint                 unsg bear bsig repl unkn p-le p+le
    ("POST /v1/peer/sync",     (401, 401, 401, 401, 403, 200, 200)),
    ("POST /v1/peer/reconcile", (401, 401, 401, 401, 403, 200, 200)),
    ("POST /v1/peer/fetch",    (401, 401, 401, 401, 403, 200, 200)),
    ("POST /v1/peer/batches",  (401, 401, 401, 401, 403, 200, 200)),
    ("POST /v1/peer/evidence", (401, 401, 401, 401, 403, 200, 200)),
    ("POST /v1/peer/statements/index", (401, 401, 401, 401, 403, 200, 200)),
    ("POST /v1/peer/statements/fetch", (401, 401, 401, 401, 403, 200, 200)),
    ("POST /v1/peer/statements/push", (401, 401, 401, 401, 403, 200, 200)),
    # the node's own le-only header at seq 1: 404 (as if not held) without le-only
    ("POST /v1/peer/header",   (401, 401, 401, 401, 403, 200, 200)),
]
# fmt: on


def matrix_markdown() -> str:
    """The docs/api.md table, generated from MATRIX and PEER_MATRIX."""

    def cell(value: int | str) -> str:
        return "open" if value == OPEN else str(value)

    lines = [
        "| endpoint | " + " | ".join(CREDENTIALS) + " |",
        "| --- |" + " --- |" * len(CREDENTIALS),
    ]
    for endpoint, row in MATRIX:
        lines.append(f"| `{endpoint}` | " + " | ".join(cell(c) for c in row) + " |")
    lines += [
        "",
        "| peer endpoint | " + " | ".join(PEER_CREDENTIALS) + " |",
        "| --- |" + " --- |" * len(PEER_CREDENTIALS),
    ]
    for endpoint, prow in PEER_MATRIX:
        lines.append(f"| `{endpoint}` | " + " | ".join(str(c) for c in prow) + " |")
    return "\n".join(lines) + "\n"


# -- the world ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("access")
    node = NodeProc(root, "hotline")
    node.cli("add", "md5", MD5_CSAM, "-c", "csam")
    node.cli("add", "md5", MD5_SECRET, "-c", "le-only")
    node.cli("add", "sha256", SHA256_SECRET, "-c", "le-only")
    node.cli("add", "pdq", PDQ_SECRET, "-c", "le-only", "--quality", "100")
    tokens: dict[str, str] = {}
    for name, scope, collection in [
        ("read", "read", None),
        ("match", "match", None),
        ("publish", "publish", None),
        ("admin", "admin", None),
        ("read@csam", "read", "csam"),
        ("match@csam", "match", "csam"),
        ("publish@csam", "publish", "csam"),
        ("revoked", "admin", None),
        ("metrics", "metrics", None),
        ("metrics@csam", "metrics", "csam"),
    ]:
        args = ["token", "create", name.replace("@", "-at-"), "--scope", scope]
        if collection:
            args += ["--collection", collection]
        tokens[name] = node.cli(*args).stdout.strip()
    node.cli("token", "revoke", "revoked")
    refused = node.cli(
        "token", "create", "admin-at-csam", "--scope", "admin", "--collection", "csam", check=False
    )
    assert refused.returncode == 2 and "--collection" in refused.stderr, refused.stderr
    tokens["admin@csam"] = node.store_legacy_restricted_admin("admin-at-csam")
    keys = {name: SigningKey(os.urandom(32)) for name in ("peer-csam", "peer-le", "unknown")}
    node.cli(
        "peer",
        "add",
        "peer-csam",
        "http://127.0.0.1:9",
        keys["peer-csam"].node_id,
        "--share",
        "csam",
    )
    node.cli(
        "peer",
        "add",
        "peer-le",
        "http://127.0.0.1:9",
        keys["peer-le"].node_id,
        "--share",
        "csam",
        "--share",
        "le-only",
    )
    node.start()
    world: dict[str, Any] = {
        "node": node,
        "tokens": tokens,
        "keys": keys,
        "admin_file": node.admin_token(),
        "tmp": root,
    }
    status, bundle = call(world, "GET", "/v1/export?collection=csam", token=node.admin_token())
    assert status == 200
    world["bundle"] = bundle
    yield world
    assert node.stop() == 0


def call(
    world: dict[str, Any],
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    content_type: str = "application/json",
) -> tuple[int, bytes]:
    """One request; a streaming 200 is read for about a second (live feeds never end)."""
    node: NodeProc = world["node"]
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    try:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            all_headers.setdefault("Content-Type", content_type)
        conn.connect()
        sock = conn.sock  # a stream answered with Connection: close hands it to the response
        assert sock is not None
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        if response.getheader("Content-Type", "").startswith("text/event-stream"):
            sock.settimeout(1.0)  # the backlog comes at once, then the stream waits
            chunks = []
            while True:
                try:
                    chunk = response.read1(65536)
                except OSError:  # timed out: everything sent so far has been read
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return response.status, b"".join(chunks)
        return response.status, response.read()
    finally:
        conn.close()


def _fresh_le_only_op(world: dict[str, Any]) -> str:
    """A new live add in le-only (by the admin token file) for revoke and opinion rows."""
    value = uuid.uuid4().hex
    status, data = call(
        world,
        "POST",
        "/v1/signals",
        json.dumps({"type": "md5", "value": value, "collection": "le-only"}).encode(),
        token=world["admin_file"],
    )
    assert status == 200, data
    return str(json.loads(data)["op_id"])


def _fresh_token_name(world: dict[str, Any]) -> str:
    name = "tmp" + uuid.uuid4().hex[:10]
    status, _ = call(
        world,
        "POST",
        "/v1/admin/tokens",
        json.dumps({"name": name, "scopes": ["read"]}).encode(),
        token=world["admin_file"],
    )
    assert status == 200
    return name


def _fresh_peer(world: dict[str, Any]) -> str:
    """A new peer (sharing csam) for the rows that change or remove one."""
    name = "p" + uuid.uuid4().hex[:12]
    body = {
        "name": name,
        "url": "http://127.0.0.1:9",
        "share": ["csam"],
        "node_id": SigningKey(os.urandom(32)).node_id,
    }
    status, _ = call(
        world, "POST", "/v1/admin/peers", json.dumps(body).encode(), token=world["admin_file"]
    )
    assert status == 200
    return name


def _fresh_trust(world: dict[str, Any]) -> str:
    node_id = SigningKey(os.urandom(32)).node_id
    status, _ = call(
        world,
        "POST",
        "/v1/admin/trust",
        json.dumps({"node_id": node_id, "collection": "csam"}).encode(),
        token=world["admin_file"],
    )
    assert status == 200
    return node_id


def _multipart() -> tuple[bytes, str]:
    boundary = "matrixboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + IMAGE.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def request_for(world: dict[str, Any], endpoint: str) -> tuple[str, str, bytes | None, str]:
    """(method, path, body, content type) of a valid request for one matrix row."""
    method, path = endpoint.split(" ", 1)
    path, _, variant = path.partition(" ")
    ctype = "application/json"
    fresh = uuid.uuid4().hex
    if variant == "admin@csam":  # an admin token restricted to csam: refused at creation
        body = {"name": "t" + fresh[:12], "scopes": ["admin"], "collections": ["csam"]}
        return method, path, json.dumps(body).encode(), ctype
    bodies: dict[str, Callable[[], Any]] = {
        "/v1/signals": lambda: {"type": "md5", "value": fresh, "collection": "le-only"},
        "/v1/signals/batch": lambda: {
            "collection": "le-only",
            "signals": [{"type": "md5", "value": fresh}],
        },
        "/v1/revoke": lambda: {"op_id": _fresh_le_only_op(world)},
        "/v1/opinions": lambda: {"op_id": _fresh_le_only_op(world), "opinion": "seen"},
        "/v1/lists/import": lambda: {
            "collection": "le-only",
            "adds": [{"type": "md5", "value": fresh}],
        },
        "/v1/match": lambda: {
            "queries": [
                {"type": "md5", "value": MD5_SECRET},
                {"type": "sha256", "value": SHA256_SECRET},
                {"type": "pdq", "value": PDQ_SECRET},
                {"type": "md5", "value": MD5_CSAM},
            ]
        },
        "/v1/admin/tokens": lambda: {"name": "t" + fresh[:12], "scopes": ["read"]},
        "/v1/admin/peers": lambda: {
            "name": "p" + fresh[:12],
            "url": "http://127.0.0.1:9",
            "node_id": SigningKey(os.urandom(32)).node_id,
            "share": ["csam"],
        },
        "/v1/admin/trust": lambda: {
            "node_id": SigningKey(os.urandom(32)).node_id,
            "collection": "csam",
        },
        "/v1/admin/statements": lambda: {"statement": _fresh_cert(), "kind": "cert"},
        "/v1/admin/key/prepare": lambda: {},
        "/v1/admin/backup": lambda: {"file": str(world["tmp"] / f"backup-{fresh}.db")},
        "/v1/admin/quarantine/lift": lambda: {"target": MD5_CSAM},
    }
    body: bytes | None = None
    if path in bodies:
        body = json.dumps(bodies[path]()).encode()
    elif path == "/v1/match/file":
        body, ctype = _multipart()
    elif path == "/v1/import":
        body, ctype = world["bundle"], "application/octet-stream"
    elif path == "/v1/admin/tokens/{name}":
        path = "/v1/admin/tokens/" + _fresh_token_name(world)
    elif path.startswith("/v1/admin/peers/{name}"):
        path = path.replace("{name}", _fresh_peer(world)).replace("{collection}", "csam")
        if method == "PATCH":
            body = json.dumps({"share": ["csam", "ncii"]}).encode()
        elif method == "POST":
            body = json.dumps({"collection": "ncii"}).encode()
    elif path == "/v1/admin/policy/{collection}":
        # A collection nothing is held in: a policy there changes no other row's answer.
        path = "/v1/admin/policy/matrix-policy"
        if method == "PUT":
            body = json.dumps({"threshold": 20, "quorum": 2}).encode()
    elif path == "/v1/admin/trust/{node_id}/{collection}":
        path = f"/v1/admin/trust/{_fresh_trust(world)}/csam"
    return method, path, body, ctype


def credential_headers(
    world: dict[str, Any], credential: str, method: str, path: str, body: bytes | None
) -> tuple[str | None, dict[str, str]]:
    """(bearer token, extra headers) for one credential column."""
    if credential == "none":
        return None, {}
    if credential == "wrong":
        return "hm_" + "x" * 43, {}
    if credential == "peer-key":  # a configured peer's valid signature, on an operator path
        node: NodeProc = world["node"]
        headers = sign_request(
            world["keys"]["peer-le"],
            node.node_id,
            method,
            path,
            body or b"",
            int(time.time() * 1000),
            os.urandom(16),
        )
        return None, headers
    return world["tokens"][credential], {}


def visible(path: str, data: bytes) -> bytes:
    """What the answer reveals beyond the caller's own input: a match echoes the queried
    values and the upload's own hashes, which the caller already had."""
    if path.startswith("/v1/match"):
        try:
            value = json.loads(data)
        except ValueError:
            return data
        value.pop("hashes", None)
        for entry in value.get("results", []):
            entry.pop("query", None)
        return json.dumps(value).encode()
    return data


def test_matrix_rows_and_columns_are_complete() -> None:
    assert all(len(row) == len(CREDENTIALS) for _, row in MATRIX)
    assert all(len(row) == len(PEER_CREDENTIALS) for _, row in PEER_MATRIX)
    assert len({e for e, _ in MATRIX}) == len(MATRIX)


def test_docs_hold_the_matrix() -> None:
    text = DOCS.read_text()
    assert "## Access control matrix" in text
    assert matrix_markdown() in text, "docs/api.md: regenerate the table from matrix_markdown()"


@pytest.mark.parametrize("endpoint,row", MATRIX, ids=[e for e, _ in MATRIX])
def test_operator_endpoint_answers_per_credential(
    world: dict[str, Any], endpoint: str, row: tuple[int | str, ...]
) -> None:
    answers: dict[str, tuple[int, bytes]] = {}
    for credential, expected in zip(CREDENTIALS, row, strict=True):
        method, path, body, ctype = request_for(world, endpoint)
        token, headers = credential_headers(world, credential, method, path, body)
        status, data = call(world, method, path, body, token, headers, ctype)
        answers[credential] = (status, data)
        if expected == OPEN:
            assert status not in (401, 403), (credential, status, data[:300])
            assert status == answers["none"][0], (credential, status)
        else:
            assert status == expected, (endpoint, credential, status, data[:300])
        if status >= 400 and data:
            assert "error" in json.loads(data), data[:300]
        if credential not in MAY_READ_SECRET:
            shown = visible(path, data)
            for secret in SECRETS:
                assert secret.encode() not in shown, (endpoint, credential, secret)


@pytest.mark.parametrize(
    "endpoint",
    [
        "GET /v1/feed",
        "GET /v1/snapshot",
        "GET /v1/export?collection=le-only",
        "POST /v1/match",
        "POST /v1/match/file",
        "GET /v1/status/recent?limit=500",
    ],
)
def test_positive_control_the_secret_is_there_for_who_may_read_it(
    world: dict[str, Any], endpoint: str
) -> None:
    """The leak checks are not vacuous: an unrestricted token does see le-only's hashes."""
    method, path, body, ctype = request_for(world, endpoint)
    status, data = call(world, method, path, body, world["tokens"]["admin"], {}, ctype)
    assert status == 200
    shown = visible(path, data)
    assert any(secret.encode() in shown for secret in SECRETS), (endpoint, shown[:500])


def test_restricted_match_drops_the_restricted_collection(world: dict[str, Any]) -> None:
    method, path, body, ctype = request_for(world, "POST /v1/match")
    results = {}
    for who in ("match", "match@csam"):
        status, data = call(world, method, path, body, world["tokens"][who], {}, ctype)
        assert status == 200
        results[who] = [bool(r["matches"]) for r in json.loads(data)["results"]]
    assert results["match"] == [True, True, True, True]
    assert results["match@csam"] == [False, False, False, True]


# -- peer endpoints -------------------------------------------------------------------------


def _fresh_cert() -> dict[str, Any]:
    """A certificate of a random key by a random org: installing it changes no other row."""
    org, key = SigningKey(os.urandom(32)), SigningKey(os.urandom(32))
    body = CertBody(ts=1, org=org.node_id, key=key.node_id, not_before=0, not_after=1)
    return sign_statement(body, [org], REGISTRY).to_json()


def _peer_body(path: str) -> bytes:
    if path == "/v1/peer/sync":
        return encode_sync_request({}, ["csam", "le-only"], [])
    if path == "/v1/peer/evidence":
        return canonical({"evidence": []})
    if path == "/v1/peer/reconcile":
        return encode_reconcile_request(["csam", "le-only"], [], "")
    if path == "/v1/peer/fetch":
        return encode_fetch_request({})
    if path == "/v1/peer/statements/index":
        return encode_index_request("")
    if path == "/v1/peer/statements/fetch":
        return encode_fetch(["0" * 64])
    if path == "/v1/peer/statements/push":
        return encode_statements([])
    return b""


def _peer_call(world: dict[str, Any], credential: str, path: str) -> tuple[int, bytes]:
    node: NodeProc = world["node"]
    body = _peer_body(path)
    if path == "/v1/peer/header":
        body = HeaderRequest(node.node_id, "le-only", 1).to_bytes()
    key_name = {"unknown node": "unknown", "peer without le-only": "peer-csam"}.get(
        credential, "peer-le"
    )
    key: SigningKey = world["keys"][key_name]
    headers = sign_request(
        key, node.node_id, "POST", path, body, int(time.time() * 1000), os.urandom(16)
    )
    headers["Content-Type"] = "application/octet-stream"
    if credential == "unsigned":
        return call(world, "POST", path, body, None, {"Content-Type": "application/json"})
    if credential == "bearer admin":
        return call(world, "POST", path, body, world["admin_file"], {})
    if credential == "bad signature":
        headers["X-Hashmesh-Signature"] = headers["X-Hashmesh-Signature"][::-1]
    if credential == "replayed nonce":
        first, _ = call(world, "POST", path, body, None, headers)
        assert first == 200
    return call(world, "POST", path, body, None, headers)


@pytest.mark.parametrize("endpoint,row", PEER_MATRIX, ids=[e for e, _ in PEER_MATRIX])
def test_peer_endpoint_answers_per_credential(
    world: dict[str, Any], endpoint: str, row: tuple[int, ...]
) -> None:
    path = endpoint.split(" ", 1)[1]
    for credential, expected in zip(PEER_CREDENTIALS, row, strict=True):
        status, data = _peer_call(world, credential, path)
        assert status == expected, (endpoint, credential, status, data[:300])
        if credential != "peer with le-only":
            for secret in SECRETS:
                assert secret.encode() not in data, (endpoint, credential, secret)


def test_sync_page_for_a_peer_without_le_only_holds_none_of_it(world: dict[str, Any]) -> None:
    pages = {}
    for credential in ("peer without le-only", "peer with le-only"):
        status, data = _peer_call(world, credential, "/v1/peer/sync")
        assert status == 200
        pages[credential] = data
    without = decode_page(pages["peer without le-only"])
    assert {json.loads(h)["collection"] for h, _, _ in without.frames} == {"csam"}
    assert all(k.collection != "le-only" for k in without.vector)
    with_le = decode_page(pages["peer with le-only"])
    assert "le-only" in {json.loads(h)["collection"] for h, _, _ in with_le.frames}
    assert all(s.encode() in pages["peer with le-only"] for s in SECRETS)


def test_restricted_admin_is_refused_at_creation_naming_the_field(world: dict[str, Any]) -> None:
    method, path, body, ctype = request_for(world, "POST /v1/admin/tokens admin@csam")
    status, data = call(world, method, path, body, world["admin_file"], {}, ctype)
    assert status == 400 and json.loads(data)["error"].startswith("collections:"), data
    status, data = call(world, "GET", "/v1/admin/tokens", token=world["admin_file"])
    assert status == 200
    names = {t["name"] for t in json.loads(data)["tokens"]}
    assert json.loads(body or b"{}")["name"] not in names
