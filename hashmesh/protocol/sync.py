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

Reconciliation (sync version 2, docs/protocol.md "Reconciliation") replaces the vectors
sent both ways each round by a digest of the answerer's view first, then only the
difference: the caller names the digest of the view it holds (`known`); the answer is empty
when nothing changed, the changed entries when the answerer remembers what it last sent,
else the whole view. The caller then fetches only the logs it lacks and accepts. An idle
round costs a constant number of bytes, whatever the number of logs.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable
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


# -- reconciliation: a digest of the view first, then only the difference ------------------

DIGEST_CONTEXT = b"hashmesh/sync-vector/v1\x00"
MAX_RECONCILE_REQUEST_BYTES = 1024 * 1024
MAX_RECONCILE_ANSWER_BYTES = MAX_META_BYTES
MAX_FETCH_REQUEST_BYTES = 2 * 1024 * 1024
MAX_WANT = 10_000
_DIGEST = re.compile(r"[0-9a-f]{64}")


def vector_digest(vector: Vector) -> str:
    """The hex SHA-256 of a view: its canonical wire form after a context string, so two
    nodes agree on it byte for byte and it cannot be mistaken for another hash."""
    return hashlib.sha256(DIGEST_CONTEXT + canonical(vector_to_wire(vector))).hexdigest()


def vector_delta(old: Vector, new: Vector) -> Vector:
    """What turns `old` into `new`: changed or added heads, and 0 for a log `new` lacks."""
    out = {log: seq for log, seq in new.items() if old.get(log) != seq}
    out.update({log: 0 for log in old if log not in new})
    return out


def apply_delta(base: Vector, delta: Vector) -> Vector:
    out = dict(base)
    for log, seq in delta.items():
        if seq:
            out[log] = seq
        else:
            out.pop(log, None)
    return out


class ReconcileRequest(NamedTuple):
    """The collections the caller wants and would push, and the digest of the answerer's
    view it holds from an earlier answer ("" when it holds none)."""

    collections: list[str]
    offer: list[str]
    known: str


def encode_reconcile_request(collections: list[str], offer: list[str], known: str) -> bytes:
    return canonical(
        {"collections": sorted(set(collections)), "known": known, "offer": sorted(set(offer))}
    )


def parse_reconcile_request(body: bytes) -> ReconcileRequest:
    if len(body) > MAX_RECONCILE_REQUEST_BYTES:
        raise SyncError(f"reconcile request: larger than {MAX_RECONCILE_REQUEST_BYTES} bytes")
    value = parse_canonical(body, "reconcile request")
    if not isinstance(value, dict) or set(value) != {"collections", "known", "offer"}:
        raise SyncError("reconcile request: must hold exactly collections, known and offer")
    return ReconcileRequest(
        _collections(value["collections"], "reconcile request.collections"),
        _collections(value["offer"], "reconcile request.offer"),
        _digest_or_empty(value["known"], "reconcile request.known"),
    )


def _digest_or_empty(value: Any, what: str) -> str:
    if not isinstance(value, str) or not (value == "" or _DIGEST.fullmatch(value)):
        raise SyncError(f"{what}: must be 64 lower-case hex digits or empty")
    return value


class Reconcile(NamedTuple):
    """The answer: the digest of the answerer's whole view for this caller, and either that
    view (`full`) or the entries that changed since the view the caller named (0: gone)."""

    digest: str
    full: bool
    vector: Vector
    accept: list[str]
    evidence: list[bytes]


def reconcile_answer(
    view: Vector,
    known: str,
    sent: tuple[str, Vector] | None,
    accept: list[str],
    evidence: list[bytes],
) -> Reconcile:
    """The answer to a caller holding the view with digest `known`, given the view last
    sent to it (`sent`, if remembered). `view` must already be only what the caller may
    read: digest and difference are computed over nothing else."""
    # At 10,000 logs a digest costs some 50 ms of CPU: an unchanged view reuses it.
    same = sent is not None and (sent[1] is view or sent[1] == view)
    digest = sent[0] if sent is not None and same else vector_digest(view)
    if known == digest:
        return Reconcile(digest, False, {}, accept, evidence)
    if known and sent is not None and sent[0] == known:
        return Reconcile(digest, False, vector_delta(sent[1], view), accept, evidence)
    return Reconcile(digest, True, view, accept, evidence)


def encode_reconcile(answer: Reconcile) -> bytes:
    return canonical(
        {
            "accept": sorted(set(answer.accept)),
            "digest": answer.digest,
            "evidence": [b64url(e) for e in answer.evidence],
            "full": answer.full,
            "vector": vector_to_wire(answer.vector),
        }
    )


def decode_reconcile(body: bytes) -> Reconcile:
    if len(body) > MAX_RECONCILE_ANSWER_BYTES:
        raise SyncError(f"reconcile answer: larger than {MAX_RECONCILE_ANSWER_BYTES} bytes")
    value = parse_canonical(body, "reconcile answer")
    keys = {"accept", "digest", "evidence", "full", "vector"}
    if not isinstance(value, dict) or set(value) != keys:
        raise SyncError("reconcile answer: must hold exactly " + ", ".join(sorted(keys)))
    digest = _digest_or_empty(value["digest"], "reconcile answer.digest")
    if not digest:
        raise SyncError("reconcile answer.digest: must be 64 lower-case hex digits")
    if not isinstance(value["full"], bool):
        raise SyncError("reconcile answer.full: must be a boolean")
    vector = vector_from_wire(value["vector"], "reconcile answer.vector")
    if value["full"] and any(seq == 0 for seq in vector.values()):
        raise SyncError("reconcile answer.vector: a full view holds no 0 heads")
    evidence_list = value["evidence"]
    if not isinstance(evidence_list, list) or len(evidence_list) > MAX_EVIDENCE_ITEMS:
        raise SyncError("reconcile answer.evidence: must be a short list")
    try:
        evidence = [from_b64url(e, "reconcile answer.evidence") for e in evidence_list]
    except EncodingError as exc:
        raise SyncError(str(exc)) from None
    accept = _collections(value["accept"], "reconcile answer.accept")
    return Reconcile(digest, value["full"], vector, accept, evidence)


def view_after(held: tuple[str, Vector] | None, answer: Reconcile) -> Vector:
    """The answerer's view once its answer is applied to the one held; a result whose
    digest is not the answer's is the answerer's error (or a view we no longer hold)."""
    if answer.full:
        view = dict(answer.vector)
    elif held is None:
        raise SyncError("reconcile answer: a difference to a view we do not hold")
    elif not answer.vector and held[0] == answer.digest:
        return held[1]
    else:
        view = apply_delta(held[1], answer.vector)
    if vector_digest(view) != answer.digest:
        raise SyncError("reconcile answer: the view does not match its digest")
    return view


def wants(
    theirs: Vector, ours: Vector, takes: Callable[[LogKey], bool], limit: int = MAX_WANT
) -> dict[LogKey, int]:
    """The logs where the other view is ahead and we would take its batches, each with the
    seq we hold (fetch from seq + 1), at most `limit`, in wire order."""
    out: dict[LogKey, int] = {}
    for log, head in sorted(theirs.items(), key=_order):
        have = ours.get(log, 0)
        if head > have and takes(log):
            out[log] = have
            if len(out) >= limit:
                break
    return out


def encode_fetch_request(want: dict[LogKey, int]) -> bytes:
    return canonical({"want": vector_to_wire(want)})


def parse_fetch_request(body: bytes) -> dict[LogKey, int]:
    """The logs a caller asks batches of, each with the seq it holds. The answer is a sync
    page (above) holding those batches in order, and the answerer's heads of those logs."""
    if len(body) > MAX_FETCH_REQUEST_BYTES:
        raise SyncError(f"fetch request: larger than {MAX_FETCH_REQUEST_BYTES} bytes")
    value = parse_canonical(body, "fetch request")
    if not isinstance(value, dict) or set(value) != {"want"}:
        raise SyncError("fetch request: must hold exactly want")
    if not isinstance(value["want"], list) or len(value["want"]) > MAX_WANT:
        raise SyncError(f"fetch request.want: expected a list of at most {MAX_WANT} entries")
    want = vector_from_wire(value["want"], "fetch request.want")
    if len(want) != len(value["want"]):
        raise SyncError("fetch request.want: a log is named twice")
    return want
