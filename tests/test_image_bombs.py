"""Decompression bombs (security review): a few hundred KB that declare a hundred megapixels
are refused on their declared size, before decoding, as `ImageTooLarge` and HTTP 413, and
the node's peak memory stays small while it refuses them."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from netnodes import HASHMESH, NodeProc, peak_rss
from PIL import Image
from platform_util import request

from hashmesh.node.hashing.hasher import (
    MAX_JPEG_PIXELS,
    MAX_PIXELS,
    ImageError,
    ImageTooLarge,
    hash_bytes,
    hash_file,
)

PEAK_RSS_LIMIT = 600 << 20


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(
    width: int, height: int, colour_type: int = 6, rows: int | None = None, depth: int = 8
) -> bytes:
    """A valid PNG of zero pixels (8-bit RGBA by default), built row by row so the test
    itself never holds the decoded image; `rows` stops the data early (a truncated file)."""
    channels = {0: 1, 2: 3, 6: 4}[colour_type]
    row = b"\x00" * (1 + width * channels * depth // 8)
    z = zlib.compressobj(9)
    parts = []
    for _ in range(height if rows is None else rows):
        parts.append(z.compress(row))
    parts.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", b"".join(parts))
        + _chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int, *, progressive: bool) -> bytes:
    """A small real JPEG whose frame header is rewritten to declare `width`x`height`."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 200)).save(out, "JPEG", progressive=progressive)
    data = bytearray(out.getvalue())
    marker = b"\xff\xc2" if progressive else b"\xff\xc0"
    at = data.index(marker)
    struct.pack_into(">HH", data, at + 5, height, width)
    return bytes(data)


@pytest.fixture(scope="module")
def rgba_bomb() -> bytes:
    """100 megapixels of RGBA in well under a MB: a full decode and the RGBA compositing
    would cost gigabytes (the reported 657 KB PNG peaked a node at 3.4 GB)."""
    data = png_bomb(10_000, 10_000)
    assert len(data) < 1 << 20
    return data


def test_png_bomb_is_refused_before_decoding(rgba_bomb: bytes) -> None:
    with pytest.raises(ImageTooLarge) as info:
        hash_bytes(rgba_bomb)
    assert "10000x10000" in str(info.value) and "megapixels" in str(info.value)
    assert isinstance(info.value, ImageError)


def test_png_under_pillows_own_limit_is_still_bounded() -> None:
    """81 MP is below Pillow's MAX_IMAGE_PIXELS (it would not even warn) yet over ours."""
    with pytest.raises(ImageTooLarge):
        hash_bytes(png_bomb(9_000, 9_000, colour_type=0, rows=1))


def test_pixel_budget_boundary() -> None:
    with pytest.raises(ImageTooLarge):
        hash_bytes(png_bomb(1, MAX_PIXELS + 1, colour_type=0, rows=1))
    _not_too_large(png_bomb(1, MAX_PIXELS, colour_type=0, rows=1))


def _not_too_large(data: bytes) -> None:
    """Within the budget the image is decoded: hashed, or refused for another reason."""
    try:
        hash_bytes(data)
    except ImageTooLarge:
        raise
    except ImageError:
        pass


def test_pillow_bomb_error_is_image_too_large() -> None:
    """Over twice Pillow's limit `Image.open` itself raises; that too is a size refusal."""
    with pytest.raises(ImageTooLarge):
        hash_bytes(png_bomb(20_000, 20_000, colour_type=0, rows=1))


def test_jpeg_budgets() -> None:
    """Baseline JPEGs decode at 1/8 scale and may declare more; progressive ones hold every
    coefficient of the full image, so they get the full-decode budget."""
    with pytest.raises(ImageTooLarge):
        hash_bytes(jpeg_claiming(9_000, 9_000, progressive=True))
    with pytest.raises(ImageTooLarge):
        hash_bytes(jpeg_claiming(13_000, 13_000, progressive=False))
    assert 13_000 * 13_000 > MAX_JPEG_PIXELS > 9_000 * 9_000 > MAX_PIXELS
    _not_too_large(jpeg_claiming(9_000, 9_000, progressive=False))


def test_hash_file_refuses_the_bomb(rgba_bomb: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(rgba_bomb)
    with pytest.raises(ImageTooLarge):
        hash_file(path)
    assert hash_file(path, pdq=False).sha256  # the exact hashes need no decoding


def _cli_peak(tmp_path: Path, *args: str) -> tuple[int, str, str, int]:
    """(exit code, stdout, stderr, peak resident bytes) of one CLI run.

    A small wrapper forks the CLI: a child forked from pytest itself would report the test
    runner's own (by then large) resident set as its peak."""
    out, err = tmp_path / "out", tmp_path / "err"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        wrapper = subprocess.run(
            [sys.executable, "-c", _MEASURE, HASHMESH, *args],
            stdout=stdout,
            stderr=stderr,
            check=False,
        )
    *messages, peak_kib = err.read_text().splitlines()
    return wrapper.returncode, out.read_text(), "\n".join(messages), int(peak_kib) * 1024


def test_cli_hash_refuses_the_bomb(rgba_bomb: bytes, tmp_path: Path) -> None:
    """Exit 2 naming the file and the budget: with exit 0 and no PDQ, a script would take
    the picture for hashed."""
    path = tmp_path / "bomb.png"
    path.write_bytes(rgba_bomb)
    code, out, err, peak = _cli_peak(tmp_path, "hash", str(path), "--json")
    assert code == 2, (out, err)
    assert out == ""
    assert str(path) in err and "50 megapixels" in err and "10000x10000" in err, err
    assert peak < PEAK_RSS_LIMIT
    # A file that is neither picture nor video is refused too (issue 20), for its own reason.
    other = tmp_path / "notes.txt"
    other.write_bytes(b"not a picture")
    code, out, err, _ = _cli_peak(tmp_path, "hash", str(other), "--json")
    assert code == 2 and out == "" and "neither a picture nor a video" in err, err


_MEASURE = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
sys.stderr.write("\\n%d\\n" % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    n = NodeProc(tmp_path_factory.mktemp("bombs"), "bombs")
    n.start()
    yield n
    n.stop()


def _upload(node: NodeProc, data: bytes) -> tuple[int, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, raw = request(
        node.url + "/v1/match/file",
        "POST",
        node.admin_token(),
        raw=body,
        content_type=f"multipart/form-data; boundary={boundary}",
        timeout=120,
    )
    return status, json.loads(raw)


def test_cli_match_file_refuses_the_bomb(rgba_bomb: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(rgba_bomb)
    home = str(NodeProc(tmp_path, "matcher").home)  # an initialised node, not running
    code, out, err, peak = _cli_peak(tmp_path, "--home", home, "match", "--file", str(path))
    assert code == 2, (out, err)  # not 1 ("no match"): nothing was matched
    assert out == ""
    assert str(path) in err and "50 megapixels" in err, err
    assert peak < PEAK_RSS_LIMIT


def test_upload_bomb_is_413_and_memory_stays_bounded(node: NodeProc, rgba_bomb: bytes) -> None:
    assert node.proc is not None
    for bomb in (
        rgba_bomb,
        png_bomb(9_000, 9_000, colour_type=2),
        jpeg_claiming(9_000, 9_000, progressive=True),
    ):
        status, result = _upload(node, bomb)
        assert status == 413, result
        assert result["error"].startswith("upload:") and "megapixels" in result["error"]
    assert peak_rss(node.proc.pid) < PEAK_RSS_LIMIT
    status, result = _upload(node, b"not an image")
    assert status == 400 and result["error"].startswith("upload:")
    assert request(node.url + "/v1/healthz")[0] == 200


def test_largest_allowed_rgba_upload_stays_bounded(node: NodeProc) -> None:
    """Just under the budget the image is hashed; compositing its alpha on white used to
    hold three full-size RGBA copies (a gigabyte at 49 MP)."""
    assert node.proc is not None
    status, result = _upload(node, png_bomb(7_000, 7_000))
    assert status == 200, result
    assert result["hashes"]["pdq"]
    assert peak_rss(node.proc.pid) < PEAK_RSS_LIMIT
    status, result = _upload(node, b"not an image")
    assert status == 400 and result["error"].startswith("upload:")
    assert request(node.url + "/v1/healthz")[0] == 200
