"""The HTTP app a matcher process serves: the node's matcher workers (node/worker.py) and,
once moved onto it, the stand-alone replica (node/replica.py).

Only matching and health: POST /v1/match and /v1/match/file (web/matchroutes.py, the
node's own handlers), GET /healthz and /v1/healthz (open, for load balancers: 200 with the
freshness while the matcher may answer, 503 with why when it may not), GET /metrics
(metrics scope). The node's error and auth middlewares wrap them, so a refusal reads as
the node's and the node's tokens work here unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from hashmesh.node.net.bodies import MAX_JSON_BODY, encoding_middleware
from hashmesh.node.web import access, matchroutes
from hashmesh.node.web.api import auth_middleware, errors_middleware

#: (may answer, body): the body is the freshness JSON, with "reason" when it may not.
Health = Callable[[], tuple[bool, dict[str, Any]]]
HEALTH_KEY: web.AppKey[Health] = web.AppKey("health")
METRICS_KEY: web.AppKey[Callable[[], str]] = web.AppKey("metrics")


async def healthz(request: web.Request) -> web.Response:
    ok, body = request.app[HEALTH_KEY]()
    return web.json_response({"ok": ok, **body}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    text = request.app[METRICS_KEY]()
    return web.Response(text=text, content_type="text/plain")


def build_app(
    tokens: access.TokenCache,
    deps: matchroutes.MatchDeps,
    health: Health,
    metrics_text: Callable[[], str],
) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware, encoding_middleware],
        client_max_size=MAX_JSON_BODY,
    )
    app[access.TOKENS_KEY] = tokens
    app[HEALTH_KEY] = health
    app[METRICS_KEY] = metrics_text
    matchroutes.register(app, deps)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
