"""GET /v1/replica/state: what a matcher replica (`hashmesh matcher --follow`) polls.

A replica answers POST /v1/match with the node's tokens, author names, match policy and
freshness, so it polls this every 250 ms: the head cursor (to report its lag), the grants
of the tokens that may match or read metrics (so a token created or revoked on the node
works, or stops working, on every replica within the poll), the names of authors, and
the node's per-collection match policy (matching/policy.py) for the collections the
follower may read, so a replica judges hits as the node does.

Nothing here may tell a restricted follower about collections it cannot read: the head is
the newest change it is sent, each grant's collections are cut to the follower's (a grant
left with none is not sent), and authors are those trusted in its collections. The admin
token never leaves the node, nor does any token with the admin scope (those match on the
node only), and a grant's scopes are cut to `match` and `metrics`: a replica needs no more.

An ETag over the body, with If-None-Match, answers an unchanged state with 304 and no body.

POST /v1/replica/matches is the other way: a replica reports the hits it answered, as
counts per signal, so the node's quarantine counts them with its own (matching/
quarantine.py). Bounded (1 MiB, MAX_REPORT signals, MAX_REPORTED matches each) and cut
to the follower's collections; a count adds to a live add's window, nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from typing import Any

from aiohttp import web

from hashmesh.node.matching.policy import policy_set
from hashmesh.node.matching.quarantine import parse_report
from hashmesh.node.net.bodies import parse_json_object, request_body
from hashmesh.node.service import NodeService
from hashmesh.node.store.feed import connect_reader
from hashmesh.node.store.policies import policy_rows
from hashmesh.node.store.quarantine import active_ids
from hashmesh.node.store.replica import visible_head
from hashmesh.node.tokens import Grant
from hashmesh.node.web import access
from hashmesh.node.web.platform import SPIKES_KEY

PATH = "/v1/replica/state"
MATCHES_PATH = "/v1/replica/matches"
MAX_REPORT_BODY = 1 << 20
REPLICATED_SCOPES = ("match", "metrics")

SERVICE_KEY: web.AppKey[NodeService] = web.AppKey("replica_service")


def _grants(tokens: access.TokenCache, readable: frozenset[str] | None) -> list[dict[str, Any]]:
    out = []
    for digest, grant in sorted(tokens.grants.items()):
        if grant.allows("admin"):
            continue
        scopes = [s for s in REPLICATED_SCOPES if grant.allows(s)]
        if not scopes:
            continue
        collections = _intersect(grant, readable)
        if collections is not None and not collections:
            continue
        out.append(
            {
                "hash": digest,
                "name": grant.name,
                "scopes": scopes,
                "collections": None if collections is None else sorted(collections),
            }
        )
    return out


def _intersect(grant: Grant, readable: frozenset[str] | None) -> frozenset[str] | None:
    if grant.collections is None:
        return readable
    if readable is None:
        return grant.collections
    return grant.collections & readable


def _labels(service: NodeService, readable: frozenset[str] | None) -> list[list[str]]:
    """[author, collection, org, country] of labelled trust entries (quorum_by)."""
    return [
        [author, collection, org, country]
        for (author, collection), (org, country) in sorted(service.config.trust_labels().items())
        if readable is None or collection in readable
    ]


def _authors(service: NodeService, readable: frozenset[str] | None) -> dict[str, str]:
    config = service.config
    ids = {config.node_id}
    ids.update(t.node_id for t in config.trust if readable is None or t.collection in readable)
    if readable is None:
        ids.update(p.node_id for p in config.peers)
    return {node_id: config.author_name(node_id) for node_id in sorted(ids)}


class _Heads:
    """One read-only connection per thread of the default executor."""

    def __init__(self, service: NodeService) -> None:
        self.path = service.store.path
        self._local = threading.local()

    def head_and_policies(
        self, readable: frozenset[str] | None
    ) -> tuple[int, list[dict[str, Any]], list[str]]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect_reader(self.path)
        policies = policy_set(policy_rows(conn)).visible(
            lambda c: readable is None or c in readable
        )
        held = active_ids(conn, readable)
        return visible_head(conn, readable), [p.json() for p in policies], held


HEADS_KEY: web.AppKey[_Heads] = web.AppKey("replica_heads")


async def state(request: web.Request) -> web.Response:
    grant = access.grant_of(request)
    readable = access.readable(grant, None)
    heads = request.app[HEADS_KEY]
    loop = asyncio.get_running_loop()
    head, policies, held = await loop.run_in_executor(None, heads.head_and_policies, readable)
    body = {
        "cursor": head,
        "grants": _grants(request.app[access.TOKENS_KEY], readable),
        "authors": _authors(request.app[SERVICE_KEY], readable),
        "policies": policies,
        "quarantined": held,
        "labels": _labels(request.app[SERVICE_KEY], readable),
    }
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if request.headers.get("If-None-Match", "").strip() == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, content_type="application/json", headers=headers)


async def matches(request: web.Request) -> web.Response:
    """A replica's report of the matches it answered (counts per signal)."""
    readable = access.readable(access.grant_of(request), None)
    pairs = parse_report(parse_json_object(await request_body(request, MAX_REPORT_BODY)))
    counted = await request.app[SPIKES_KEY].reported(pairs, readable)
    return web.json_response({"counted": counted, "reported": len(pairs)})


def register(app: web.Application, service: NodeService) -> None:
    app[SERVICE_KEY] = service
    app[HEADS_KEY] = _Heads(service)
    app.router.add_get(PATH, state)
    app.router.add_post(MATCHES_PATH, matches)
