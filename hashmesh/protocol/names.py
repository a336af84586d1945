"""Collection names and node ids: the checks a node's configuration needs, without the rest.

Kept apart from ops (pydantic) and signing (cryptography) so that reading a config file,
as every `hashmesh` command does, costs no more than these few lines.
"""

from __future__ import annotations

import re

from hashmesh.protocol.encoding import from_b64url
from hashmesh.protocol.errors import EncodingError, OpError, SignatureError

NODE_ID_PREFIX = "ed25519:"
COLLECTION_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"

_collection_re = re.compile(COLLECTION_PATTERN)


def validate_collection(name: str, what: str = "collection") -> str:
    if not isinstance(name, str) or not _collection_re.match(name):
        raise OpError(
            f"{what}: {name!r} is not a collection name "
            "(1-64 of a-z 0-9 . _ -, starting with a letter or digit)"
        )
    return name


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


_NODE_ID_CHARS = 43
_NODE_ID_SHAPE = (
    f"a node id is '{NODE_ID_PREFIX}' followed by {_NODE_ID_CHARS} base64url characters "
    "(A-Z a-z 0-9 - _), as `hashmesh id` prints it"
)


def validate_node_id(node_id: str, what: str = "node id") -> str:
    """Refuse node ids whose key anyone could sign for, before any signature is checked.

    The y >= p check covers non-canonical encodings beyond the small-order ones: a key
    then has two spellings, so one author could appear as two node ids.
    """
    if not isinstance(node_id, str) or not node_id.startswith(NODE_ID_PREFIX):
        raise SignatureError(f"{what}: must start with '{NODE_ID_PREFIX}'; {_NODE_ID_SHAPE}")
    body = node_id[len(NODE_ID_PREFIX) :]
    if len(body) != _NODE_ID_CHARS:
        raise SignatureError(
            f"{what}: {len(body)} characters after '{NODE_ID_PREFIX}', expected "
            f"{_NODE_ID_CHARS}; {_NODE_ID_SHAPE}"
        )
    try:
        raw = from_b64url(body, what, 32)
    except EncodingError:
        raise SignatureError(
            f"{what}: not a valid key after '{NODE_ID_PREFIX}' (wrong characters, or the "
            f"last character was altered); {_NODE_ID_SHAPE}"
        ) from None
    if raw in SMALL_ORDER_KEYS:
        raise SignatureError(
            f"{what}: a small-order Ed25519 point, which has no secret key "
            "(anyone could forge its signatures)"
        )
    if int.from_bytes(raw, "little") & ~(1 << 255) >= _FIELD_PRIME:
        raise SignatureError(f"{what}: not a canonical Ed25519 public key (y >= p)")
    return node_id
