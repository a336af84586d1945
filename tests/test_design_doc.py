"""docs/design.md holds the command-line contract scripts rely on: every command and option
it lists must exist in the CLI, so the document cannot promise what the tool lacks."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from hashmesh.node.cli.main import cli

DESIGN = Path(__file__).resolve().parent.parent / "docs" / "design.md"


def _contract() -> list[tuple[list[str], list[str]]]:
    text = DESIGN.read_text()
    block = text.split("## The command line", 1)[1].split("```", 2)[1]
    out = []
    for line in block.splitlines():
        if not line.startswith("hashmesh "):
            continue
        words = line.split()[1:]
        if words[:2] == ["--home", "HOME"]:
            words = words[2:]
        command = [w for w in re.split(r"[\s(]+", " ".join(words)) if re.fullmatch(r"[a-z-]+", w)]
        options = re.findall(r"--[a-z-]+", " ".join(words))
        out.append((command, options))
    return out


CONTRACT = _contract()


def test_the_contract_lists_every_founding_command() -> None:
    names = {c[0] for c, _ in CONTRACT}
    assert {"init", "id", "run", "peer", "trust", "add", "submit", "revoke", "opinion"} <= names
    assert {"match", "status", "export", "verify", "import", "hash", "demo"} <= names


@pytest.mark.parametrize(("command", "options"), CONTRACT, ids=lambda v: " ".join(v))
def test_each_contract_command_and_option_exists(command: list[str], options: list[str]) -> None:
    node: click.Command = cli
    path = []
    for word in command:
        sub = node.get_command(click.Context(node), word) if isinstance(node, click.Group) else None
        if sub is None:
            break
        node = sub
        path.append(word)
    assert path, f"{command}: no such command"
    known = {opt for param in node.params for opt in getattr(param, "opts", [])}
    missing = [o for o in options if o not in known and o != "--home"]
    assert not missing, f"hashmesh {' '.join(path)} lacks {missing}"
