"""`hashmesh org ...` and `hashmesh key ...`: organisation keys and what they sign (issue 22).

An org key certifies its nodes' keys and revokes them. It is meant to live offline, on the
machine of whoever holds the ceremony, never in a node's home (a node's compromise must not
also hand over the key that can revoke it): `org init` refuses a path inside one, and the
`org` commands need no node at all. What they sign is a file (one statement, canonical
JSON) that an operator installs on any node with `key certificate add` or
`key revocation add`; from there it gossips to every peer.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import click

from hashmesh.node.cli.base import (
    Context,
    cli,
    emit,
    errors,
    fail,
    json_option,
    pass_ctx,
    read_small_file,
)
from hashmesh.node.errors import NodeError
from hashmesh.node.keys import create_key, load_key

DAY_S = 86_400
MAX_STATEMENT_FILE = 64 * 1024


def _inside_node_home(path: Path) -> Path | None:
    """The node home `path` would be in (a folder holding config.toml and node.key)."""
    for folder in [path.parent, *path.parent.parents]:
        if (folder / "config.toml").exists() and (folder / "node.key").exists():
            return folder
    return None


def _org_key(path: str) -> Any:
    key_file = Path(path)
    try:
        return load_key(key_file)
    except NodeError as exc:
        raise NodeError(f"--key-file: {str(exc).replace('node key', 'org key')}") from None


def _write_out(out: str | None, wire: bytes, as_json: bool, info: dict[str, Any]) -> None:
    if out:
        path = Path(out)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            fail(f"--out: {path} already exists; nothing was written")
        with os.fdopen(fd, "wb") as fh:
            fh.write(wire + b"\n")
        info["file"] = str(path)
        emit(info, as_json, lambda d: f"{d['kind']} {d['id']} written to {d['file']}")
    elif as_json:
        emit({**info, "statement": wire.decode()}, True, str)
    else:
        click.echo(wire.decode())


@cli.group()
def org() -> None:
    """Organisation keys: certify and revoke your nodes' keys (kept off the nodes)."""


@org.command("init")
@click.option("--key-file", required=True, help="Where to create the org key (0600).")
@click.option("--name", default="", help="The organisation's name (shown with its id).")
@json_option
def org_init(key_file: str, name: str, as_json: bool) -> None:
    """Create an organisation key; print the org id nodes trust (trust add --kind org)."""
    path = Path(key_file).resolve()
    home = _inside_node_home(path)
    if home is not None:
        fail(
            f"--key-file: {path} is inside the node home {home}; an org key must be kept"
            " apart from every node (a node's compromise must not give away the key that"
            " revokes it)"
        )
    with errors():
        if path.exists():
            raise NodeError(f"--key-file: {path} already exists; nothing was changed")
        key = create_key(path)
    emit(
        {"org_id": key.node_id, "key_file": str(path), "name": name},
        as_json,
        lambda d: d["org_id"],
    )


@org.command("certify")
@click.argument("node_id")
@click.option("--key-file", required=True, help="The org key file.")
@click.option("--days", type=click.IntRange(1, 3660), default=365, show_default=True)
@click.option("--name", default="", help="The node's name, in the certificate.")
@click.option("--out", help="Write the certificate to this file (default: print it).")
@click.option(
    "--replaces",
    metavar="OLD_ID",
    help="NODE_ID takes over the peer identity of node key OLD_ID (stolen or lost).",
)
@json_option
def org_certify(
    node_id: str,
    key_file: str,
    days: int,
    name: str,
    out: str | None,
    replaces: str | None,
    as_json: bool,
) -> None:
    """Certify node key NODE_ID for DAYS from now: install it on any node with
    `hashmesh key certificate add FILE`. With --replaces OLD_ID, peers that configured
    OLD_ID accept NODE_ID as that peer (if OLD_ID co-signed this org's certificate of it),
    even after `org revoke-key OLD_ID`: install it with the revocation."""
    from hashmesh.protocol.certificates import CertBody
    from hashmesh.protocol.kinds import REGISTRY
    from hashmesh.protocol.statements import sign_statement

    if replaces is not None and replaces == node_id:
        fail("--replaces: the same key as NODE_ID (a key does not replace itself)")
    with errors():
        key = _org_key(key_file)
        now = int(time.time())
        body = _body(
            CertBody,
            "NODE_ID",
            ts=now,
            org=key.node_id,
            key=node_id,
            not_before=now,
            not_after=now + days * DAY_S,
            name=name or None,
            replaces=replaces,
        )
        statement = sign_statement(body, [key], REGISTRY)
    info = {"id": statement.id, "kind": "cert", "key": node_id, "not_after": now + days * DAY_S}
    if replaces:
        info["replaces"] = replaces
    _write_out(out, statement.to_wire(), as_json, info)


@org.command("revoke-key")
@click.argument("key_id", metavar="KEY")
@click.option("--after", type=click.IntRange(0), required=True, help="Last valid seq.")
@click.option("--collection", default="*", help="Only this collection (default: every one).")
@click.option("--key-file", required=True, help="The org key file.")
@click.option("--reason", required=True, help="Why (shown on every node's status).")
@click.option("--out", help="Write the revocation to this file (default: print it).")
@json_option
def org_revoke_key(
    key_id: str,
    after: int,
    collection: str,
    key_file: str,
    reason: str,
    out: str | None,
    as_json: bool,
) -> None:
    """Revoke node key KEY for every seq above --after: install the revocation on any node
    with `hashmesh key revocation add FILE`; every node refuses that key's later batches
    and stops matching those it holds."""
    from hashmesh.protocol.certificates import KeyRevokeBody
    from hashmesh.protocol.kinds import REGISTRY
    from hashmesh.protocol.statements import sign_statement

    with errors():
        org_key = _org_key(key_file)
        body = _body(
            KeyRevokeBody,
            "KEY",
            ts=int(time.time()),
            org=org_key.node_id,
            key=key_id,
            collection=collection,
            after=after,
            reason=reason,
        )
        statement = sign_statement(body, [org_key], REGISTRY)
    info = {"id": statement.id, "kind": "key-revoke", "key": key_id, "after": after}
    _write_out(out, statement.to_wire(), as_json, info)


def _body(model: Any, argument: str, **fields: Any) -> Any:
    """A statement body from the command's values: a refused value is the caller's, named
    by the option it came from."""
    from pydantic import ValidationError

    from hashmesh.protocol.errors import ProtocolError
    from hashmesh.protocol.signing import validate_node_id

    options = {
        "key": argument,
        "collection": "--collection",
        "reason": "--reason",
        "replaces": "--replaces",
    }
    try:
        validate_node_id(fields["key"], argument)
        if fields.get("replaces") is not None:
            validate_node_id(fields["replaces"], "--replaces")
        body = model(**fields)
    except ProtocolError as exc:
        raise NodeError(str(exc)) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = str(first["loc"][0]) if first["loc"] else ""
        raise NodeError(f"{options.get(where, where)}: {first['msg']}") from None
    return body


@cli.group()
def key() -> None:
    """This node's key: certificates, revocations, rotation."""


def _added_text(d: dict[str, Any]) -> str:
    change = {"new": "installed", "merged": "merged (new signatures)", "same": "already held"}
    return f"{d['kind']} {d['id']} {change.get(d['outcome'], d['outcome'])}" + (
        f"; {d['withdrawn']} signals withdrawn" if d.get("withdrawn") else ""
    )


@key.group("certificate")
def key_certificate() -> None:
    """Certificates of node keys by organisations."""


@key_certificate.command("add")
@click.argument("file")
@json_option
@pass_ctx
def key_certificate_add(ctx: Context, file: str, as_json: bool) -> None:
    """Install a certificate (from `org certify`) on this node; it gossips to the peers."""
    with errors():
        wire = read_small_file(file, MAX_STATEMENT_FILE)
    ctx.show(lambda b: b.statement_add(wire, "cert"), as_json, _added_text)


@key.group("revocation")
def key_revocation() -> None:
    """Revocations of node keys by organisations."""


@key_revocation.command("add")
@click.argument("file")
@json_option
@pass_ctx
def key_revocation_add(ctx: Context, file: str, as_json: bool) -> None:
    """Install a key revocation (from `org revoke-key`) on this node; it gossips to every
    peer at once."""
    with errors():
        wire = read_small_file(file, MAX_STATEMENT_FILE)
    ctx.show(lambda b: b.statement_add(wire, "key-revoke"), as_json, _added_text)


@key.command("rotate")
@click.option(
    "--identity",
    is_flag=True,
    help="Rotate the peer identity (node.key) instead: peers follow by a signed statement.",
)
@click.option(
    "--prepare",
    is_flag=True,
    help="Make the next signing key (signing.key.next) and print its id; no switch.",
)
@click.option(
    "--certificate",
    "certificate_file",
    metavar="FILE",
    help="Switch to the prepared key with FILE, its org certificate, installed at once.",
)
@json_option
@pass_ctx
def key_rotate(
    ctx: Context, identity: bool, prepare: bool, certificate_file: str | None, as_json: bool
) -> None:
    """Sign with a new key from now on: every log of this node is handed over to it (a
    hand-over signed by the old and the new key, gossiped), so peers accept the next
    batches with no change of their config. Certify the new key with your org
    (`org certify`, then `key certificate add`) where peers trust you through it, or
    first `--prepare`, certify the key it prints, and switch with `--certificate FILE`,
    so that no batch is ever signed by an uncertified key.

    `--identity` rotates the key peers authenticate this node by instead (node.key, the
    old one kept as node.key.old-<id>): an identity statement signed by both keys goes to
    every peer, signed by the old key first, and peers accept the new key as this node
    with no change of their config."""
    if sum((identity, prepare, certificate_file is not None)) > 1:
        fail("--identity, --prepare and --certificate: give one of them")
    wire = None
    if certificate_file is not None:
        with errors():
            wire = read_small_file(certificate_file, MAX_STATEMENT_FILE)

    def human(d: dict[str, Any]) -> str:
        if "prepared_key" in d:
            return str(d["prepared_key"])
        if "peer_identity" in d:
            return f"peer identity {d['peer_identity']} (was {d['previous']})"
        lines = [f"signing key {d['signing_key']} (was {d['previous']})"]
        if d.get("certificate"):
            lines.append(f"  certificate {d['certificate']} installed")
        lines += [f"  {h['log']} handed over after seq {h['seq']}" for h in d["handovers"]]
        return "\n".join(lines)

    ctx.show(lambda b: b.key_rotate(identity, prepare, wire), as_json, human)
