"""Local hashing of files and bytes: md5, sha1, sha256 and PDQ with its quality.

A submitter's pictures never leave their machine, so this runs where the pictures are.

Why the image is reduced the way it is: Meta's reference hasher (pdqhashing, the source of
the reference hashes in tests) hashes ``Image.thumbnail((512, 512))`` of the picture, so we
hash the same 512-pixel thumbnail. Decoding is most of the cost, so for JPEGs the decoder
is asked for the smallest DCT scale (1/2, 1/4, 1/8) that still covers that thumbnail
(thumbnail()'s own draft keeps twice the size, a full decode for 1-3 megapixel photos), and
such a scaled decode goes straight to the Y plane: PDQ's luma weights (0.299, 0.587,
0.114) are JPEG's, so the Y plane is the luma PDQ would compute from RGB, without the
chroma upsampling, colour conversion and a three times larger resize. The bilinear resize
of that draft to the thumbnail is not done on pixels: `hashing.pdq` folds it into PDQ's own
filters, which only ever need 64x64 samples (the same algorithm as the pdqhash binding,
checked bit for bit in tests). Measured on 1-3 MP photos (bench/match.py --hashing,
docs/benchmarks.md): 113 images/s on one core against 60 for an RGB draft, a Pillow
thumbnail and pdqhash; publishable hashes stay a median of 2 bits (max 8) from the PDQ of a
full decode, like before. JPEGs too small to scale (under twice the thumbnail) are cheap
and keep the exact RGB path: the Y plane differs from the rounded, clipped RGB's luma by
~0.2 grey levels, which moved one smooth 256-pixel reference image 8 bits; with it, every
conformance image hashes exactly to Meta's reference.

Every decoding failure, whatever Pillow or the codec raises, becomes one `ImageError`
with one sentence, so callers need one except clause; `ImageTooLarge`, its subclass, says
the declared size is over the pixel budget, so a server can answer 413 rather than 400.
Reading a path that does not exist or cannot be read still raises `OSError`: that is not a
property of the image.

Why there is a pixel budget: a few hundred KB of PNG can declare 100 megapixels, and a full
decode plus the RGB(A) copies below cost several bytes a pixel each (a 657 KB upload once
peaked a node at 3.4 GB). Pillow knows the declared size after `Image.open`, before any
pixel is decoded, so images over the budget are refused there. Baseline JPEGs are decoded at
1/8 scale, so they may declare more; progressive JPEGs keep every DCT coefficient of the
full image in memory whatever the scale, so they get the full-decode budget. Pillow's own
decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`) is a second, global line, also refused.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from hashmesh.node.hashing.pdq import pdq_dihedral_from_luma, pdq_from_luma
from hashmesh.protocol.hashing import Digests

__all__ = [
    "MAX_JPEG_PIXELS",
    "MAX_PIXELS",
    "MIN_PUBLISH_QUALITY",
    "PDQ_THUMBNAIL",
    "FileHashes",
    "ImageError",
    "ImageTooLarge",
    "hash_bytes",
    "hash_file",
    "pdq_dihedral_from_bytes",
    "pdq_from_bytes",
    "pdq_from_image",
]

MIN_PUBLISH_QUALITY = 50
PDQ_THUMBNAIL = (512, 512)
_READ_CHUNK = 1 << 20
_WHITE = (255, 255, 255)
_JPEG_RESAMPLE = Image.Resampling.BILINEAR
MAX_PIXELS = 50_000_000
MAX_JPEG_PIXELS = 150_000_000
_STRIP_PIXELS = 1 << 20
_T = TypeVar("_T")


class ImageError(ValueError):
    """The bytes are not an image Pillow can decode completely (or the image is unusable)."""


class ImageTooLarge(ImageError):
    """The image declares more pixels than may be decoded; refused before decoding."""


Variants = tuple[dict[str, str], int]


@dataclass(frozen=True, slots=True)
class FileHashes:
    """Hashes of one file; `pdq` and `quality` are None when PDQ was not asked for.

    `pdq_dihedral` maps each of `pdq.DIHEDRAL` to its PDQ when the variants were asked
    for (its "original" is `pdq`), else it is None.
    """

    md5: str
    sha1: str
    sha256: str
    pdq: str | None = None
    quality: int | None = None
    pdq_dihedral: dict[str, str] | None = None

    def pdq_publishable(self, min_quality: int = MIN_PUBLISH_QUALITY) -> bool:
        """Low-quality PDQ hashes (flat or tiny pictures) match too much to be shared."""
        return self.pdq is not None and self.quality is not None and self.quality >= min_quality


def hash_bytes(data: bytes, *, pdq: bool = True, dihedral: bool = False) -> FileHashes:
    """Digests of `data`, and its PDQ when `pdq` (then `data` must be an image), with the
    8 dihedral variants when `dihedral`."""
    digests = Digests()
    digests.update(data)
    md5, sha1, sha256 = digests.hexdigests()
    if not pdq:
        return FileHashes(md5, sha1, sha256)
    return _with_pdq(FileHashes(md5, sha1, sha256), io.BytesIO(data), "image", dihedral)


def hash_file(
    path: str | os.PathLike[str], *, pdq: bool = True, dihedral: bool = False
) -> FileHashes:
    """Like `hash_bytes`; the digests stream the file, so large non-images are fine."""
    digests = Digests()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digests.update(chunk)
        md5, sha1, sha256 = digests.hexdigests()
        if not pdq:
            return FileHashes(md5, sha1, sha256)
        f.seek(0)
        return _with_pdq(FileHashes(md5, sha1, sha256), f, os.fspath(path), dihedral)


def _with_pdq(digests: FileHashes, stream: IO[bytes], name: str, dihedral: bool) -> FileHashes:
    if not dihedral:
        pdq_hex, quality = _pdq_from_stream(stream, name, _hash_image)
        return FileHashes(digests.md5, digests.sha1, digests.sha256, pdq_hex, quality)
    variants, quality = _pdq_from_stream(stream, name, _hash_dihedral)
    return FileHashes(
        digests.md5, digests.sha1, digests.sha256, variants["original"], quality, variants
    )


def pdq_from_bytes(data: bytes) -> tuple[str, int]:
    """(PDQ hex, quality 0-100) of an encoded image's stored pixels (EXIF orientation is
    not applied, as in Meta's hashers)."""
    return _pdq_from_stream(io.BytesIO(data), "image", _hash_image)


def pdq_dihedral_from_bytes(data: bytes) -> Variants:
    """({variant: PDQ hex}, quality) of the 8 rotations and mirrors of the stored pixels."""
    return _pdq_from_stream(io.BytesIO(data), "image", _hash_dihedral)


def pdq_from_image(image: Image.Image) -> tuple[str, int]:
    """(PDQ hex, quality) of an already opened image's stored pixels."""
    _check_pixels(image, "image")
    try:
        return _hash_image(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image has too many pixels to decode ({_reason(exc)})") from exc
    except Exception as exc:
        raise ImageError(f"image could not be decoded: {_reason(exc)}") from exc


def _pdq_from_stream(stream: IO[bytes], name: str, hasher: Callable[[Image.Image], _T]) -> _T:
    try:
        with warnings.catch_warnings():
            # Both budgets are under the size Pillow only warns about, so `_check_pixels`
            # refuses every image that warns; the warning itself would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(stream)
        with image:
            _check_pixels(image, name)
            return hasher(image)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name} is not an image format Pillow can read") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"{name} has too many pixels to decode ({_reason(exc)})") from exc
    except Exception as exc:  # truncated data, corrupt chunks, codec errors, odd modes
        raise ImageError(f"{name} could not be decoded: {_reason(exc)}") from exc


def _pixel_budget(image: Image.Image) -> int:
    """Most pixels `image` may declare; only a baseline JPEG is decoded scaled down."""
    if (
        image.format == "JPEG"
        and not image.info.get("progressive")
        and not image.info.get("progression")
    ):
        return MAX_JPEG_PIXELS
    return MAX_PIXELS


def _check_pixels(image: Image.Image, name: str) -> None:
    """Refuse on the declared size, before a pixel is decoded (the decode is what costs)."""
    width, height = image.size
    budget = _pixel_budget(image)
    if width * height > budget:
        raise ImageTooLarge(
            f"{name} declares {width}x{height} pixels, more than the {budget // 1_000_000}"
            " megapixels that may be decoded"
        )


def _reason(exc: Exception) -> str:
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return text.splitlines()[0][:200]


Plane = npt.NDArray[np.uint8] | npt.NDArray[np.float32]


def _hash_image(image: Image.Image) -> tuple[str, int]:
    plane, resize_to = _plane(image)
    return pdq_from_luma(plane, resize_to=resize_to)


def _hash_dihedral(image: Image.Image) -> Variants:
    plane, resize_to = _plane(image)
    return pdq_dihedral_from_luma(plane, resize_to=resize_to)


def _plane(image: Image.Image) -> tuple[Plane, tuple[int, int] | None]:
    """The luma PDQ hashes, and the size it is hashed at when the resize is folded in.

    The stored pixels, whatever the EXIF orientation says: Meta's hashers, pdqhash, HMA
    and python-threatexchange all hash them, so a rotated copy is matched through the
    dihedral variants rather than by turning the picture here (docs/protocol.md).
    """
    if getattr(image, "is_animated", False):
        image.seek(0)
    if image.format == "JPEG" and image.mode in ("L", "RGB", "CMYK"):
        # The smallest DCT scale covering the thumbnail. thumbnail()'s own draft is then a
        # no-op. Only a scaled decode goes straight to the Y plane (draft ignores "L" for CMYK).
        target = _thumbnail_size(image.size)
        scaled = min(image.width // target[0], image.height // target[1]) >= 2
        image.draft("L" if scaled else None, target)
        if scaled and image.mode == "L":
            # The bilinear resize to the thumbnail is folded into PDQ's own filters.
            image.load()
            return np.asarray(image), _thumbnail_fit(image.size)
        image.thumbnail(PDQ_THUMBNAIL, _JPEG_RESAMPLE)
        picture = image if image.mode == "L" else _to_rgb(image)
    else:
        image.load()
        picture = _to_luma_or_rgb(image)
        picture.thumbnail(PDQ_THUMBNAIL)
    if picture.width < 1 or picture.height < 1:
        raise ImageError("image has no pixels")
    return _luma(picture), None


def _luma(picture: Image.Image) -> npt.NDArray[np.uint8] | npt.NDArray[np.float32]:
    """PDQ's luma, computed as the pdqhash binding does (float64 weights, then float32)."""
    pixels: npt.NDArray[np.uint8] = np.asarray(picture)
    if pixels.ndim == 2:
        return pixels
    weighted = pixels[:, :, 0] * 0.299 + pixels[:, :, 1] * 0.587 + pixels[:, :, 2] * 0.114
    luma: npt.NDArray[np.float32] = weighted.astype(np.float32)
    return luma


def _to_luma_or_rgb(image: Image.Image) -> Image.Image:
    """Grey stays grey (a third of the resize work, the same luma); all else becomes RGB."""
    if image.mode == "L" and "transparency" not in image.info:
        return image
    return _to_rgb(image)


def _thumbnail_size(size: tuple[int, int]) -> tuple[int, int]:
    """The size `thumbnail(PDQ_THUMBNAIL)` produces, rounded up so a draft never undershoots."""
    w, h = size
    ratio = min(PDQ_THUMBNAIL[0] / w, PDQ_THUMBNAIL[1] / h, 1.0)
    return max(1, math.ceil(w * ratio)), max(1, math.ceil(h * ratio))


def _thumbnail_fit(size: tuple[int, int]) -> tuple[int, int]:
    """The size Pillow's ``thumbnail(PDQ_THUMBNAIL)`` gives an image of `size` (its rounding)."""
    w, h = size
    x, y = PDQ_THUMBNAIL
    if x >= w and y >= h:
        return size
    aspect = w / h
    if x / y >= aspect:
        candidates = (math.floor(y * aspect), math.ceil(y * aspect))
        x = max(min(candidates, key=lambda n: abs(aspect - n / y)), 1)
    else:
        candidates = (math.floor(x / aspect), math.ceil(x / aspect))
        y = max(min(candidates, key=lambda n: 0 if n == 0 else abs(aspect - x / n)), 1)
    return x, y


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparency is composited on white, deep images are scaled to 8 bits."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode in ("L", "CMYK", "YCbCr", "1", "RGBX") and "transparency" not in image.info:
        return image.convert("RGB")
    if mode == "P" and "transparency" not in image.info:
        return image.convert("RGB")
    if mode in ("RGBA", "LA", "PA", "P", "RGBa", "La") or (
        mode in ("L", "RGB") and "transparency" in image.info
    ):
        return _composite_on_white(image)
    if mode.startswith("I") or mode.startswith("F"):
        gray = _deep_to_8bit(np.asarray(image))
        return Image.fromarray(gray, "L").convert("RGB")
    try:
        return image.convert("RGB")
    except Exception as exc:
        raise ImageError(f"image mode {mode} cannot be converted to RGB") from exc


def _deep_to_8bit(values: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """16-bit, 32-bit integer and float greys to 0..255.

    Integers above 255 are taken as 16-bit samples, floats up to 1.0 as unit range; PDQ
    thresholds DCT coefficients at their median, so the exact scale changes little.
    """
    if values.ndim == 3:
        values = values[..., 0]
    step = _strip_rows(values.shape[1] if values.ndim == 2 else 1)
    strips = [slice(top, top + step) for top in range(0, values.shape[0], step)]
    top: float | None = None
    for rows in strips:  # float64 copies of strips only: a whole one is 8 bytes a pixel
        data = values[rows].astype(np.float64)
        finite = data[np.isfinite(data)]
        if finite.size:
            top = float(finite.max()) if top is None else max(top, float(finite.max()))
    top = 0.0 if top is None else top
    if np.issubdtype(values.dtype, np.floating) and top <= 1.0:
        scale = 255.0
    elif top > 255.0:
        scale = 255.0 / 65535.0
    else:
        scale = 1.0
    out = np.empty(values.shape, np.uint8)
    for rows in strips:
        data = np.nan_to_num(
            values[rows].astype(np.float64) * scale, nan=0.0, posinf=255.0, neginf=0.0
        )
        out[rows] = np.clip(np.rint(data), 0, 255).astype(np.uint8)
    return out


def _strip_rows(width: int) -> int:
    return max(1, _STRIP_PIXELS // max(1, width))


def _composite_on_white(image: Image.Image) -> Image.Image:
    """Strip by strip: the pixels of one alpha_composite on white, without three full-size
    RGBA copies of a picture that may be 50 megapixels (a gigabyte at once)."""
    out = Image.new("RGB", image.size)
    step = _strip_rows(image.width)
    for top in range(0, image.height, step):
        box = (0, top, image.width, min(image.height, top + step))
        rgba = image.crop(box).convert("RGBA")  # crop keeps the palette and transparency
        background = Image.new("RGBA", rgba.size, (*_WHITE, 255))
        out.paste(Image.alpha_composite(background, rgba).convert("RGB"), box[:2])
    return out
