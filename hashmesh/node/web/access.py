"""Who may call which operator endpoint, and which collections they may see.

A path needs one scope (`admin` may do everything). A token restricted to collections may
only publish into them and only sees their hashes: matches, feed entries, snapshots and
exports are filtered or refused here before an answer leaves the node. Paths not listed
need `admin`, so a route added later is closed until someone opens it on purpose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hashmesh.node.errors import Forbidden, caller_input
from hashmesh.node.keys import hash_token
from hashmesh.node.net.bodies import MAX_JSON_BODY, request_body
from hashmesh.node.tokens import ADMIN, Grant
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.ops import OpId, validate_collection

SCOPE_BY_PATH = {
    "/v1/signals": "publish",
    "/v1/signals/batch": "publish",
    "/v1/revoke": "publish",
    "/v1/opinions": "publish",
    "/v1/lists/import": "publish",
    "/v1/match": "match",
    "/v1/match/file": "match",
    "/v1/feed": "read",
    "/v1/feed/stream": "read",
    "/v1/snapshot": "read",
    "/v1/export": "read",
    # A Prometheus scraper's token: the metrics and nothing else (it cannot mint tokens,
    # add peers or read hashes, as the admin token it needed before could).
    "/metrics": "metrics",
    # A matcher replica's poll: head cursor, match grants, author names (web/replicas.py).
    "/v1/replica/state": "replicate",
    # ... and its report of the matches it answered, for the node's quarantine.
    "/v1/replica/matches": "replicate",
}
GRANT: web.RequestKey[Grant] = web.RequestKey("hashmesh.grant", Grant)


@dataclass
class TokenCache:
    """Live tokens by hash; replaced whenever a token is created or revoked through the API."""

    admin_hash: str
    grants: dict[str, Grant] = field(default_factory=dict)

    def lookup(self, token: str) -> Grant | None:
        if not token.isascii():  # tokens are ASCII; a header with other bytes is no token
            return None
        digest = hash_token(token)
        if digest == self.admin_hash:
            return ADMIN
        return self.grants.get(digest)


TOKENS_KEY: web.AppKey[TokenCache] = web.AppKey("tokens", TokenCache)


def required_scope(path: str) -> str:
    return SCOPE_BY_PATH.get(path, "admin")


def bearer_grant(tokens: TokenCache, path: str, header: str) -> Grant | tuple[int, str]:
    """The grant an Authorization header carries for `path`, or the (status, message) that
    refuses it: one copy for the node's auth middleware and the matchers' fast path."""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return 401, "missing bearer token (Authorization: Bearer ...)"
    grant = tokens.lookup(token.strip())
    if grant is None:
        return 401, "unknown or revoked token"
    scope = required_scope(path)
    if not grant.allows(scope):
        if grant.admin_disabled:  # its admin scope would have allowed this (metrics too)
            return (
                403,
                "this token is restricted to collections, so its admin scope is ignored"
                " (revoke it; admin tokens cannot be restricted)",
            )
        return 403, f"this token lacks the {scope!r} scope needed here"
    return grant


def grant_of(request: web.Request) -> Grant:
    grant: Grant | None = request.get(GRANT)
    return grant if grant is not None else ADMIN


def require_collection(grant: Grant, collection: str) -> None:
    if not grant.can_use(collection):
        raise Forbidden(f"collection {collection!r}: this token may not use it")


def readable(grant: Grant, only: str | None) -> frozenset[str] | None:
    """The collections an answer may draw from: `only` if given (and allowed), else all
    the grant may read (None: no restriction)."""
    if only:
        with caller_input():  # the caller's query parameter: a bad name is theirs (400)
            validate_collection(only)
        require_collection(grant, only)
        return frozenset({only})
    return grant.collections


def _op_collection(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("op_id")
    return OpId.parse(value).collection


async def check_publish_collections(request: web.Request, grant: Grant) -> None:
    """Refuse (403) a publish into a collection the token may not write.

    The JSON body is read here and cached by aiohttp, so the handler reads it again for
    free. A body this cannot understand is refused for restricted tokens: the handler
    might understand it differently.
    """
    if not grant.restricted or request.path == "/v1/lists/import":
        return
    try:
        body = json.loads(await request_body(request, MAX_JSON_BODY))
        if not isinstance(body, dict):
            raise ValueError("body")
        if request.path in ("/v1/signals", "/v1/signals/batch"):
            collections = [body["collection"]]
        elif request.path == "/v1/revoke":
            collections = [_op_collection(body["op_id"])]
        elif request.path == "/v1/opinions":
            collections = [_op_collection(body["op_id"])]
            if body.get("collection") is not None:
                collections.append(body["collection"])
        else:
            return
    except (ValueError, KeyError, TypeError, ProtocolError, RecursionError):
        raise Forbidden(
            "this token is restricted to some collections, and the request does not say"
            " clearly which collection it writes to"
        ) from None
    for collection in collections:
        if not isinstance(collection, str):
            raise Forbidden("collection: expected a string")
        require_collection(grant, collection)
