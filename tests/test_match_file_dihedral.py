"""`POST /v1/match/file` with the dihedral variants (issue 15, defect 2), on a running node.

The list holds Meta's exif-rotn-6.jpg as a viewer shows it (turned upright, no orientation
tag); the platform uploads the camera's own file. Without `dihedral` nothing matches (the
stored pixels are a quarter turn away); with it the "rotate270" variant does, and says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from netnodes import NodeProc
from platform_util import match_file
from test_exif_orientation import PHOTO, upright_copy

from hashmesh.node.hashing.hasher import pdq_dihedral_from_bytes, pdq_from_bytes
from hashmesh.node.hashing.pdq import DIHEDRAL

LISTED, LISTED_QUALITY = pdq_from_bytes(upright_copy(PHOTO.read_bytes()))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    n = NodeProc(tmp_path_factory.mktemp("dihedral"), "hotline")
    n.cli("add", "pdq", LISTED, "-c", "ncii", "--quality", str(LISTED_QUALITY))
    n.start()
    yield n
    assert n.stop() == 0


def pdq_results(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in result["results"] if r["query"]["type"] == "pdq"]


def test_by_default_only_the_stored_pixels_are_queried(node: NodeProc) -> None:
    status, result = match_file(node.url, node.admin_token(), {"file": PHOTO.read_bytes()})
    assert status == 200, result
    assert result["matched"] is False
    (pdq,) = pdq_results(result)
    assert pdq["variant"] == "original"
    assert pdq["query"]["value"] == result["hashes"]["pdq"] == pdq_from_bytes(PHOTO.read_bytes())[0]
    assert "pdq_dihedral" not in result["hashes"]


def test_dihedral_finds_the_upright_copy_and_names_the_variant(node: NodeProc) -> None:
    status, result = match_file(
        node.url, node.admin_token(), {"dihedral": b"true", "file": PHOTO.read_bytes()}
    )
    assert status == 200, result
    assert result["matched"] is True
    variants, _ = pdq_dihedral_from_bytes(PHOTO.read_bytes())
    assert result["hashes"]["pdq_dihedral"] == variants
    results = pdq_results(result)
    assert [r["variant"] for r in results] == list(DIHEDRAL)
    assert [r["query"]["value"] for r in results] == [variants[n] for n in DIHEDRAL]
    matched = [r for r in results if r["matches"]]
    assert [r["variant"] for r in matched] == ["rotate270"]
    hit = matched[0]["matches"][0]
    assert hit["value"] == LISTED and hit["distance"] <= 31 and hit["collection"] == "ncii"


@pytest.mark.parametrize("value", [b"yes", b"1", b"TRUE", b"true" * 5])
def test_a_bad_dihedral_part_is_refused(node: NodeProc, value: bytes) -> None:
    status, result = match_file(
        node.url, node.admin_token(), {"dihedral": value, "file": PHOTO.read_bytes()}
    )
    assert status == 400 and result["error"] == "dihedral: must be true or false", result
