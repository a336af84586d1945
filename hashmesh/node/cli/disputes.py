"""`hashmesh disputes`: the author's review queue, its own adds with others' opinions."""

from __future__ import annotations

from typing import Any

from hashmesh.node.cli.base import Context, cli, json_option, pass_ctx


def _who(entries: list[dict[str, Any]]) -> str:
    return ", ".join(
        (e["author_name"] or e["author"]) + (f" ({e['reason']})" if e.get("reason") else "")
        for e in entries
    )


def _queue_text(d: dict[str, Any]) -> str:
    lines = []
    for e in d["disputes"]:
        what = f"{e['type']} {e['value']} in {e['collection']}" if "type" in e else e["op_id"]
        state = "" if e.get("live", True) else "  (revoked)"
        lines.append(f"{what}{state}")
        if e["disputes"]:
            lines.append(f"  disputed by   {_who(e['disputes'])}")
        if e["confirms"]:
            lines.append(f"  confirmed by  {_who(e['confirms'])}")
        if e["seen"]:
            lines.append(f"  seen by       {e['seen']} authors")
        lines.append(f"  op id         {e['op_id']}")
        if e.get("live", True):
            lines.append(f"  revoke:  {e['revoke']}")
            lines.append(f"  confirm: {e['confirm']}")
    return "\n".join(lines) or "no opinions on this node's adds"


@cli.command()
@json_option
@pass_ctx
def disputes(ctx: Context, as_json: bool) -> None:
    """This node's own adds that other authors disputed, confirmed or saw, by whom.

    Most disputed first, each with the command that revokes it (the disputes were right)
    or confirms it (they were not).
    """
    ctx.show(lambda b: b.disputes(), as_json, _queue_text)
