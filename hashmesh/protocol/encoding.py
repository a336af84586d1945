"""Canonical bytes: the only form that is ever signed or hashed.

The canonical form is a strict subset of RFC 8785 (JCS): UTF-8 JSON, object keys sorted,
no insignificant white space, no floats, integers within +/- 2**53 - 1. Object keys are
ASCII, so code-point order (Python) and UTF-16 order (JCS) agree. Decoding re-encodes and
compares, so every value has exactly one byte form and a signature can never be made to
cover two different readings of the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from hashmesh.protocol.errors import EncodingError

MAX_SAFE_INT = 2**53 - 1
MAX_DEPTH = 8

_encoder = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
)


def _reject_constant(name: str) -> Any:
    raise EncodingError(f"JSON: {name} is not allowed in canonical form")


def _reject_float(text: str) -> Any:
    raise EncodingError(f"JSON: number {text!r} is not an integer; floats are not allowed")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise EncodingError("JSON: an object has a duplicate key")
    return out


_decoder = json.JSONDecoder(
    parse_float=_reject_float,
    parse_constant=_reject_constant,
    object_pairs_hook=_no_duplicates,
)


def _check_value(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise EncodingError(f"JSON: nesting deeper than {MAX_DEPTH} levels")
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not -MAX_SAFE_INT <= value <= MAX_SAFE_INT:
            raise EncodingError(f"JSON: integer {value} is outside +/- 2**53-1")
        return
    if isinstance(value, list):
        for item in value:
            _check_value(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key.isascii():
                raise EncodingError(f"JSON: object key {key!r} is not an ASCII string")
            _check_value(item, depth + 1)
        return
    raise EncodingError(f"JSON: type {type(value).__name__} has no canonical form")


def canonical(value: Any) -> bytes:
    """Encode a value to its canonical bytes (raises EncodingError for floats and the like)."""
    _check_value(value, 0)
    try:
        return _encoder.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        raise EncodingError("JSON: a string holds a lone surrogate (not valid UTF-8)") from None


def parse_canonical(data: bytes, what: str = "JSON") -> Any:
    """Decode bytes that must already be canonical; anything else is an EncodingError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EncodingError(f"{what}: not valid UTF-8 ({exc.reason})") from None
    try:
        value = _decoder.decode(text)
    except EncodingError as exc:
        raise EncodingError(f"{what}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise EncodingError(f"{what}: not valid JSON ({exc})") from None
    _check_value(value, 0)
    if _encoder.encode(value) != text:
        raise EncodingError(f"{what}: not in canonical form (sorted keys, no spaces)")
    return value


def b64url(data: bytes) -> str:
    """base64url without padding, the spelling of keys and signatures on the wire."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def from_b64url(text: str, what: str, length: int | None = None) -> bytes:
    """Strict base64url: no padding, no stray bits, re-encodes to the same text."""
    if not isinstance(text, str) or not text.isascii():
        raise EncodingError(f"{what}: not a base64url string")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise EncodingError(f"{what}: not valid base64url") from None
    if b64url(data) != text:
        raise EncodingError(f"{what}: not canonical base64url (padding or stray bits)")
    if length is not None and len(data) != length:
        raise EncodingError(f"{what}: expected {length} bytes, got {len(data)}")
    return data


def from_hex(text: str, what: str, length: int) -> bytes:
    """Lower-case hex of exactly `length` bytes (upper case is not canonical)."""
    if not isinstance(text, str) or len(text) != 2 * length:
        got = len(text) if isinstance(text, str) else type(text).__name__
        raise EncodingError(f"{what}: expected {2 * length} hex characters, got {got}")
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise EncodingError(f"{what}: not hexadecimal") from None
    if data.hex() != text:
        raise EncodingError(f"{what}: hex must be lower case")
    return data
