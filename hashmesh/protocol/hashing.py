"""Digests and PDQ distance: the arithmetic every node and client must agree on.

Pure functions over bytes and strings (no files, no clock), so a submitter's tool, a node
and a test compute exactly the same values. Decoding images is the node's job
(hashmesh/node/hashing/hasher.py); this module never sees a picture.
"""

from __future__ import annotations

import hashlib

from hashmesh.protocol.errors import SignalError

PDQ_HEX_LENGTH = 64
_HEX = frozenset("0123456789abcdefABCDEF")


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Digests:
    """md5, sha1 and sha256 fed chunk by chunk, so a caller can stream a large file once."""

    def __init__(self) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._sha1 = hashlib.sha1(usedforsecurity=False)
        self._sha256 = hashlib.sha256()

    def update(self, chunk: bytes) -> None:
        self._md5.update(chunk)
        self._sha1.update(chunk)
        self._sha256.update(chunk)

    def hexdigests(self) -> tuple[str, str, str]:
        """(md5, sha1, sha256), lower-case hex."""
        return self._md5.hexdigest(), self._sha1.hexdigest(), self._sha256.hexdigest()


def pdq_distance(a: str, b: str) -> int:
    """Hamming distance of two PDQ hashes given as 64 hex characters (any case)."""
    return (_pdq_int(a) ^ _pdq_int(b)).bit_count()


def _pdq_int(value: str) -> int:
    if len(value) != PDQ_HEX_LENGTH or not _HEX.issuperset(value):
        raise SignalError(f"pdq value: expected {PDQ_HEX_LENGTH} hex characters, got {value!r:.80}")
    return int(value, 16)
