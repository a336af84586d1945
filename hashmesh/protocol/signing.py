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

from hashmesh.protocol.encoding import b64url, from_b64url
from hashmesh.protocol.errors import SignatureError
from hashmesh.protocol.names import NODE_ID_PREFIX as NODE_ID_PREFIX
from hashmesh.protocol.names import SMALL_ORDER_KEYS as SMALL_ORDER_KEYS
from hashmesh.protocol.names import validate_node_id as validate_node_id

SIGNATURE_SIZE = 64

CONTEXT_BATCH = b"hashmesh/batch/v1"
CONTEXT_PEER_REQUEST = b"hashmesh/peer-request/v1"
CONTEXT_PEER_RESPONSE = b"hashmesh/peer-response/v1"


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
