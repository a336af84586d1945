"""The stored membership and cosign vectors (tests/vectors/trust-v1.json) pin the wire
format: regenerating gives the same bytes, and each stored statement verifies and resolves
to the stored result without the generator."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from hashmesh.protocol.encoding import parse_canonical
from hashmesh.protocol.membership import Anchor, Document, MembershipKind, resolve
from hashmesh.protocol.statements import Registry, parse_statement
from hashmesh.protocol.witness import (
    CosignBody,
    CosignKind,
    decode_header_answer,
    equivocates,
    equivocation_evidence,
    parse_header_request,
    prove_head,
    split_views,
)

VECTORS = Path(__file__).with_name("vectors")
STORED: dict[str, Any] = json.loads((VECTORS / "trust-v1.json").read_text(encoding="utf-8"))
REGISTRY = Registry([MembershipKind, CosignKind])


def test_regenerating_gives_the_stored_file_byte_for_byte() -> None:
    spec = importlib.util.spec_from_file_location("trust_generate", VECTORS / "generate_trust.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stored = (VECTORS / "trust-v1.json").read_text(encoding="utf-8")
    assert module.render(module.build_vectors()) == stored


def _doc(entry: dict[str, Any]) -> Document:
    statement = parse_statement(entry["wire"].encode(), REGISTRY)
    assert statement.id == entry["id"] and statement.body_bytes.decode() == entry["body"]
    assert sorted(statement.signers) == entry["signers"]
    return Document.of(statement)


def test_stored_membership_resolves_as_stored() -> None:
    m = STORED["membership"]
    anchor = Anchor(m["anchor"]["collection"], frozenset(m["anchor"]["stewards"]), 2)
    v1 = _doc(m["version_1"])
    one = _doc(m["version_2_signed_by_one"])
    refused = resolve(anchor, [v1, one])
    assert refused.version == m["version_2_signed_by_one_result"]["version_in_force"] == 1
    assert refused.refused[one.id] == m["version_2_signed_by_one_result"]["refused_reason"]
    applied = resolve(anchor, [v1, _doc(m["version_2"])])
    assert applied.version == m["version_2_result"]["version_in_force"] == 2
    assert sorted(applied.writers) == m["version_2_result"]["writers"]


def test_stored_cosigns_show_the_stored_split_view() -> None:
    c = STORED["cosign"]
    bodies = []
    for name in ("first", "second"):
        statement = parse_statement(c[name]["wire"].encode(), REGISTRY)
        assert statement.id == c[name]["id"] and isinstance(statement.body, CosignBody)
        bodies.append(statement.body)
    views = split_views(bodies, lambda *_: None, "")
    assert [v.to_json() for v in views] == c["split_views"]


def test_stored_header_answer_proves_the_stored_cosign() -> None:
    h = STORED["header_proof"]
    cosign = parse_statement(h["cosign"]["wire"].encode(), REGISTRY).body
    assert isinstance(cosign, CosignBody)
    ask = parse_header_request(h["request"].encode())
    assert (ask.author, ask.collection, ask.seq) == (cosign.author, cosign.collection, 1)
    answer = decode_header_answer(h["answer"].encode())
    assert answer is not None
    header = prove_head(answer, cosign)
    assert header.seq == cosign.seq and header.author == cosign.author
    assert h["answer_not_held"] == '{"held":false,"v":1}'
    assert decode_header_answer(h["answer_not_held"].encode()) is None


def test_stored_equivocation_holds_two_heads_signed_by_one_witness() -> None:
    e = STORED["equivocation"]
    first, second = (parse_statement(e[k]["wire"].encode(), REGISTRY) for k in ("first", "second"))
    assert isinstance(first.body, CosignBody) and isinstance(second.body, CosignBody)
    assert equivocates(first.body, second.body)
    record = equivocation_evidence(first.to_json(), second.to_json())
    assert record.decode() == e["evidence"]
    assert set(parse_canonical(record, "evidence")) == {"v", "kind", "a", "b"}
