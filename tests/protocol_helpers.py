"""Shared builders for the protocol tests: fixed keys, realistic ops, honest log chains."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from hashlib import sha256
from typing import Any

import pytest

from hashmesh.protocol.batches import Batch, build_batch
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.ops import AddOp, AnyOp, OpinionOp, RevokeOp
from hashmesh.protocol.signing import SigningKey

SEEDS = [bytes(range(1 + 32 * i, 33 + 32 * i)) for i in range(4)]
KEYS = [SigningKey(bytes(b % 256 for b in seed)) for seed in SEEDS]

MD5 = "d41d8cd98f00b204e9800998ecf8427e"
SHA1 = "da39a3ee5e6b4b0d3255bfef95601890afd80709"
SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
PHOTODNA_BYTES = bytes((i * 7 + 3) % 256 for i in range(144))
PHOTODNA = base64.b64encode(PHOTODNA_BYTES).decode("ascii")


def add(i: int, signal_type: str = "md5", category: str = "csam") -> AddOp:
    """A distinct, valid add numbered i."""
    lengths = {"md5": 32, "sha1": 40, "sha256": 64, "pdq": 64}
    if signal_type == "photodna":
        value = base64.b64encode(sha256(str(i).encode()).digest() * 4 + bytes(16)).decode()
        return AddOp.create("photodna", value, category=category)
    value = sha256(f"{signal_type}{i}".encode()).hexdigest()[: lengths[signal_type]]
    return AddOp.create(signal_type, value, category=category)


def chain(
    key: SigningKey,
    collection: str,
    op_lists: Sequence[Sequence[AnyOp | dict[str, Any]]],
    ts: int = 1_700_000_000,
) -> list[Batch]:
    """An honest log: batches 1..n, each linked to its predecessor's header hash."""
    batches: list[Batch] = []
    prev = None
    for seq, ops in enumerate(op_lists, start=1):
        batch = build_batch(key, collection, seq, prev, ts + seq, list(ops))  # type: ignore[arg-type]
        batches.append(batch)
        prev = batch.hash
    return batches


def revoke(*targets: object, reason: str = "mistake") -> RevokeOp:
    return RevokeOp(targets=[str(t) for t in targets], reason=reason)


def opinion(target: object, kind: str) -> OpinionOp:
    return OpinionOp(target=str(target), opinion=kind)  # type: ignore[arg-type]


def mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 Merkle Tree Hash, written as the RFC states it (recursive)."""
    n = len(leaves)
    if n == 0:
        return sha256(b"").digest()
    if n == 1:
        return sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


MASKS = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xFF, 0x20 | 0x01)


def assert_every_flip_rejected(
    data: bytes,
    check: Callable[[bytes], object],
    masks: Sequence[int] = MASKS,
    stride: int = 1,
) -> int:
    """Flip bits at every position (with each mask); each variant must raise ProtocolError.

    Any other exception type propagates and fails the test, as does acceptance.
    Returns how many variants were tried, so a caller can assert the loop did real work.
    """
    tried = 0
    for pos in range(0, len(data), stride):
        for mask in masks:
            mutated = bytearray(data)
            mutated[pos] ^= mask
            with pytest.raises(ProtocolError):
                check(bytes(mutated))
            tried += 1
    return tried
