"""Canonical JSON, base64url and hex: exactly one byte form per value, everything else refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hashmesh.protocol.encoding import (
    MAX_SAFE_INT,
    b64url,
    canonical,
    from_b64url,
    from_hex,
    parse_canonical,
)
from hashmesh.protocol.errors import EncodingError, ProtocolError

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(max_codepoint=127), max_size=6), children, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(json_values)
def test_canonical_round_trips(value: Any) -> None:
    data = canonical(value)
    assert parse_canonical(data) == value
    assert canonical(parse_canonical(data)) == data


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.text(st.characters(max_codepoint=127), max_size=6),
        st.integers(0, 9),
        min_size=2,
        max_size=5,
    )
)
def test_keys_out_of_order_refused(value: dict[str, int]) -> None:
    keys = sorted(value)
    reversed_text = "{" + ",".join(f"{json.dumps(k)}:{value[k]}" for k in reversed(keys)) + "}"
    with pytest.raises(EncodingError, match="canonical form"):
        parse_canonical(reversed_text.encode())


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (b'{"a":1.5}', "floats are not allowed"),
        (b'{"a":1.0}', "floats are not allowed"),
        (b'{"a":1e3}', "floats are not allowed"),
        (b'{"a":NaN}', "not allowed in canonical form"),
        (b'{"a":Infinity}', "not allowed in canonical form"),
        (b'{"a":1,"a":2}', "duplicate key"),
        (b'{"b":1,"a":2}', "canonical form"),
        (b'{"a": 1}', "canonical form"),
        (b' {"a":1}', "canonical form"),
        (b'{"a":1}\n', "canonical form"),
        (b'{"a":9007199254740992}', "outside"),
        (b'{"a":-9007199254740992}', "outside"),
        (b'{"a":"\\u0041"}', "canonical form"),
        (b'{"a":"\\/"}', "canonical form"),
        (b'{"a":"\\ud800"}', "canonical form"),
        (b'{"a":-0}', "canonical form"),
        (b'{"\xc3\xa9":1}', "not an ASCII string"),
        (b'{"a":"\xff"}', "not valid UTF-8"),
        (b'{"a":1', "not valid JSON"),
        (b"[" * 20 + b"]" * 20, "nesting deeper"),
    ],
)
def test_non_canonical_json_refused(text: bytes, reason: str) -> None:
    with pytest.raises(EncodingError, match=reason):
        parse_canonical(text)


def test_canonical_refuses_floats_and_lone_surrogates() -> None:
    with pytest.raises(EncodingError, match="no canonical form"):
        canonical({"a": 1.5})
    with pytest.raises(EncodingError, match="outside"):
        canonical({"a": 2**53})
    with pytest.raises(EncodingError, match="surrogate"):
        canonical({"a": "\ud800"})


def test_big_ints_at_the_limit_are_fine() -> None:
    assert parse_canonical(b'{"a":9007199254740991}') == {"a": MAX_SAFE_INT}
    assert parse_canonical(b'{"a":-9007199254740991}') == {"a": -MAX_SAFE_INT}


def test_control_characters_use_the_short_escapes() -> None:
    assert canonical('\n\t\x01"\\') == b'"\\n\\t\\u0001\\"\\\\"'
    assert canonical("é\u2028") == '"é\u2028"'.encode()


@settings(max_examples=200)
@given(st.binary(max_size=40))
def test_b64url_round_trip(data: bytes) -> None:
    text = b64url(data)
    assert "=" not in text
    assert from_b64url(text, "x") == data


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("AQ==", "padding or stray bits"),
        ("AR", "padding or stray bits"),  # 0x01 with a stray low bit
        ("A", "not valid base64url"),
        ("AQ+/", "padding or stray bits"),  # standard alphabet, not url-safe
        ("é", "not a base64url string"),
        ("A Q", "not valid base64url|padding or stray bits"),
    ],
)
def test_non_canonical_base64url_refused(text: str, reason: str) -> None:
    with pytest.raises(EncodingError, match=reason):
        from_b64url(text, "field")


def test_base64url_length_checked() -> None:
    with pytest.raises(EncodingError, match="expected 32 bytes, got 1"):
        from_b64url("AQ", "key", 32)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("AB" * 32, "lower case"),
        ("ab" * 31, "expected 64 hex characters, got 62"),
        ("zz" * 32, "not hexadecimal"),
    ],
)
def test_hex_strict(text: str, reason: str) -> None:
    with pytest.raises(EncodingError, match=reason):
        from_hex(text, "root", 32)
    assert issubclass(EncodingError, ProtocolError)


def test_hex_accepts_lower_case() -> None:
    assert from_hex("ab" * 32, "root", 32) == b"\xab" * 32
