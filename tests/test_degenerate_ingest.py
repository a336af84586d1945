"""Degenerate hashes another node signed are held back at ingest (issue 19: "refused at
every publishing route and at ingest from peers, counted per author, shown on the status
page").

Our own routes refuse them before signing, so they arrive only in another node's batch
(here a bundle signed with a trusted author's real key, imported with the real CLI). The
batch is kept whole, since its log continues after it; the degenerate adds are quarantined
with the reason, never match (not even a real-looking query 18 bits away), are counted per
author in `status`, and no operator lift releases them. The clean add beside them matches.
"""

from __future__ import annotations

import random
from pathlib import Path

from conftest import Cli, HomeFactory
from testdata import PDQ

from hashmesh.node.hashing.degenerate import degenerate_reason
from hashmesh.protocol import SigningKey, build_batch
from hashmesh.protocol.bundles import encode_bundle_header

NEEDLES = PDQ / "needles.txt"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def clear_bits(value: int, positions: list[int]) -> int:
    for p in positions:
        value &= ~(1 << p)
    return value


def test_degenerate_adds_in_a_peers_batch_are_held_back(
    home: HomeFactory, cli: Cli, tmp_path: Path
) -> None:
    needles = [line.strip() for line in NEEDLES.read_text().splitlines() if line.strip()]
    real, clean = int(needles[0], 16), needles[1]
    ones = [p for p in range(256) if real >> p & 1]
    cleared = random.Random(19).sample(ones, len(ones) - 90)  # popcount 90: no real picture
    stored = "%064x" % clear_bits(real, cleared)
    query = "%064x" % clear_bits(real, cleared[18:])  # 18 bits from `stored`, popcount 108
    assert degenerate_reason("pdq", stored) is not None
    assert degenerate_reason("pdq", query) is None
    assert (int(stored, 16) ^ int(query, 16)).bit_count() == 18

    author = SigningKey(bytes([5]) * 32)
    ops = [
        {"op": "add", "type": "pdq", "value": stored, "quality": 100, "category": "csam"},
        {"op": "add", "type": "pdq", "value": clean, "quality": 100, "category": "csam"},
        {"op": "add", "type": "md5", "value": EMPTY_MD5, "category": "csam"},
    ]
    batch = build_batch(author, "csam", 1, None, 1_700_000_000_000, ops)
    bundle = tmp_path / "peer.bundle"
    bundle.write_bytes(
        encode_bundle_header({"v": 1, "collection": "csam", "logs": []}) + batch.to_bytes()
    )

    path = home("P")
    cli("trust", "add", author.node_id, "csam", "--name", "other-hotline", home=path)
    cli("import", bundle, home=path)

    held = {q["value"]: q for q in cli.json("quarantine", "list", home=path)["quarantine"]}
    assert set(held) == {stored, EMPTY_MD5}
    assert all(q["reason"].startswith("degenerate hash from another node: ") for q in held.values())
    assert "bits set" in held[stored]["reason"]

    answer = cli.json("match", "pdq", query, home=path, expect=1)
    hits = [m for r in answer["results"] for m in r["matches"]]
    assert [m["verdict"] for m in hits] == ["quarantined"] and not answer["matched"]
    assert cli.json("match", "pdq", clean, home=path)["matched"] is True
    assert cli.json("match", "md5", EMPTY_MD5, home=path, expect=1)["matched"] is False

    status = cli.json("status", home=path)
    assert status["degenerate_by_author"] == [
        {"author": author.node_id, "name": "other-hotline", "held_back": 2}
    ]
    refused = cli("quarantine", "lift", held[stored]["op_id"], home=path, expect=2)
    assert "never lifted" in refused.stderr
    still = cli.json("quarantine", "list", home=path)["quarantine"]
    assert {q["value"] for q in still} == set(held)
