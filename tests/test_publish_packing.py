"""Publishing packs by op count (publish.batch_size) and still fits every batch's byte limit.

10,000 PhotoDNA adds with the longest labels are about 4.6 MB of ops, past the 4 MiB a
batch may hold: with batch_size 10,000 one count-sized chunk cannot be signed. The
publisher must split it (the ops are the caller's valid input; the packing is ours), not
refuse the caller or fail with an internal error.
"""

from __future__ import annotations

import base64
import tomllib
from hashlib import sha256
from pathlib import Path

import tomli_w

from hashmesh.node.config import Home
from hashmesh.node.service import NodeService, init_home
from hashmesh.protocol.batches import MAX_OPS_BYTES, encode_ops
from hashmesh.protocol.ops import AddOp

COUNT = 10_000


def photodna(i: int) -> str:
    return base64.b64encode(sha256(str(i).encode()).digest() * 4 + bytes(16)).decode()


def test_a_chunk_past_the_byte_limit_is_split_and_everything_is_published(tmp_path: Path) -> None:
    init_home(tmp_path / "h", "hotline", None, None)
    home = Home(tmp_path / "h")
    config = tomllib.loads(home.config_path.read_text())
    config.setdefault("publish", {})["batch_size"] = COUNT
    home.config_path.write_text(tomli_w.dumps(config))
    labels = {"category": "csam", "classification": "A" * 16, "ref": "r" * 128}
    items = [{"type": "photodna", "value": photodna(i), **labels} for i in range(COUNT)]
    assert len(encode_ops([AddOp.create(**i) for i in items])) > MAX_OPS_BYTES

    service = NodeService(home)
    try:
        assert service.config.batch_size == COUNT
        answer = service.add_many("csam", items)
        assert answer["published"] == COUNT
        op_ids = [s["op_id"] for s in answer["signals"]]
        seqs = sorted({int(op.split("/")[2]) for op in op_ids})
        assert seqs == [1, 2], seqs  # split in two halves, in order
        for i in (0, COUNT // 2 - 1, COUNT // 2, COUNT - 1):
            got = service.match([{"type": "photodna", "value": photodna(i)}])
            assert [m["op_id"] for m in got["results"][0]["matches"]] == [op_ids[i]]
    finally:
        service.close()
