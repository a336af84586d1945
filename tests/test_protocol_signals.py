"""Signal types: normalisation of valid input, precise refusal of malformed input."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_helpers import MD5, PDQ, PHOTODNA, PHOTODNA_BYTES, SHA1, SHA256

from hashmesh.protocol.errors import OpError, SignalError
from hashmesh.protocol.ops import AddOp, parse_ops
from hashmesh.protocol.signals import Signal, signal_types

HEX = {"md5": (MD5, 32), "sha1": (SHA1, 40), "sha256": (SHA256, 64), "pdq": (PDQ, 64)}


def test_registry_has_the_five_types() -> None:
    assert {"md5", "sha1", "sha256", "pdq", "photodna"} <= set(signal_types())


@pytest.mark.parametrize("name", sorted(HEX))
def test_hex_types_normalise_case_and_white_space(name: str) -> None:
    value, _ = HEX[name]
    assert Signal.parse(name, f"  {value.upper()}\n\t") == Signal(name, value)


@pytest.mark.parametrize("name", sorted(HEX))
def test_hex_types_refuse_wrong_length(name: str) -> None:
    value, length = HEX[name]
    expected = rf"^{name} value: expected {length} hex characters, got {length - 2}$"
    with pytest.raises(SignalError, match=expected):
        Signal.parse(name, value[:-2])


@pytest.mark.parametrize("name", sorted(HEX))
def test_hex_types_refuse_non_hex(name: str) -> None:
    value, _ = HEX[name]
    with pytest.raises(SignalError, match=rf"^{name} value: 'g' is not a hex digit$"):
        Signal.parse(name, "g" + value[1:])


@pytest.mark.parametrize("name", [*sorted(HEX), "photodna"])
def test_empty_values_refused(name: str) -> None:
    with pytest.raises(SignalError, match=rf"^{name} value: is empty$"):
        Signal.parse(name, "  ")


def test_32_character_pdq_is_refused() -> None:
    with pytest.raises(SignalError, match=r"^pdq value: expected 64 hex characters, got 32$"):
        Signal.parse("pdq", MD5)


def test_unknown_type_refused_with_known_list() -> None:
    with pytest.raises(SignalError, match=r"^signal type: unknown type 'tlsh' \(known: .*md5.*\)$"):
        Signal.parse("tlsh", MD5)


def test_photodna_from_base64_and_from_ncmec_byte_list() -> None:
    spaced = PHOTODNA[:50] + "\n " + PHOTODNA[50:]
    assert Signal.parse("photodna", spaced).value == PHOTODNA
    listed = ",".join(str(b) for b in PHOTODNA_BYTES)
    assert Signal.parse("photodna", listed).value == PHOTODNA
    assert Signal.parse("photodna", listed.replace(",", ", ")).value == PHOTODNA


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (base64.b64encode(bytes(143)).decode(), "expected 144 bytes, got 143"),
        ("!" * 192, "not valid base64"),
        (",".join(["1"] * 143), "expected 144 byte values, got 143"),
        (",".join(["1"] * 143 + ["256"]), "byte value 256 is outside 0-255"),
        (",".join(["1"] * 143 + ["x"]), "byte list holds a non-number"),
    ],
)
def test_photodna_malformed(raw: str, reason: str) -> None:
    with pytest.raises(SignalError, match=f"^photodna value: {reason}$"):
        Signal.parse("photodna", raw)


def test_overlong_raw_value_refused() -> None:
    with pytest.raises(SignalError, match="md5 value: longer than 4096 characters"):
        Signal.parse("md5", "a" * 5000)


@settings(max_examples=100)
@given(st.binary(min_size=32, max_size=32), st.sampled_from(["upper", "lower", "pad"]))
def test_sha256_normalisation_is_idempotent(digest: bytes, style: str) -> None:
    raw = digest.hex()
    raw = raw.upper() if style == "upper" else f" {raw} " if style == "pad" else raw
    once = Signal.parse("sha256", raw)
    assert once.value == digest.hex()
    assert Signal.parse("sha256", once.value) == once


def test_quality_only_for_pdq_and_in_range() -> None:
    assert AddOp.create("pdq", PDQ, category="csam", quality=100).quality == 100
    with pytest.raises(SignalError, match="quality: only pdq signals carry a quality, not md5"):
        AddOp.create("md5", MD5, category="csam", quality=50)
    with pytest.raises(SignalError, match="quality: must be an integer 0-100, got 101"):
        AddOp.create("pdq", PDQ, category="csam", quality=101)


def test_add_labels_checked() -> None:
    with pytest.raises(OpError, match=r"^add\.category: "):
        AddOp.create("md5", MD5, category="Not A Label")
    with pytest.raises(OpError, match=r"^add\.classification: "):
        AddOp.create("md5", MD5, category="csam", classification="A 1")


@pytest.mark.parametrize(
    ("op", "reason"),
    [
        (
            {"op": "add", "type": "md5", "value": MD5.upper(), "category": "csam"},
            "md5 value: not normalised",
        ),
        (
            {"op": "add", "type": "pdq", "value": MD5, "category": "csam"},
            "pdq value: expected 64 hex characters, got 32",
        ),
        (
            {"op": "add", "type": "nope", "value": MD5, "category": "csam"},
            "signal type: unknown type 'nope'",
        ),
        (
            {"op": "add", "type": "md5", "value": MD5, "category": "csam", "quality": 5},
            "quality: only pdq signals carry a quality",
        ),
        (
            {"op": "add", "type": "photodna", "value": PHOTODNA[:-4], "category": "csam"},
            "photodna value: expected 144 bytes, got 141",
        ),
        (
            {"op": "add", "type": "photodna", "value": " " + PHOTODNA, "category": "csam"},
            "photodna value: not normalised",
        ),
    ],
)
def test_wire_ops_must_already_be_normalised(op: dict[str, object], reason: str) -> None:
    """On the wire values are already normal; the error names the op index and the reason."""
    good = {"op": "add", "type": "sha1", "value": SHA1, "category": "csam"}
    with pytest.raises(SignalError, match=re.escape(f"ops[0]: {reason}")):
        parse_ops([op])
    with pytest.raises(SignalError, match=re.escape(f"ops[1]: {reason}")):
        parse_ops([good, op, good])
