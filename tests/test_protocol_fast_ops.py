"""Every op kind takes the ingest fast path (one pydantic call per batch): a kind whose
model fields were not declared in canonical key order never re-serialised to its line,
so opinion and revoke batches all went the slow, per-line way (3x slower imports)."""

from __future__ import annotations

from typing import Any

import pytest

from hashmesh.protocol.encoding import canonical
from hashmesh.protocol.ops import _parse_lines_fast, op_to_wire, parse_op_lines, parse_ops

AUTHOR = "ed25519:" + "A" * 43
TARGET = f"{AUTHOR}/csam/1/0"

KINDS: dict[str, list[dict[str, Any]]] = {
    "add": [
        {
            "op": "add",
            "type": "md5",
            "value": "5d41402abc4b2a76b9719d911017c592",
            "category": "csam",
        }
    ],
    "revoke": [
        {"op": "revoke", "targets": [TARGET, f"{AUTHOR}/csam/1/1"], "reason": "mistake"},
        {"op": "revoke", "targets": [TARGET]},
    ],
    "opinion": [{"op": "opinion", "target": TARGET, "opinion": v} for v in ("confirm", "retract")],
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_op_kind_takes_the_fast_path(kind: str) -> None:
    ops = parse_ops(KINDS[kind])
    lines = [canonical(op_to_wire(op)) for op in ops]
    blob = b"\n".join(lines)
    fast = _parse_lines_fast(blob, len(lines))
    assert fast is not None, f"{kind} batches fall back to the per-line parser"
    assert fast == ops
    assert parse_op_lines(blob, lines) == ops


def test_a_mixed_batch_takes_the_fast_path() -> None:
    ops = parse_ops([op for kind in sorted(KINDS) for op in KINDS[kind]])
    lines = [canonical(op_to_wire(op)) for op in ops]
    assert _parse_lines_fast(b"\n".join(lines), len(lines)) == ops
