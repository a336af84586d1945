"""The stored bundle vector (tests/vectors/bundle-v1.json) pins manifest.membership: the
generator gives the same bytes, the stored bundle decodes, its documents verify and resolve
from the stored anchor to the stored membership, a reader of the manifest's `v` alone reads
it, and a changed or misplaced document is refused naming its entry."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from hashmesh.protocol.bundles import (
    BUNDLE_MAGIC,
    MAX_MEMBERSHIP_DOCUMENTS,
    BundleCheck,
    BundleDecoder,
    encode_bundle_header,
    membership_of,
)
from hashmesh.protocol.encoding import b64url, from_b64url
from hashmesh.protocol.errors import BundleError
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.membership import Anchor, Document, describe, resolve

VECTORS = Path(__file__).with_name("vectors")
STORED: dict[str, Any] = json.loads((VECTORS / "bundle-v1.json").read_text(encoding="utf-8"))
DOCS = Path(__file__).parents[1] / "docs"


def test_regenerating_gives_the_stored_file_byte_for_byte() -> None:
    spec = importlib.util.spec_from_file_location("bundle_generate", VECTORS / "generate_bundle.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stored = (VECTORS / "bundle-v1.json").read_text(encoding="utf-8")
    assert module.render(module.build_vectors()) == stored


def _decode(data: bytes) -> tuple[dict[str, Any], BundleCheck]:
    decoder, check = BundleDecoder(), BundleCheck()
    for frame in decoder.feed(data):
        check.check(*frame)
    decoder.close()
    assert decoder.manifest is not None
    return decoder.manifest, check


def test_the_stored_bundle_decodes_and_its_membership_resolves() -> None:
    manifest, check = _decode(bytes.fromhex(STORED["bundle_hex"]))
    assert manifest == STORED["manifest"] and check.batches == 1
    documents = membership_of(manifest, REGISTRY)
    assert [d.id for d in documents] == STORED["membership_ids"]
    docs = [Document.of(d) for d in documents]
    assert describe(docs) == STORED["verify_reports"]
    anchor = STORED["anchor"]
    result = resolve(
        Anchor(anchor["collection"], frozenset(anchor["stewards"]), anchor["threshold"]), docs
    )
    assert {"version": result.version, "writers": sorted(result.writers)} == STORED["in_force"]


def test_a_reader_of_v_alone_reads_the_bundle() -> None:
    """What a reader before manifest.membership does: the decoder needs only `v`, so the
    bundle's batches decode as they always did (the key is ignored)."""
    data = bytes.fromhex(STORED["bundle_hex"])
    manifest = dict(STORED["manifest"])
    del manifest["membership"]
    (length,) = struct.unpack_from(">I", data, len(BUNDLE_MAGIC))
    frames = data[len(BUNDLE_MAGIC) + 4 + length :]
    _, with_key = _decode(data)
    _, without = _decode(encode_bundle_header(manifest) + frames)
    assert with_key.summary() == without.summary()
    assert membership_of(manifest, REGISTRY) == []


def _changed(n: int, **body: Any) -> dict[str, Any]:
    manifest = json.loads(json.dumps(STORED["manifest"]))
    entry = manifest["membership"][n]
    decoded = json.loads(from_b64url(entry["body"], "body"))
    entry["body"] = b64url(
        json.dumps({**decoded, **body}, sort_keys=True, separators=(",", ":")).encode()
    )
    return manifest


@pytest.mark.parametrize(
    ("manifest", "why"),
    [
        (_changed(1, ts=1_700_000_061), "bundle manifest.membership[1]: "),
        ({**STORED["manifest"], "membership": {}}, "bundle manifest.membership: a list"),
        (
            {**STORED["manifest"], "membership": STORED["manifest"]["membership"] * 33},
            f"at most {MAX_MEMBERSHIP_DOCUMENTS} documents",
        ),
        ({**STORED["manifest"], "collection": "other"}, "not the bundle's 'other'"),
    ],
)
def test_a_bad_membership_entry_is_refused_naming_it(manifest: dict[str, Any], why: str) -> None:
    with pytest.raises(BundleError) as caught:
        membership_of(manifest, REGISTRY)
    assert why in str(caught.value)


def test_protocol_md_quotes_the_stored_ids() -> None:
    text = (DOCS / "protocol.md").read_text(encoding="utf-8")
    for statement_id in STORED["membership_ids"]:
        assert statement_id in text
