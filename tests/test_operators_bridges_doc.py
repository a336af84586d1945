"""docs/operators.md's bridge commands, run as written against fake upstreams.

The section's command block (`hashmesh bridge add ...`, `list`, `show`, `remove`) is read
from the page and each command run on a running node, with only the credential files and
the upstreams' addresses filled in (an `--environment` becomes the fake's `--url`, a
bridge without either gets one; `[--json]` runs both ways). Each fake holds one entry;
the bridges must fill from it, `bridge show` must print the lines the page's "Reading
`bridge show`" sample shows, in its order, and `remove` must leave the others.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeSet, wait_for
from upstream_fakes import (
    FakeNCMEC,
    FakeStopNCII,
    FakeThreatExchange,
    NCMECEntry,
    StopNCIIRecord,
    TEDescriptor,
    TEIndicator,
)

pytest.importorskip("threatexchange")

OPERATORS = Path(__file__).resolve().parents[1] / "docs" / "operators.md"
PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"


def _section() -> str:
    text = OPERATORS.read_text()
    start = text.index("## Bridges")
    return text[start : text.index("\n## ", start + 1)]


def _commands() -> list[list[str]]:
    block = re.findall(r"```\n(.*?)```", _section(), re.S)[0]
    return [shlex.split(line) for line in block.replace("\\\n", " ").strip().splitlines()]


def _shown_labels() -> list[str]:
    """The line labels of the page's `bridge show` sample, in order."""
    sample = next(b for b in re.findall(r"```\n(.*?)```", _section(), re.S) if "bridge " in b[:7])
    return [line.split("  ")[1].strip() for line in sample.splitlines()[1:] if line.strip()]


@pytest.mark.slow  # three upstreams and a node: > 10 s on the shared 2-core machine
def test_the_pages_bridge_commands_work_as_written(nodes: NodeSet, tmp_path: Path) -> None:
    commands = _commands()
    adds = [c for c in commands if c[:3] == ["hashmesh", "bridge", "add"]]
    assert {c[c.index("--kind") + 1] for c in adds} == {"ncmec", "stopncii", "threatexchange"}
    tx = next(c for c in adds if "threatexchange" in c)
    now = int(time.time())
    ncmec = FakeNCMEC()
    stopncii = FakeStopNCII()
    te = FakeThreatExchange(privacy_group=int(tx[tx.index("--privacy-group") + 1]))
    fakes = {"ncmec": ncmec, "stopncii": stopncii, "threatexchange": te}
    secrets = {
        "ncmec": f"{ncmec.user}:{ncmec.password}",
        "stopncii": "fetch-key,sub-key,feedback-key",
        "threatexchange": te.token,
    }
    for fake in fakes.values():
        fake.start()
    try:
        ncmec.put(NCMECEntry(42, "doc", now - 60, fingerprints={"md5": "ab" * 16}))
        stopncii.put(StopNCIIRecord("ImagePDQ", PDQ, now - 60))
        te.put(TEIndicator("31", "HASH_MD5", "cd" * 16, now - 60, [TEDescriptor("3101", 77)]))
        (node,) = nodes.make("doc")
        node.start()
        names = []
        for words in commands:
            assert words[:2] == ["hashmesh", "bridge"], words
            args = words[2:]
            if args[0] == "add":
                kind = args[args.index("--kind") + 1]
                names.append(args[1])
                path = Path(args[args.index("--credentials-file") + 1])
                local = tmp_path / path.name
                local.write_text(secrets[kind] + "\n")
                os.chmod(local, 0o600)
                args[args.index("--credentials-file") + 1] = str(local)
                if "--environment" in args:
                    at = args.index("--environment")
                    args[at : at + 2] = ["--url", fakes[kind].url]
                elif "--url" not in args:
                    args += ["--url", fakes[kind].url]
                node.cli("bridge", *args)
                continue
            if args[0] == "remove":
                wait_for(lambda: _filled(node, names), timeout=90, step=0.5)
                _check_show(node, names[0])
            plain = [a for a in args if a != "[--json]"]
            outputs = [node.cli("bridge", *plain).stdout]
            if "[--json]" in args:
                outputs.append(node.cli("bridge", *plain, "--json").stdout)
                json.loads(outputs[-1])
            if plain[0] == "remove":
                left = [b["name"] for b in node.json("bridge", "list")["bridges"]]
                assert left == [n for n in names if n != plain[1]]
        assert node.stop() == 0
    finally:
        for fake in fakes.values():
            fake.stop()


def _filled(node: Any, names: list[str]) -> bool:
    listed = node.json("bridge", "list")["bridges"]
    return [b["name"] for b in listed] == names and all(
        b["counts"]["added"] == 1 and b["healthy"] for b in listed
    )


def _check_show(node: Any, name: str) -> None:
    text = node.cli("bridge", "show", name).stdout
    labels = [line[2:16].strip() for line in text.splitlines()[1:]]
    documented = _shown_labels()
    assert [x for x in documented if x in labels] == labels, (labels, documented)
    assert text.startswith(f"bridge {name}\n")
    assert "every window drained up to" in text and "1 added" in text
