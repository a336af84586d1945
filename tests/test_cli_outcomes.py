"""Commands that did nothing say so: exit 1 where the input was fine but nothing was done
(as `match` with no match), 2 where the input was refused, with what and why.

Through the real console script, with the node stopped and running (the CLI then goes
through the node's HTTP API)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import Cli, HomeFactory, NodeFactory
from testdata import IMAGES

MD5 = "5d41402abc4b2a76b9719d911017c592"
BRIDGE = IMAGES / "bridge-1-original.jpg"


def node_id(cli: Cli, home: Path) -> str:
    return cli("id", home=home).stdout.strip()


@pytest.mark.parametrize("running", [False, True])
def test_import_of_only_untrusted_authors_exits_1_and_names_the_fix(
    cli: Cli, home: HomeFactory, start_node: NodeFactory, tmp_path: Path, running: bool
) -> None:
    a, b = home("A"), home("B")
    cli("add", "md5", MD5, "-c", "csam", home=a)
    bundle = tmp_path / "a.hmb"
    cli("export", "-c", "csam", bundle, home=a)
    if running:
        start_node(b)
    before = cli.json("status", home=b)["feed_cursor"]

    refused = cli("import", bundle, "--json", home=b, expect=1)
    assert refused.json()["applied"] == 0 and refused.json()["refused_untrusted"] == 1
    assert "nothing imported" in refused.stderr and "not trusted" in refused.stderr
    author = node_id(cli, a)
    fix = re.search(r"hashmesh (trust add \S+ \S+),", refused.stderr)
    assert fix is not None and fix.group(1) == f"trust add {author} csam", refused.stderr
    assert cli.json("status", home=b)["feed_cursor"] == before

    cli(*fix.group(1).split(), home=b)  # the command the message gave
    accepted = cli("import", bundle, "--json", home=b)
    assert accepted.json()["applied"] == 1 and accepted.stderr == ""
    # importing again is idempotent, not a failure: everything in it is already held
    assert "(1 already held)" in cli("import", bundle, home=b).stdout


@pytest.mark.parametrize("running", [False, True])
def test_export_of_a_collection_not_held_exits_1_and_leaves_out_alone(
    cli: Cli, home: HomeFactory, start_node: NodeFactory, tmp_path: Path, running: bool
) -> None:
    a = home("A")
    cli("add", "md5", MD5, "-c", "csam", home=a)
    if running:
        start_node(a)
    out = tmp_path / "previous.hmb"
    out.write_bytes(b"an earlier bundle")
    result = cli("export", "-c", "nosuch", out, home=a, expect=1)
    assert "'nosuch'" in result.stderr and "nothing exported" in result.stderr
    assert "collections held here: csam" in result.stderr
    assert result.stdout == ""
    assert out.read_bytes() == b"an earlier bundle"
    assert not out.with_name(out.name + ".partial").exists()

    bad = cli("export", "-c", "No Such", tmp_path / "x.hmb", home=a, expect=2)
    assert "collection" in bad.stderr and not (tmp_path / "x.hmb").exists()
    assert cli("export", "-c", "csam", tmp_path / "ok.hmb", home=a).stdout.strip() == str(
        tmp_path / "ok.hmb"
    )


@pytest.mark.parametrize("running", [False, True])
def test_submit_of_a_text_file_publishes_nothing_and_points_to_import_list(
    cli: Cli, home: HomeFactory, start_node: NodeFactory, tmp_path: Path, running: bool
) -> None:
    a = home("A")
    if running:
        start_node(a)
    hashes = tmp_path / "hashes.txt"
    hashes.write_text(f"video_md5 {MD5}\n")
    for files in ([hashes], [BRIDGE, hashes]):
        result = cli("submit", *files, "-c", "csam", home=a, expect=2)
        assert f"{hashes}: a text file" in result.stderr
        assert "nothing submitted" in result.stderr and "import-list" in result.stderr
        assert cli.json("status", home=a)["feed_cursor"] == 0

    # A file that is neither a picture nor a video (a cut-off mp4 header) is refused.
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    refused = cli("submit", clip, BRIDGE, "-c", "csam", home=a, expect=2)
    assert "clip.mp4: neither a picture nor a video that can be decoded" in refused.stderr
    assert cli.json("status", home=a)["feed_cursor"] == 0
