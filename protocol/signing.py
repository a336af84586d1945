"""Ed25519 identities and domain-separated signatures.

A node id is the public key itself (`ed25519:` + base64url), so a record proves its author
without any directory. Every signature is over `context || 0x00 || message`; the context
names what is signed (a batch header, a peer request ...) so a signature made for one
purpose can never be replayed as another.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .encoding import b64url, from_b64url
from .errors import EncodingError, SignatureError

NODE_ID_PREFIX = "ed25519:"
SIGNATURE_SIZE = 64

CONTEXT_BATCH = b"hashmesh/batch/v1"
CONTEXT_PEER_REQUEST = b"hashmesh/peer-request/v1"
CONTEXT_PEER_RESPONSE = b"hashmesh/peer-response/v1"

_FIELD_PRIME = 2**255 - 19

SMALL_ORDER_KEYS: frozenset[bytes] = frozenset(
    bytes.fromhex(h)
    for h in (
        # canonical encodings of the 8 points of order 1, 2, 4 and 8
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        # non-canonical: x = 0 with the sign bit set
        "0100000000000000000000000000000000000000000000000000000000000080",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        # non-canonical: y = p (that is 0) and y = p + 1 (that is 1)
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
    )
)
"""Every 32-byte encoding that OpenSSL decodes to a point of small order (a torsion point).

Such a key has no secret: [8]A is the identity, so R = [-h]A with S = 0 verifies for one
message in eight or better (for the identity, R = identity and S = 0 verifies every
message), and anyone could sign as that node id. These are the 8 canonical encodings plus
the 6 non-canonical ones (x = 0 with the sign bit set, y >= p) that OpenSSL still accepts,
as in libsodium's small-order blocklist and "Taming the many EdDSAs" (Chalkias et al.).
"""


def _framed(context: bytes, message: bytes) -> bytes:
    return context + b"\x00" + message


class SigningKey:
    """A node's private key. Created from a 32-byte seed so the protocol never reads entropy."""

    __slots__ = ("_key", "node_id", "public_bytes")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise SignatureError(f"private key seed: expected 32 bytes, got {len(seed)}")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_bytes = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.node_id = NODE_ID_PREFIX + b64url(self.public_bytes)

    def seed(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, context: bytes, message: bytes) -> bytes:
        return self._key.sign(_framed(context, message))


def validate_node_id(node_id: str, what: str = "node id") -> str:
    """Refuse node ids whose key anyone could sign for, before any signature is checked.

    The y >= p check covers non-canonical encodings beyond the small-order ones: a key
    then has two spellings, so one author could appear as two node ids.
    """
    if not isinstance(node_id, str) or not node_id.startswith(NODE_ID_PREFIX):
        raise SignatureError(f"{what}: must start with '{NODE_ID_PREFIX}'")
    try:
        raw = from_b64url(node_id[len(NODE_ID_PREFIX) :], what, 32)
    except EncodingError as exc:
        raise SignatureError(str(exc)) from None
    if raw in SMALL_ORDER_KEYS:
        raise SignatureError(
            f"{what}: a small-order Ed25519 point, which has no secret key "
            "(anyone could forge its signatures)"
        )
    if int.from_bytes(raw, "little") & ~(1 << 255) >= _FIELD_PRIME:
        raise SignatureError(f"{what}: not a canonical Ed25519 public key (y >= p)")
    return node_id


@lru_cache(maxsize=4096)
def _public_key(node_id: str) -> Ed25519PublicKey:
    validate_node_id(node_id)
    raw = from_b64url(node_id[len(NODE_ID_PREFIX) :], "node id", 32)
    try:
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise SignatureError("node id: not a valid Ed25519 public key") from None


def verify(node_id: str, context: bytes, message: bytes, signature: bytes) -> None:
    """Raise SignatureError unless `signature` is node_id's signature of message in context."""
    if len(signature) != SIGNATURE_SIZE:
        raise SignatureError(f"signature: expected {SIGNATURE_SIZE} bytes, got {len(signature)}")
    try:
        _public_key(node_id).verify(signature, _framed(context, message))
    except InvalidSignature:
        raise SignatureError(f"signature: does not verify for {node_id}") from None
