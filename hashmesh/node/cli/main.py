"""The `hashmesh` command: a thin layer over `NodeService` (directly or through the API).

Contract (scripts rely on it): data goes to stdout, `--json` on every command that prints
data, a refusal is one sentence on stderr with exit code 2 and changes nothing; `match`
exits 0 when something matched and 1 when nothing did. A bug of ours is "internal error"
with exit code 70 (hashmesh/node/errors.py FAULTS; HASHMESH_TRACEBACK=1 shows where).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from hashmesh.node.cli import (
    bridge,  # noqa: F401  (registers bridge)
    disputes,  # noqa: F401  (registers disputes)
    matcher,  # noqa: F401  (registers matcher)
    matchpolicy,  # noqa: F401  (registers policy)
    membership,  # noqa: F401  (registers membership, log)
    orgkeys,  # noqa: F401  (registers org, key)
    platform,  # noqa: F401  (registers token, import-list, export-list)
    quarantine,  # noqa: F401  (registers quarantine)
)
from hashmesh.node.cli.base import (
    EXIT_NOTHING,
    Context,
    cli,
    emit,
    errors,
    fail,
    json_option,
    pass_ctx,
)
from hashmesh.node.config import Home
from hashmesh.node.errors import NodeError, caller_input


@cli.command()
@click.argument("home", type=click.Path(file_okay=False))
@click.option("--name", required=True, help="This node's (organisation's) name.")
@click.option("--listen", help="HOST:PORT to listen on (default 127.0.0.1:7400).")
@click.option("--url", help="The URL peers use to reach this node.")
@json_option
def init(home: str, name: str, listen: str | None, url: str | None, as_json: bool) -> None:
    """Create a node home (key, config, database); print the node id."""
    with errors():
        from hashmesh.node.service import init_home

        config = init_home(home, name, listen, url)
    emit(
        {"node_id": config.node_id, "name": config.name, "home": str(Home(home).path)},
        as_json,
        lambda d: d["node_id"],
    )


@cli.command("id")
@json_option
@pass_ctx
def id_(ctx: Context, as_json: bool) -> None:
    """Print the node id."""
    with errors():
        config = ctx.home.load_config()
    emit({"node_id": config.node_id, "name": config.name}, as_json, lambda d: d["node_id"])


@cli.command()
@click.option("--log-json", is_flag=True, help="Log JSON lines (for log shippers).")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    default="INFO",
    show_default=True,
)
@pass_ctx
def run(ctx: Context, log_json: bool, log_level: str) -> None:
    """Run the node in the foreground; SIGTERM or SIGINT stop it cleanly."""
    from hashmesh.node.daemon import run as run_daemon

    with errors():
        run_daemon(ctx.home, json_logs=log_json, level=log_level)


@cli.group()
def peer() -> None:
    """Peers this node syncs with, and the collections each may read from us."""


def _peer_text(d: dict[str, Any]) -> str:
    if d.get("change") == "removed":
        return (
            f"peer {d['name']} removed: it reads nothing from this node any more (it was"
            f" {d['url']}, node id {d['node_id']}, reading {', '.join(d['share']) or 'nothing'})"
        )
    change = f" ({d['change']})" if d.get("change") else ""
    return (
        f"peer {d['name']}{change}\n  url      {d['url']}\n  node id  {d['node_id']}"
        f"\n  reads    {', '.join(d['share']) or '(nothing)'}"
    )


@peer.command("list")
@json_option
@pass_ctx
def peer_list(ctx: Context, as_json: bool) -> None:
    """Every peer with its URL, node id and the collections it may read."""
    ctx.show(
        lambda b: b.peer_list(),
        as_json,
        lambda d: "\n".join(_peer_text(p) for p in d["peers"]) or "no peers",
    )


@peer.command("show")
@click.argument("name")
@json_option
@pass_ctx
def peer_show(ctx: Context, name: str, as_json: bool) -> None:
    """One peer: its URL, node id and the collections it may read."""
    ctx.show(lambda b: b.peer_show(name), as_json, _peer_text)


@peer.command("add")
@click.argument("name")
@click.argument("url")
@click.argument("node_id")
@click.option("--share", multiple=True, help="A collection this peer may read (repeatable).")
@json_option
@pass_ctx
def peer_add(
    ctx: Context, name: str, url: str, node_id: str, share: tuple[str, ...], as_json: bool
) -> None:
    """Add a new peer and the collections it may read from us.

    A peer of the same name or node id is an error (exit 2) and stays as it is: change it
    with `peer update`, `peer share` or `peer unshare`.
    """
    ctx.show(lambda b: b.peer_add(name, url, node_id, list(share)), as_json, _peer_text)


@peer.command("update")
@click.argument("name")
@click.option("--url", help="The peer's new URL.")
@click.option("--node-id", help="The peer's new node id (its key changed).")
@click.option(
    "--share",
    multiple=True,
    help="Replace the whole share list with these collections (repeatable).",
)
@click.option("--share-nothing", is_flag=True, help="Let the peer read no collection.")
@json_option
@pass_ctx
def peer_update(
    ctx: Context,
    name: str,
    url: str | None,
    node_id: str | None,
    share: tuple[str, ...],
    share_nothing: bool,
    as_json: bool,
) -> None:
    """Change a peer's URL, node id or whole share list; what is not given stays."""
    if share and share_nothing:
        fail("give --share or --share-nothing, not both")
    shares = [] if share_nothing else (list(share) if share else None)
    if url is None and node_id is None and shares is None:
        fail("nothing to update: give --url, --node-id, --share or --share-nothing")
    ctx.show(lambda b: b.peer_update(name, url, node_id, shares), as_json, _peer_text)


@peer.command("remove")
@click.argument("name")
@json_option
@pass_ctx
def peer_remove(ctx: Context, name: str, as_json: bool) -> None:
    """Stop syncing with a peer; it may read nothing from us any more."""
    ctx.show(lambda b: b.peer_remove(name), as_json, _peer_text)


@peer.command("share")
@click.argument("name")
@click.argument("collection")
@json_option
@pass_ctx
def peer_share(ctx: Context, name: str, collection: str, as_json: bool) -> None:
    """Let a peer read one more collection (its other collections stay)."""
    ctx.show(lambda b: b.peer_share(name, collection, True), as_json, _peer_text)


@peer.command("unshare")
@click.argument("name")
@click.argument("collection")
@json_option
@pass_ctx
def peer_unshare(ctx: Context, name: str, collection: str, as_json: bool) -> None:
    """Stop a peer reading one collection (its other collections stay)."""
    ctx.show(lambda b: b.peer_share(name, collection, False), as_json, _peer_text)


@cli.group()
def trust() -> None:
    """Authors whose batches this node accepts, per collection."""


def _trust_text(d: dict[str, Any]) -> str:
    verb = "now trusted" if d["change"] == "trusted" else "no longer trusted"
    if d.get("kind") == "org":
        verb += " (an organisation: every node key it certified)"
    name = f" ({d['name']})" if d.get("name") else ""
    name += "".join(f" {k} {d[k]}" for k in ("org", "country") if d.get(k))
    return (
        f"author {d['node_id']}{name} {verb} in {d['collection']}; trusted in:"
        f" {', '.join(d['collections']) or '(nothing)'}"
    )


@trust.command("list")
@click.argument("node_id", required=False)
@json_option
@pass_ctx
def trust_list(ctx: Context, node_id: str | None, as_json: bool) -> None:
    """Trusted (author, collection) pairs; of one author if NODE_ID is given."""

    def human(d: dict[str, Any]) -> str:
        return "\n".join(
            f"{t['node_id']}  {t['collection']}{'  ' + t['name'] if t['name'] else ''}"
            + "".join(f"  {k} {t[k]}" for k in ("org", "country") if t.get(k))
            + ("  (organisation key)" if t.get("kind") == "org" else "")
            for t in d["trust"]
        ) or ("no trusted authors" if node_id is None else f"{node_id} is trusted in nothing")

    ctx.show(lambda b: b.trust_list(node_id), as_json, human)


@trust.command("add")
@click.argument("node_id")
@click.argument("collection")
@click.option("--name", default="", help="A name to show for this author.")
@click.option("--org", default="", help="Its organisation, for policy set --quorum-by org.")
@click.option("--country", default="", help="Its country (ISO 3166-1, e.g. BE), for --quorum-by.")
@click.option(
    "--kind",
    type=click.Choice(["node", "org"]),
    default="node",
    show_default=True,
    help="org: NODE_ID is an organisation key; accept every node key it certified.",
)
@json_option
@pass_ctx
def trust_add(
    ctx: Context,
    node_id: str,
    collection: str,
    name: str,
    org: str,
    country: str,
    kind: str,
    as_json: bool,
) -> None:
    """Accept batches authored by NODE_ID in COLLECTION (from any relay); with --kind org,
    batches of any node key the organisation NODE_ID certified, while certified."""
    ctx.show(
        lambda b: b.trust_add(node_id, collection, name, org, country, kind), as_json, _trust_text
    )


@trust.command("remove")
@click.argument("node_id")
@click.argument("collection")
@json_option
@pass_ctx
def trust_remove(ctx: Context, node_id: str, collection: str, as_json: bool) -> None:
    """Accept no further batches by NODE_ID in COLLECTION (what is held stays)."""
    ctx.show(lambda b: b.trust_remove(node_id, collection), as_json, _trust_text)


@cli.command()
@click.argument("signal_type", metavar="TYPE")
@click.argument("value")
@click.option("--collection", "-c", required=True)
@click.option("--category", help="csam, ncii, terror ... (default: unspecified)")
@click.option("--classification", help="e.g. NCMEC's A1, A2, B1, B2")
@click.option("--ref", help="An opaque case or report reference (no personal data).")
@click.option("--quality", type=int, help="PDQ quality 0-100, when known.")
@click.option("--allow-low-quality", is_flag=True, help="Publish a PDQ hash of quality < 50.")
@json_option
@pass_ctx
def add(
    ctx: Context,
    signal_type: str,
    value: str,
    collection: str,
    category: str | None,
    classification: str | None,
    ref: str | None,
    quality: int | None,
    allow_low_quality: bool,
    as_json: bool,
) -> None:
    """Publish one signal; print its op id."""
    params: dict[str, Any] = {
        "type": signal_type,
        "value": value,
        "collection": collection,
        "category": category,
        "classification": classification,
        "ref": ref,
        "quality": quality,
    }
    if allow_low_quality:
        params["allow_low_quality"] = True
    ctx.show(lambda b: b.add(**params), as_json, lambda d: d["op_id"])


def _file_hashes(
    path: str, *, dihedral: bool = False, refuse_bombs: bool = False
) -> dict[str, Any]:
    """Hashes of one picture (PDQ) or video (vPDQ) computed here; any other file is refused.

    With `refuse_bombs`, a picture or video over the decoding budget is an error rather
    than a file without PDQ: `hash` and `match --file` are asked about a picture, and exit
    0 with no PDQ read as "hashed" or "no match" to a script (issue 14).
    """
    from hashmesh.node.hashing.hasher import ImageTooLarge
    from hashmesh.node.hashing.media import MediaError, hash_media
    from hashmesh.node.hashing.video import VideoTooLarge

    out: dict[str, Any] = {"file": path}
    try:
        media = hash_media(Path(path), dihedral=dihedral, refuse_large=refuse_bombs)
    except (ImageTooLarge, VideoTooLarge) as exc:
        fail(f"{exc}; not hashed")
    except MediaError as exc:
        fail(str(exc))
    if media.note:
        out["note"] = media.note
        click.echo(f"hashmesh: {path}: {media.note}; exact hashes only", err=True)
    hashes = media.hashes
    out.update({"md5": hashes.md5, "sha1": hashes.sha1, "sha256": hashes.sha256})
    if media.video is not None:
        out["vpdq"] = media.video.frames_json()
        out["vpdq_value"] = media.video.value
    if hashes.pdq is not None:
        out["pdq"] = hashes.pdq
        out["quality"] = hashes.quality
    if hashes.pdq_dihedral is not None:
        out["pdq_dihedral"] = hashes.pdq_dihedral
    return out


def _hash_files(
    paths: tuple[str, ...], *, dihedral: bool = False, refuse_bombs: bool = False
) -> list[dict[str, Any]]:
    with errors():
        return [_file_hashes(p, dihedral=dihedral, refuse_bombs=refuse_bombs) for p in paths]


dihedral_option = click.option(
    "--dihedral",
    is_flag=True,
    help="Also the PDQ of the picture's 7 rotations and mirrors (8 lookups; see docs/protocol.md).",
)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--collection", "-c", required=True)
@click.option("--category", help="csam, ncii, terror ... (default: unspecified)")
@click.option("--classification")
@json_option
@pass_ctx
def submit(
    ctx: Context,
    files: tuple[str, ...],
    collection: str,
    category: str | None,
    classification: str | None,
    as_json: bool,
) -> None:
    """Hash pictures and videos locally and publish the hashes (never the files).

    A file that is neither is refused, and then nothing is published; a text file is most
    often a hash list given to the wrong command, whose own md5 would be published as if
    it were a picture. A video's vpdq is published when a frame has the minimum quality.
    """
    texts = [f for f in files if _is_text(f) and not _is_picture(f)]
    if texts:
        fail(
            f"{texts[0]}: a text file, not a picture or video"
            f"{f' ({len(texts)} text files)' if len(texts) > 1 else ''}; {_FOR_LISTS}"
        )
    hashed = _hash_files(files)
    signals: list[dict[str, Any]] = []
    sources: list[str] = []
    skipped: list[str] = []
    with ctx.backend() as backend:
        minimum = backend.status().get("min_pdq_quality", 50)
        for item in hashed:
            labels = {"category": category, "classification": classification}
            labels = {k: v for k, v in labels.items() if v}
            signals.append({"type": "md5", "value": item["md5"], **labels})
            signals.append({"type": "sha256", "value": item["sha256"], **labels})
            sources += [item["file"]] * 2
            if "vpdq" in item:
                if any(f["quality"] >= minimum for f in item["vpdq"]):
                    signals.append({"type": "vpdq", "value": item["vpdq_value"], **labels})
                    sources.append(item["file"])
                else:
                    skipped.append(item["file"])
            if "pdq" in item:
                if item["quality"] >= minimum:
                    signals.append(
                        {"type": "pdq", "value": item["pdq"], "quality": item["quality"], **labels}
                    )
                    sources.append(item["file"])
                else:
                    skipped.append(item["file"])
        result = backend.add_many(collection, signals)
    for signal, source in zip(result["signals"], sources, strict=True):
        signal["file"] = source
    result["files"] = hashed
    result["pdq_skipped_low_quality"] = skipped
    for path in skipped:
        click.echo(
            f"hashmesh: {path}: PDQ quality below {minimum}, only exact hashes published", err=True
        )

    def human(d: dict[str, Any]) -> str:
        return "\n".join(
            f"{s['op_id']}  {s['type']} {_shown(s['type'], s['value'])}  {s['file']}"
            f"{'' if s['new'] else '  (already published)'}"
            for s in d["signals"]
        )

    emit(result, as_json, human)


_FOR_LISTS = (
    "nothing submitted. submit publishes the hashes of pictures and videos; to publish the"
    " hashes listed in a file use `hashmesh import-list FORMAT FILE -c COLLECTION`"
    " (docs/import-formats.md)"
)


def _is_picture(path: str) -> bool:
    """Whether Pillow recognises the file (a plain-text PPM is text and a picture)."""
    from PIL import Image

    try:
        with Image.open(path):
            return True
    except Exception:
        return False


def _shown(signal_type: str, value: str) -> str:
    """A vpdq value is hundreds of characters a video minute: shown as its frame count."""
    if signal_type == "vpdq":
        return f"({value.count(' ') + 1} frames)"
    return value


def _is_text(path: str) -> bool:
    """Whether a file that is not a picture reads as text: UTF-8 without NUL in its first
    8 KiB, as git and `file` tell text from binary. Videos and other media never pass."""
    import codecs

    with open(path, "rb") as fh:
        head = fh.read(8192)
    if not head or b"\0" in head:
        return False
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        return False
    return True


@cli.command()
@click.argument("op_id")
@click.option("--reason", default="", help="Why (kept with the revocation).")
@json_option
@pass_ctx
def revoke(ctx: Context, op_id: str, reason: str, as_json: bool) -> None:
    """Revoke one of this node's own adds."""
    with ctx.backend() as backend:
        result = backend.revoke(op_id, reason)
    emit(result, as_json, _revoked_text)


@cli.command()
@click.argument("op_id")
@click.argument("opinion", type=click.Choice(["confirm", "dispute", "seen", "retract"]))
@click.option(
    "--reason",
    help="Why, signed with it (false-positive, degenerate, or up to 256 characters of text).",
)
@json_option
@pass_ctx
def opinion(ctx: Context, op_id: str, opinion: str, reason: str | None, as_json: bool) -> None:
    """Record this node's view of an add (any author's)."""
    with ctx.backend() as backend:
        result = backend.opinion(op_id, opinion, reason)
    emit(result, as_json, _opinion_text)


def _about(d: dict[str, Any]) -> str:
    if "type" not in d:
        return ""
    return f"{d['type']} {d['value']} in {d['collection']}"


def _revoked_text(d: dict[str, Any]) -> str:
    return f"revoked {_about(d) or d['revoked']} (add {d['revoked']})\nop id: {d['op_id']}"


_OPINION_VERBS = {
    "confirm": "confirmed",
    "dispute": "disputed",
    "seen": "marked as seen",
    "retract": "retracted this node's opinion on",
}


def _opinion_text(d: dict[str, Any]) -> str:
    verb = _OPINION_VERBS.get(d["opinion"], d["opinion"])
    return f"{verb} {_about(d) or d['target']} (add {d['target']})\nop id: {d['op_id']}"


def _format_matches(data: dict[str, Any]) -> str:
    """One short block per hit, each line within ~100 columns (a hash is 64 characters)."""
    lines = []
    for result in data["results"]:
        q = result["query"]
        if not result["matches"]:
            lines.append(f"{q['type']} {_shown(q['type'], q['value'])}: no match")
        for m in result["matches"]:
            o = m["opinions"]
            turned = result.get("variant", "original")
            label = f", {m['classification']}" if "classification" in m else ""
            verdict = m.get("verdict", "match")
            head = "MATCH" if verdict == "match" else f"NOT A MATCH ({verdict.replace('_', ' ')})"
            video = m.get("video")
            lines += [
                f"{head} {m['type']} {_shown(m['type'], m['value'])}",
                f"  query     {q['type']} {_shown(q['type'], q['value'])}"
                f"{'' if turned == 'original' else ' (as ' + turned + ')'}",
                _video_line(video) if video else f"  distance  {m['distance']}",
                f"  author    {m['author_name'] or m['author']}",
                f"  in        {m['collection']} ({m['category']}{label})",
                f"  opinions  confirm={o['confirm']} dispute={o['dispute']} seen={o['seen']}",
                f"  op id     {m['op_id']}",
            ]
            lines += [f"  policy    {reason}" for reason in m.get("reasons", ())]
    return "\n".join(lines)


def _video_line(video: dict[str, Any]) -> str:
    done, total = video.get("query_frames", [0, 0])
    share = video.get("query_percent", 0)
    return f"  frames    {share}% of the query's frames matched ({done} of {total})" + "".join(
        f"\n  at        {start:.3f}-{end:.3f} s" for start, end in video.get("ranges", [])[:5]
    )


@cli.command()
@click.argument("args", nargs=-1)
@click.option(
    "--file",
    "file_",
    type=click.Path(exists=True, dir_okay=False),
    help="Hash this file locally and match its hashes.",
)
@click.option("--threshold", type=int, default=31, show_default=True, help="PDQ Hamming distance.")
@dihedral_option
@json_option
@pass_ctx
def match(
    ctx: Context,
    args: tuple[str, ...],
    file_: str | None,
    threshold: int,
    dihedral: bool,
    as_json: bool,
) -> None:
    """Match TYPE VALUE, or --file FILE. Exit 0: a match policy lets through, 1: none, 2: error.

    A hit that this node's match policy holds back (`hashmesh policy`: suppressed by a
    negative collection, below quorum, review required, ...) is shown with its reasons and
    exits 1; --json gives each hit's verdict and reasons.

    With --file, each PDQ result says which variant of the picture it is ("original"
    unless --dihedral found a rotation or mirror).
    """
    if file_ and args:
        fail("give either TYPE VALUE or --file FILE, not both")
    if dihedral and not file_:
        fail("--dihedral: only with --file FILE (the variants are computed from the picture)")
    variants: list[str | None] = []
    if file_:
        item = _hash_files((file_,), dihedral=dihedral, refuse_bombs=True)[0]
        queries = [{"type": t, "value": item[t]} for t in ("md5", "sha256") if t in item]
        variants = [None] * len(queries)
        turned = item.get("pdq_dihedral") or ({"original": item["pdq"]} if "pdq" in item else {})
        for name, value in turned.items():
            queries.append({"type": "pdq", "value": value})
            variants.append(name)
        if "vpdq_value" in item:
            queries.append({"type": "vpdq", "value": item["vpdq_value"]})
            variants.append(None)
    elif len(args) == 2:
        queries = [{"type": args[0], "value": args[1]}]
    else:
        fail("expected TYPE VALUE (e.g. `match pdq <64 hex>`) or --file FILE")
    with ctx.backend() as backend, _cli_words(_match_fields(file_, len(queries))):
        result = backend.match(queries, threshold)
    for entry, name in zip(result["results"], variants, strict=False):
        if name is not None:
            entry["variant"] = name
    emit(result, as_json, _format_matches)
    sys.exit(0 if result["matched"] else 1)


def _match_fields(file_: str | None, count: int) -> dict[str, str]:
    """The API's field names for a `match` request, in the words the user typed."""
    words = {"threshold": "--threshold"}
    for i in range(count):
        words[f"queries[{i}]"] = f"file {file_}" if file_ else ""
    return words


@contextmanager
def _cli_words(words: dict[str, str]) -> Iterator[None]:
    """Rewrite the leading API field name of an error ("queries[0]: ...") into the CLI's."""
    try:
        yield
    except NodeError as exc:
        text = str(exc)
        field, sep, rest = text.partition(": ")
        if sep and field in words:
            text = f"{words[field]}: {rest}" if words[field] else rest
        raise NodeError(text) from None


def _proof_text(v: dict[str, Any]) -> str:
    """Where proving a split view stands (node/witness.py, Proof)."""
    state = v.get("proof", "pending")
    if state == "fork":
        return "fork evidence: the author signed both heads; the log is frozen"
    if state == "unproven":
        suspects = ", ".join(v.get("suspects", []))
        return f"UNPROVEN: no signed header backs the cosign; suspect witness {suspects}"
    if state == "unfollowed":
        return "not proven: a log this node does not accept"
    return "pending: asking the witnesses for the author's signed header"


def _format_status(d: dict[str, Any]) -> str:
    lines = [
        f"node      {d['name']}  {d['node_id']}",
        f"running   {'yes, API ' + d.get('api', '') if d.get('running') else 'no'}",
        f"listen    {d['listen']}   url {d['url']}",
        f"signals   {d['live_signals']} live  "
        + "  ".join(f"{c}={n}" for c, n in d["live_by_collection"].items()),
        f"batches   {d['batches']} stored, {d['pending_batches']} waiting for predecessors",
        f"feed      cursor {d['feed_cursor']}",
        f"forks     {len(d['forks'])}",
    ]
    for f in d["forks"]:
        lines.append(f"  FORK    {f['author']} in {f['collection']} at seq {f['seq']}")
    for v in d.get("witness", {}).get("split_views", []):
        heads = "; ".join(f"{h['head'][:12]} by {len(h['witnesses'])}" for h in v["heads"])
        lines.append(f"  SPLIT VIEW {v['author']} in {v['collection']} at seq {v['seq']}: {heads}")
        lines.append(f"    proof   {_proof_text(v)}")
    for e in d.get("witness", {}).get("equivocating_witnesses", []):
        lines.append(
            f"  EQUIVOCATING WITNESS {e['witness']}: two heads for {e['author']} in"
            f" {e['collection']} at seq {e['seq']} (its cosigns are ignored)"
        )
    for m in d.get("memberships", []):
        conflict = f", CONFLICT at version {m['conflict']['version']}" if m["conflict"] else ""
        lines.append(
            f"membership {m['collection']}: version {m['version']}, {len(m['writers'])}"
            f" writers, {len(m['readers'])} readers{conflict}"
        )
    revoked = d.get("revoked_keys", [])
    if revoked or d.get("certificates") or d.get("handovers"):
        lines.append(
            f"keys      {len(d.get('certificates', []))} certificates,"
            f" {len(revoked)} revocations, {len(d.get('handovers', []))} hand-overs"
        )
    for r in revoked:
        state = "REVOKED" if r["effective"] else "revoked (not in force)"
        lines.append(
            f"  {state} {r['key']} in {r['collection']} after seq {r['after']}: {r['reason']}"
        )
    for h in d.get("handovers", []):
        lines.append(
            f"  handover {h['author'][:20]} in {h['collection']}: {h['key'][:20]} -> "
            f"{h['next'][:20]} after seq {h['seq']}"
        )
    lines.append(f"logs      {d.get('logs_total', len(d['logs']))}")
    for log in d["logs"]:
        lines.append(
            f"  {log['collection']:<16} {log['author_name'] or log['author'][:20]:<20}"
            f" head {log['head']:<6} live {log['live']}{'  FORKED' if log['forked'] else ''}"
        )
    if d.get("logs_next"):
        more = d["logs_total"] - len(d["logs"])
        lines.append(f"  ... and {more} more (GET /v1/status/logs?after={d['logs_next']})")
    lines.append(f"peers     {len(d['peers'])}")
    for p in d["peers"]:
        lines.append(f"  {p['name']:<16} {p['url']}  reads: {', '.join(p['share']) or '-'}")
        if p.get("identity_refused"):  # its key revoked: neither called nor answered
            lines.append(f"    IDENTITY REFUSED: {p['identity_refused']}")
        elif p.get("current_id") not in (None, p["node_id"]):
            lines.append(f"    answers as {p['current_id']} (its identity rotated or replaced)")
        lines += [f"    {line}" for line in _peer_health(p, d.get("running", False))]
    if d.get("bridges"):  # only a running node knows how its bridges are doing
        lines.append(f"bridges   {len(d['bridges'])}")
    for b in d.get("bridges", []):
        c = b["counts"]
        state = "ok" if b["healthy"] else f"FAILING ({b['failures']} in a row)"
        lines.append(
            f"  {b['name']:<16} {b['kind']} -> {b['collection']}  {state}, last success"
            f" {_ago(b['last_success_ms'])}; {c['added']} added, {c['revoked']} revoked,"
            f" {b['live']} live"
        )
        if not b["healthy"] and b["last_error"]:
            lines.append(f"    last error: {b['last_error']}")
    by_author: dict[str, list[str]] = {}
    names: dict[str, str] = {}
    for t in d["trust"]:
        by_author.setdefault(t["node_id"], []).append(t["collection"])
        names[t["node_id"]] = names.get(t["node_id"]) or t["name"]
    shown = len(d["trust"]) < d.get("trust_total", 0)
    listed = f" in the first {len(d['trust'])} of {d['trust_total']} entries" if shown else ""
    lines.append(f"trust     {len(by_author)} authors{listed}")
    for author, collections in by_author.items():
        name = f" ({names[author]})" if names[author] else ""
        lines.append(f"  {author}{name}  in {', '.join(sorted(collections))}")
    if shown:
        lines.append("  ... (all of them: hashmesh trust list)")
    held = d.get("quarantine", [])
    if held:
        lines.append(f"quarantine {len(held)} signals held back on a match spike")
    for q in held:
        lines.append(f"  {q['collection']:<16} {q['type']} {q['value'][:16]}...  {q['reason']}")
    disputed = d.get("disputed", [])
    if disputed:
        lines.append(f"disputed  {len(disputed)} of this node's adds (hashmesh disputes)")
    refusals = d.get("refusals", [])
    if refusals:
        lines.append(f"refused   {len(refusals)} (batches this node would not store)")
    for r in refusals:
        via = r["sender_name"] or r["sender"]
        lines.append(
            f"  author {r['author']} offered {_batches(r['batches'])} in {r['collection']}"
            f" via peer {via}; not trusted here: {r['fix']}"
        )
    return "\n".join(lines)


def _batches(n: int) -> str:
    return f"{n} batch" if n == 1 else f"{n} batches"


def _ago(ms: int | None) -> str:
    import time

    if not ms:
        return "never"
    seconds = max(0, int(time.time() - ms / 1000))
    if seconds < 120:
        return f"{seconds} s ago"
    return f"{seconds // 60} min ago" if seconds < 7200 else f"{seconds // 3600} h ago"


def _peer_health(p: dict[str, Any], running: bool) -> list[str]:
    """A peer's health as `status` prints it: only a running node knows it."""
    if not running:
        return ["health   unknown (the node is not running)"]
    if p.get("cut_off"):
        state = f"CUT OFF for invalid data (score {p['score']})"
    elif p.get("reachable"):
        state = "reachable"
    elif p.get("failures"):
        state = f"UNREACHABLE, {p['failures']} failures in a row"
    else:
        state = "not synced yet"
    lines = [
        f"health   {state}; last sync {_ago(p.get('last_sync_ms'))};"
        f" batches received {p.get('batches_received', 0)}, sent {p.get('batches_sent', 0)}"
    ]
    if p.get("last_error"):
        lines.append(f"error    {p['last_error']}")
    lag = p.get("lag", [])
    summary = p.get("lag_summary", {})
    behind = [entry for entry in lag if entry["behind"]]
    unknown = summary.get("logs_unknown", 0)
    if summary.get("logs") and not summary.get("logs_behind") and not unknown:
        lines.append(f"lag      none: holds all {summary['logs']} shared logs")
    for entry in behind:
        lines.append(
            f"lag      {entry['behind']} batches behind in {entry['collection']} by"
            f" {entry['author']} (ours {entry['ours']}, theirs {entry['theirs']})"
        )
    if summary.get("logs_behind", 0) > len(behind):
        lines.append(
            f"lag      {summary['logs_behind'] - len(behind)} more logs behind,"
            f" {summary['behind']} batches in all (hashmesh status --json)"
        )
    if unknown:
        lines.append(f"lag      unknown for {unknown} shared logs (it has not told us yet)")
    refused = p.get("refused") or {}
    if refused:
        lines.append(
            "refused  " + ", ".join(f"{reason} {n}" for reason, n in sorted(refused.items()))
        )
    return lines


@cli.command()
@json_option
@pass_ctx
def status(ctx: Context, as_json: bool) -> None:
    """Show this node: logs and heads, live signals, peers, forks."""
    ctx.show(lambda b: b.status(), as_json, _format_status)


@cli.command()
@click.option("--collection", "-c", required=True)
@click.argument("out", type=click.Path(dir_okay=False))
@json_option
@pass_ctx
def export(ctx: Context, collection: str, out: str, as_json: bool) -> None:
    """Write a signed bundle of every log of COLLECTION held here.

    A collection of which nothing is held writes no file and exits 1: an empty bundle
    would read as a successful backup or hand-over of data that does not exist here.
    """
    from hashmesh.protocol.ops import validate_collection

    with ctx.backend() as backend:
        with caller_input():  # the --collection argument: a bad name is the caller's
            validate_collection(collection)
        held = set(backend.status()["collections_held"])
        if collection not in held:
            click.echo(
                f"hashmesh: collection {collection!r}: this node holds no batches in it;"
                f" nothing exported, {out} not written (collections held here:"
                f" {', '.join(sorted(held)) or 'none'})",
                err=True,
            )
            sys.exit(EXIT_NOTHING)
        result = backend.export(collection, out)
    emit(result, as_json, lambda d: d["file"])


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@json_option
def verify(bundle: str, as_json: bool) -> None:
    """Check every signature, chain link and Merkle root of a bundle, offline."""
    with errors():
        from hashmesh.node.service import verify_bundle_file

        result = verify_bundle_file(bundle)

    def human(d: dict[str, Any]) -> str:
        lines = [
            f"valid bundle: {d['batches']} batches, {d['adds']} adds, {d['revokes']} revokes,"
            f" {d['opinions']} opinions in {len(d['logs'])} logs"
        ]
        for log in d["logs"]:
            lines.append(
                f"  {log['collection']:<16} {log['author']}"
                f"  seq 1-{log['head']}  adds {log['adds']}"
            )
        for doc in d.get("membership", []):
            met = "met" if doc["threshold_met"] else "NOT met"
            lines.append(
                f"  membership {doc['collection']} version {doc['version']}:"
                f" {len(doc['signed_by'])} of {len(doc['stewards'])} stewards signed,"
                f" threshold {doc['threshold']} {met} (previous: {doc['previous']})"
            )
        return "\n".join(lines)

    emit(result, as_json, human)


@cli.command("import")
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False))
@json_option
@pass_ctx
def import_(ctx: Context, bundle: str, as_json: bool) -> None:
    """Ingest a bundle as if it came from a peer (same trust rules)."""
    from hashmesh.node.progress import ProgressReader

    with (
        ctx.backend() as backend,
        open(bundle, "rb") as fh,
        ProgressReader(fh, "importing") as reader,
    ):
        result = backend.import_bundle(reader)  # type: ignore[arg-type]
    refused = result.get("refused_untrusted", 0)
    if refused:
        click.echo(
            f"hashmesh: {bundle}: refused {refused} batches of authors not trusted here for"
            " their collection (the same rule as for batches from a peer):",
            err=True,
        )
        for log in result["untrusted_logs"]:
            author, _, collection = log.rpartition("/")
            click.echo(
                f"hashmesh:   {log}: to accept its batches, hashmesh trust add {author}"
                f" {collection}, then import the bundle again",
                err=True,
            )

    def human(d: dict[str, Any]) -> str:
        text = (
            f"imported {d['applied']} batches ({d['duplicate']} already held"
            f"{f', {refused} refused as untrusted' if refused else ''})"
        )
        m = d.get("membership")
        if m:
            use = "applied first" if m["used"] else f"not used: {m.get('reason', '')}"
            text += f"\n{m['carried']} membership documents carried, {use}"
        return text

    emit(result, as_json, human)
    held = sum(result.get(k, 0) for k in ("applied", "duplicate", "deferred", "fork"))
    if not held:
        reason = "it holds no batches" if not result.get("batches") else "no batch was accepted"
        click.echo(f"hashmesh: {bundle}: nothing imported: {reason}", err=True)
        sys.exit(EXIT_NOTHING)


@cli.command("hash")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@dihedral_option
@json_option
def hash_(files: tuple[str, ...], dihedral: bool, as_json: bool) -> None:
    """md5, sha256 and pdq (+quality) of each picture, vpdq of each video, computed locally.

    PDQ is of the stored pixels (EXIF orientation is not applied), as Meta's hashers and
    HMA compute it; vpdq is Meta's, a frame a second. A picture or video over the decoding
    budget, or a file that is neither, is refused (exit 2).
    """
    results = _hash_files(files, dihedral=dihedral, refuse_bombs=True)

    def human(rows: list[dict[str, Any]]) -> str:
        lines = []
        for r in rows:
            lines.append(f"{r['file']}")
            lines.append(f"  md5     {r['md5']}")
            lines.append(f"  sha256  {r['sha256']}")
            if "pdq" in r:
                lines.append(f"  pdq     {r['pdq']}  quality {r['quality']}")
            for name, value in r.get("pdq_dihedral", {}).items():
                if name != "original":
                    lines.append(f"  pdq     {value}  {name}")
            if "vpdq" in r:
                frames = r["vpdq"]
                good = sum(f["quality"] >= 50 for f in frames)
                lines.append(f"  vpdq    {len(frames)} frames, {good} of quality >= 50")
                lines += [f"    {text}" for text in r["vpdq_value"].split(" ")]
        return "\n".join(lines)

    emit(results, as_json, human)


@cli.command()
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--force", "--overwrite", "force", is_flag=True, help="Replace OUT if it exists.")
@json_option
@pass_ctx
def backup(ctx: Context, out: str, force: bool, as_json: bool) -> None:
    """Copy the database consistently (online: the node keeps running); the copy is 0600."""
    ctx.show(
        lambda b: b.backup(out, force=force),
        as_json,
        lambda d: f"{d['file']} ({d['bytes']} bytes, integrity ok)",
    )


@cli.command()
@click.argument("backup_file", metavar="BACKUP", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--other-node",
    is_flag=True,
    help="Accept a backup of another node's database (seeding this node from it).",
)
@json_option
@pass_ctx
def restore(ctx: Context, backup_file: str, other_node: bool, as_json: bool) -> None:
    """Replace the database with a backup of this node's own (stop the node first)."""
    from hashmesh.node.config import HomeLock
    from hashmesh.node.service import restore_home

    home = ctx.home
    with errors():
        home.require()
        lock = HomeLock(home)
        if not lock.try_acquire():
            fail(f"{home.path} is in use by a running node; stop it before restoring")
        try:
            result = restore_home(home, backup_file, other_node=other_node)
        finally:
            lock.release()
    emit(
        result,
        as_json,
        lambda d: f"restored {d['restored']}; previous database kept as {d['previous']}",
    )


@cli.command()
@click.option("--dir", "folder", type=click.Path(file_okay=False), help="Where to put the homes.")
@click.option("--keep-running", is_flag=True, help="Leave the nodes running until Ctrl-C.")
def demo(folder: str | None, keep_running: bool) -> None:
    """A local network of four nodes telling the story end to end."""
    from hashmesh.node.cli.demo import run_demo

    sys.exit(run_demo(folder, keep_running))


def main() -> None:
    from hashmesh.node.runtime import tune_gc

    tune_gc()
    with errors():  # what no command caught is a bug: exit 70, not a traceback and exit 1
        cli(prog_name="hashmesh")
