"""`hashmesh policy show|set`: the per-collection match policy (matching/policy.py).

Offline on the store, online through the running node's admin API (/v1/admin/policy), as
every command; `set` replaces the collection's policy with exactly the flags given.
"""

from __future__ import annotations

from typing import Any

import click

from hashmesh.node.cli.base import Context, cli, emit, json_option, pass_ctx
from hashmesh.node.errors import NodeError
from hashmesh.node.matching.policy import FIELDS


@cli.group()
def policy() -> None:
    """Per-collection match policy: negative lists, thresholds, quorum, review."""


def _policy_lines(p: dict[str, Any]) -> list[str]:
    knobs = []
    if p["negative"]:
        radius = p["threshold"] if p["threshold"] is not None else "the request's threshold"
        knobs.append(f"negative (suppresses others within PDQ distance {radius})")
    elif p["threshold"] is not None:
        knobs.append(f"threshold {p['threshold']}")
    if p["min_quality"] is not None:
        knobs.append(f"min quality {p['min_quality']}")
    if p["quorum"] > 1:
        unit = {"org": "organisations", "country": "countries"}.get(p.get("quorum_by", ""))
        knobs.append(f"quorum {p['quorum']} {unit or 'authors'}")
    if p["suspend_after_disputes"] is not None:
        knobs.append(f"suspend after {p['suspend_after_disputes']} disputes")
    if p["require_review"]:
        knobs.append("review required")
    if p.get("spike_cap") is not None:
        knobs.append(f"quarantine at {p['spike_cap']} matches a minute")
    if p.get("spike_factor") is not None:
        knobs.append(f"quarantine at {p['spike_factor']}x the usual match rate")
    if p.get("dispute_on_spike"):
        knobs.append("a quarantine sends the author a dispute (match-spike)")
    return [f"{p['collection']:<20} {'; '.join(knobs) or 'default (every hit matches)'}"]


def _show_text(d: dict[str, Any]) -> str:
    lines = [line for p in d["policies"] for line in _policy_lines(p)]
    return "\n".join(lines) or "no collection has a policy: every hit matches"


def _set_text(d: dict[str, Any]) -> str:
    lines = _policy_lines(d["policy"])
    return f"policy of {d['collection']} {d['change']}\n  " + "\n  ".join(lines)


@policy.command("show")
@click.argument("collection", required=False)
@json_option
@pass_ctx
def policy_show(ctx: Context, collection: str | None, as_json: bool) -> None:
    """Every collection's policy, or COLLECTION's (its default when none is set)."""
    ctx.show(lambda b: b.policy_show(collection), as_json, _show_text)


@policy.command("set")
@click.argument("collection")
@click.option(
    "--negative",
    is_flag=True,
    help="An allowlist: never matches, and suppresses the same signal in every other"
    " collection (PDQ: within --threshold of the query or the hit).",
)
@click.option(
    "--threshold",
    type=int,
    help="PDQ distance: a match must be within it (0-31); for --negative, the suppression radius.",
)
@click.option("--min-quality", type=int, help="Hits of a lower stated PDQ quality do not match.")
@click.option("--quorum", type=int, help="Distinct authors that must list the signal (1-16).")
@click.option(
    "--quorum-by",
    type=click.Choice(["node", "org", "country"]),
    help="What the quorum counts: node ids (default), or the org or country label of each"
    " author's trust entry (hashmesh trust add --org/--country).",
)
@click.option(
    "--suspend-after-disputes",
    type=int,
    help="Suspend a signal disputed by this many authors (1-1000).",
)
@click.option(
    "--require-review", is_flag=True, help="Return hits as review_required, never as a match."
)
@click.option(
    "--spike-cap",
    type=int,
    help="Quarantine a signal matched this many times within 60 s (1-1000000).",
)
@click.option(
    "--spike-factor",
    type=int,
    help="Quarantine a signal matched this many times its usual rate (2-1000; 20+ matches).",
)
@click.option(
    "--dispute-on-spike",
    is_flag=True,
    help="When a signal is quarantined, publish a signed dispute (reason match-spike) to its"
    " author.",
)
@json_option
@pass_ctx
def policy_set(
    ctx: Context,
    collection: str,
    negative: bool,
    threshold: int | None,
    min_quality: int | None,
    quorum: int | None,
    quorum_by: str | None,
    suspend_after_disputes: int | None,
    require_review: bool,
    spike_cap: int | None,
    spike_factor: int | None,
    dispute_on_spike: bool,
    as_json: bool,
) -> None:
    """Replace COLLECTION's policy with exactly these flags (none: the default)."""
    fields: dict[str, Any] = {
        "negative": negative,
        "threshold": threshold,
        "min_quality": min_quality,
        "quorum": quorum,
        "suspend_after_disputes": suspend_after_disputes,
        "require_review": require_review,
        "spike_cap": spike_cap,
        "spike_factor": spike_factor,
        "quorum_by": quorum_by,
        "dispute_on_spike": dispute_on_spike,
    }
    fields = {k: v for k, v in fields.items() if v is not None and v is not False}
    with ctx.backend() as backend:
        try:
            result = backend.policy_set(collection, fields)
        except NodeError as exc:  # the API names its field; the user typed the flag
            field, sep, rest = str(exc).partition(": ")
            if sep and field in FIELDS:
                raise NodeError(f"--{field.replace('_', '-')}: {rest}") from None
            raise
    emit(result, as_json, _set_text)
