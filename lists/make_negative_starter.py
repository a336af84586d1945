"""Generate lists/negative-starter.csv: hashes of pictures that are benign by construction.

Flat colours, gradients, blank and ruled pages and a few standard test patterns, drawn
here with Pillow and hashed by the node's own hasher (hashmesh.node.hashing.hasher), so
the list says exactly what a hashmesh node computes for these files. Import it into a
collection the node marks negative (docs/platforms.md, "Match policy"):

    python lists/make_negative_starter.py              # rewrite the list
    python lists/make_negative_starter.py --check      # exit 1 if the list is stale
    hashmesh import-list csv lists/negative-starter.csv -c benign --category benign
    hashmesh policy set benign --negative --threshold 8

Deterministic: the same Pillow and zlib give the same bytes, hence the same MD5s (the
PDQs depend on pixels only). PDQs are listed only when the node would publish them: a
degenerate PDQ (a flat colour's: hashing/degenerate.py) is refused by every publishing
route, and one below the node's default minimum quality would match unrelated pictures,
which in an allowlist means hiding real matches.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image, ImageDraw

from hashmesh.node.config import Config
from hashmesh.node.hashing.degenerate import degenerate_reason
from hashmesh.node.hashing.hasher import hash_bytes

OUT = Path(__file__).resolve().with_name("negative-starter.csv")
CATEGORY = "benign"
MIN_QUALITY = Config.min_pdq_quality

COLOURS = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey25": (64, 64, 64),
    "grey50": (128, 128, 128),
    "grey75": (192, 192, 192),
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
}
SIZES = ((1, 1), (16, 16), (64, 64), (256, 256), (640, 480), (1024, 768), (1920, 1080))
PAGE = (1240, 1754)  # A4 at 150 dpi

Picture = tuple[str, Image.Image]


def flat() -> Iterator[Picture]:
    for name, rgb in COLOURS.items():
        for w, h in SIZES:
            yield f"flat-{name}-{w}x{h}", Image.new("RGB", (w, h), rgb)


def _gradient(size: tuple[int, int], value: Callable[[int, int], int]) -> Image.Image:
    w, h = size
    image = Image.new("L", size)
    image.putdata([value(x, y) for y in range(h) for x in range(w)])
    return image.convert("RGB")


def gradients() -> Iterator[Picture]:
    for w, h in ((512, 512), (1024, 768)):
        yield (
            f"gradient-horizontal-{w}x{h}",
            _gradient((w, h), lambda x, y: 255 * x // (w - 1)),  # noqa: B023 - used at once
        )
        yield (
            f"gradient-vertical-{w}x{h}",
            _gradient((w, h), lambda x, y: 255 * y // (h - 1)),  # noqa: B023
        )
        yield (
            f"gradient-diagonal-{w}x{h}",
            _gradient((w, h), lambda x, y: 255 * (x + y) // (w + h - 2)),  # noqa: B023
        )
        r = math.hypot(w / 2, h / 2)
        yield (
            f"gradient-radial-{w}x{h}",
            _gradient(
                (w, h),
                lambda x, y: min(255, int(255 * math.hypot(x - w / 2, y - h / 2) / r)),  # noqa: B023
            ),
        )


def pages() -> Iterator[Picture]:
    yield "page-blank-a4", Image.new("RGB", PAGE, (255, 255, 255))
    for name, step in (("ruled", 48), ("narrow-ruled", 32)):
        page = Image.new("RGB", PAGE, (255, 255, 255))
        draw = ImageDraw.Draw(page)
        for y in range(160, PAGE[1] - 80, step):
            draw.line([(0, y), (PAGE[0], y)], fill=(170, 190, 230), width=2)
        draw.line([(150, 0), (150, PAGE[1])], fill=(230, 120, 120), width=2)
        yield f"page-{name}-a4", page
    page = Image.new("RGB", PAGE, (255, 255, 255))
    draw = ImageDraw.Draw(page)
    for x in range(0, PAGE[0], 40):
        draw.line([(x, 0), (x, PAGE[1])], fill=(190, 210, 230), width=1)
    for y in range(0, PAGE[1], 40):
        draw.line([(0, y), (PAGE[0], y)], fill=(190, 210, 230), width=1)
    yield "page-grid-a4", page


def patterns() -> Iterator[Picture]:
    for cells in (4, 8, 16):
        size = 512
        board = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(board)
        step = size // cells
        for i in range(cells):
            for j in range(cells):
                if (i + j) % 2:
                    draw.rectangle(
                        [i * step, j * step, (i + 1) * step - 1, (j + 1) * step - 1], fill=0
                    )
        yield f"pattern-checkerboard-{cells}x{cells}", board
    bars = [
        (192, 192, 192),
        (192, 192, 0),
        (0, 192, 192),
        (0, 192, 0),
        (192, 0, 192),
        (192, 0, 0),
        (0, 0, 192),
    ]
    for w, h in ((640, 480), (1920, 1080)):
        image = Image.new("RGB", (w, h))
        draw = ImageDraw.Draw(image)
        for n, rgb in enumerate(bars):
            draw.rectangle([n * w // 7, 0, (n + 1) * w // 7 - 1, h - 1], fill=rgb)
        yield f"pattern-colour-bars-{w}x{h}", image
    for stripes in (8, 32):
        image = Image.new("RGB", (512, 512), (255, 255, 255))
        draw = ImageDraw.Draw(image)
        step = 512 // stripes
        for n in range(0, stripes, 2):
            draw.rectangle([n * step, 0, (n + 1) * step - 1, 511], fill=0)
        yield f"pattern-stripes-{stripes}", image
    rings = Image.new("RGB", (512, 512), (255, 255, 255))
    draw = ImageDraw.Draw(rings)
    for radius in range(250, 0, -20):
        fill = 0 if (radius // 20) % 2 else 255
        draw.ellipse([256 - radius, 256 - radius, 256 + radius, 256 + radius], fill=(fill,) * 3)
    yield "pattern-rings", rings
    zone = _gradient(
        (512, 512),
        lambda x, y: int(
            127.5 + 127.5 * math.cos(math.pi * ((x - 256) ** 2 + (y - 256) ** 2) / 512)
        ),
    )
    yield "pattern-zone-plate", zone


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", optimize=False, compress_level=9)
    return out.getvalue()


def rows() -> list[str]:
    lines = ["type,value,quality,category,ref"]
    seen: set[tuple[str, str]] = set()
    for source in (flat, gradients, pages, patterns):
        for name, image in source():
            hashes = hash_bytes(png(image))
            entries = [("md5", hashes.md5, ""), ("sha256", hashes.sha256, "")]
            pdq, quality = hashes.pdq, hashes.quality
            if (
                pdq is not None
                and quality is not None
                and quality >= MIN_QUALITY
                and degenerate_reason("pdq", pdq) is None
            ):
                entries.append(("pdq", pdq, str(quality)))
            for kind, value, q in entries:
                if (kind, value) in seen:
                    continue
                seen.add((kind, value))
                lines.append(f"{kind},{value},{q},{CATEGORY},starter:{name}.png")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = "\n".join(rows()) + "\n"
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"{args.out} is not what this script generates; run it", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"{args.out}: {text.count(chr(10)) - 1} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main())
