"""docs/platforms.md's table of what PDQ survives is recomputed here, so it cannot drift.

Each row is Meta's picture (bridge-mods/aaa-orig.jpg, whose PDQ is the reference hash of
images/bridge-1-original.jpg) changed one way, hashed with the node's own code
(hashmesh/node/hashing/hasher.py), and compared with the original's PDQ: plainly, and as
`match --file --dihedral` compares it (the nearest of the upload's 8 rotations and
mirrors). Meta's own edits are files in the shared test data; the others are made here
with Pillow and saved as JPEG (quality 90). `python tests/test_pdq_transforms_doc.py`
prints the table to paste into the doc after a deliberate change.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps
from testdata import PDQ

from hashmesh.node.hashing.hasher import pdq_dihedral_from_bytes, pdq_from_bytes

DOC = Path(__file__).resolve().parents[1] / "docs" / "platforms.md"
HEADING = "## 9. What PDQ survives, and what it does not"
THRESHOLD = 31  # the node's default and largest match threshold
HEADER = "| change | made by | distance | with `--dihedral` | matched at 31 |"

Edit = Callable[[Image.Image], Image.Image]


def _crop(each: float) -> Edit:
    def edit(image: Image.Image) -> Image.Image:
        dx, dy = round(image.width * each), round(image.height * each)
        return image.crop((dx, dy, image.width - dx, image.height - dy))

    return edit


def _crop_left(part: float) -> Edit:
    return lambda image: image.crop((round(image.width * part), 0, image.width, image.height))


def _border(part: float) -> Edit:
    return lambda image: ImageOps.expand(image, border=round(image.width * part), fill="white")


def _rotate(degrees: float) -> Edit:
    return lambda image: image.rotate(degrees, resample=Image.Resampling.BICUBIC)


def _caption_bar(part: float) -> Edit:
    def edit(image: Image.Image) -> Image.Image:
        out = image.copy()
        top = round(image.height * (1 - part))
        ImageDraw.Draw(out).rectangle((0, top, image.width, image.height), fill="black")
        return out

    return edit


def _resize(part: float) -> Edit:
    return lambda image: image.resize(
        (round(image.width * part), round(image.height * part)), Image.Resampling.LANCZOS
    )


META_EDITS = (
    ("blur a little", "bridge-mods/blur-a-little.jpg"),
    ("blur a lot", "bridge-mods/blur-a-lot.jpg"),
    ("sharpen a little", "bridge-mods/sharpen-a-little.jpg"),
    ("sharpen a lot", "bridge-mods/sharpen-a-lot.jpg"),
    ("high contrast", "bridge-mods/high-contrast.jpg"),
    ("high saturation", "bridge-mods/high-saturation.jpg"),
    ("shrink a little", "bridge-mods/shrink-a-little.jpg"),
    ("shrink a lot", "bridge-mods/shrink-a-lot.jpg"),
    ("squashed to 512x512", "bridge-mods/square-512x512.jpg"),
    ("squashed to 128x128", "bridge-mods/square-128x128.jpg"),
    ("rotate 90", "images/bridge-2-rotate-90.jpg"),
    ("rotate 180", "images/bridge-3-rotate-180.jpg"),
    ("mirror (flip x)", "images/bridge-5-flipx.jpg"),
    ("flip y", "images/bridge-6-flipy.jpg"),
)

OUR_EDITS: tuple[tuple[str, Edit, int], ...] = (
    ("JPEG quality 20", lambda image: image, 20),
    ("JPEG quality 10", lambda image: image, 10),
    ("resized to 25%", _resize(0.25), 90),
    ("greyscale", ImageOps.grayscale, 90),
    ("crop 1% each side", _crop(0.01), 90),
    ("crop 2% each side", _crop(0.02), 90),
    ("crop 3% each side", _crop(0.03), 90),
    ("crop 5% each side", _crop(0.05), 90),
    ("crop 10% each side", _crop(0.10), 90),
    ("crop 3% off the left", _crop_left(0.03), 90),
    ("crop 5% off the left", _crop_left(0.05), 90),
    ("white border, 5% of the width", _border(0.05), 90),
    ("rotate 2 degrees", _rotate(2), 90),
    ("rotate 5 degrees", _rotate(5), 90),
    ("black caption bar over the bottom 20%", _caption_bar(0.20), 90),
)


def _distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def rows() -> list[str]:
    original_bytes = (PDQ / "bridge-mods" / "aaa-orig.jpg").read_bytes()
    original, _ = pdq_from_bytes(original_bytes)
    with Image.open(io.BytesIO(original_bytes)) as opened:
        picture = opened.convert("RGB")

    def row(change: str, made_by: str, data: bytes) -> str:
        plain = _distance(original, pdq_from_bytes(data)[0])
        variants, _ = pdq_dihedral_from_bytes(data)
        nearest = min(_distance(original, v) for v in variants.values())
        matched = "yes" if plain <= THRESHOLD else "dihedral only" if nearest <= THRESHOLD else "no"
        return f"| {change} | {made_by} | {plain} | {nearest} | {matched} |"

    out = [row(c, f"Meta, `{f}`", (PDQ / f).read_bytes()) for c, f in META_EDITS]
    out += [row(c, "Pillow, here", _jpeg(edit(picture), q)) for c, edit, q in OUR_EDITS]
    return out


def table() -> str:
    return "\n".join([HEADER, "| --- | --- | ---: | ---: | --- |", *rows()])


def _doc_table() -> str:
    text = DOC.read_text()
    section = text[text.index(HEADING) :]
    start = section.index(HEADER)
    end = section.find("\n\n", start)
    return section[start : end if end >= 0 else None].strip()


def test_the_documented_pdq_transformations_table_is_what_the_node_computes() -> None:
    assert _doc_table() == table(), "regenerate with: python tests/test_pdq_transforms_doc.py"


if __name__ == "__main__":
    print(table())
