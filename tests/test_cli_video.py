"""`hashmesh hash`, `submit`, `add vpdq` and `match --file` with Meta's sample videos."""

from __future__ import annotations

import hashlib
from pathlib import Path

from conftest import Cli, HomeFactory, NodeFactory
from testdata import VIDEO

from hashmesh.node.hashing.video import hash_video
from hashmesh.protocol.signals import VPDQSignal

VIDEOS = VIDEO / "videos"
CHAIR = VIDEOS / "chair-19-sd-bar.mp4"
SEPIA = VIDEOS / "chair-22-sd-sepia-bar.mp4"
ORIGINAL = VIDEOS / "chair-orig-22-sd-bar.mp4"
DOORKNOB = VIDEOS / "doorknob-hd-no-bar.mp4"


def test_hash_prints_md5_sha256_and_the_frames(cli: Cli) -> None:
    rows = cli.json("hash", CHAIR, "--json")
    (row,) = rows
    assert row["md5"] == hashlib.md5(CHAIR.read_bytes()).hexdigest()
    assert row["sha256"] == hashlib.sha256(CHAIR.read_bytes()).hexdigest()
    expected = hash_video(CHAIR)
    assert row["vpdq_value"] == expected.value
    assert row["vpdq"] == expected.frames_json()
    assert [f["frame"] for f in row["vpdq"]] == list(range(0, 564, 30))
    assert "pdq" not in row
    human = cli("hash", CHAIR).stdout
    assert row["md5"] in human and "vpdq    19 frames, 19 of quality >= 50" in human
    assert human.count(",100,") == 19


def test_add_vpdq_submit_and_match_file_on_a_running_node(
    cli: Cli, home: HomeFactory, start_node: NodeFactory
) -> None:
    """One node for the three (hashing a video costs a second or two each time)."""
    a = home("A")
    start_node(a)
    value = hash_video(CHAIR).value
    pytx = VPDQSignal.to_pytx(value)
    added = cli.json("add", "vpdq", pytx, "-c", "clips", "--json", home=a)
    assert added["op_id"]
    bad = cli("add", "vpdq", pytx.replace(",100,", ",101,", 1), "-c", "clips", home=a, expect=2)
    assert "vpdq value: frame[0]: quality 101 is outside 0-100" in bad.stderr

    done = cli.json("submit", ORIGINAL, "-c", "videos", "--category", "csam", home=a)
    assert [s["type"] for s in done["signals"]] == ["md5", "sha256", "vpdq"]
    assert done["signals"][2]["value"] == hash_video(ORIGINAL).value

    found = cli("match", "--file", SEPIA, "--json", home=a, expect=0).json()
    assert [r["query"]["type"] for r in found["results"]] == ["md5", "sha256", "vpdq"]
    video = found["results"][2]
    # The 19 s clip holds too few of the 22 s query's frames (Meta's 80 %); the original all.
    assert {m["collection"] for m in video["matches"]} == {"videos"}
    assert all(m["type"] == "vpdq" for m in video["matches"])
    assert video["matches"][0]["video"]["query_percent"] >= 80
    human = cli("match", "--file", SEPIA, home=a, expect=0).stdout
    assert "MATCH vpdq (23 frames)" in human and "of the query's frames matched" in human
    by_value = cli("match", "vpdq", pytx, "--json", home=a, expect=0).json()
    assert "clips" in {m["collection"] for m in by_value["results"][0]["matches"]}
    missed = cli("match", "--file", DOORKNOB, "--json", home=a, expect=1).json()
    assert all(not r["matches"] for r in missed["results"])


def test_a_file_neither_picture_nor_video_is_refused(cli: Cli, tmp_path: Path) -> None:
    notes = tmp_path / "notes.bin"
    notes.write_bytes(bytes(range(256)) * 40)
    for command in (("hash", notes), ("match", "--file", notes)):
        refused = cli(*command, expect=2)
        assert "notes.bin: neither a picture nor a video" in refused.stderr
        assert refused.stdout == ""
