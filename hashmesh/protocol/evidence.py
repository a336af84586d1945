"""Fork evidence: two headers signed by one author that cannot both be honest.

An honest author writes one chain per (author, collection). Two validly signed headers
prove equivocation when they share a seq but differ, or when the later one's `prev` is not
the hash of the earlier one at seq - 1. The pair is self-contained: anyone can check it
without trusting whoever relayed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import sha256
from typing import Any

from hashmesh.protocol.batches import Header, LogKey, header_hash, verify_header
from hashmesh.protocol.encoding import b64url, canonical, from_b64url, parse_canonical
from hashmesh.protocol.errors import EncodingError, EvidenceError

MAX_EVIDENCE_BYTES = 4096


@dataclass(frozen=True, slots=True)
class SignedHeader:
    header_bytes: bytes
    signature: bytes

    def to_wire(self) -> dict[str, str]:
        return {"header": b64url(self.header_bytes), "sig": b64url(self.signature)}


@dataclass(frozen=True, slots=True)
class ForkEvidence:
    log: LogKey
    seq: int
    first: SignedHeader
    second: SignedHeader

    def to_bytes(self) -> bytes:
        return canonical(
            {
                "v": 1,
                "kind": "fork",
                "a": {
                    "header": b64url(self.first.header_bytes),
                    "sig": b64url(self.first.signature),
                },
                "b": {
                    "header": b64url(self.second.header_bytes),
                    "sig": b64url(self.second.signature),
                },
            }
        )

    @property
    def id(self) -> str:
        return sha256(self.to_bytes()).hexdigest()


def _conflict(a: Header, a_bytes: bytes, b: Header, b_bytes: bytes) -> str | None:
    if a.author != b.author or a.collection != b.collection:
        return None
    if a.seq == b.seq and a_bytes != b_bytes:
        return "same-seq"
    if b.seq == a.seq + 1 and b.prev != header_hash(a_bytes).hex():
        return "broken-link"
    return None


def build_evidence(a: SignedHeader, b: SignedHeader) -> ForkEvidence:
    """Make evidence from two signed headers, ordered so equal evidence has equal bytes."""
    ha = verify_header(a.header_bytes, a.signature)
    hb = verify_header(b.header_bytes, b.signature)
    if (hb.seq, b.header_bytes) < (ha.seq, a.header_bytes):
        a, b, ha, hb = b, a, hb, ha
    if _conflict(ha, a.header_bytes, hb, b.header_bytes) is None:
        raise EvidenceError("evidence: these two headers do not conflict")
    return ForkEvidence(LogKey(ha.author, ha.collection), hb.seq, a, b)


def verify_evidence(data: bytes) -> ForkEvidence:
    if len(data) > MAX_EVIDENCE_BYTES:
        raise EvidenceError(f"evidence: {len(data)} bytes exceeds {MAX_EVIDENCE_BYTES}")
    value: Any = parse_canonical(data, "evidence")
    if (
        not isinstance(value, dict)
        or set(value) != {"v", "kind", "a", "b"}
        or type(value["v"]) is not int
        or value["v"] != 1
        or value["kind"] != "fork"
    ):
        raise EvidenceError("evidence: must be {v: 1, kind: 'fork', a, b}")
    parts = []
    for name in ("a", "b"):
        part = value[name]
        if not isinstance(part, dict) or set(part) != {"header", "sig"}:
            raise EvidenceError(f"evidence.{name}: must hold exactly header and sig")
        try:
            parts.append(
                SignedHeader(
                    from_b64url(part["header"], f"evidence.{name}.header"),
                    from_b64url(part["sig"], f"evidence.{name}.sig", 64),
                )
            )
        except EncodingError as exc:
            raise EvidenceError(str(exc)) from None
    evidence = build_evidence(parts[0], parts[1])
    if evidence.to_bytes() != data:
        raise EvidenceError("evidence: headers are not in canonical order")
    return evidence
