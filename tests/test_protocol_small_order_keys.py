"""Small-order Ed25519 keys have no secret, so a node id made of one must never be accepted.

Each parametrised case would have passed as a node id before the refusal; for the identity
point the forged signature R = identity, S = 0 verified any message, so anyone could
publish batches or authenticate as that "node".
"""

from __future__ import annotations

from hashlib import sha256

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from protocol_helpers import KEYS, add

from hashmesh.protocol.batches import build_batch, parse_header, verify_header
from hashmesh.protocol.encoding import b64url, canonical
from hashmesh.protocol.errors import SignatureError
from hashmesh.protocol.peerauth import H_FROM, PeerAuthError, sign_request, verify_request
from hashmesh.protocol.signing import (
    CONTEXT_BATCH,
    NODE_ID_PREFIX,
    SMALL_ORDER_KEYS,
    SigningKey,
    validate_node_id,
    verify,
)

IDENTITY = bytes.fromhex("01" + "00" * 31)
FORGED_SIGNATURE = IDENTITY + bytes(32)  # R = identity point, S = 0
SMALL_ORDER = sorted(SMALL_ORDER_KEYS)


def node_id(raw: bytes) -> str:
    return NODE_ID_PREFIX + b64url(raw)


def header_bytes(author: str) -> bytes:
    return canonical(
        {
            "v": 1,
            "author": author,
            "collection": "csam",
            "seq": 1,
            "prev": None,
            "ts": 1_700_000_000,
            "count": 1,
            "size": 2,
            "root": sha256(b"x").hexdigest(),
        }
    )


def test_the_list_is_every_small_order_encoding() -> None:
    assert len(SMALL_ORDER_KEYS) == 14
    assert all(len(key) == 32 for key in SMALL_ORDER_KEYS)


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=lambda raw: raw.hex())
def test_small_order_key_loads_in_cryptography(raw: bytes) -> None:
    """Why the protocol must check: the library underneath accepts every one of them."""
    Ed25519PublicKey.from_public_bytes(raw)


@pytest.mark.parametrize("message", [b"", b"any message", bytes(range(256))])
def test_identity_key_verifies_a_forged_signature_in_cryptography(message: bytes) -> None:
    """Without the refusal this forgery, needing no secret, would be a valid signature."""
    Ed25519PublicKey.from_public_bytes(IDENTITY).verify(FORGED_SIGNATURE, message)


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=lambda raw: raw.hex())
def test_validate_node_id_refuses_small_order_key(raw: bytes) -> None:
    with pytest.raises(SignatureError, match=r"^owner: .*small-order"):
        validate_node_id(node_id(raw), "owner")


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=lambda raw: raw.hex())
def test_batch_header_with_small_order_author_is_refused(raw: bytes) -> None:
    with pytest.raises(SignatureError, match=r"^batch header\.author: .*small-order"):
        parse_header(header_bytes(node_id(raw)))


def test_forged_batch_for_identity_key_is_refused() -> None:
    forged = header_bytes(node_id(IDENTITY))
    with pytest.raises(SignatureError, match="small-order"):
        verify_header(forged, FORGED_SIGNATURE)
    with pytest.raises(SignatureError, match="small-order"):
        verify(node_id(IDENTITY), CONTEXT_BATCH, forged, FORGED_SIGNATURE)


@pytest.mark.parametrize("raw", SMALL_ORDER, ids=lambda raw: raw.hex())
def test_peer_request_from_small_order_key_is_refused(raw: bytes) -> None:
    callee = KEYS[1].node_id
    headers = sign_request(KEYS[0], callee, "POST", "/v1/peer/push", b"{}", 1_000, bytes(16))
    headers[H_FROM] = node_id(raw)
    with pytest.raises(PeerAuthError, match=rf"^peer auth: {H_FROM}: .*small-order"):
        verify_request(headers, "POST", "/v1/peer/push", b"{}", callee, 1_000)


@pytest.mark.parametrize("y", [2**255 - 19 + 2, 2**255 - 1])
@pytest.mark.parametrize("sign", [0, 1])
def test_non_canonical_y_is_refused(y: int, sign: int) -> None:
    raw = (y | sign << 255).to_bytes(32, "little")
    with pytest.raises(SignatureError, match=r"^node id: .*y >= p"):
        validate_node_id(node_id(raw))


# Seeds derived, not random: pytest-xdist workers must collect the same ids.
HASHED_SEEDS = [sha256(b"valid key %d" % n).digest() for n in range(16)]


@pytest.mark.parametrize(
    "seed", [*(key.seed() for key in KEYS), *HASHED_SEEDS], ids=lambda seed: seed.hex()[:16]
)
def test_valid_keys_still_pass(seed: bytes) -> None:
    key = SigningKey(seed)
    assert validate_node_id(key.node_id) == key.node_id
    batch = build_batch(key, "csam", 1, None, 1_700_000_000, [add(1)])
    assert verify_header(batch.header_bytes, batch.signature).author == key.node_id
