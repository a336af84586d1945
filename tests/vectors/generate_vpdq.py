"""Write tests/vectors/vpdq-v1.json: a vpdq value from input to op line, and its pytx form.

Deterministic; tests/test_vpdq_signal.py checks that running it again reproduces the file
byte for byte, and docs/protocol.md (section 3, vpdq) quotes the values. The frames are
Meta's vpdq output for frames 0, 30 and 60 of its chair-19-sd-bar.mp4 sample, given as
its hash file (a line per frame) with the middle hash in upper case.
Run: `.venv/bin/python tests/vectors/generate_vpdq.py`.
"""

from __future__ import annotations

import json
import sys
from hashlib import sha256
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hashmesh.protocol.encoding import canonical
from hashmesh.protocol.ops import AddOp, op_to_wire
from hashmesh.protocol.signals import VPDQSignal

OUT = Path(__file__).with_name("vpdq-v1.json")
INPUT = (
    "0,100,e271017837246aaccddea259648fb7d62f435c89d9e99b2497763e216c8d055c,0.000\n"
    "30,100,DF83B48F2AD34D68169C36BC6D2F6B36CE5ED08701A301E9CBB9FC12F80B8154,1.000\n"
    "60,100,f49a224f5b25a4b02a5e55e8ab075a6d1db6a04b5aaf35612e596667e5ebc054,2.000\n"
)


def build_vectors() -> dict[str, Any]:
    op = AddOp.create("vpdq", INPUT, category="csam")
    line = canonical(op_to_wire(op))
    return {
        "input": INPUT,
        "value": op.value,
        "pytx": VPDQSignal.to_pytx(op.value),
        "op_line": line.decode(),
        "leaf_hash_hex": sha256(b"\x00" + line).hexdigest(),
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    OUT.write_text(render(build_vectors()), encoding="utf-8")
    print(f"wrote {OUT}")
