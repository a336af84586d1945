"""README's "Using it", run as written: both sides of peering, two real nodes on loopback.

The two command blocks (childfocus publishes, ncmec matches) are read from README.md and
each line is run as a shell would, with only the addresses, folders, files and the node
ids the sides exchange filled in. Both sides run their `init` and `id` first, as the text
says; then childfocus's block, then ncmec's. The README once showed only childfocus's side,
and ncmec then refused every request with 403.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

from netnodes import free_port, wait_for
from PIL import Image
from testdata import IMAGES

README = Path(__file__).resolve().parents[1] / "README.md"
HASHMESH = str(Path(sys.executable).with_name("hashmesh"))
URLS = {"childfocus": "https://hm.childfocus.example", "ncmec": "https://hm.ncmec.example"}
IDS = {"childfocus": "ed25519:CHILDFOCUS_ID", "ncmec": "ed25519:NCMEC_ID"}


def _blocks() -> list[list[str]]:
    text = README.read_text()
    section = text[text.index("## Using it\n") :]
    section = section[: section.index("\n## ", 1)]
    return [b.strip().splitlines() for b in re.findall(r"```\n(.*?)```", section, re.S)]


class Side:
    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.home = root / name / "hm"
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if k != "HASHMESH_HOME"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.node_id = ""

    def fill(self, line: str, sides: dict[str, Side], files: dict[str, Path]) -> str:
        line = line.replace("~/hm", str(self.home))
        line = line.replace("127.0.0.1:7400", f"127.0.0.1:{self.port}")
        for name, side in sides.items():
            line = line.replace(URLS[name], f"http://127.0.0.1:{side.port}")
            line = line.replace(IDS[name], side.node_id)
        for name, path in files.items():
            line = line.replace(f" {name}", f" {path}")
        return line

    def run(self, line: str) -> subprocess.CompletedProcess[str] | None:
        words = shlex.split(line, comments=True)
        if words[0] == "export":
            key, _, value = words[1].partition("=")
            self.env[key] = value
            return None
        assert words[0] == "hashmesh", line
        if words[-1] == "&":
            self.start(words[1:-1])
            return None
        return subprocess.run(
            [HASHMESH, *words[1:]], capture_output=True, text=True, env=self.env, timeout=120
        )

    def start(self, args: list[str]) -> None:
        with open(self.home.parent / "run.log", "ab") as log:
            self.proc = subprocess.Popen([HASHMESH, *args], stdout=log, stderr=log, env=self.env)
        wait_for(self._healthy, timeout=30)

    def _healthy(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "the node exited"
        try:
            url = f"http://127.0.0.1:{self.port}/v1/healthz"
            with urllib.request.urlopen(url, timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)


def test_both_sides_of_the_readme_peering_make_a_published_picture_match(tmp_path: Path) -> None:
    blocks = _blocks()
    assert len(blocks) == 2, blocks
    by_side = {}
    for lines in blocks:
        name = re.search(r"--name (\w+)", lines[0])
        assert name and name.group(1) in URLS, lines[0]
        by_side[name.group(1)] = lines
    assert set(by_side) == {"childfocus", "ncmec"}

    photo = tmp_path / "photo.jpg"
    photo.write_bytes((IMAGES / "bridge-1-original.jpg").read_bytes())
    upload = tmp_path / "upload.jpg"
    with Image.open(photo) as image:
        copy = image.convert("RGB")
        copy.resize((copy.width * 3 // 4, copy.height * 3 // 4)).save(upload, quality=60)
    files = {"photo.jpg": photo, "upload.jpg": upload}

    sides = {name: Side(name, tmp_path) for name in by_side}
    for side in sides.values():
        side.home.parent.mkdir(parents=True)
    try:
        # First both sides: init, export and id (their node ids are what they exchange).
        rest: dict[str, list[str]] = {}
        for name, lines in by_side.items():
            side = sides[name]
            split = next(i for i, line in enumerate(lines) if line.startswith("hashmesh id"))
            for line in lines[: split + 1]:
                result = side.run(side.fill(line, sides, files))
                assert result is None or result.returncode == 0, (line, result.stderr)
                if result is not None and line.startswith("hashmesh id"):
                    side.node_id = result.stdout.strip()
            assert side.node_id.startswith("ed25519:"), side.node_id
            rest[name] = lines[split + 1 :]
        for name in ("childfocus", "ncmec"):
            side = sides[name]
            for line in rest[name]:
                filled = side.fill(line, sides, files)
                if line.startswith("hashmesh match"):
                    # Until ncmec's first sync has pulled childfocus's batch, no match (exit 1).
                    result = wait_for(lambda f=filled, s=side: _matched(s, f), timeout=60)
                else:
                    result = side.run(filled)
                assert result is None or result.returncode == 0, (line, result.stderr)
        ncmec = sides["ncmec"]
        found = ncmec.run(ncmec.fill("hashmesh match --file upload.jpg --json", sides, files))
        assert found is not None and found.returncode == 0, found
        hits = [m for r in json.loads(found.stdout)["results"] for m in r["matches"]]
        assert {m["author_name"] for m in hits} == {"childfocus"}
    finally:
        for side in sides.values():
            side.stop()


def _matched(side: Side, line: str) -> subprocess.CompletedProcess[str] | None:
    result = side.run(line)
    assert result is not None and result.returncode in (0, 1), result
    return result if result.returncode == 0 else None
