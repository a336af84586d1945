"""`hashmesh quarantine list|lift`: signals this node suspended on a match spike
(matching/quarantine.py), and the operator's command that lifts a quarantine."""

from __future__ import annotations

from typing import Any

import click

from hashmesh.node.cli.base import Context, cli, json_option, pass_ctx


@cli.group()
def quarantine() -> None:
    """Signals suspended here on a match spike (policy set --spike-cap/--spike-factor)."""


def _entry(q: dict[str, Any]) -> list[str]:
    lifted = "  (lifted)" if "lifted_at" in q else ""
    return [
        f"QUARANTINED {q['type']} {q['value']}{lifted}",
        f"  in        {q['collection']} by {q['author_name'] or q['author']}",
        f"  why       {q['reason']}",
        f"  op id     {q['op_id']}",
    ]


@quarantine.command("list")
@click.option("--lifted", is_flag=True, help="Also the quarantines an operator lifted.")
@json_option
@pass_ctx
def quarantine_list(ctx: Context, lifted: bool, as_json: bool) -> None:
    """Every signal under quarantine here, newest first, with why."""
    ctx.show(
        lambda b: b.quarantine_list(lifted),
        as_json,
        lambda d: (
            "\n".join(line for q in d["quarantine"] for line in _entry(q))
            or "no signal is under quarantine"
        ),
    )


@quarantine.command("lift")
@click.argument("target", metavar="OP_ID_OR_SIGNAL")
@json_option
@pass_ctx
def quarantine_lift(ctx: Context, target: str, as_json: bool) -> None:
    """Lift the quarantine of one add (op id) or of every add of a signal value.

    A lifted signal matches again at once and is not quarantined again by this node.
    """
    ctx.show(
        lambda b: b.quarantine_lift(target),
        as_json,
        lambda d: "\n".join(f"lifted {q['type']} {q['value']} ({q['op_id']})" for q in d["lifted"]),
    )
