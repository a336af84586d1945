"""Degenerate hashes (hashmesh/node/hashing/degenerate.py) are refused on every publishing route.

A black picture's PDQ claimed at quality 100 once went out as `csam` through the
self-report page and a platform then flagged every black upload. The rules judge the hash
itself, so they hold whatever quality a client claims; the real hashes of Meta's reference
data must all pass them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, HomeFactory, NodeFactory
from PIL import Image
from testdata import PDQ

from hashmesh.node.hashing.degenerate import (
    EMPTY_FILE,
    POPCOUNT_MAX,
    POPCOUNT_MIN,
    degenerate_reason,
)
from hashmesh.node.hashing.hasher import hash_bytes

REAL_MD5 = hashlib.md5(b"hashmesh degenerate test").hexdigest()
REAL_PDQ = "f162eb9daab170c0567fe3632d9a5548c5612982dd5e374a7424ebbc8a835c95"
needs_data = pytest.mark.skipif(not PDQ.exists(), reason="PDQ reference data missing")


def real_pdqs() -> list[str]:
    lines = (PDQ / "haystack.txt").read_text().split()
    hashes = [line for line in lines if line]
    with open(PDQ / "expected.csv") as fh:
        hashes += [row["pdq"] for row in csv.DictReader(fh)]
    return hashes


def flat_png(size: tuple[int, int], colour: Any, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, colour).save(out, "PNG")
    return out.getvalue()


# -- the rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("0" * 64, "near-constant"),
        ("f" * 64, "near-constant"),
        ("0f" * 32, "near-constant"),  # one repeated word
        ("00ff" * 8 + "ff00" * 8, "near-constant"),
        # REAL_PDQ with its bits forced up, down, into a long run, into zero words
        ("f1f2fbfdfaf1f0f0f6fff3f3fdfaf5f8f5f1f9f2fdfef7faf4f4fbfcfaf3fcf5", "189 of 256"),
        ("01020b0d0a010000060f03030d0a0508050109020d0e070a04040b0c0a030c05", "61 of 256"),
        ("ffffffffffffffffffff000000005548c5612982dd5e374a7424ebbc8a835c95", "run of 80"),
        ("00000000000070c0567fe3632d9a5548c5612982dd5e374a7424ebbc8a835c95", "zero words"),
    ],
)
def test_each_pdq_rule_refuses(value: str, why: str) -> None:
    assert len(value) == 64
    reason = degenerate_reason("pdq", value)
    assert reason is not None and why in reason, (value, reason)


def test_empty_file_digests_are_refused() -> None:
    assert EMPTY_FILE["md5"] == hashlib.md5(b"").hexdigest()
    assert EMPTY_FILE["sha1"] == hashlib.sha1(b"").hexdigest()
    assert EMPTY_FILE["sha256"] == hashlib.sha256(b"").hexdigest()
    for kind, value in EMPTY_FILE.items():
        assert "empty file" in (degenerate_reason(kind, value.upper()) or ""), kind
    assert degenerate_reason("md5", REAL_MD5) is None
    assert degenerate_reason("pdq", "x" * 64) is None  # malformed: left to the protocol


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_pdq_of_empty_and_flat_pictures_is_refused(mode: str) -> None:
    colours: dict[str, list[Any]] = {
        "RGB": [(0, 0, 0), (255, 255, 255), (128, 128, 128), (255, 0, 0), (0, 128, 255)],
        "L": [0, 1, 127, 255],
        "RGBA": [(0, 0, 0, 0), (255, 255, 255, 255), (10, 200, 30, 128)],
    }
    for colour in colours[mode]:
        for size in ((1, 1), (4, 4), (5, 5), (16, 16), (64, 64), (100, 30), (512, 512), (999, 701)):
            hashes = hash_bytes(flat_png(size, colour, mode))
            assert hashes.pdq is not None
            assert degenerate_reason("pdq", hashes.pdq) is not None, (mode, colour, size, hashes)


def test_pictures_under_5_px_are_refused() -> None:
    """Meta's reference refuses them (the page does too): here they hash to zeros or noise."""
    for size in ((1, 1), (4, 4), (4, 300), (300, 3)):
        picture = Image.effect_noise(size, 80).convert("RGB")
        out = io.BytesIO()
        picture.save(out, "PNG")
        pdq = hash_bytes(out.getvalue()).pdq
        assert pdq is not None and degenerate_reason("pdq", pdq) is not None, (size, pdq)


@needs_data
def test_no_real_hash_is_refused() -> None:
    hashes = real_pdqs()
    refused = {h: degenerate_reason("pdq", h) for h in hashes if degenerate_reason("pdq", h)}
    assert refused == {}
    counts = [int(h, 16).bit_count() for h in hashes]
    print(f"{len(hashes)} real PDQs, popcount {min(counts)}-{max(counts)}")
    assert min(counts) > POPCOUNT_MIN and max(counts) < POPCOUNT_MAX


# -- every route --------------------------------------------------------------------------

DEGENERATE = [
    ("pdq", "0" * 64),
    ("pdq", hash_bytes(flat_png((64, 64), (0, 0, 0))).pdq or ""),
    ("md5", EMPTY_FILE["md5"]),
    ("sha256", EMPTY_FILE["sha256"]),
]


def test_cli_add_refuses_with_or_without_quality(cli: Cli, home: HomeFactory) -> None:
    path = home("A")
    for kind, value in DEGENERATE:
        extra = [[], ["--quality", "100"], ["--quality", "100", "--allow-low-quality"]]
        for flags in extra if kind == "pdq" else [[]]:
            result = cli("add", kind, value, "-c", "test", *flags, home=path, expect=2)
            assert "value: refused" in result.stderr, result
    assert cli.json("status", home=path)["live_signals"] == 0
    cli("add", "pdq", REAL_PDQ, "-c", "test", "--quality", "100", home=path)
    cli("add", "md5", REAL_MD5, "-c", "test", home=path)


def post(url: str, body: Any, token: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_api_add_routes_refuse(home: HomeFactory, start_node: NodeFactory, cli: Cli) -> None:
    path: Path = home("A")
    node = start_node(path)
    for kind, value in DEGENERATE:
        signal = {"type": kind, "value": value, "collection": "test"}
        if kind == "pdq":
            signal["quality"] = 100
        status, body = post(node.api + "/v1/signals", signal, node.token)
        assert status == 400 and "value: refused" in body["error"], body
        batch = {
            "collection": "test",
            "signals": [
                {"type": "md5", "value": REAL_MD5},
                {k: signal[k] for k in signal if k != "collection"},
            ],
        }
        status, body = post(node.api + "/v1/signals/batch", batch, node.token)
        assert status == 400 and body["error"].startswith("signals[1]: value: refused"), body
    assert node.call("GET", "/v1/status")["live_signals"] == 0  # the batch published nothing
    status, body = post(
        node.api + "/v1/signals",
        {"type": "md5", "value": REAL_MD5, "collection": "test"},
        node.token,
    )
    assert status == 200 and body["new"] is True
