"""Signed bundles: whole logs in one file, for air-gapped networks and nodes without a port.

A bundle carries no signature of its own: every batch inside is signed by its author, and
the chain links and Merkle roots are checked batch by batch, so a bundle is as trustworthy
as a peer and needs no trust in whoever carried it.

    "HMBUNDLE" | u32 manifest length | manifest (canonical JSON) | batch frames ...

The manifest may carry, besides the logs, the statements of the keys that sign them
(`statements`) and the membership documents of the collection (`membership`, the chain
from version 1 to the version in force, see `membership_of`). A reader that predates a key
ignores it: the decoder requires only `v`.

The decoder is push-based (feed bytes, take frames) so the node can stream a multi-gigabyte
file without holding it in memory and without this package doing any I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from hashmesh.protocol.batches import (
    MAX_FRAME_BYTES,
    Batch,
    LogKey,
    header_hash,
    split_frame,
    verify_parts,
)
from hashmesh.protocol.encoding import canonical, parse_canonical
from hashmesh.protocol.errors import BundleError, LimitError, ProtocolError
from hashmesh.protocol.membership import KIND as MEMBERSHIP_KIND
from hashmesh.protocol.membership import MAX_DOCUMENTS, MembershipBody
from hashmesh.protocol.ops import AddOp, OpinionOp, RevokeOp
from hashmesh.protocol.statements import Registry, Statement, parse_statement_json

BUNDLE_MAGIC = b"HMBUNDLE"
MAX_MANIFEST_BYTES = 1024 * 1024
#: Of the manifest's 1 MiB: the membership chain (64 documents of the largest kind, 16 KiB
#: each, would not fit beside the key statements' 512 KiB; the usual ones are ~1 KiB).
MAX_MEMBERSHIP_BYTES = 256 * 1024
MAX_MEMBERSHIP_DOCUMENTS = MAX_DOCUMENTS


def encode_bundle_header(manifest: dict[str, Any]) -> bytes:
    body = canonical(manifest)
    return BUNDLE_MAGIC + struct.pack(">I", len(body)) + body


class BundleDecoder:
    """Feed bundle bytes in any chunk sizes; take the manifest, then frames, as they complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.manifest: dict[str, Any] | None = None
        self.offset = 0

    def feed(self, data: bytes) -> list[tuple[bytes, bytes, bytes]]:
        self._buffer += data
        frames: list[tuple[bytes, bytes, bytes]] = []
        if self.manifest is None and not self._read_manifest():
            return frames
        pos = 0
        buf = bytes(self._buffer)
        while True:
            need = _frame_length(buf, pos)
            if need is None or len(buf) - pos < need:
                break
            header, sig, ops, end = split_frame(buf, pos)
            frames.append((header, sig, ops))
            pos = end
        del self._buffer[:pos]
        self.offset += pos
        return frames

    def close(self) -> None:
        if self.manifest is None:
            raise BundleError("bundle: truncated before the end of the manifest")
        if self._buffer:
            raise BundleError(f"bundle: {len(self._buffer)} stray bytes at the end (truncated?)")

    def _read_manifest(self) -> bool:
        head = len(BUNDLE_MAGIC) + 4
        if len(self._buffer) < head:
            if not BUNDLE_MAGIC.startswith(bytes(self._buffer[: len(BUNDLE_MAGIC)])):
                raise BundleError("bundle: not a hashmesh bundle (bad magic)")
            return False
        if bytes(self._buffer[: len(BUNDLE_MAGIC)]) != BUNDLE_MAGIC:
            raise BundleError("bundle: not a hashmesh bundle (bad magic)")
        (length,) = struct.unpack_from(">I", self._buffer, len(BUNDLE_MAGIC))
        if length > MAX_MANIFEST_BYTES:
            raise LimitError(f"bundle manifest: {length} bytes exceeds {MAX_MANIFEST_BYTES}")
        if len(self._buffer) < head + length:
            return False
        manifest = parse_canonical(bytes(self._buffer[head : head + length]), "bundle manifest")
        if not isinstance(manifest, dict) or manifest.get("v") != 1:
            raise BundleError("bundle manifest: must be an object with v = 1")
        self.manifest = manifest
        del self._buffer[: head + length]
        self.offset = head + length
        return True


def membership_of(manifest: dict[str, Any], registry: Registry) -> list[Statement]:
    """The membership documents a manifest carries, each verified (its envelope; whether it
    is valid from an anchor is the importer's question): BundleError naming the entry if
    one is not a membership document of the bundle's collection, or the list is too long
    or too large. No `membership` key: none."""
    items = manifest.get("membership", [])
    if not isinstance(items, list) or len(items) > MAX_MEMBERSHIP_DOCUMENTS:
        raise BundleError(
            f"bundle manifest.membership: a list of at most {MAX_MEMBERSHIP_DOCUMENTS} documents"
        )
    collection = manifest.get("collection")
    out: list[Statement] = []
    size = 0
    for n, item in enumerate(items):
        try:
            statement = parse_statement_json(item, registry)
        except ProtocolError as exc:
            raise BundleError(f"bundle manifest.membership[{n}]: {exc}") from None
        if statement.kind.name != MEMBERSHIP_KIND:
            raise BundleError(
                f"bundle manifest.membership[{n}]: a {statement.kind.name} statement, not a"
                " membership document"
            )
        assert isinstance(statement.body, MembershipBody)
        if statement.body.collection != collection:
            raise BundleError(
                f"bundle manifest.membership[{n}]: of collection {statement.body.collection!r},"
                f" not the bundle's {collection!r}"
            )
        size += len(statement.to_wire())
        if size > MAX_MEMBERSHIP_BYTES:
            raise BundleError(
                f"bundle manifest.membership: more than {MAX_MEMBERSHIP_BYTES} bytes of documents"
            )
        out.append(statement)
    return out


def _frame_length(buf: bytes, pos: int) -> int | None:
    """Total length of the frame at pos, or None if its length fields are not all here yet."""
    if len(buf) - pos < 6:
        return None
    (header_len,) = struct.unpack_from(">H", buf, pos + 4)
    ops_len_at = pos + 6 + header_len + 64
    if len(buf) < ops_len_at + 4:
        return None
    (ops_len,) = struct.unpack_from(">I", buf, ops_len_at)
    total: int = 6 + header_len + 64 + 4 + ops_len
    if total > MAX_FRAME_BYTES:
        raise LimitError(f"bundle: a frame of {total} bytes exceeds {MAX_FRAME_BYTES}")
    return total


@dataclass
class LogSummary:
    head: int = 0
    head_hash: bytes = b""
    adds: int = 0
    revokes: int = 0
    opinions: int = 0


@dataclass
class BundleCheck:
    """Offline verification of a bundle: every signature, Merkle root and chain link.

    Each log must start at seq 1 and continue without gaps, which is what `export` writes;
    so a verified bundle holds complete, unforked logs.
    """

    logs: dict[LogKey, LogSummary] = field(default_factory=dict)
    batches: int = 0

    def check(self, header: bytes, sig: bytes, ops: bytes) -> Batch:
        try:
            batch = verify_parts(header, sig, ops)
        except ProtocolError as exc:
            raise BundleError(f"bundle batch {self.batches + 1}: {exc}") from None
        log = self.logs.setdefault(batch.log, LogSummary())
        expected_prev = log.head_hash.hex() if log.head else None
        if batch.seq != log.head + 1 or batch.header.prev != expected_prev:
            raise BundleError(
                f"bundle batch {self.batches + 1}: log {batch.log} seq {batch.seq} does not "
                f"follow seq {log.head} (broken chain)"
            )
        log.head, log.head_hash = batch.seq, header_hash(header)
        for op in batch.ops:
            if isinstance(op, AddOp):
                log.adds += 1
            elif isinstance(op, RevokeOp):
                log.revokes += 1
            elif isinstance(op, OpinionOp):
                log.opinions += 1
        self.batches += 1
        return batch

    def summary(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "logs": [
                {
                    "author": key.author,
                    "collection": key.collection,
                    "head": s.head,
                    "head_hash": s.head_hash.hex(),
                    "adds": s.adds,
                    "revokes": s.revokes,
                    "opinions": s.opinions,
                }
                for key, s in sorted(
                    self.logs.items(), key=lambda kv: (kv[0].collection, kv[0].author)
                )
            ],
            "adds": sum(s.adds for s in self.logs.values()),
            "revokes": sum(s.revokes for s in self.logs.values()),
            "opinions": sum(s.opinions for s in self.logs.values()),
        }
