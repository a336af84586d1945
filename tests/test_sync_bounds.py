"""The fork evidence a sync page carries is bounded (security review, evidence items):
without a bound, a node holding more forks than a peer accepts in one page (protocol
`MAX_EVIDENCE_ITEMS`) would send pages that peer refuses, and sync with it would stop."""

from __future__ import annotations

from typing import Any

from hashmesh.node.net.sync import EVIDENCE_MESSAGE_BYTES, EVIDENCE_PER_MESSAGE, page_evidence
from hashmesh.protocol.sync import MAX_EVIDENCE_ITEMS, decode_page, encode_page


def fork(
    n: int, collection: str = "csam", size: int = 600, log: int | None = None
) -> dict[str, Any]:
    return {
        "author": f"ed25519:author{n if log is None else log}",
        "collection": collection,
        "evidence": chr(ord("A") + n % 26) * size,
    }


def test_one_item_per_log_newest_first() -> None:
    forks = [fork(1, log=1), fork(2, log=1), fork(3, log=2)]
    assert page_evidence(forks, {"csam"}) == [
        forks[2]["evidence"].encode(),
        forks[1]["evidence"].encode(),
    ]


def test_only_readable_collections() -> None:
    forks = [fork(1, "le-only"), fork(2)]
    assert page_evidence(forks, {"csam"}) == [forks[1]["evidence"].encode()]


def test_count_and_bytes_are_capped_and_a_peer_accepts_the_page() -> None:
    many = [fork(n, size=100) for n in range(MAX_EVIDENCE_ITEMS + 500)]
    picked = page_evidence(many, {"csam"})
    assert len(picked) == EVIDENCE_PER_MESSAGE
    assert picked[0] == many[-1]["evidence"].encode()
    large = [fork(n, size=40_000) for n in range(50)]
    picked = page_evidence(large, {"csam"})
    assert sum(len(b) for b in picked) <= EVIDENCE_MESSAGE_BYTES
    assert len(picked) == EVIDENCE_MESSAGE_BYTES // 40_000
    page = decode_page(encode_page({}, [], False, page_evidence(many, {"csam"}), []))
    assert len(page.evidence) == EVIDENCE_PER_MESSAGE
