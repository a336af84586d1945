"""`hashmesh membership ...` and `hashmesh log witnesses` (issue 22).

The steward ceremony needs no node: `membership draft` writes a document with no
signature yet, each steward runs `membership sign FILE --key-file ORGKEY` on the same file
(on its own machine; the file travels, the keys never do), and once the threshold has
signed, any operator installs it with `membership add FILE` and it gossips to every node
that may read the collection. A node takes a collection's writers and readers from the
documents only after `membership follow`, which pins the stewards its version 1 must be
signed by.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import click

from hashmesh.node.cli.base import (
    Context,
    cli,
    emit,
    errors,
    json_option,
    pass_ctx,
    read_small_file,
)
from hashmesh.node.errors import NodeError

MAX_DOCUMENT_FILE = 64 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _parse_file(path: str, what: str = "FILE") -> tuple[Any, bytes, list[tuple[str, bytes]]]:
    """A document file: a signed statement, or a draft (`"sigs": []`). Every signature in
    it is verified; returns (body, body bytes, sigs)."""
    from hashmesh.protocol.encoding import from_b64url, parse_canonical
    from hashmesh.protocol.errors import ProtocolError
    from hashmesh.protocol.kinds import REGISTRY
    from hashmesh.protocol.statements import parse_statement_json

    data = read_small_file(path, MAX_DOCUMENT_FILE, what)
    try:
        value = parse_canonical(data, f"{what} {path}")
        if isinstance(value, dict) and value.get("sigs") == [] and set(value) == {"body", "sigs"}:
            raw = value["body"]
            if not isinstance(raw, str):
                raise NodeError(f"{what}: body must be a base64url string")
            body_bytes = from_b64url(raw, f"{what} body")
            kind, body = REGISTRY.parse_body(body_bytes)
            sigs: list[tuple[str, bytes]] = []
        else:
            statement = parse_statement_json(value, REGISTRY)
            kind, body, body_bytes = statement.kind, statement.body, statement.body_bytes
            sigs = list(statement.sigs)
    except ProtocolError as exc:
        raise NodeError(f"{what}: {exc}") from None
    if kind.name != "membership":
        raise NodeError(f"{what}: a {kind.name} statement, not a membership document")
    return body, body_bytes, sigs


def _document_wire(body_bytes: bytes, sigs: list[tuple[str, bytes]]) -> bytes:
    from hashmesh.protocol.encoding import b64url, canonical

    ordered = sorted(sigs)
    return canonical({"body": b64url(body_bytes), "sigs": [[s, b64url(g)] for s, g in ordered]})


def _write_new(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise NodeError(f"--out: {path} already exists; nothing was written") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data + b"\n")


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data + b"\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


@cli.group()
def membership() -> None:
    """Collections whose writers and readers come from a steward-signed document."""


@membership.command("follow")
@click.argument("collection")
@click.option("--steward", "stewards", multiple=True, required=True, help="A steward org id.")
@click.option("--threshold", type=int, required=True, help="Stewards needed to sign.")
@json_option
@pass_ctx
def membership_follow(
    ctx: Context, collection: str, stewards: tuple[str, ...], threshold: int, as_json: bool
) -> None:
    """Follow COLLECTION's membership document: its version 1 must be signed by THRESHOLD
    of these stewards; later versions by the threshold of the version before them."""
    ctx.show(
        lambda b: b.membership_follow(collection, list(stewards), threshold),
        as_json,
        lambda d: (
            f"following the membership of {d['collection']}:"
            f" {d['threshold']} of {len(d['stewards'])} stewards"
        ),
    )


@membership.command("unfollow")
@click.argument("collection")
@json_option
@pass_ctx
def membership_unfollow(ctx: Context, collection: str, as_json: bool) -> None:
    """Stop following COLLECTION's membership (its trust entries and share lists decide)."""
    ctx.show(
        lambda b: b.membership_unfollow(collection),
        as_json,
        lambda d: f"no longer following the membership of {d['collection']}",
    )


@membership.command("draft")
@click.argument("collection")
@click.option("--version", "version", type=click.IntRange(1), required=True)
@click.option("--writer", "writers", multiple=True, help="A node id or org id that may write.")
@click.option("--reader", "readers", multiple=True, help="A node id or org id that may read.")
@click.option("--steward", "stewards", multiple=True, required=True, help="A steward org id.")
@click.option("--threshold", type=int, required=True, help="Stewards needed for the next.")
@click.option("--prev", help="Version N-1: its document FILE or its id (needed after 1).")
@click.option("--out", required=True, help="The draft file to write (not overwritten).")
@json_option
def membership_draft(
    collection: str,
    version: int,
    writers: tuple[str, ...],
    readers: tuple[str, ...],
    stewards: tuple[str, ...],
    threshold: int,
    prev: str | None,
    out: str,
    as_json: bool,
) -> None:
    """Write an unsigned membership document for the stewards to sign."""
    import time
    from hashlib import sha256

    from hashmesh.protocol.errors import ProtocolError
    from hashmesh.protocol.membership import draft
    from hashmesh.protocol.signing import validate_node_id
    from hashmesh.protocol.statements import encode_body

    with errors():
        if version > 1 and not prev:
            raise NodeError("--prev: version 2 and later name version N-1 (its file or id)")
        if version == 1 and prev:
            raise NodeError("--prev: version 1 has no previous version")
        prev_id: str | None = None
        if prev:
            if _HEX64.fullmatch(prev):
                prev_id = prev
            else:
                prev_body, prev_bytes, _ = _parse_file(prev, "--prev")
                if prev_body.version != version - 1 or prev_body.collection != collection:
                    raise NodeError(
                        f"--prev: {prev} is version {prev_body.version} of"
                        f" {prev_body.collection}, not version {version - 1} of {collection}"
                    )
                prev_id = sha256(prev_bytes).hexdigest()
        for option, ids in (("--writer", writers), ("--reader", readers), ("--steward", stewards)):
            for one in ids:
                try:
                    validate_node_id(one, option)
                except ProtocolError as exc:
                    raise NodeError(str(exc)) from None
        try:
            body = draft(
                collection,
                version,
                stewards,
                threshold,
                writers,
                readers,
                prev_id,
                int(time.time()),
            )
        except ProtocolError as exc:
            raise NodeError(str(exc).replace("membership.", "--", 1)) from None
        body_bytes = encode_body(body)
        _write_new(Path(out), _document_wire(body_bytes, []))
    info = {"id": sha256(body_bytes).hexdigest(), "file": out, "version": version}
    emit(info, as_json, lambda d: f"version {d['version']} {d['id']} drafted in {d['file']}")


@membership.command("sign")
@click.argument("file")
@click.option("--key-file", required=True, help="Your steward org key file.")
@json_option
def membership_sign(file: str, key_file: str, as_json: bool) -> None:
    """Add your steward signature to the document FILE (in place)."""
    from hashlib import sha256

    from hashmesh.node.cli.orgkeys import _org_key
    from hashmesh.protocol.statements import context

    with errors():
        body, body_bytes, sigs = _parse_file(file)
        key = _org_key(key_file)
        held = dict(sigs)
        held[key.node_id] = key.sign(context("membership"), body_bytes)
        _replace(Path(file), _document_wire(body_bytes, list(held.items())))
    info = {
        "id": sha256(body_bytes).hexdigest(),
        "file": file,
        "signer": key.node_id,
        "signers": sorted(held),
        "stewards": body.stewards,
        "threshold": body.threshold,
    }
    emit(
        info,
        as_json,
        lambda d: f"signed by {d['signer']}; {len(d['signers'])} signatures on {d['file']}",
    )


@membership.command("add")
@click.argument("file")
@json_option
@pass_ctx
def membership_add(ctx: Context, file: str, as_json: bool) -> None:
    """Install a signed membership document on this node; it gossips to the peers. Refused
    (exit 2, nothing changed) unless valid from this node's anchor."""
    with errors():
        wire = read_small_file(file, MAX_DOCUMENT_FILE)
    ctx.show(
        lambda b: b.membership_add(wire),
        as_json,
        lambda d: (
            f"membership version {d['version']} of {d['collection']} {d['outcome']};"
            f" version {d['in_force']} in force"
        ),
    )


def _show_text(d: dict[str, Any]) -> str:
    lines = []
    for m in d["memberships"]:
        line = f"{m['collection']}: version {m['version']}"
        if m["conflict"]:
            line += f" CONFLICT at version {m['conflict']['version']}"
        line += f", {len(m['writers'])} writers, {len(m['readers'])} readers"
        lines.append(line)
    return "\n".join(lines) or "no collection follows a membership document"


@membership.command("show")
@json_option
@pass_ctx
def membership_show(ctx: Context, as_json: bool) -> None:
    """The membership in force for each followed collection."""
    ctx.show(lambda b: b.membership_show(), as_json, _show_text)


@cli.group("log")
def log_group() -> None:
    """One log (an author's batches in a collection)."""


def _witness_text(d: dict[str, Any]) -> str:
    lines = [f"{d['author']}/{d['collection']} at seq {d['seq']} head {d['head'] or '-'}"]
    for w in d["witnesses"]:
        orgs = f" ({', '.join(w['orgs'])})" if w["orgs"] else ""
        flag = "  EQUIVOCATING (ignored)" if w.get("equivocating") else ""
        lines.append(
            f"  {w['agreement']:9} seq {w['seq']} {w['head'][:16]} {w['witness']}{orgs}{flag}"
        )
    for v in d["split_views"]:
        lines.append(f"  SPLIT VIEW at seq {v['seq']}: proof {v.get('proof', 'pending')}")
        for h in v["heads"]:
            lines.append(f"    {h['head'][:16]} seen by {', '.join(h['witnesses'])}")
        if v.get("suspects"):
            lines.append(f"    suspect witnesses: {', '.join(v['suspects'])}")
    return "\n".join(lines)


@log_group.command("witnesses")
@click.argument("author")
@click.argument("collection")
@json_option
@pass_ctx
def log_witnesses(ctx: Context, author: str, collection: str, as_json: bool) -> None:
    """Which nodes (and the organisations certifying them) saw which head of the log of
    AUTHOR in COLLECTION, against this node's copy; split views if any."""
    ctx.show(lambda b: b.log_witnesses(author, collection), as_json, _witness_text)
