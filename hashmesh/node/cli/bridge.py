"""`hashmesh bridge`: the upstream APIs this node follows (hashmesh/node/bridges/)."""

from __future__ import annotations

import time
from typing import Any

import click

from hashmesh.node.cli.base import Context, cli, emit, errors, fail, json_option, pass_ctx

KINDS = ("ncmec", "stopncii", "threatexchange")


@cli.group()
def bridge() -> None:
    """Follow NCMEC's, StopNCII's or ThreatExchange's hash API into a collection, and send
    feedback back."""


def _ago(ms: int | None) -> str:
    if not ms:
        return "never"
    seconds = max(0, int(time.time() - ms / 1000))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _text(d: dict[str, Any]) -> str:
    counts = d["counts"]
    skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(counts["skipped"].items()))
    where = d["url"] or d["environment"]
    lines = [
        f"bridge {d['name']}{' (' + d['change'] + ')' if d.get('change') else ''}",
        f"  upstream      {d['kind']} {where}"
        + (f" privacy group {d['privacy_group']}" if d.get("privacy_group") else ""),
        f"  collection    {d['collection']} (category {d['category']})",
        f"  credentials   {d['credentials']}",
        f"  interval      {d['interval_s']:g} s",
        f"  checkpoint    {d['checkpoint_text']}",
        f"  last success  {_ago(d['last_success_ms'])}",
    ]
    if d["last_error"]:
        state = "failing" if not d["healthy"] else "recovered"
        lines.append(
            f"  last error    {_ago(d['last_error_ms'])} ({state}, {d['failures']} in a row):"
            f" {d['last_error']}"
        )
    lines.append(
        f"  counts        {counts['entries']} entries, {counts['added']} added,"
        f" {counts['revoked']} revoked, {d['live']} live"
    )
    lines.append(f"  skipped       {skipped or 'nothing'}")
    if d["feedback"]:
        shown = ", ".join(f"{state} {n}" for state, n in sorted(d["feedback"].items()))
        lines.append(f"  feedback      {shown}")
    return "\n".join(lines)


@bridge.command("add")
@click.argument("name")
@click.option("--kind", required=True, type=click.Choice(KINDS), help="The upstream API.")
@click.option("--collection", "-c", required=True, help="The collection to publish into.")
@click.option("--environment", help="The upstream's environment (python-threatexchange's names).")
@click.option("--url", help="Any server that speaks the API, instead of an environment.")
@click.option("--credentials-file", help="A file (mode 0600) holding the credentials.")
@click.option("--credentials-env", help="An environment variable of the node holding them.")
@click.option(
    "--interval", type=float, default=300.0, show_default=True, help="Seconds between polls."
)
@click.option(
    "--timeout",
    type=float,
    default=120.0,
    show_default=True,
    help="Seconds an upstream call may take.",
)
@click.option(
    "--category",
    default="",
    help="Category of the adds (default: csam / ncii / threatexchange).",
)
@click.option("--dispute-reason", default="", help="NCMEC: the reason id a dispute sends.")
@click.option(
    "--privacy-group", default="", help="ThreatExchange: the privacy group (collaboration) id."
)
@json_option
@pass_ctx
def bridge_add(
    ctx: Context,
    name: str,
    kind: str,
    collection: str,
    environment: str | None,
    url: str | None,
    credentials_file: str | None,
    credentials_env: str | None,
    interval: float,
    timeout: float,
    category: str,
    dispute_reason: str,
    privacy_group: str,
    as_json: bool,
) -> None:
    """Follow an upstream API into COLLECTION, signed by this node.

    The running node starts the bridge within a second; credentials are read from the
    file or variable named, never stored in config.toml.
    """
    from hashmesh.node.bridges.manage import add_bridge

    if environment and url:
        fail("give --environment or --url, not both")
    if bool(credentials_file) == bool(credentials_env):
        fail("give --credentials-file FILE (mode 0600) or --credentials-env VARIABLE")
    with errors():
        result = add_bridge(
            ctx.home,
            name,
            kind,
            collection,
            credentials_file=credentials_file or "",
            credentials_env=credentials_env or "",
            environment=environment or "",
            url=url or "",
            interval_s=interval,
            timeout_s=timeout,
            category=category,
            dispute_reason=dispute_reason,
            privacy_group=privacy_group,
        )
    emit(result, as_json, _text)


@bridge.command("list")
@json_option
@pass_ctx
def bridge_list(ctx: Context, as_json: bool) -> None:
    """Every bridge with its checkpoint, counts and last error."""
    from hashmesh.node.bridges.manage import list_bridges

    with errors():
        result = list_bridges(ctx.home)
    emit(result, as_json, lambda d: "\n".join(_text(b) for b in d["bridges"]) or "no bridges")


@bridge.command("show")
@click.argument("name")
@json_option
@pass_ctx
def bridge_show(ctx: Context, name: str, as_json: bool) -> None:
    """One bridge: checkpoint, last success, last error, counts by reason, feedback."""
    from hashmesh.node.bridges.manage import show_bridge

    with errors():
        result = show_bridge(ctx.home, name)
    emit(result, as_json, _text)


@bridge.command("remove")
@click.argument("name")
@json_option
@pass_ctx
def bridge_remove(ctx: Context, name: str, as_json: bool) -> None:
    """Stop following an upstream. What it published stays live (revoke it to withdraw
    it); adding the bridge again resumes from its checkpoint."""
    from hashmesh.node.bridges.manage import remove_bridge

    with errors():
        result = remove_bridge(ctx.home, name)
    emit(result, as_json, _text)
