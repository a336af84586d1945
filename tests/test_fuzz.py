"""Fuzzing every parser and every HTTP endpoint: only the documented errors may come out.

Protocol parsers may raise only `ProtocolError` subclasses; importers may yield only
`ImportRecord` / `ImportIssue` and raise only `ImportFormatError`; a running node answers
every request with a success or a 4xx JSON error (never a 5xx, never a dropped connection)
and is still healthy afterwards, with no traceback in its log.

Inputs are both raw bytes and structured mutations of valid inputs (byte flips,
truncations, insertions, duplicated ranges, JSON-shape mutations, and re-signed batches
whose mutated content gets past the signature check to the deeper validation).

The default run is short (about 100 examples per target). A long run, started by hand:

    make fuzz        # HYPOTHESIS_PROFILE=fuzz: thousands of examples per target
"""

from __future__ import annotations

import http.client
import io
import itertools
import json
import os
import re
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from netnodes import NodeProc, wait_for
from protocol_helpers import KEYS, MD5, PDQ, PHOTODNA, SHA1, SHA256, add, chain, opinion, revoke
from testdata import FORMATS, IMAGES

from hashmesh.node.lists.importers import ImportFormatError, ImportIssue, ImportRecord, parse_file
from hashmesh.protocol.batches import (
    CONTEXT_BATCH,
    encode_frame,
    iter_frames,
    split_frame,
    verify_batch,
    verify_parts,
)
from hashmesh.protocol.bundles import BundleCheck, BundleDecoder, encode_bundle_header
from hashmesh.protocol.encoding import b64url, canonical, from_b64url, from_hex, parse_canonical
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.evidence import SignedHeader, build_evidence, verify_evidence
from hashmesh.protocol.merkle import merkle_root
from hashmesh.protocol.ops import OpId, parse_op, parse_ops
from hashmesh.protocol.peerauth import sign_request, verify_request
from hashmesh.protocol.proofs import build_proof, verify_proof
from hashmesh.protocol.signals import Signal, signal_types
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.sync import (
    decode_page,
    decode_reconcile,
    encode_fetch_request,
    encode_page,
    encode_reconcile,
    encode_reconcile_request,
    encode_sync_request,
    parse_fetch_request,
    parse_reconcile_request,
    parse_sync_request,
    reconcile_answer,
    vector_from_wire,
)

# -- profiles -------------------------------------------------------------------------------

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "")
_QUIET = [
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
    HealthCheck.filter_too_much,
    HealthCheck.large_base_example,
]
settings.register_profile(
    "fuzz", max_examples=5000, deadline=None, suppress_health_check=_QUIET, print_blob=True
)
if PROFILE == "fuzz":
    settings.load_profile("fuzz")


def fuzz(examples: int = 100) -> settings:
    """Short by default; thousands of examples under HYPOTHESIS_PROFILE=fuzz (`make fuzz`)."""
    if PROFILE == "fuzz":
        return settings(settings.get_profile("fuzz"))
    return settings(max_examples=examples, deadline=None, suppress_health_check=_QUIET)


# -- mutation strategies --------------------------------------------------------------------

INTERESTING = [
    b"\x00",
    b"\xff",
    b'"',
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b"\n",
    b"0",
    b"9",
    b"-",
    b"\\",
    b"\xc2\xb2",
    b"\xd9\xa3",
    b"null",
    b"1e9",
    b"\xed\xa0\x80",
    b" ",
]


@st.composite
def mutated(draw: st.DrawFn, valid: bytes | st.SearchStrategy[bytes]) -> bytes:
    """A valid input with 1-4 mutations: flips, truncation, insertion, deletion, duplication."""
    data = bytearray(draw(valid) if isinstance(valid, st.SearchStrategy) else valid)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "dup", "set"]))
        n = len(data)
        pos = draw(st.integers(0, max(0, n - 1)))
        if kind == "flip" and n:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[draw(st.integers(0, n)) :]
        elif kind == "insert":
            data[pos:pos] = draw(
                st.one_of(st.binary(min_size=1, max_size=16), st.sampled_from(INTERESTING))
            )
        elif kind == "delete" and n:
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == "dup" and n:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
        elif kind == "set" and n:
            data[pos] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80, ord('"'), ord("0"), ord("{")]))
    return bytes(data)


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**64), 2**64),
        st.sampled_from([0, 1, -1, 2**53, 2**53 - 1, 64, 65, 100, 101]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=40),
        st.sampled_from(
            [
                "",
                "csam",
                "le-only",
                "md5",
                "pdq",
                "add",
                "revoke",
                "opinion",
                MD5,
                PDQ,
                "²",
                "\u0661\u0662",
                "ed25519:" + "A" * 43,
                "..",
                "/",
                "\x00",
                "\ud800",
            ]
        ),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def _paths(node: Any, path: list[Any]) -> list[list[Any]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, [*path, k])
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, [*path, i])
    return out


@st.composite
def json_mutated(draw: st.DrawFn, value: Any) -> Any:
    """A JSON value with 1-3 shape mutations: a value replaced, a key dropped or added,
    a list emptied or grown, a container swapped for a scalar."""
    value = json.loads(json.dumps(value))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(value, [])
        path = draw(st.sampled_from(paths))
        parent: Any = None
        node = value
        for part in path:
            parent, node = node, node[part]
        kind = draw(st.sampled_from(["replace", "drop", "add", "grow", "empty"]))
        if kind == "replace" or (kind == "drop" and parent is None):
            new = draw(json_values())
            if parent is None:
                value = new
            else:
                parent[path[-1]] = new
        elif kind == "drop":
            del parent[path[-1]]
        elif kind == "add" and isinstance(node, dict):
            node[draw(st.text(max_size=8))] = draw(json_values(3))
        elif kind == "grow" and isinstance(node, list):
            node.extend([node[0] if node else None] * draw(st.integers(1, 3)))
        elif kind == "empty" and isinstance(node, list | dict):
            node.clear()
    return value


def encode_any(value: Any) -> bytes:
    """Canonical bytes when possible, else plain JSON (so non-canonical forms are fuzzed too)."""
    try:
        return canonical(value)
    except ProtocolError:
        return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


def only_protocol_errors(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ProtocolError:
        return None


# -- valid inputs ---------------------------------------------------------------------------

KEY, OTHER = KEYS[0], KEYS[1]
LOG = chain(
    KEY,
    "csam",
    [
        [add(1), add(2, "pdq"), add(3, "photodna"), add(4, "sha1"), add(5, "sha256")],
        [revoke(f"{KEY.node_id}/csam/1/0"), opinion(f"{OTHER.node_id}/csam/1/0", "dispute")],
    ],
)
FRAMES = [b.to_bytes() for b in LOG]
PROOF = build_proof(LOG[0], 2)
FORK_A = chain(KEY, "csam", [[add(9)]])[0]
FORK_B = chain(KEY, "csam", [[add(10)]])[0]
EVIDENCE = build_evidence(
    SignedHeader(FORK_A.header_bytes, FORK_A.signature),
    SignedHeader(FORK_B.header_bytes, FORK_B.signature),
).to_bytes()
BUNDLE = encode_bundle_header({"v": 1, "collections": ["csam"]}) + b"".join(FRAMES)
SYNC_REQUEST = encode_sync_request({LOG[0].log: 1}, ["csam", "ncii"], ["csam"])
RECONCILE_REQUEST = encode_reconcile_request(["csam", "ncii"], ["csam"], "")
RECONCILE_ANSWER = encode_reconcile(reconcile_answer({LOG[0].log: 1}, "", None, ["csam"], []))
FETCH_REQUEST = encode_fetch_request({LOG[0].log: 0})
PAGE = encode_page({LOG[0].log: 2}, FRAMES, True, [EVIDENCE], ["csam"])
OP_WIRES = [json.loads(line) for b in LOG for line in b.op_lines()]
OP_ID = f"{KEY.node_id}/csam/1/0"
SIGNAL_VALUES = {"md5": MD5, "sha1": SHA1, "sha256": SHA256, "pdq": PDQ, "photodna": PHOTODNA}


def resign(header: dict[str, Any], ops_bytes: bytes, fix: bool) -> bytes:
    """A frame whose (possibly mutated) header is validly signed, so parsing goes deeper;
    with `fix`, count/size/root also describe the (possibly mutated) ops."""
    if fix:
        lines = ops_bytes.split(b"\n")
        header = {
            **header,
            "count": len(lines),
            "size": len(ops_bytes),
            "root": merkle_root(lines).hex(),
        }
    header_bytes = encode_any(header)
    return encode_frame(header_bytes, KEY.sign(CONTEXT_BATCH, header_bytes), ops_bytes)


# -- protocol parsers -----------------------------------------------------------------------

signal_type_names = st.one_of(st.sampled_from(sorted(signal_types())), st.text(max_size=10))


@fuzz(200)
@given(
    kind=signal_type_names,
    raw=st.one_of(
        st.text(max_size=300),
        st.sampled_from(list(SIGNAL_VALUES.values())).flatmap(
            lambda v: mutated(v.encode()).map(lambda b: b.decode("utf-8", "replace"))
        ),
        st.lists(
            st.sampled_from(["0", "255", "256", "-1", "²", "٣", " 7", "1_0", "x", ""]),
            min_size=140,
            max_size=148,
        ).map(",".join),
        st.sampled_from(list(SIGNAL_VALUES.values())).map(lambda v: f"  {v.upper()}\t"),
    ),
)
def test_fuzz_signal_parse(kind: str, raw: str) -> None:
    signal = only_protocol_errors(lambda: Signal.parse(kind, raw))
    if signal is not None:  # a parsed value is canonical: parsing it again is the identity
        assert Signal.parse(signal.type, signal.value) == signal


@fuzz(200)
@given(value=st.one_of(st.sampled_from(OP_WIRES).flatmap(json_mutated), json_values()))
def test_fuzz_parse_op(value: Any) -> None:
    only_protocol_errors(lambda: parse_op(value))
    only_protocol_errors(lambda: parse_ops([OP_WIRES[0], value]))


@fuzz(200)
@given(
    text=st.one_of(
        st.text(max_size=250),
        mutated(OP_ID.encode()).map(lambda b: b.decode("utf-8", "replace")),
        st.sampled_from(["1", "01", "²", "\u0661", "0", "9" * 20, "-1", "+1", " 1"]).map(
            lambda n: f"{KEY.node_id}/csam/{n}/0"
        ),
    )
)
def test_fuzz_op_id_parse(text: str) -> None:
    op_id = only_protocol_errors(lambda: OpId.parse(text))
    if op_id is not None:
        assert OpId.parse(str(op_id)) == op_id


@fuzz(200)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        mutated(
            st.sampled_from(
                [PROOF, EVIDENCE, SYNC_REQUEST, LOG[0].header_bytes, b'{"a":[1,2,{"b":"c"}]}']
            )
        ),
    ),
    text=st.text(max_size=100),
    n=st.integers(0, 64),
)
def test_fuzz_encoding(data: bytes, text: str, n: int) -> None:
    only_protocol_errors(lambda: parse_canonical(data))
    only_protocol_errors(lambda: from_b64url(text, "x"))
    only_protocol_errors(lambda: from_b64url(text, "x", n))
    only_protocol_errors(lambda: from_hex(text, "x", n))
    only_protocol_errors(lambda: from_b64url(data.decode("latin-1"), "x", 32))


@fuzz(200)
@given(
    frame=st.one_of(st.binary(max_size=300), mutated(st.sampled_from(FRAMES))),
    offset=st.integers(-3, 400),
)
def test_fuzz_batch_frames(frame: bytes, offset: int) -> None:
    only_protocol_errors(lambda: verify_batch(frame))
    only_protocol_errors(lambda: iter_frames(frame))
    if offset >= 0:
        only_protocol_errors(lambda: split_frame(frame, offset))


@fuzz(200)
@given(
    header=st.sampled_from(LOG).flatmap(lambda b: json_mutated(json.loads(b.header_bytes))),
    ops=st.sampled_from(LOG).flatmap(
        lambda b: st.one_of(
            st.just(b.ops_bytes),
            mutated(b.ops_bytes),
            st.lists(st.sampled_from(OP_WIRES).flatmap(json_mutated), min_size=1, max_size=4).map(
                lambda vs: b"\n".join(encode_any(v) for v in vs)
            ),
        )
    ),
    fix=st.booleans(),
)
def test_fuzz_resigned_batches(header: Any, ops: bytes, fix: bool) -> None:
    """Mutated headers and ops behind a valid signature reach the schema and op checks."""
    if not isinstance(header, dict):
        header = {"v": header}
    frame = resign(header, ops, fix)
    only_protocol_errors(lambda: verify_batch(frame))


@fuzz(200)
@given(
    ops=st.lists(st.sampled_from(OP_WIRES).flatmap(json_mutated), min_size=1, max_size=4),
)
def test_fuzz_resigned_ops_with_honest_header(ops: list[Any]) -> None:
    ops_bytes = b"\n".join(encode_any(v) for v in ops)
    header = json.loads(LOG[0].header_bytes)
    frame = resign(header, ops_bytes, True)
    head, sig, body, _ = split_frame(frame)
    only_protocol_errors(lambda: verify_parts(head, sig, body))


def _proof_fields() -> dict[str, Any]:
    return json.loads(PROOF)


@fuzz(200)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        mutated(PROOF),
        json_mutated(_proof_fields()).map(encode_any),
        st.builds(
            lambda value, index, path: canonical(
                {**_proof_fields(), "op": b64url(value), "index": index, "path": path}
            ),
            st.sampled_from(OP_WIRES).flatmap(json_mutated).map(encode_any),
            st.integers(-5, 10),
            st.lists(st.sampled_from(_proof_fields()["path"] + ["00" * 32]), max_size=5),
        ),
    )
)
def test_fuzz_verify_proof(data: bytes) -> None:
    only_protocol_errors(lambda: verify_proof(data))


@fuzz(200)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        mutated(EVIDENCE),
        json_mutated(json.loads(EVIDENCE)).map(encode_any),
    )
)
def test_fuzz_verify_evidence(data: bytes) -> None:
    only_protocol_errors(lambda: verify_evidence(data))


@fuzz(150)
@given(
    data=st.one_of(st.binary(max_size=300), mutated(BUNDLE), st.just(BUNDLE)),
    cuts=st.lists(st.integers(0, 3000), max_size=8),
)
def test_fuzz_bundle_decoder_in_arbitrary_chunks(data: bytes, cuts: list[int]) -> None:
    decoder = BundleDecoder()
    check = BundleCheck()
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    frames = []
    try:
        for a, b in itertools.pairwise(points):
            for frame in decoder.feed(data[a:b]):
                check.check(*frame)
                frames.append(frame)
        decoder.close()
    except ProtocolError:
        return
    if data == BUNDLE:
        assert len(frames) == len(FRAMES) and check.batches == len(FRAMES)


@fuzz(200)
@given(
    data=st.one_of(
        st.binary(max_size=300),
        mutated(PAGE),
        json_mutated(json.loads(PAGE[8 : 8 + struct.unpack(">I", PAGE[4:8])[0]])).map(
            lambda meta: (lambda m: b"HMSY" + struct.pack(">I", len(m)) + m + b"".join(FRAMES))(
                encode_any(meta)
            )
        ),
    )
)
def test_fuzz_decode_page(data: bytes) -> None:
    only_protocol_errors(lambda: decode_page(data))


@fuzz(200)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        mutated(SYNC_REQUEST),
        json_mutated(json.loads(SYNC_REQUEST)).map(encode_any),
    ),
    wire=st.one_of(json_values(), json_mutated(json.loads(SYNC_REQUEST)["vector"])),
)
def test_fuzz_sync_request_and_vector(data: bytes, wire: Any) -> None:
    only_protocol_errors(lambda: parse_sync_request(data))
    only_protocol_errors(lambda: vector_from_wire(wire))


@fuzz(200)
@given(
    request=st.one_of(
        st.binary(max_size=200),
        mutated(RECONCILE_REQUEST),
        json_mutated(json.loads(RECONCILE_REQUEST)).map(encode_any),
    ),
    answer=st.one_of(
        mutated(RECONCILE_ANSWER), json_mutated(json.loads(RECONCILE_ANSWER)).map(encode_any)
    ),
    fetch=st.one_of(
        mutated(FETCH_REQUEST), json_mutated(json.loads(FETCH_REQUEST)).map(encode_any)
    ),
)
def test_fuzz_reconcile_messages(request: bytes, answer: bytes, fetch: bytes) -> None:
    only_protocol_errors(lambda: parse_reconcile_request(request))
    only_protocol_errors(lambda: decode_reconcile(answer))
    only_protocol_errors(lambda: parse_fetch_request(fetch))


PEER_HEADERS = sign_request(KEY, OTHER.node_id, "POST", "/v1/peer/sync", b"{}", 1_000, bytes(16))
header_text = st.one_of(
    st.text(max_size=100),
    st.sampled_from(
        ["²", "\u0661\u0662\u0663", "1" * 17, "-1", "+5", " 1000", "1000 ", "0x10", ""]
    ),
)


@fuzz(300)
@given(
    changes=st.dictionaries(st.sampled_from(sorted(PEER_HEADERS)), header_text, max_size=3),
    drop=st.lists(st.sampled_from(sorted(PEER_HEADERS)), max_size=2),
    method=st.sampled_from(["POST", "GET", "post", "", "\u0130"]),
    path=st.one_of(st.just("/v1/peer/sync"), st.text(max_size=50), st.just("/" * 3000)),
    body=st.one_of(st.just(b"{}"), st.binary(max_size=50)),
    now=st.sampled_from([1_000, 0, 10**15, 2**63]),
)
def test_fuzz_peer_auth_headers(
    changes: dict[str, str], drop: list[str], method: str, path: str, body: bytes, now: int
) -> None:
    headers = {**PEER_HEADERS, **changes}
    for name in drop:
        headers.pop(name, None)
    only_protocol_errors(lambda: verify_request(headers, method, path, body, OTHER.node_id, now))


# -- importers ------------------------------------------------------------------------------

SAMPLES = FORMATS
IMPORT_SAMPLES = {
    "ncmec": (SAMPLES / "ncmec-entries-1.xml").read_bytes(),
    "stopncii": (SAMPLES / "stopncii-fetchhashes-1.json").read_bytes(),
    "csv": f"type,value,category,quality\nmd5,{MD5},csam,\npdq,{PDQ},ncii,90\n".encode(),
    "pytx": f"md5 {MD5}\npdq {PDQ}\nsha256 {SHA256}\n".encode(),
}


@fuzz(100)
@given(
    fmt=st.sampled_from(sorted(IMPORT_SAMPLES)),
    data=st.one_of(
        st.binary(max_size=500),
        st.sampled_from(sorted(IMPORT_SAMPLES)).flatmap(lambda f: mutated(IMPORT_SAMPLES[f])),
    ),
)
def test_fuzz_import_formats(fmt: str, data: bytes) -> None:
    try:
        for item in parse_file(fmt, io.BytesIO(data)):
            assert isinstance(item, ImportRecord | ImportIssue), item
    except ImportFormatError:
        pass


# -- HTTP: a running node -------------------------------------------------------------------

IMAGE = IMAGES / "bridge-1-original.jpg"


class Http:
    """Raw HTTP/1.1 to one node over a kept-alive connection; any dropped connection or
    5xx is a failure, any 4xx must be a JSON error object."""

    def __init__(self, node: NodeProc) -> None:
        self.node = node
        self.conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.node.port, timeout=20)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, Any] | None = None,
        stream: bool = False,
    ) -> tuple[int, bytes]:
        conn = self._connection()
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in (headers or {}).items():
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            status = response.status
            if stream and status == 200:  # a live stream never ends: headers are the answer
                self.close()
                return status, b""
            data = response.read()
            if response.will_close:
                self.close()
        except (ConnectionError, http.client.HTTPException, TimeoutError) as exc:
            self.close()
            raise AssertionError(f"{method} {path!r}: connection failed ({exc!r})") from None
        assert status < 500, (method, path, status, data[:500])
        if len(path) > 8000:  # past aiohttp's request-line limit: its own plain 4xx
            assert 400 <= status < 500, status
        elif status >= 400 and method != "HEAD":
            error = json.loads(data)
            assert isinstance(error, dict) and isinstance(error.get("error"), str), data
        return status, data


# The shared MD5 sample is the empty file's, which publishing refuses.
LIVE_MD5 = "5d41402abc4b2a76b9719d911017c592"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fuzz")
    node = NodeProc(root, "fuzzed")
    op_id = node.cli("add", "md5", LIVE_MD5, "-c", "csam").stdout.strip()
    node.cli("add", "pdq", PDQ, "-c", "csam", "--quality", "90")
    reader = node.cli("token", "create", "reader", "--scope", "read", "--collection", "csam")
    peers = [SigningKey(os.urandom(32)) for _ in range(40)]
    node.cli("peer", "add", "fuzzpeer", "http://127.0.0.1:9", peers[0].node_id, "--share", "csam")
    node.start()
    world = {
        "node": node,
        "http": Http(node),
        "admin": node.admin_token(),
        "reader": reader.stdout.strip(),
        "op_id": op_id,
        "peers": peers,
        "peer_index": 0,
    }
    status, bundle = world["http"].send(
        "GET", "/v1/export?collection=csam", headers={"Authorization": f"Bearer {world['admin']}"}
    )
    assert status == 200
    world["bundle"] = bundle
    yield world
    world["http"].close()
    try:
        assert_healthy(world)
    finally:
        node.stop()


def assert_healthy(world: dict[str, Any]) -> None:
    node: NodeProc = world["node"]
    assert node.proc is not None and node.proc.poll() is None, "the node process died"
    status, data = Http(node).send("GET", "/v1/healthz")
    assert status == 200 and json.loads(data) == {"ok": True, "pdq_ready": True}
    assert not log_errors(node), "\n".join(log_errors(node))[-5000:]


def log_errors(node: NodeProc) -> list[str]:
    """ERROR records and tracebacks in the node's log, except aiohttp's own report of a
    request line or header it could not parse (it answers those with a 400 itself)."""
    text = (node.home / "run.log").read_text(errors="replace")
    records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", text)
    return [
        r
        for r in records
        if ("ERROR" in r.split("\n", 1)[0] or "Traceback" in r)
        and not ("aiohttp.server" in r and "aiohttp.http_exceptions." in r)
    ]


def bearer(world: dict[str, Any], who: str = "admin") -> dict[str, str]:
    return {"Authorization": f"Bearer {world[who]}", "Content-Type": "application/json"}


JSON_ENDPOINTS: dict[str, dict[str, Any]] = {
    "/v1/signals": {
        "type": "md5",
        "value": "0" * 31 + "1",
        "collection": "fuzz",
        "category": "csam",
    },
    "/v1/signals/batch": {
        "collection": "fuzz",
        "signals": [
            {"type": "md5", "value": "0" * 31 + "2", "category": "csam"},
            {"type": "pdq", "value": PDQ, "quality": 80},
        ],
    },
    "/v1/revoke": {"op_id": OP_ID, "reason": "x"},
    "/v1/opinions": {"op_id": OP_ID, "opinion": "seen", "collection": "fuzz"},
    "/v1/match": {
        "queries": [{"type": "md5", "value": LIVE_MD5}, {"type": "pdq", "value": PDQ}],
        "threshold": 31,
    },
    "/v1/lists/import": {
        "collection": "fuzz",
        "adds": [{"type": "md5", "value": "0" * 32}],
        "revoke_signals": [["md5", "0" * 32]],
        "revoke_refs": ["r1"],
    },
    "/v1/admin/tokens": {"name": "t", "scopes": ["read"], "collections": ["csam"]},
    "/v1/admin/trust": {"node_id": OTHER.node_id, "collection": "fuzz", "name": "x"},
    "/v1/admin/peers": {
        "name": "p",
        "url": "http://127.0.0.1:9",
        "node_id": OTHER.node_id,
        "share": ["fuzz"],
    },
    "/takeitdown/api/submit": {
        "challenge": "x",
        "nonce": "y",
        "category": "ncii",
        "hashes": [{"type": "pdq", "value": PDQ}],
    },
    "/takeitdown/api/status": {"number": "123", "secret": "abc"},
    "/takeitdown/api/withdraw": {"number": "123", "secret": "abc"},
}


def _fresh_names(value: Any) -> Any:
    """Token and peer names must be unique; give each example its own."""
    if isinstance(value, dict) and value.get("name") in ("t", "p"):
        value["name"] = f"{value['name']}{uuid.uuid4().hex[:12]}"
    return value


@st.composite
def one_field_swapped(draw: st.DrawFn, valid: dict[str, Any]) -> dict[str, Any]:
    """The valid body with one known field given a value of another type or shape."""
    body = dict(valid)
    body[draw(st.sampled_from(sorted(valid)))] = draw(
        st.one_of(
            st.sampled_from(
                [
                    None,
                    True,
                    0,
                    -1,
                    5,
                    2**70,
                    1.5,
                    "",
                    "x",
                    "²",
                    [],
                    {},
                    [5],
                    [[5]],
                    [None],
                    {"a": 1},
                    "0" * 5000,
                ]
            ),
            json_values(4),
        )
    )
    return body


@fuzz(200)
@given(
    path=st.sampled_from(sorted(JSON_ENDPOINTS)),
    data=st.data(),
)
def test_fuzz_http_json_bodies(live: dict[str, Any], path: str, data: st.DataObject) -> None:
    valid = JSON_ENDPOINTS[path]
    body = data.draw(
        st.one_of(
            one_field_swapped(valid).map(_fresh_names).map(lambda v: json.dumps(v).encode()),
            json_mutated(valid).map(_fresh_names).map(lambda v: json.dumps(v).encode()),
            mutated(json.dumps(valid).encode()),
            st.binary(max_size=100),
            json_values().map(lambda v: json.dumps(v).encode()),
        )
    )
    who = data.draw(st.sampled_from(["admin", "admin", "reader"]))
    live["http"].send("POST", path, body, bearer(live, who))


QUERY_PATHS = [
    "/v1/feed",
    "/v1/snapshot",
    "/v1/export",
    "/v1/status/recent",
    "/v1/feed/stream",
    "/v1/status",
    "/v1/status/history",
    "/metrics",
    "/v1/admin/tokens",
    "/takeitdown/api/info",
    "/takeitdown/api/challenge",
]
query_values = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "",
            "0",
            "1",
            "-1",
            "²",
            "\u0661\u0662",
            "1_0",
            "99999999999999999999",
            "csam",
            "9" * 5000,
            "0400000000000",
            "le-only",
            "fuzz",
            "Csam",
            "a" * 70,
            "%",
            "%zz",
            "\x00",
            "1e3",
            " 5",
        ]
    ),
)


@fuzz(200)
@given(
    path=st.sampled_from(QUERY_PATHS),
    params=st.lists(
        st.tuples(
            st.sampled_from(["after", "limit", "collection", "heartbeat", "x", ""]), query_values
        ),
        min_size=1,
        max_size=3,
    ),
    raw_suffix=st.one_of(st.just(""), st.text(max_size=10)),
    who=st.sampled_from(["admin", "reader"]),
    last_event_id=st.one_of(
        st.none(),
        st.sampled_from([b"5", b"\xc2\xb2", b"\xd9\xa3", b"-1", b"x", b"1" * 40, b"\xff"]),
    ),
)
def test_fuzz_http_query_strings(
    live: dict[str, Any],
    path: str,
    params: list[tuple[str, str]],
    raw_suffix: str,
    who: str,
    last_event_id: bytes | None,
) -> None:
    from urllib.parse import quote

    query = "&".join(
        f"{quote(k)}={quote(v, safe='', errors='surrogatepass')}"
        if "\ud800" not in v
        else f"{k}=%ED%A0%80"
        for k, v in params
    )
    suffix = quote(raw_suffix, safe="=&", errors="replace")
    url = path + ("?" + query + suffix if query or suffix else "")
    headers = bearer(live, who)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    live["http"].send("GET", url, None, headers, stream=path == "/v1/feed/stream")


@fuzz(150)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "OPTIONS", "HEAD"]),
    tail=st.one_of(
        st.text(max_size=30),
        st.sampled_from(
            [
                "v1/admin/tokens/²",
                "v1/admin/tokens/\u0661",
                "v1/admin/tokens/99999999999999999999999",
                "v1/admin/tokens/" + "9" * 5000,
                "v1/admin/tokens/%00",
                "v1/admin/tokens/%2e%2e",
                "takeitdown/..%2f..%2fetc",
                "takeitdown/%ff",
                "v1//feed",
                "v1/feed/",
                "v1/peer/",
                "v1/peer/sync/x",
            ]
        ),
    ),
    auth=st.one_of(st.sampled_from(["admin", "reader", "none"]), st.binary(max_size=40)),
)
def test_fuzz_http_paths_methods_and_auth(
    live: dict[str, Any], method: str, tail: str, auth: Any
) -> None:
    from urllib.parse import quote

    path = "/" + quote(tail, safe="/%", errors="replace")
    headers: dict[str, Any] = {}
    if auth in ("admin", "reader"):
        headers = bearer(live, auth)
    elif isinstance(auth, bytes):
        # Control bytes are refused by aiohttp's HTTP parser itself (a plain-text 400 before
        # the app runs); every other byte goes through to the node's auth check.
        clean = bytes(b for b in auth if b >= 0x20 and b != 0x7F)
        headers["Authorization"] = b"Bearer " + clean
    if method == "DELETE" and "tokens" in path and auth == "admin":
        assume("reader" not in path)  # keep the reader token alive for the other tests
    live["http"].send(method, path, b"" if method in ("POST", "PUT") else None, headers)
    if method == "HEAD":
        live["http"].close()


@fuzz(40)
@given(
    data=st.one_of(st.binary(max_size=200), st.data()),
    chunked_cut=st.integers(0, 10_000),
)
def test_fuzz_http_bundle_import(live: dict[str, Any], data: Any, chunked_cut: int) -> None:
    if not isinstance(data, bytes):
        data = data.draw(mutated(live["bundle"]))
    live["http"].send(
        "POST", "/v1/import", data, {**bearer(live), "Content-Type": "application/octet-stream"}
    )


@fuzz(30)
@given(data=st.one_of(st.binary(max_size=300), st.builds(lambda b: b, st.data())))
def test_fuzz_http_match_file(live: dict[str, Any], data: Any) -> None:
    if not isinstance(data, bytes):
        data = data.draw(mutated(IMAGE.read_bytes()[:4000]))
    boundary = "fuzzboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {**bearer(live), "Content-Type": f"multipart/form-data; boundary={boundary}"}
    live["http"].send("POST", "/v1/match/file", body, headers)
    # and a broken multipart envelope
    live["http"].send("POST", "/v1/match/file", data, headers)


def _signed(live: dict[str, Any], path: str, body: bytes) -> dict[str, str]:
    key: SigningKey = live["peers"][live["peer_index"]]
    node: NodeProc = live["node"]
    headers = sign_request(
        key, node.node_id, "POST", path, body, int(time.time() * 1000), os.urandom(16)
    )
    headers["Content-Type"] = "application/octet-stream"
    return headers


def _next_peer(live: dict[str, Any]) -> None:
    """A peer scored down and cut off by the node gives way to a fresh one."""
    live["peer_index"] = (live["peer_index"] + 1) % len(live["peers"])
    key = live["peers"][live["peer_index"]]
    status, _ = live["http"].send(
        "POST",
        "/v1/admin/peers",
        json.dumps(
            {
                "name": f"fuzzpeer{uuid.uuid4().hex[:10]}",
                "url": "http://127.0.0.1:9",
                "node_id": key.node_id,
                "share": ["csam"],
            }
        ).encode(),
        bearer(live),
    )
    assert status in (200, 409), status


PEER_BODIES = {
    "/v1/peer/sync": st.one_of(
        st.binary(max_size=200),
        mutated(SYNC_REQUEST),
        json_mutated(json.loads(SYNC_REQUEST)).map(encode_any),
    ),
    "/v1/peer/reconcile": st.one_of(
        st.binary(max_size=200),
        mutated(RECONCILE_REQUEST),
        json_mutated(json.loads(RECONCILE_REQUEST)).map(encode_any),
    ),
    "/v1/peer/fetch": st.one_of(
        st.binary(max_size=200),
        mutated(FETCH_REQUEST),
        json_mutated(json.loads(FETCH_REQUEST)).map(encode_any),
    ),
    "/v1/peer/batches": st.one_of(
        st.binary(max_size=200),
        mutated(st.sampled_from(FRAMES)),
        st.just(b"".join(FRAMES)),
    ),
    "/v1/peer/evidence": st.one_of(
        st.binary(max_size=200),
        json_mutated({"evidence": [b64url(EVIDENCE)]}).map(lambda v: json.dumps(v).encode()),
        mutated(EVIDENCE).map(lambda e: json.dumps({"evidence": [b64url(e)]}).encode()),
    ),
}


@fuzz(60)
@given(path=st.sampled_from(sorted(PEER_BODIES)), data=st.data(), signed=st.booleans())
def test_fuzz_http_peer_endpoints(
    live: dict[str, Any], path: str, data: st.DataObject, signed: bool
) -> None:
    body = data.draw(PEER_BODIES[path])
    if not signed:
        status, _ = live["http"].send("POST", path, body, {"Content-Type": "application/json"})
        assert status == 401
        return
    status, answer = live["http"].send("POST", path, body, _signed(live, path, body))
    if status == 403 and b"cut off" in answer:
        _next_peer(live)
        status, answer = live["http"].send("POST", path, body, _signed(live, path, body))
    assert status in (200, 400, 403, 413, 429), (status, answer)
    if status == 200 and path in ("/v1/peer/sync", "/v1/peer/fetch"):
        decode_page(answer)  # the node's own page always parses
    if status == 200 and path == "/v1/peer/reconcile":
        decode_reconcile(answer)


def test_fuzz_http_node_is_healthy_afterwards(live: dict[str, Any]) -> None:
    assert_healthy(live)
    status, data = live["http"].send(
        "POST", "/v1/match", json.dumps(JSON_ENDPOINTS["/v1/match"]).encode(), bearer(live)
    )
    assert status == 200 and json.loads(data)["matched"] is True
    wait_for(lambda: live["node"].proc is not None and live["node"].proc.poll() is None)
