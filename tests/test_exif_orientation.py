"""EXIF orientation: PDQ is of the stored pixels, as Meta's hashers, HMA and pytx compute it,
and a copy turned upright is found through the dihedral variants (issue 15, defect 2).

The photo is Meta's own exif-rotn-6.jpg with its reference hash (tests/data/exif-rotn).
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest
from netnodes import HASHMESH
from PIL import Image, ImageOps
from threatexchange.signal_type.pdq.pdq_hasher import pdq_from_file

from hashmesh.node.hashing.hasher import (
    hash_bytes,
    hash_file,
    pdq_dihedral_from_bytes,
    pdq_from_bytes,
)
from hashmesh.node.hashing.pdq import DIHEDRAL
from hashmesh.protocol.hashing import pdq_distance

PHOTO = Path(__file__).parent / "data" / "exif-rotn" / "exif-rotn-6.jpg"
META_REFERENCE = "e9782aad54ae0b6365315ac278592d68d4b5434a5fcd7471f7abcb594b481a94"
# The orientation entry of the photo's EXIF (little-endian TIFF: tag 0x0112, SHORT, 1, 6).
TAG_6 = b"\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00"
# The variant of the stored pixels that is the picture as a viewer shows it, per orientation.
UPRIGHT_VARIANT = {
    1: "original",
    2: "flipy",
    3: "rotate180",
    4: "flipx",
    5: "flipplus1",
    6: "rotate270",
    7: "flipminus1",
    8: "rotate90",
}
MATCH = 31


def tagged(orientation: int) -> bytes:
    """The photo's bytes with its orientation tag rewritten: the same stored pixels."""
    data = PHOTO.read_bytes()
    assert TAG_6 in data
    out = data.replace(TAG_6, TAG_6[:8] + bytes([orientation, 0]))
    with Image.open(io.BytesIO(out)) as im:
        assert im.getexif()[0x0112] == orientation
    return out


def upright_copy(data: bytes) -> bytes:
    """What a viewer shows, saved without an orientation: a platform's re-encoded copy."""
    with Image.open(io.BytesIO(data)) as im:
        shown = ImageOps.exif_transpose(im)
    out = io.BytesIO()
    shown.save(out, "JPEG", quality=90)
    return out.getvalue()


def test_the_stored_pixels_hash_like_metas_reference_and_pytx() -> None:
    h = hash_file(PHOTO)
    assert h.pdq is not None and h.quality == 100
    # Meta's C++ decodes the full picture, this hasher a 512-pixel thumbnail (as pdqhashing
    # does): measured 8 bits apart; Meta's tests allow 16, a good port stays within 10.
    assert pdq_distance(h.pdq, META_REFERENCE) <= 10
    # HMA and the pytx CLI hash through this function: measured 8 bits apart.
    pytx, _ = pdq_from_file(PHOTO)
    assert pdq_distance(h.pdq, pytx) <= 10
    assert pdq_distance(pytx, META_REFERENCE) <= 10


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_orientation_tag_does_not_change_the_hash(orientation: int) -> None:
    assert pdq_from_bytes(tagged(orientation)) == pdq_from_bytes(PHOTO.read_bytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_an_upright_copy_matches_through_the_dihedral_variant(orientation: int) -> None:
    data = tagged(orientation)
    variants, quality = pdq_dihedral_from_bytes(data)
    assert sorted(variants) == sorted(DIHEDRAL) and quality == 100
    assert variants["original"] == pdq_from_bytes(data)[0]
    copy, _ = pdq_from_bytes(upright_copy(data))
    distances = {name: pdq_distance(value, copy) for name, value in variants.items()}
    expected = UPRIGHT_VARIANT[orientation]
    assert distances[expected] <= MATCH, distances
    # Only that variant matches: the copy is not found without the variants (unless upright).
    others = {name: d for name, d in distances.items() if name != expected}
    assert min(others.values()) > 64, distances


def test_hash_file_gives_the_variants_only_when_asked() -> None:
    plain = hash_file(PHOTO)
    assert plain.pdq_dihedral is None
    with_variants = hash_file(PHOTO, dihedral=True)
    assert with_variants.pdq_dihedral is not None
    assert with_variants.pdq == plain.pdq == with_variants.pdq_dihedral["original"]
    assert hash_bytes(PHOTO.read_bytes(), dihedral=True) == with_variants


# -- CLI -------------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HASHMESH, *args], capture_output=True, text=True, check=False)


def test_cli_hash_prints_the_variants_only_when_asked() -> None:
    plain = _cli("hash", str(PHOTO), "--json")
    assert plain.returncode == 0, plain.stderr
    (row,) = json.loads(plain.stdout)
    assert "pdq_dihedral" not in row and row["pdq"] == pdq_from_bytes(PHOTO.read_bytes())[0]
    turned = _cli("hash", "--dihedral", str(PHOTO), "--json")
    assert turned.returncode == 0, turned.stderr
    (row,) = json.loads(turned.stdout)
    assert row["pdq_dihedral"] == pdq_dihedral_from_bytes(PHOTO.read_bytes())[0]
    human = _cli("hash", "--dihedral", str(PHOTO)).stdout
    assert f"{row['pdq_dihedral']['rotate270']}  rotate270" in human


def test_cli_match_file_finds_an_upright_copy_only_with_dihedral(tmp_path: Path) -> None:
    """The list holds the picture as a viewer shows it (hashed by a tool that applied the
    orientation); the platform has the camera's file. Off by default, as in HMA."""
    home = tmp_path / "platform"
    assert _cli("init", str(home), "--name", "platform").returncode == 0
    listed, quality = pdq_from_bytes(upright_copy(PHOTO.read_bytes()))
    added = _cli("--home", str(home), "add", "pdq", listed, "-c", "ncii", "--quality", str(quality))
    assert added.returncode == 0, added.stderr

    plain = _cli("--home", str(home), "match", "--file", str(PHOTO), "--json")
    assert plain.returncode == 1, plain.stderr
    pdq_results = [r for r in json.loads(plain.stdout)["results"] if r["query"]["type"] == "pdq"]
    assert [r["variant"] for r in pdq_results] == ["original"]

    found = _cli("--home", str(home), "match", "--file", str(PHOTO), "--dihedral", "--json")
    assert found.returncode == 0, found.stderr
    pdq_results = [r for r in json.loads(found.stdout)["results"] if r["query"]["type"] == "pdq"]
    assert [r["variant"] for r in pdq_results] == list(DIHEDRAL)
    matched = {r["variant"]: r["matches"] for r in pdq_results if r["matches"]}
    assert list(matched) == ["rotate270"]
    assert matched["rotate270"][0]["value"] == listed
    assert matched["rotate270"][0]["distance"] <= MATCH
    human = _cli("--home", str(home), "match", "--file", str(PHOTO), "--dihedral").stdout
    assert f"MATCH pdq {listed}" in human and "as rotate270" in human

    refused = _cli("--home", str(home), "match", "pdq", listed, "--dihedral")
    assert refused.returncode == 2 and "--dihedral" in refused.stderr
