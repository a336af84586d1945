"""Signed batches: the unit of publication, transport, storage and verification.

A batch is the exact signed header bytes, a 64-byte Ed25519 signature and the ops bytes
(canonical JSON objects joined by newlines). One signature covers the header; the header's
Merkle root covers every op. Receivers verify the bytes they got and keep those bytes:
nothing is ever re-serialised to be verified.

Frame (all integers big-endian):

    "HMB1" | u16 header length | header | signature (64) | u32 ops length | ops
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hashmesh.protocol.encoding import canonical, parse_canonical
from hashmesh.protocol.errors import (
    BatchError,
    BatchOverflow,
    LimitError,
    OpError,
    ProtocolError,
    ProtocolUsageError,
)
from hashmesh.protocol.merkle import root_from_leaf_hashes
from hashmesh.protocol.ops import (
    COLLECTION_PATTERN,
    MAX_LARGE_OP_BYTES,
    MAX_OP_BYTES,
    AddOp,
    OpId,
    OpinionOp,
    RevokeOp,
    check_op_sizes,
    may_be_long,
    op_size_limit,
    op_to_wire,
    parse_op_lines,
)
from hashmesh.protocol.ops import AnyOp as AnyOp  # re-exported: callers import it from here
from hashmesh.protocol.signing import (
    CONTEXT_BATCH,
    SIGNATURE_SIZE,
    SigningKey,
    validate_node_id,
    verify,
)

FORMAT_VERSION = 1
MAGIC = b"HMB1"
MAX_HEADER_BYTES = 1024
MAX_OPS_PER_BATCH = 10_000
MAX_OPS_BYTES = 4 * 1024 * 1024
MAX_FRAME_BYTES = 4 + 2 + MAX_HEADER_BYTES + SIGNATURE_SIZE + 4 + MAX_OPS_BYTES
_FIXED = len(MAGIC) + 2


class Header(BaseModel):
    """What the author signs: the batch's place in its log and a digest of its ops."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    v: Literal[1]
    author: str = Field(max_length=64)
    collection: str = Field(pattern=COLLECTION_PATTERN)
    seq: int = Field(ge=1, le=2**53 - 1)
    prev: str | None = Field(pattern=r"^[0-9a-f]{64}$")
    ts: int = Field(ge=0, le=2**53 - 1)
    count: int = Field(ge=1, le=MAX_OPS_PER_BATCH)
    size: int = Field(ge=2, le=MAX_OPS_BYTES)
    root: str = Field(pattern=r"^[0-9a-f]{64}$")
    # The key that signed, when it is not the author (a log continued after a hand-over).
    # Absent when the author signs, so every header from before hand-overs is unchanged.
    signer: str | None = Field(default=None, max_length=64)

    @property
    def signed_by(self) -> str:
        return self.author if self.signer is None else self.signer


def parse_header(header_bytes: bytes) -> Header:
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise LimitError(f"batch header: {len(header_bytes)} bytes exceeds {MAX_HEADER_BYTES}")
    value = parse_canonical(header_bytes, "batch header")
    if not isinstance(value, dict):
        raise BatchError("batch header: must be a JSON object")
    if type(value.get("v")) is not int:  # pydantic's Literal[1] would also take `true`
        raise BatchError("batch header.v: must be the integer 1")
    try:
        header = Header.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise BatchError(f"batch header.{loc}: {first['msg']}") from None
    validate_node_id(header.author, "batch header.author")
    if "signer" in value:
        if header.signer is None:
            raise BatchError("batch header.signer: absent when the author signs, never null")
        if header.signer == header.author:
            raise BatchError("batch header.signer: absent when the author signs")
        validate_node_id(header.signer, "batch header.signer")
    if (header.seq == 1) != (header.prev is None):
        raise BatchError("batch header.prev: must be null exactly when seq is 1")
    return header


def verify_header(header_bytes: bytes, signature: bytes) -> Header:
    """Parse a header just far enough to learn its signer, then check the signature.

    The signer is the author unless the header names another key; whether that key may
    sign this log at this seq is the authority's question (hashmesh.protocol.authority)."""
    header = parse_header(header_bytes)
    verify(header.signed_by, CONTEXT_BATCH, header_bytes, signature)
    return header


def header_hash(header_bytes: bytes) -> bytes:
    return sha256(header_bytes).digest()


@dataclass(frozen=True, slots=True)
class LogKey:
    """One author's log in one collection."""

    author: str
    collection: str

    def __str__(self) -> str:
        return f"{self.author}/{self.collection}"


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch whose signature, Merkle root and ops have all been checked."""

    header: Header
    header_bytes: bytes
    signature: bytes
    ops_bytes: bytes
    ops: list[AnyOp] = field(repr=False)
    leaf_hashes: list[bytes] = field(repr=False)
    # Each revoke's targets, parsed once by verification (op index -> ids): deciding and
    # storing a 100,000-target revocation read them again, at 40 % of its ingest.
    revoke_targets: dict[int, list[OpId]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def log(self) -> LogKey:
        return LogKey(self.header.author, self.header.collection)

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def hash(self) -> bytes:
        return header_hash(self.header_bytes)

    def op_id(self, index: int) -> OpId:
        return OpId(self.header.author, self.header.collection, self.header.seq, index)

    def op_lines(self) -> list[bytes]:
        return self.ops_bytes.split(b"\n")

    def to_bytes(self) -> bytes:
        return encode_frame(self.header_bytes, self.signature, self.ops_bytes)


def encode_frame(header_bytes: bytes, signature: bytes, ops_bytes: bytes) -> bytes:
    return b"".join(
        (
            MAGIC,
            struct.pack(">H", len(header_bytes)),
            header_bytes,
            signature,
            struct.pack(">I", len(ops_bytes)),
            ops_bytes,
        )
    )


def split_frame(data: bytes | memoryview, offset: int = 0) -> tuple[bytes, bytes, bytes, int]:
    """Cut one frame out of `data` at `offset`: (header, signature, ops, next offset).

    Lengths are checked against the limits before anything is copied, so a hostile length
    field can neither allocate nor read past the buffer.
    """
    view = memoryview(data)
    if len(view) - offset < _FIXED:
        raise BatchError("batch frame: truncated before the header length")
    if bytes(view[offset : offset + 4]) != MAGIC:
        raise BatchError("batch frame: bad magic (not a hashmesh batch)")
    (header_len,) = struct.unpack_from(">H", view, offset + 4)
    if header_len > MAX_HEADER_BYTES:
        raise LimitError(f"batch header: {header_len} bytes exceeds {MAX_HEADER_BYTES}")
    pos = offset + _FIXED
    if len(view) - pos < header_len + SIGNATURE_SIZE + 4:
        raise BatchError("batch frame: truncated in the header or signature")
    header_bytes = bytes(view[pos : pos + header_len])
    pos += header_len
    signature = bytes(view[pos : pos + SIGNATURE_SIZE])
    pos += SIGNATURE_SIZE
    (ops_len,) = struct.unpack_from(">I", view, pos)
    pos += 4
    if ops_len > MAX_OPS_BYTES:
        raise LimitError(f"batch ops: {ops_len} bytes exceeds {MAX_OPS_BYTES}")
    if len(view) - pos < ops_len:
        raise BatchError("batch frame: truncated in the ops")
    ops_bytes = bytes(view[pos : pos + ops_len])
    return header_bytes, signature, ops_bytes, pos + ops_len


def _static_checks(header: Header, ops: list[AnyOp]) -> dict[int, list[OpId]]:
    """Rules that need only the batch itself: revokes name earlier ops of the same log.
    Returns each revoke's parsed targets by op index."""
    targets: dict[int, list[OpId]] = {}
    for index, op in enumerate(ops):
        if isinstance(op, RevokeOp):
            targets[index] = ids = op.target_ids()
            for target in ids:
                if target.author != header.author or target.collection != header.collection:
                    raise OpError(
                        f"ops[{index}].targets: {target} is not an op of this log; "
                        "an author may only revoke its own adds in the same collection"
                    )
                if (target.seq, target.index) >= (header.seq, index):
                    raise OpError(f"ops[{index}].targets: {target} does not precede the revoke")
        elif isinstance(op, OpinionOp):
            op.target_id()
    return targets


def verify_parts(header_bytes: bytes, signature: bytes, ops_bytes: bytes) -> Batch:
    """Verify a batch from its three byte strings; raise a ProtocolError on any fault."""
    header = verify_header(header_bytes, signature)
    if len(ops_bytes) != header.size:
        raise BatchError(f"batch ops: {len(ops_bytes)} bytes, header says {header.size}")
    lines = ops_bytes.split(b"\n")
    if len(lines) != header.count:
        raise BatchError(f"batch ops: {len(lines)} ops, header says {header.count}")
    leaf_hashes = [sha256(b"\x00" + line).digest() for line in lines]
    if root_from_leaf_hashes(leaf_hashes).hex() != header.root:
        raise BatchError("batch ops: Merkle root does not match the signed header")
    longest = max(map(len, lines))
    if longest > MAX_OP_BYTES and (
        longest > MAX_LARGE_OP_BYTES
        or not all(may_be_long(line) for line in lines if len(line) > MAX_OP_BYTES)
    ):
        raise LimitError(f"batch ops: an op is longer than {MAX_OP_BYTES} bytes")
    ops = parse_op_lines(ops_bytes, lines)
    if longest > MAX_OP_BYTES:
        check_op_sizes(lines, ops)
    targets = _static_checks(header, ops) if set(map(type, ops)) != {AddOp} else {}
    return Batch(header, header_bytes, signature, ops_bytes, ops, leaf_hashes, targets)


def verify_batch(frame: bytes) -> Batch:
    """Verify one framed batch; trailing bytes are an error."""
    if len(frame) > MAX_FRAME_BYTES:
        raise LimitError(f"batch frame: {len(frame)} bytes exceeds {MAX_FRAME_BYTES}")
    header_bytes, signature, ops_bytes, end = split_frame(frame)
    if end != len(frame):
        raise BatchError("batch frame: trailing bytes after the ops")
    return verify_parts(header_bytes, signature, ops_bytes)


def iter_frames(data: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """Split a concatenation of frames (a sync page or bundle body); verify nothing yet."""
    out = []
    offset = 0
    while offset < len(data):
        header_bytes, signature, ops_bytes, offset = split_frame(data, offset)
        out.append((header_bytes, signature, ops_bytes))
    return out


def encode_ops(ops: list[AnyOp] | list[dict[str, Any]]) -> bytes:
    lines = []
    for i, op in enumerate(ops):
        wire = op if isinstance(op, dict) else op_to_wire(op)
        line = canonical(wire)
        if len(line) > MAX_OP_BYTES:
            limit = op_size_limit(op)
            if len(line) > limit:
                raise LimitError(f"ops[{i}]: {len(line)} bytes exceeds {limit}")
        lines.append(line)
    return b"\n".join(lines)


def build_batch(
    key: SigningKey,
    collection: str,
    seq: int,
    prev: bytes | None,
    ts: int,
    ops: list[AnyOp] | list[dict[str, Any]],
    author: str | None = None,
) -> Batch:
    """Sign a new batch. The result is verified like any received batch before it is
    returned, so a node can never publish something its peers would refuse. `author` names
    the log's author when `key` is not it (the key a hand-over passed the log to); the
    header then carries `key` as its signer.

    The caller chooses the ops and packs them: an empty or oversized batch, or one that
    would not verify, is its mistake (ProtocolUsageError); an op that breaks the schema is
    still an OpError or LimitError, since ops can come from a caller's own input."""
    if not ops:
        raise ProtocolUsageError("batch: needs at least one op")
    if len(ops) > MAX_OPS_PER_BATCH:
        raise ProtocolUsageError(f"batch: {len(ops)} ops exceeds {MAX_OPS_PER_BATCH}")
    ops_bytes = encode_ops(ops)
    if len(ops_bytes) > MAX_OPS_BYTES:
        raise BatchOverflow(f"batch ops: {len(ops_bytes)} bytes exceeds {MAX_OPS_BYTES}")
    lines = ops_bytes.split(b"\n")
    leaf_hashes = [sha256(b"\x00" + line).digest() for line in lines]
    header_value: dict[str, Any] = {
        "v": FORMAT_VERSION,
        "author": key.node_id if author is None else author,
        "collection": collection,
        "seq": seq,
        "prev": prev.hex() if prev is not None else None,
        "ts": ts,
        "count": len(lines),
        "size": len(ops_bytes),
        "root": root_from_leaf_hashes(leaf_hashes).hex(),
    }
    if author is not None and author != key.node_id:
        header_value["signer"] = key.node_id
    header_bytes = canonical(header_value)
    signature = key.sign(CONTEXT_BATCH, header_bytes)
    try:
        return verify_parts(header_bytes, signature, ops_bytes)
    except ProtocolError as exc:
        raise ProtocolUsageError(f"refusing to publish: {exc}") from exc
