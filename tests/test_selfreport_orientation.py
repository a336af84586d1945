"""The self-report page hashes a photo's stored pixels, as the node, HMA and pytx do
(issue 15, defect 2): a phone photo tagged orientation 6 must give the platforms' hash.

Runs in the real Chromium the other self-report tests drive (tests/cdp.py).
"""

from __future__ import annotations

from pathlib import Path

from cdp import CHROMIUM, Browser
from PIL import Image
from test_exif_orientation import META_REFERENCE, PHOTO, upright_copy
from test_selfreport import choose, distance, needs_browser, net, open_page

from hashmesh.node.hashing.hasher import hash_file, pdq_from_bytes

__all__ = ["net"]  # the module fixture (two real nodes), shared with test_selfreport


@needs_browser
async def test_page_hashes_the_stored_pixels_of_an_oriented_photo(
    net: object, tmp_path: Path
) -> None:
    assert CHROMIUM, "chromium is required (HASHMESH_REQUIRE_BROWSER is set)"
    hotline = net[0]  # type: ignore[index]
    upright = tmp_path / "upright.jpg"
    upright.write_bytes(upright_copy(PHOTO.read_bytes()))
    others = []
    exif = Image.Exif()
    exif[0x0112] = 6
    with Image.open(PHOTO) as im:
        im.thumbnail((800, 800))
        small = im.convert("RGB")
    for fmt in ("png", "webp"):
        path = tmp_path / f"tagged-6.{fmt}"
        small.save(
            path, fmt.upper(), exif=exif.tobytes(), **({"lossless": True} if fmt == "webp" else {})
        )
        others.append(path)
    async with Browser(tmp_path / "profile") as browser:
        await open_page(browser, hotline)
        items = await choose(browser, [PHOTO, upright, *others])
        assert browser.console == [], browser.console
    by_name = {item["name"]: item for item in items}
    page = by_name[PHOTO.name]["pdq"]
    node = hash_file(PHOTO).pdq
    assert node is not None
    turned, _ = pdq_from_bytes(upright.read_bytes())
    print(
        "page vs node:",
        distance(page, node),
        "page vs Meta:",
        distance(page, META_REFERENCE),
        "page vs upright copy:",
        distance(page, turned),
    )
    # The page reduces large JPEGs its own way (box averages of a canvas): within 10 bits
    # of the node, as for any large JPEG, and of Meta's reference for the stored pixels.
    assert distance(page, node) <= 10
    assert distance(page, META_REFERENCE) <= 16
    # Had the browser turned the picture (its default), it would be the upright copy's hash.
    assert distance(page, turned) > 64
    # The upright copy (no orientation tag) still hashes as itself.
    assert distance(by_name[upright.name]["pdq"], turned) <= 10
    # PNG (eXIf) and WebP (EXIF chunk) carry the orientation too.
    for path in others:
        stored = hash_file(path).pdq
        assert stored is not None
        print(path.name, "page vs node:", distance(by_name[path.name]["pdq"], stored))
        assert distance(by_name[path.name]["pdq"], stored) <= 10, path.name
