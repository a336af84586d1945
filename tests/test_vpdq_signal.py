"""The vpdq signal type: one spelling per video hash, bounded, interchangeable with pytx's."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from testdata import VIDEO

from hashmesh.protocol.batches import build_batch, verify_batch, verify_parts
from hashmesh.protocol.encoding import canonical
from hashmesh.protocol.errors import LimitError, ProtocolError, SignalError
from hashmesh.protocol.merkle import merkle_root
from hashmesh.protocol.ops import MAX_OP_BYTES, AddOp, OpinionOp, RevokeOp, parse_op
from hashmesh.protocol.signals import (
    VPDQ_MAX_FRAMES,
    Signal,
    TMKSignal,
    VpdqFrame,
    VPDQSignal,
)
from hashmesh.protocol.signing import CONTEXT_BATCH, SigningKey

VECTORS = Path(__file__).with_name("vectors")
STORED: dict[str, Any] = json.loads((VECTORS / "vpdq-v1.json").read_text(encoding="utf-8"))
REFERENCE = VIDEO / "vpdq-hashes"
DOCS = Path(__file__).resolve().parents[1] / "docs/protocol.md"
KEY = SigningKey(bytes([1]) * 32)
H1 = "e271017837246aaccddea259648fb7d62f435c89d9e99b2497763e216c8d055c"
H2 = "df83b48f2ad34d68169c36bc6d2f6b36ce5ed08701a301e9cbb9fc12f80b8154"


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("vpdq_generate", VECTORS / "generate_vpdq.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pytx_util() -> Any:
    """pytx's own vpdq serialisation. Its module imports Meta's `vpdq` binding (C++, not on
    PyPI as a wheel) only to hash files; the serialisation under test never touches it."""
    pytest.importorskip("threatexchange")
    sys.modules.setdefault("vpdq", types.SimpleNamespace(VpdqFeature=object))  # type: ignore[arg-type]
    from threatexchange.extensions.vpdq import vpdq_util

    return vpdq_util


def _frames(n: int, step_ms: int = 1000) -> str:
    hashes = [H1, H2]
    return " ".join(
        f"{i * 30},{50 + i % 51},{hashes[i % 2]},{i * step_ms // 1000}.{i * step_ms % 1000:03d}"
        for i in range(n)
    )


def test_regenerating_gives_the_stored_vector_byte_for_byte() -> None:
    gen = _generator()
    assert gen.render(gen.build_vectors()) == (VECTORS / "vpdq-v1.json").read_text("utf-8")


def test_stored_vector_parses_and_the_docs_quote_it() -> None:
    op = parse_op(json.loads(STORED["op_line"]))
    assert isinstance(op, AddOp) and op.value == STORED["value"]
    assert Signal.parse("vpdq", STORED["input"]).value == STORED["value"]
    assert VPDQSignal.to_pytx(STORED["value"]) == STORED["pytx"]
    docs = DOCS.read_text(encoding="utf-8")
    for key in ("value", "pytx", "op_line", "leaf_hash_hex"):
        assert STORED[key] in docs, key


def test_reference_file_as_is_is_a_value_with_every_frame_kept() -> None:
    text = (REFERENCE / "chair-19-sd-bar.txt").read_text(encoding="utf-8")
    value = Signal.parse("vpdq", text).value
    frames = VPDQSignal.parse(value)
    assert len(frames) == len(text.splitlines()) == 564
    assert frames[30] == VpdqFrame(30, frames[30].quality, frames[30].pdq, 1000)
    assert VPDQSignal.is_canonical(value) and value == value.strip() and "\n" not in value


def test_pytx_reads_our_form_and_writes_it_back_exactly() -> None:
    util = _pytx_util()
    text = (REFERENCE / "chair-19-sd-bar.txt").read_text(encoding="utf-8")
    value = Signal.parse("vpdq", text).value
    pytx = VPDQSignal.to_pytx(value)
    features = util.json_to_vpdq(pytx)
    assert [(f.pdq_hex, f.quality) for f in features] == [
        (f.pdq, f.quality) for f in VPDQSignal.parse(value)
    ]
    assert util.vpdq_to_json(features) == pytx


def test_pytx_form_is_accepted_and_numbered_by_position() -> None:
    util = _pytx_util()
    features = [util.VpdqCompactFeature(h, q, t) for h, q, t in ((H1, 90, 0.0), (H2, 40, 1.5))]
    value = Signal.parse("vpdq", util.vpdq_to_json(features)).value
    assert value == f"0,90,{H1},0.000 1,40,{H2},1.500"
    assert VPDQSignal.to_pytx(value) == util.vpdq_to_json(features)


def test_pytx_timestamps_of_long_videos_round_trip() -> None:
    """pytx writes seconds with 3 significant digits (1234.5 s is "1.23e+03")."""
    value = Signal.parse("vpdq", f"0,100,{H1},99.5 1,100,{H2},1234.5").value
    pytx = VPDQSignal.to_pytx(value)
    assert '"' + H2 + ',100,1.23e+03"' in pytx
    assert VPDQSignal.parse(Signal.parse("vpdq", pytx).value)[1].millis == 1_230_000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "vpdq value: is empty"),
        ("[]", "vpdq value: has no frames"),
        (f"0,101,{H1},0.000", "frame[0]: quality 101 is outside 0-100"),
        (f"0,x,{H1},0.000", "frame[0]: quality 'x' is not a whole number"),
        (f"0,100,{H1[:63]}g,0.000", "frame[0]: PDQ: 'g' is not a hex digit"),
        (f"0,100,{H1[:60]},0.000", "frame[0]: PDQ must be 64 hex characters, got 60"),
        (f"0,100,{H1},-1", "frame[0]: timestamp '-1' is not a number of seconds"),
        (f"0,100,{H1},nan", "frame[0]: timestamp 'nan' is not a number of seconds"),
        (f"0,100,{H1}", "frame[0]: expected NUMBER,QUALITY,PDQHEX,SECONDS, got 3 fields"),
        (f"3,100,{H1},0.000 2,100,{H2},1.000", "frame[1]: frame number 2 comes after 3"),
        (f"3,100,{H1},0.000 3,100,{H2},1.000", "frame[1]: frame number 3 appears twice"),
        (f"0,100,{H1},1.000 1,100,{H2},0.500", "frame[1]: timestamp 0.500 s is before"),
        (f"0,100,{H1},1000000", "frame[0]: timestamp 1000000000 ms is outside"),
        (f"9999999999,100,{H1},0", "frame[0]: frame number 9999999999 is outside"),
        (f'["{H1},100"]', "frame[0]: expected PDQHEX,QUALITY,SECONDS, got 2 fields"),
        ("[1]", "frame[0]: expected a string"),
        ('{"a": 1}', "got 1 fields"),
        ("[", "is not a JSON list"),
    ],
)
def test_each_defect_is_one_error_naming_it(raw: str, message: str) -> None:
    with pytest.raises(SignalError) as caught:
        Signal.parse("vpdq", raw)
    assert message in str(caught.value)
    assert str(caught.value).startswith("vpdq value: ")


def test_frame_count_is_bounded_and_the_largest_value_fits_a_batch() -> None:
    with pytest.raises(SignalError, match=f"3601 frames, more than the {VPDQ_MAX_FRAMES}"):
        Signal.parse("vpdq", _frames(VPDQ_MAX_FRAMES + 1))
    op = AddOp.create("vpdq", _frames(VPDQ_MAX_FRAMES), category="csam")
    ops: list[AddOp | RevokeOp | OpinionOp] = [op, AddOp.create("md5", "0" * 32, category="x")]
    batch = build_batch(KEY, "videos", 1, None, 1, ops)
    assert len(batch.op_lines()[0]) > MAX_OP_BYTES
    assert verify_batch(batch.to_bytes()).ops[0] == op


def test_a_long_op_line_is_refused_for_any_other_type() -> None:
    """Only adds of long types get the longer line, and that is told before parsing: a
    long pdq add (a 3,000-byte ref) is refused as too long, whatever else is wrong with it."""
    for line in (
        canonical({"category": "x", "op": "add", "ref": "r" * 3000, "type": "pdq", "value": H1}),
        canonical({"category": "x", "op": "add", "type": "pdq", "value": H1 + " " * 3000}),
        canonical({"category": "x", "op": "add", "type": "vpdq", "value": "x" * 400_000}),
        canonical({"category": "x", "op": "add", "ref": "r" * 3000, "type": "vpdq", "value": "0"}),
    ):
        with pytest.raises(LimitError, match="an op is longer than"):
            verify_parts(*_signed(line))
    with pytest.raises(ProtocolError, match="vpdq value"):
        bad = canonical({"category": "x", "op": "add", "type": "vpdq", "value": "x" * 3000})
        verify_parts(*_signed(bad))


def _signed(ops_bytes: bytes) -> tuple[bytes, bytes, bytes]:
    header = canonical(
        {
            "v": 1,
            "author": KEY.node_id,
            "collection": "c",
            "seq": 1,
            "prev": None,
            "ts": 0,
            "count": 1,
            "size": len(ops_bytes),
            "root": merkle_root([ops_bytes]).hex(),
        }
    )
    return header, KEY.sign(CONTEXT_BATCH, header), ops_bytes


def test_a_canonical_check_refuses_what_normalising_would_change() -> None:
    assert not VPDQSignal.is_canonical(f"0,100,{H1},0.000  1,100,{H2},1.000")
    assert not VPDQSignal.is_canonical(f"0,100,{H1.upper()},0.000")
    assert not VPDQSignal.is_canonical(f"0,100,{H1},0.0")
    assert not VPDQSignal.is_canonical(f"00,100,{H1},0.000")
    assert not VPDQSignal.is_canonical(f"1,100,{H1},0.000 0,100,{H2},1.000")
    with pytest.raises(SignalError, match=r"op\[0\]: vpdq value: not normalised"):
        parse_op({"category": "x", "op": "add", "type": "vpdq", "value": f"0,100,{H1},0.0"})


def test_tmk_is_kept_as_listed_and_bounded() -> None:
    assert Signal.parse("tmk", " QUJD\nREVG== ").value == "QUJDREVG=="
    with pytest.raises(SignalError, match="tmk value: '!' is neither base64 nor hex"):
        Signal.parse("tmk", "abc!")
    with pytest.raises(SignalError, match="tmk value: longer than"):
        Signal.parse("tmk", "A" * (TMKSignal.max_value + 1))
    assert TMKSignal.exact and not VPDQSignal.exact
