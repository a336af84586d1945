"""Replication messages: version vectors, what a peer lacks, and the sync page format.

A version vector maps each log (author, collection) to its highest contiguous seq; it is
the whole summary a node needs to tell another what it has. Sync cost is then
proportional to the difference plus the number of logs, never to the number of hashes.

Sync page (the answer to a pull), all integers big-endian:

    "HMSY" | u32 meta length | meta (canonical JSON) | batch frames ...

meta = {"vector": [[author, collection, seq], ...], "accept": [collection, ...],
        "more": bool, "evidence": [b64url, ...]}

`vector` holds the answering node's heads for the collections it lets the caller read and
for the offered collections it accepts (`accept`), so the caller can push what it lacks.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from hashmesh.protocol.batches import LogKey, iter_frames
from hashmesh.protocol.encoding import b64url, canonical, from_b64url, parse_canonical
from hashmesh.protocol.errors import EncodingError, ProtocolError
from hashmesh.protocol.ops import validate_collection
from hashmesh.protocol.signing import validate_node_id

PAGE_MAGIC = b"HMSY"
MAX_META_BYTES = 4 * 1024 * 1024
MAX_VECTOR_LOGS = 100_000
MAX_EVIDENCE_ITEMS = 1000

Vector = dict[LogKey, int]


class SyncError(ProtocolError):
    """A sync message that breaks the format."""


def vector_to_wire(vector: Vector) -> list[list[Any]]:
    return [[k.author, k.collection, seq] for k, seq in sorted(vector.items(), key=_order)]


def _order(item: tuple[LogKey, int]) -> tuple[str, str]:
    return (item[0].collection, item[0].author)


def vector_from_wire(value: Any, what: str = "vector") -> Vector:
    if not isinstance(value, list) or len(value) > MAX_VECTOR_LOGS:
        raise SyncError(f"{what}: expected a list of at most {MAX_VECTOR_LOGS} entries")
    out: Vector = {}
    for n, entry in enumerate(value):
        if (
            not isinstance(entry, list)
            or len(entry) != 3
            or type(entry[2]) is not int
            or not 0 <= entry[2] <= 2**53 - 1
        ):
            raise SyncError(f"{what}[{n}]: expected [author, collection, seq]")
        try:
            validate_node_id(entry[0], f"{what}[{n}] author")
            validate_collection(entry[1], f"{what}[{n}] collection")
        except ProtocolError as exc:
            raise SyncError(str(exc)) from None
        out[LogKey(entry[0], entry[1])] = entry[2]
    return out


def missing(ours: Vector, theirs: Vector) -> dict[LogKey, int]:
    """For each log where we are ahead, the seq the other side has (send from seq + 1)."""
    return {log: theirs.get(log, 0) for log, head in ours.items() if head > theirs.get(log, 0)}


def encode_page(
    vector: Vector,
    frames: list[bytes],
    more: bool,
    evidence: list[bytes] | None = None,
    accept: list[str] | None = None,
) -> bytes:
    meta = canonical(
        {
            "vector": vector_to_wire(vector),
            "accept": sorted(set(accept or [])),
            "more": more,
            "evidence": [b64url(e) for e in (evidence or [])],
        }
    )
    return PAGE_MAGIC + struct.pack(">I", len(meta)) + meta + b"".join(frames)


class Page(NamedTuple):
    vector: Vector
    accept: list[str]
    more: bool
    evidence: list[bytes]
    frames: list[tuple[bytes, bytes, bytes]]


def decode_page(body: bytes) -> Page:
    """Split a sync page into its parts. Frames are split but not verified here."""
    if len(body) < 8 or body[:4] != PAGE_MAGIC:
        raise SyncError("sync page: bad magic")
    (length,) = struct.unpack_from(">I", body, 4)
    if length > MAX_META_BYTES or 8 + length > len(body):
        raise SyncError("sync page: meta length out of range")
    meta = parse_canonical(body[8 : 8 + length], "sync page meta")
    if not isinstance(meta, dict) or set(meta) != {"vector", "accept", "more", "evidence"}:
        raise SyncError("sync page meta: must hold exactly vector, accept, more, evidence")
    accept = _collections(meta["accept"], "sync page meta.accept")
    if not isinstance(meta["more"], bool):
        raise SyncError("sync page meta.more: must be a boolean")
    evidence_list = meta["evidence"]
    if not isinstance(evidence_list, list) or len(evidence_list) > MAX_EVIDENCE_ITEMS:
        raise SyncError("sync page meta.evidence: must be a short list")
    try:
        evidence = [from_b64url(e, "sync page evidence") for e in evidence_list]
    except EncodingError as exc:
        raise SyncError(str(exc)) from None
    frames = iter_frames(body[8 + length :])
    return Page(vector_from_wire(meta["vector"]), accept, meta["more"], evidence, frames)


def _collections(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or len(value) > 10_000:
        raise SyncError(f"{what}: must be a list of collection names")
    try:
        for c in value:
            validate_collection(c, what)
    except ProtocolError as exc:
        raise SyncError(str(exc)) from None
    return list(value)


class SyncRequest(NamedTuple):
    """A pull: the caller's heads, the collections it wants, and those it would push."""

    vector: Vector
    collections: list[str]
    offer: list[str]


def parse_sync_request(body: bytes) -> SyncRequest:
    value = parse_canonical(body, "sync request")
    if not isinstance(value, dict) or set(value) != {"vector", "collections", "offer"}:
        raise SyncError("sync request: must hold exactly vector, collections and offer")
    return SyncRequest(
        vector_from_wire(value["vector"], "sync request.vector"),
        _collections(value["collections"], "sync request.collections"),
        _collections(value["offer"], "sync request.offer"),
    )


def encode_sync_request(vector: Vector, collections: list[str], offer: list[str]) -> bytes:
    return canonical(
        {
            "vector": vector_to_wire(vector),
            "collections": sorted(set(collections)),
            "offer": sorted(set(offer)),
        }
    )


# -- pushed batches and gossiped evidence ------------------------------------------------

MAX_EVIDENCE_MESSAGE_BYTES = 256 * 1024
MAX_EVIDENCE_PER_MESSAGE = 100
MAX_PUSH_REPLY_BYTES = 4 * 1024 * 1024
MAX_PUSH_RESULTS = 10_000
OUTCOMES = frozenset({"applied", "duplicate", "deferred", "fork", "frozen", "untrusted", "none"})


class PushResult(NamedTuple):
    """What the receiver did with one pushed batch of log `author/collection`."""

    log: str
    seq: int
    outcome: str


class PushReply(NamedTuple):
    """The answer to `/v1/peer/batches`: each batch's outcome, the receiver's heads of the
    logs touched, and whether any batch waits for an earlier one (then the sender pushes
    what the receiver lacks from `vector` on)."""

    results: list[PushResult]
    vector: Vector
    deferred: bool


def encode_push_reply(reply: PushReply) -> bytes:
    return canonical(
        {
            "results": [{"log": r.log, "seq": r.seq, "outcome": r.outcome} for r in reply.results],
            "vector": vector_to_wire(reply.vector),
            "deferred": reply.deferred,
        }
    )


def decode_push_reply(body: bytes) -> PushReply:
    if len(body) > MAX_PUSH_REPLY_BYTES:
        raise SyncError(f"push reply: larger than {MAX_PUSH_REPLY_BYTES} bytes")
    value = parse_canonical(body, "push reply")
    if not isinstance(value, dict) or set(value) != {"results", "vector", "deferred"}:
        raise SyncError("push reply: must hold exactly results, vector and deferred")
    if not isinstance(value["deferred"], bool):
        raise SyncError("push reply.deferred: must be a boolean")
    items = value["results"]
    if not isinstance(items, list) or len(items) > MAX_PUSH_RESULTS:
        raise SyncError(f"push reply.results: must be a list of at most {MAX_PUSH_RESULTS}")
    results = []
    for n, item in enumerate(items):
        if (
            not isinstance(item, dict)
            or set(item) != {"log", "seq", "outcome"}
            or not isinstance(item["log"], str)
            or len(item["log"]) > 200
            or type(item["seq"]) is not int
            or item["outcome"] not in OUTCOMES
        ):
            raise SyncError(
                f"push reply.results[{n}]: expected {{log, seq, outcome}} with a known outcome"
            )
        results.append(PushResult(item["log"], item["seq"], item["outcome"]))
    return PushReply(
        results, vector_from_wire(value["vector"], "push reply.vector"), value["deferred"]
    )


def encode_evidence_message(blobs: list[bytes]) -> bytes:
    return canonical({"evidence": [b64url(b) for b in blobs]})


def decode_evidence_message(body: bytes) -> list[bytes]:
    """The fork evidence items of a `/v1/peer/evidence` body, still unverified."""
    if len(body) > MAX_EVIDENCE_MESSAGE_BYTES:
        raise SyncError(f"evidence: body exceeds {MAX_EVIDENCE_MESSAGE_BYTES} bytes")
    value = parse_canonical(body, "evidence")
    if not isinstance(value, dict) or set(value) != {"evidence"}:
        raise SyncError("evidence: must hold exactly evidence")
    items = value["evidence"]
    if not isinstance(items, list) or len(items) > MAX_EVIDENCE_PER_MESSAGE:
        raise SyncError(f"evidence: expected a list of at most {MAX_EVIDENCE_PER_MESSAGE} items")
    try:
        return [from_b64url(e, f"evidence[{n}]") for n, e in enumerate(items)]
    except EncodingError as exc:
        raise SyncError(str(exc)) from None


def encode_evidence_reply(new: int) -> bytes:
    return canonical({"new": new})
