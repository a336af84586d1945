"""The starter negative list (issue 19): lists/negative-starter.csv is exactly what
lists/make_negative_starter.py generates, every entry imports into a collection, and
marked negative it holds back matches of those pictures while a real picture matches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc
from testdata import IMAGES

ROOT = Path(__file__).resolve().parents[1]
STARTER = ROOT / "lists" / "negative-starter.csv"
sys.path.insert(0, str(ROOT / "lists"))
import make_negative_starter as starter  # noqa: E402


def entries() -> list[list[str]]:
    return [line.split(",") for line in STARTER.read_text().splitlines()[1:]]


@pytest.mark.slow
def test_the_shipped_list_is_what_the_script_generates() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "lists" / "make_negative_starter.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_list_holds_no_hash_the_node_would_refuse() -> None:
    from hashmesh.node.hashing.degenerate import degenerate_reason

    rows = entries()
    kinds = {kind for kind, *_ in rows}
    assert kinds == {"md5", "sha256", "pdq"}
    assert len({(kind, value) for kind, value, *_ in rows}) == len(rows)
    for kind, value, quality, category, ref in rows:
        assert category == "benign" and ref.startswith("starter:")
        assert degenerate_reason(kind, value) is None, (kind, value, ref)
        if kind == "pdq":
            assert int(quality) >= starter.MIN_QUALITY
    flat = [ref for kind, _, _, _, ref in rows if kind == "pdq" and ref.startswith("starter:flat")]
    assert flat == []  # a flat colour's PDQ is degenerate: its refusal covers it


def _picture(tmp_path: Path, name: str) -> Path:
    for source in (starter.flat, starter.gradients, starter.pages, starter.patterns):
        for found, image in source():
            if found == name:
                path = tmp_path / f"{name}.png"
                path.write_bytes(starter.png(image))
                return path
    raise AssertionError(name)


def _match_file(node: NodeProc, path: Path) -> tuple[int, Any]:
    import json

    result = node.cli("match", "--file", str(path), "--json", check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_imported_as_a_negative_collection_it_suppresses_listed_pictures(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "platform")
    imported = node.json("import-list", "csv", str(STARTER), "-c", "benign")
    assert imported["published"] == len(entries()), imported
    node.cli("policy", "set", "benign", "--negative", "--threshold", "8")

    black = _picture(tmp_path, "flat-black-640x480")
    board = _picture(tmp_path, "pattern-checkerboard-8x8")
    # Listed by mistake in csam: the black picture's MD5, the checkerboard's PDQ as another
    # hasher saw it (3 bits off), and a real picture.
    hashes = {
        p: node.json("hash", str(p))[0] for p in (black, board, IMAGES / "bridge-1-original.jpg")
    }
    node.cli("add", "md5", hashes[black]["md5"], "-c", "csam")
    near = f"{int(hashes[board]['pdq'], 16) ^ 0b111:064x}"
    node.cli("add", "pdq", near, "-c", "csam", "--quality", "100")
    real = hashes[IMAGES / "bridge-1-original.jpg"]
    node.cli("add", "pdq", real["pdq"], "-c", "csam", "--quality", str(real["quality"]))

    code, answer = _match_file(node, black)
    assert code == 1 and answer["matched"] is False
    md5_hits = {m["collection"]: m for m in answer["results"][0]["matches"]}
    assert md5_hits["csam"]["verdict"] == "suppressed"
    assert md5_hits["csam"]["reasons"][0].startswith(
        "matched, but suppressed by negative collection benign"
    )
    code, answer = _match_file(node, board)
    assert code == 1
    pdq_hits = {m["collection"]: m for m in answer["results"][2]["matches"]}
    assert pdq_hits["csam"]["verdict"] == "suppressed" and pdq_hits["csam"]["distance"] == 3
    assert pdq_hits["benign"]["verdict"] == "negative"
    code, answer = _match_file(node, IMAGES / "bridge-1-original.jpg")
    assert code == 0, answer  # the allowlist does not hide a real picture
