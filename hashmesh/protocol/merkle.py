"""RFC 6962 / RFC 9162 Merkle trees over a batch's ops.

Leaves are hashed as SHA-256(0x00 || op bytes) and interior nodes as
SHA-256(0x01 || left || right), so a leaf can never pass for a node. The root signed in a
batch header lets anyone prove one op's membership with log2(n) hashes, without the batch.
"""

from __future__ import annotations

from hashlib import sha256

from hashmesh.protocol.errors import ProofError, ProtocolUsageError

HASH_SIZE = 32
MAX_PROOF_LENGTH = 64


def leaf_hash(data: bytes) -> bytes:
    return sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return sha256(b"\x01" + left + right).digest()


def root_from_leaf_hashes(hashes: list[bytes]) -> bytes:
    """Bottom-up pairing; a lone last node moves up unchanged, which equals RFC 6962's MTH."""
    if not hashes:
        return sha256(b"").digest()
    level = hashes
    while len(level) > 1:
        pairs = zip(level[::2], level[1::2], strict=False)  # an odd last node is left out
        paired = [sha256(b"\x01" + a + b).digest() for a, b in pairs]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


def merkle_root(leaves: list[bytes]) -> bytes:
    return root_from_leaf_hashes([sha256(b"\x00" + leaf).digest() for leaf in leaves])


def _largest_power_of_two_below(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def inclusion_path(leaf_hashes: list[bytes], index: int) -> list[bytes]:
    """The audit path of leaf `index` (RFC 6962 section 2.1.1), from the leaf upwards."""
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise ProtocolUsageError(f"proof index: {index} is outside a tree of {n} leaves")
    if n == 1:
        return []
    k = _largest_power_of_two_below(n)
    if index < k:
        return [*inclusion_path(leaf_hashes[:k], index), root_from_leaf_hashes(leaf_hashes[k:])]
    return [*inclusion_path(leaf_hashes[k:], index - k), root_from_leaf_hashes(leaf_hashes[:k])]


def root_from_inclusion_path(leaf: bytes, index: int, tree_size: int, path: list[bytes]) -> bytes:
    """Recompute the root from a leaf hash and its path (RFC 9162 section 2.1.3.2).

    Sizes are checked because node_hash would hash any bytes: a leaf of the wrong size is
    not a leaf hash (the caller passed op bytes, or a peer sent garbage), and its "root"
    would mean nothing.
    """
    if len(leaf) != HASH_SIZE:
        raise ProofError(f"proof leaf: must be a {HASH_SIZE}-byte hash, got {len(leaf)} bytes")
    if not 0 <= index < tree_size:
        raise ProofError(f"proof index: {index} is outside a tree of {tree_size} leaves")
    if len(path) > MAX_PROOF_LENGTH:
        raise ProofError(f"proof path: longer than {MAX_PROOF_LENGTH} hashes")
    fn, sn, r = index, tree_size - 1, leaf
    for n, p in enumerate(path):
        if len(p) != HASH_SIZE:
            raise ProofError(
                f"proof path[{n}]: must be a {HASH_SIZE}-byte hash, got {len(p)} bytes"
            )
        if sn == 0:
            raise ProofError("proof path: longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("proof path: shorter than the tree is deep")
    return r
