"""CLI commands for platforms and list keepers: `token`, `import-list`, `export-list`.

Imported at the end of cli.py so the commands join the `hashmesh` group; same contract as
every other command (stdout data, --json, one-sentence errors with exit 2, a refused
input changes nothing).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from hashmesh.node.cli.base import Context, cli, emit, errors, fail, json_option, pass_ctx

# A column the importer drops on purpose (personal data, unknown extras) is not a bad row.
_DROPPED_COLUMN = re.compile(r"^column .* is not imported$")

_IMPORT_RESULT = ("collection", "published", "already_live", "revoked", "revoked_op_ids")


class _LazyChoice(click.Choice):  # type: ignore[type-arg]
    """A Choice whose names live in a module that loads the store (tokens, importers, lists).

    Read when a command parses its arguments or prints its help, so that every other
    `hashmesh` command starts without loading those modules.
    """

    def __init__(self, names: Callable[[], Sequence[str]]) -> None:
        self._names = names
        super().__init__(())

    @property  # type: ignore[override]
    def choices(self) -> Sequence[str]:
        return tuple(self._names())

    @choices.setter
    def choices(self, _: Sequence[str]) -> None:
        pass


def _scopes() -> Sequence[str]:
    from hashmesh.node.tokens import SCOPES

    return SCOPES


def _import_formats() -> Sequence[str]:
    from hashmesh.node.lists.importers import formats

    return sorted(formats())


def _export_formats() -> Sequence[str]:
    from hashmesh.node.lists.listfiles import EXPORT_FORMATS

    return EXPORT_FORMATS


@cli.group()
def token() -> None:
    """Bearer tokens for platforms and operators (scopes, collections)."""


@token.command("create")
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=_LazyChoice(_scopes),
    help=(
        "read, match, publish, admin, metrics or replicate (a matcher replica's follow"
        " token, with read) (repeatable)."
    ),
)
@click.option(
    "--collection",
    "collections",
    multiple=True,
    help="Restrict the token to this collection (repeatable; default: all).",
)
@json_option
@pass_ctx
def token_create(
    ctx: Context, name: str, scopes: tuple[str, ...], collections: tuple[str, ...], as_json: bool
) -> None:
    """Create a token; it is printed once and stored only as its SHA-256."""
    from hashmesh.node.cli import platform_backends as pc

    with ctx.backend() as backend:
        result = pc.token_create(backend, name, list(scopes), list(collections) or None)
    emit(result, as_json, lambda d: d["token"])


@token.command("list")
@json_option
@pass_ctx
def token_list(ctx: Context, as_json: bool) -> None:
    """List tokens (never the tokens themselves)."""
    from hashmesh.node.cli import platform_backends as pc

    with ctx.backend() as backend:
        tokens = pc.token_list(backend)

    def human(items: list[dict[str, Any]]) -> str:
        lines = []
        for t in items:
            state = "live" if t["live"] else "revoked"
            where = ",".join(t["collections"]) if t["collections"] else "all collections"
            lines.append(
                f"{t['id']:<4} {t['name']:<20} {','.join(t['scopes']):<24} {where}  {state}"
            )
        return "\n".join(lines) or "(no tokens; the admin token file still works)"

    emit(tokens, as_json, human)


@token.command("revoke")
@click.argument("name_or_id", metavar="NAME|ID")
@json_option
@pass_ctx
def token_revoke(ctx: Context, name_or_id: str, as_json: bool) -> None:
    """Revoke a token at once (a running node refuses it from the next request)."""
    from hashmesh.node.cli import platform_backends as pc

    with ctx.backend() as backend:
        result = pc.token_revoke(backend, name_or_id)
    emit(result, as_json, lambda d: f"revoked token {d['name']} ({d['id']})")


@cli.command("import-list")
@click.argument("list_format", metavar="FORMAT", type=_LazyChoice(_import_formats))
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--collection", "-c", required=True)
@click.option("--category", help="Category for entries that carry none (format default else).")
@click.option(
    "--on-error",
    type=click.Choice(["skip", "abort"]),
    default="skip",
    show_default=True,
    help="Invalid rows: skip them, or abort and publish nothing.",
)
@json_option
@pass_ctx
def import_list(
    ctx: Context,
    list_format: str,
    file: str,
    collection: str,
    category: str | None,
    on_error: str,
    as_json: bool,
) -> None:
    """Publish a hash list (FORMAT: pytx, csv, stopncii, ncmec) into COLLECTION.

    The whole file is read and checked before anything is published; its withdrawals
    revoke this node's own live adds of those signals (or references) in COLLECTION.
    """
    from hashmesh.node.cli import platform_backends as pc
    from hashmesh.node.cli.backends import RemoteBackend
    from hashmesh.node.lists.listfiles import plan_import

    show_progress = sys.stderr.isatty()
    size = os.path.getsize(file)
    with ctx.backend() as backend, open(file, "rb") as stream:
        minimum = pc.min_pdq_quality(backend)
        if show_progress:
            with click.progressbar(
                length=size, label=f"reading {Path(file).name}", file=sys.stderr
            ) as bar:
                done = [0]

                def progress(position: int) -> None:
                    if position - done[0] >= 65536 or position >= size:
                        bar.update(position - done[0])
                        done[0] = position

                plan = plan_import(list_format, stream, category, minimum, progress)
        else:
            plan = plan_import(list_format, stream, category, minimum)
        notes = [i for i in plan.issues if _DROPPED_COLUMN.match(i.message)]
        invalid = [i for i in plan.issues if i not in notes]
        for issue in notes:
            click.echo(f"hashmesh: {file}: note: {issue}", err=True)
        for issue in invalid:
            click.echo(f"hashmesh: {file}: {issue}", err=True)
        if invalid and on_error == "abort":
            fail(
                f"{len(invalid)} invalid entries in {file}; nothing imported"
                " (--on-error skip imports the valid ones)"
            )
        if not plan.adds and not plan.revoke_signals and not plan.revoke_refs:
            result: dict[str, Any] = {
                "collection": collection,
                "published": 0,
                "already_live": 0,
                "revoked": 0,
                "revoked_op_ids": [],
            }
        else:
            with errors():
                if isinstance(backend, RemoteBackend):
                    # Checked here already; skip is safe: an invalid entry aborted above.
                    sent = pc.import_file(backend, file, list_format, collection, category)
                    result = {k: sent[k] for k in _IMPORT_RESULT}
                else:
                    result = pc.import_plan(backend, plan.request(collection))
    result.update(
        {
            "file": file,
            "format": list_format,
            "records": plan.records,
            "invalid": len(invalid),
            "issues": [str(i) for i in invalid],
            "notes": [str(i) for i in notes],
        }
    )
    emit(
        result,
        as_json,
        lambda d: (
            f"imported {d['published']} new signals ({d['already_live']} already live),"
            f" revoked {d['revoked']}, skipped {d['invalid']} invalid entries"
        ),
    )


@cli.command("export-list")
@click.argument("list_format", metavar="FORMAT", type=_LazyChoice(_export_formats))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--collection", "-c", required=True)
@json_option
@pass_ctx
def export_list(ctx: Context, list_format: str, out: str, collection: str, as_json: bool) -> None:
    """Write the live signals of COLLECTION as csv or hma (pytx 'TYPE VALUE' lines)."""
    from hashmesh.node.cli import platform_backends as pc
    from hashmesh.node.lists.listfiles import write_export

    path = Path(out)
    tmp = path.with_name(path.name + ".partial")
    with ctx.backend() as backend:
        try:
            rows = pc.snapshot(backend, collection)
            header = next(rows)
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                result = write_export(list_format, rows, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            fail(f"{out}: {exc.strerror}")
        except BaseException:  # refused or failed: no partial file; errors() reports it
            tmp.unlink(missing_ok=True)
            raise
    result.update({"file": str(path), "collection": collection, "cursor": header["cursor"]})
    for signal_type, count in sorted(result["skipped_types"].items()):
        click.echo(
            f"hashmesh: skipped {count} {signal_type} signals: the hma format has no such type",
            err=True,
        )
    emit(result, as_json, lambda d: f"wrote {d['written']} signals to {d['file']}")
