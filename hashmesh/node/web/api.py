"""The node's HTTP API (aiohttp): operator endpoints under /v1/.

Handlers are thin: they check the caller, parse JSON, and call the same `NodeService`
methods the CLI calls offline, on the node's single store thread. Every error is a JSON
object `{"error": "..."}` with the status of its fault (errors.FAULTS): 4xx for the
caller's, 500 for ours; nothing a client sends can crash the node.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from hashmesh.node.batching import BatchingPublisher
from hashmesh.node.errors import (
    INTERNAL,
    INTERNAL_MESSAGE,
    HashmeshError,
    NodeError,
    fault_of,
)
from hashmesh.node.net.bodies import MAX_JSON_BODY, encoding_middleware, error_json, spool_body
from hashmesh.node.service import MAX_STATUS_LOGS, STATUS_LOGS, NodeService
from hashmesh.node.store.executor import StoreThread
from hashmesh.node.web import access
from hashmesh.node.web.http import read_json
from hashmesh.node.web.selfreport import OPEN_PATHS as SELFREPORT_OPEN_PATHS
from hashmesh.protocol.encoding import canonical
from hashmesh.protocol.errors import ProtocolError

log = logging.getLogger("hashmesh.api")

MAX_BUNDLE_BODY = 16 * 1024 * 1024 * 1024
OPEN_PATHS = {"/v1/healthz", "/healthz", "/status", "/status.js"}  # status.js: the page's script
OPEN_PATHS |= SELFREPORT_OPEN_PATHS  # the self-report page: no login, by design

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ApiDeps:
    """What the operator routes use, wired once by the daemon (docs/design-notes.md,
    "Wiring"): each handler reaches exactly these, never the process around it."""

    service: NodeService
    store_thread: StoreThread  # every `service` call runs here
    publisher: BatchingPublisher  # single adds, coalesced into batches
    tokens: access.TokenCache  # bearer tokens the auth middleware accepts
    spool_dir: Path  # uploaded bundles are spooled here (the node's home)
    status: Callable[[], Awaitable[dict[str, Any]]]  # the node's status, peers included
    policy_changed: Callable[[], None]  # a peer or trust change, to apply it at once


API_KEY: web.AppKey[ApiDeps] = web.AppKey("api")


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error answered by its fault (hashmesh/node/errors.py FAULTS): the caller's and
    a peer's name the field and why; ours is a 500 that says only where to look, its
    traceback in the log. A ProtocolError still unconverted here is ours: every parser
    given caller or peer bytes converts at that boundary."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return error_response(413, "request body is too large")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return error_response(exc.status, exc.reason or "error")
        raise
    except Exception as exc:
        fault = fault_of(exc)
        if fault.private or not isinstance(exc, HashmeshError):
            log.log(
                fault.log_level,
                "%s error on %s %s",
                fault.family,
                request.method,
                request.path,
                exc_info=exc,
            )
            return error_response(INTERNAL.status, INTERNAL_MESSAGE)
        log.log(fault.log_level, "refused %s %s: %s", request.method, request.path, exc)
        return error_json(request, exc)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in OPEN_PATHS or request.path.startswith("/v1/peer/"):
        return await handler(request)
    grant = access.bearer_grant(
        request.app[access.TOKENS_KEY], request.path, request.headers.get("Authorization", "")
    )
    if isinstance(grant, tuple):
        return error_response(*grant)
    scope = access.required_scope(request.path)
    request[access.GRANT] = grant
    if scope == "publish":
        await access.check_publish_collections(request, grant)
    return await handler(request)


def _fields(
    body: dict[str, Any], required: tuple[str, ...], optional: tuple[str, ...]
) -> dict[str, Any]:
    for name in required:
        if name not in body:
            raise NodeError(f"{name}: required")
    unknown = set(body) - set(required) - set(optional)
    if unknown:
        raise NodeError(f"{sorted(unknown)[0]}: unknown field")
    return body


ADD_FIELDS = ("category", "classification", "ref", "quality", "allow_low_quality")


async def healthz(request: web.Request) -> web.Response:
    """Alive and answering; `pdq_ready` is false while the PDQ index loads after a start
    (exact matches, feeds and publishing answer meanwhile; PDQ queries get 503)."""
    matcher = request.app[API_KEY].service.matcher
    return web.json_response({"ok": True, "pdq_ready": matcher.ready})


async def status(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    result = await deps.status()
    grant = access.grant_of(request)
    if grant.restricted:  # a token restricted to collections hears nothing of the others
        result["refusals"] = [r for r in result["refusals"] if grant.can_use(r["collection"])]
        result["memberships"] = [
            m for m in result.get("memberships", []) if grant.can_use(m["collection"])
        ]
        witness = result.get("witness")
        if witness:
            views = [v for v in witness["split_views"] if grant.can_use(v["collection"])]
            caught = [
                e
                for e in witness.get("equivocating_witnesses", [])
                if grant.can_use(e["collection"])
            ]
            result["witness"] = {
                "split_views": views,
                "split_views_total": len(views),
                "equivocating_witnesses": caught,
            }
        # hand-overs and a collection's key revocations are facts about that collection
        result["handovers"] = [
            h for h in result.get("handovers", []) if grant.can_use(h["collection"])
        ]
        result["revoked_keys"] = [
            r
            for r in result.get("revoked_keys", [])
            if r["collection"] == "*" or grant.can_use(r["collection"])
        ]
    return web.json_response(result)


async def status_logs(request: web.Request) -> web.Response:
    """One page of the logs (`after` a page's `next`, `limit` 1-1000, default 100), read
    on the store thread one bounded query at a time."""
    deps = request.app[API_KEY]
    after = request.query.get("after", "")
    text = request.query.get("limit", str(STATUS_LOGS))
    if not (text.isascii() and text.isdigit() and len(text) <= 4):
        raise NodeError(f"limit: must be an integer 1-{MAX_STATUS_LOGS}")
    if len(after) > 300:
        raise NodeError("after: expected the cursor a page gave as next")
    page = await deps.store_thread.call(deps.service.logs_page, after, int(text))
    return web.json_response(page)


async def add_signal(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    body = _fields(await read_json(request), ("type", "value", "collection"), ADD_FIELDS)
    return web.json_response(await deps.publisher.add(**body))


async def add_signals(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    body = _fields(await read_json(request), ("collection", "signals"), ())
    if not isinstance(body["signals"], list):
        raise NodeError("signals: expected a list")
    return web.json_response(await deps.publisher.add_many(body["collection"], body["signals"]))


async def revoke(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    body = _fields(await read_json(request), ("op_id",), ("reason",))
    return web.json_response(
        await deps.store_thread.call(deps.service.revoke, body["op_id"], body.get("reason", ""))
    )


async def opinion(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    body = _fields(await read_json(request), ("op_id", "opinion"), ("collection", "reason"))
    return web.json_response(
        await deps.store_thread.call(
            deps.service.opinion,
            body["op_id"],
            body["opinion"],
            body.get("collection"),
            body.get("reason"),
        )
    )


async def export(request: web.Request) -> web.StreamResponse:
    deps = request.app[API_KEY]
    collection = request.query.get("collection", "")
    access.require_collection(access.grant_of(request), collection)
    chunks = deps.service.export_chunks(collection)
    first = await deps.store_thread.call(next, chunks)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    chunk: bytes | None = first
    while chunk is not None:
        await response.write(chunk)
        chunk = await deps.store_thread.call(next, chunks, None)
    await response.write_eof()
    return response


async def import_bundle(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    with tempfile.TemporaryFile(dir=deps.spool_dir) as tmp:
        await spool_body(request, tmp, MAX_BUNDLE_BODY, "bundle")
        result = await deps.store_thread.call(deps.service.import_bundle, tmp, "bundle")
    return web.json_response(result)


def _share_list(body: dict[str, Any]) -> list[str] | None:
    share = body.get("share")
    if share is None:
        return None
    if not isinstance(share, list) or not all(isinstance(c, str) for c in share):
        raise NodeError("share: expected a list of collection names")
    return share


def _text(body: dict[str, Any], name: str) -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise NodeError(f"{name}: expected a string")
    return value


async def _policy(request: web.Request, fn: Callable[..., Any], *args: Any) -> web.Response:
    """Run one policy change on the store thread and apply it at once (no restart)."""
    deps = request.app[API_KEY]
    result = await deps.store_thread.call(fn, *args)
    deps.policy_changed()
    return web.json_response(result)


async def peer_list(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    return web.json_response(await deps.store_thread.call(deps.service.peer_list))


async def peer_show(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    return web.json_response(
        await deps.store_thread.call(deps.service.peer_show, request.match_info["name"])
    )


async def peer_add(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    body = _fields(await read_json(request), ("name", "url", "node_id"), ("share",))
    for name in ("name", "url", "node_id"):
        if not isinstance(body[name], str):
            raise NodeError(f"{name}: expected a string")
    share = _share_list(body) or []
    return await _policy(
        request, deps.service.peer_add, body["name"], body["url"], body["node_id"], share
    )


async def peer_update(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    body = _fields(await read_json(request), (), ("url", "node_id", "share"))
    return await _policy(
        request,
        deps.service.peer_update,
        request.match_info["name"],
        _text(body, "url"),
        _text(body, "node_id"),
        _share_list(body),
    )


async def peer_remove(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    return await _policy(request, deps.service.peer_remove, request.match_info["name"])


async def peer_share(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    body = _fields(await read_json(request), ("collection",), ())
    collection = _text(body, "collection")
    return await _policy(
        request, deps.service.peer_share, request.match_info["name"], collection, True
    )


async def peer_unshare(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    info = request.match_info
    return await _policy(request, deps.service.peer_share, info["name"], info["collection"], False)


async def trust_list(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    node_id = request.query.get("node_id") or None
    return web.json_response(await deps.store_thread.call(deps.service.trust_list, node_id))


async def trust_add(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    body = _fields(
        await read_json(request), ("node_id", "collection"), ("name", "org", "country", "kind")
    )
    for name in ("node_id", "collection", "name", "org", "country", "kind"):
        _text(body, name)
    return await _policy(
        request,
        deps.service.trust_add,
        body["node_id"],
        body["collection"],
        body.get("name") or "",
        body.get("org") or "",
        body.get("country") or "",
        body.get("kind") or "node",
    )


async def statement_add(request: web.Request) -> web.Response:
    """One statement (a certificate, a key revocation) the operator installs; it gossips."""
    deps = request.app[API_KEY]
    body = _fields(await read_json(request), ("statement", "kind"), ())
    _text(body, "kind")
    try:
        wire = canonical(body["statement"])
    except ProtocolError as exc:
        raise NodeError(f"statement: {exc}") from None
    result = await deps.store_thread.call(deps.service.statement_add, wire, body["kind"])
    return web.json_response(result)


async def membership_follow(request: web.Request) -> web.Response:
    """Follow a collection's membership document, pinning its stewards and threshold."""
    deps = request.app[API_KEY]
    body = _fields(await read_json(request), ("collection", "stewards", "threshold"), ())
    _text(body, "collection")
    stewards = body["stewards"]
    if not isinstance(stewards, list) or not all(isinstance(x, str) for x in stewards):
        raise NodeError("stewards: expected a list of org ids")
    if len(stewards) > 64:
        raise NodeError("stewards: at most 64 entries")
    threshold = body["threshold"]
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise NodeError("threshold: expected an integer")
    result = await deps.store_thread.call(
        deps.service.membership_follow, body["collection"], stewards, threshold
    )
    return web.json_response(result)


async def membership_unfollow(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    collection = request.match_info["collection"]
    result = await deps.store_thread.call(deps.service.membership_unfollow, collection)
    return web.json_response(result)


async def membership_add(request: web.Request) -> web.Response:
    """A membership document the stewards signed: installed (and gossiped) only when valid
    from this node's anchor; a refusal says why and changes nothing."""
    deps = request.app[API_KEY]
    body = _fields(await read_json(request), ("statement",), ())
    try:
        wire = canonical(body["statement"])
    except ProtocolError as exc:
        raise NodeError(f"statement: {exc}") from None
    result = await deps.store_thread.call(deps.service.membership_add, wire)
    return web.json_response(result)


async def membership_show(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    return web.json_response(await deps.store_thread.call(deps.service.membership_show))


async def log_witnesses(request: web.Request) -> web.Response:
    """Which witnesses saw which head of one log (AUTHOR, COLLECTION query parameters)."""
    deps = request.app[API_KEY]
    author = request.query.get("author", "")
    collection = request.query.get("collection", "")
    result = await deps.store_thread.call(deps.service.log_witnesses, author, collection)
    return web.json_response(result)


async def key_rotate(request: web.Request) -> web.Response:
    """A new signing key for this node, its logs handed over to it (hashmesh key rotate);
    with "identity": true a new peer identity key instead; with "certificate" (an org
    certificate of the prepared key, a statement object) the prepared key, certified."""
    deps = request.app[API_KEY]
    body = _fields(await read_json(request), (), ("identity", "certificate"))
    identity = body.get("identity", False)
    if not isinstance(identity, bool):
        raise NodeError("identity: expected true or false")
    wire = None
    if "certificate" in body:
        try:
            wire = canonical(body["certificate"])
        except ProtocolError as exc:
            raise NodeError(f"certificate: {exc}") from None
    return web.json_response(
        await deps.store_thread.call(deps.service.key_rotate, identity, False, wire)
    )


async def key_prepare(request: web.Request) -> web.Response:
    """Make the next signing key (signing.key.next) for the org to certify: `key rotate
    --prepare`. Again: the same prepared key."""
    deps = request.app[API_KEY]
    _fields(await read_json(request), (), ())
    return web.json_response(
        await deps.store_thread.call(deps.service.key_rotate, False, True, None)
    )


async def trust_remove(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    info = request.match_info
    return await _policy(request, deps.service.trust_remove, info["node_id"], info["collection"])


async def policy_show(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    collection = request.match_info.get("collection")
    return web.json_response(await deps.store_thread.call(deps.service.policy_show, collection))


async def policy_set(request: web.Request) -> web.Response:
    """Replace one collection's match policy with the body's fields (absent: default)."""
    deps = request.app[API_KEY]
    body = await read_json(request)
    collection = request.match_info["collection"]
    return web.json_response(
        await deps.store_thread.call(deps.service.policy_set, collection, body)
    )


async def quarantine_list(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    lifted = request.query.get("lifted", "")
    if lifted not in ("", "0", "1", "true", "false"):
        raise NodeError("lifted: must be true or false")
    include = lifted in ("1", "true")
    return web.json_response(await deps.store_thread.call(deps.service.quarantine_list, include))


async def quarantine_lift(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    body = _fields(await read_json(request), ("target",), ())
    if not isinstance(body["target"], str):
        raise NodeError("target: expected an op id or a signal value")
    return web.json_response(
        await deps.store_thread.call(deps.service.quarantine_lift, body["target"])
    )


async def disputes(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    text = request.query.get("limit", "1000")
    if not (text.isascii() and text.isdigit() and len(text) <= 5):
        raise NodeError("limit: must be an integer 1-10000")
    return web.json_response(await deps.store_thread.call(deps.service.disputes, int(text)))


async def backup(request: web.Request) -> web.Response:
    deps = request.app[API_KEY]
    body = _fields(await read_json(request), ("file",), ("overwrite",))
    if not isinstance(body["file"], str) or not body["file"].startswith("/"):
        raise NodeError("file: must be an absolute path on the node's machine")
    overwrite = body.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise NodeError("overwrite: must be true or false")
    return web.json_response(
        await deps.store_thread.call(deps.service.backup, body["file"], overwrite=overwrite)
    )


def build_app(deps: ApiDeps) -> web.Application:
    """The operator API; the daemon adds the other route sets (platform, peer, status,
    self-report) to the same application."""
    app = web.Application(
        # encoding_middleware innermost: every route refuses an encoded body before any
        # handler reads a byte of it (hashmesh/node/net/bodies.py).
        middlewares=[errors_middleware, auth_middleware, encoding_middleware],
        client_max_size=MAX_JSON_BODY,
    )
    app[API_KEY] = deps
    app[access.TOKENS_KEY] = deps.tokens
    app.router.add_get("/v1/healthz", healthz)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/status/logs", status_logs)
    app.router.add_post("/v1/signals", add_signal)
    app.router.add_post("/v1/signals/batch", add_signals)
    app.router.add_post("/v1/revoke", revoke)
    app.router.add_post("/v1/opinions", opinion)
    app.router.add_get("/v1/export", export)
    app.router.add_post("/v1/import", import_bundle)
    app.router.add_get("/v1/admin/peers", peer_list)
    app.router.add_post("/v1/admin/peers", peer_add)
    app.router.add_get("/v1/admin/peers/{name}", peer_show)
    app.router.add_patch("/v1/admin/peers/{name}", peer_update)
    app.router.add_delete("/v1/admin/peers/{name}", peer_remove)
    app.router.add_post("/v1/admin/peers/{name}/share", peer_share)
    app.router.add_delete("/v1/admin/peers/{name}/share/{collection}", peer_unshare)
    app.router.add_get("/v1/admin/trust", trust_list)
    app.router.add_post("/v1/admin/trust", trust_add)
    app.router.add_post("/v1/admin/statements", statement_add)
    app.router.add_post("/v1/admin/key/rotate", key_rotate)
    app.router.add_post("/v1/admin/key/prepare", key_prepare)
    app.router.add_get("/v1/admin/membership", membership_show)
    app.router.add_post("/v1/admin/membership", membership_add)
    app.router.add_post("/v1/admin/membership/follow", membership_follow)
    app.router.add_delete("/v1/admin/membership/follow/{collection}", membership_unfollow)
    app.router.add_get("/v1/admin/witnesses", log_witnesses)
    app.router.add_delete("/v1/admin/trust/{node_id}/{collection}", trust_remove)
    app.router.add_get("/v1/admin/policy", policy_show)
    app.router.add_get("/v1/admin/policy/{collection}", policy_show)
    app.router.add_put("/v1/admin/policy/{collection}", policy_set)
    app.router.add_get("/v1/admin/quarantine", quarantine_list)
    app.router.add_get("/v1/admin/disputes", disputes)
    app.router.add_post("/v1/admin/quarantine/lift", quarantine_lift)
    app.router.add_post("/v1/admin/backup", backup)
    return app
