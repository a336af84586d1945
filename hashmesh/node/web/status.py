"""The operator's view: a self-contained HTML status page, its data endpoints, /metrics.

The page is served by the node itself (no CDN, no third-party request) and reads its
data with the admin token the operator types in (kept in the tab's session storage).
Its script is a file of its own, so the Content-Security-Policy can forbid inline script:
the page shows peer names and hashes other nodes chose, and one of them slipping into the
markup must not run with the operator's token at hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from aiohttp import web

from hashmesh.node.errors import NodeError
from hashmesh.node.store.core import Store
from hashmesh.node.store.executor import StoreThread
from hashmesh.node.web.access import grant_of
from hashmesh.node.web.metrics import Metrics, NodeCollector

SCRIPT_PATH = "/status.js"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_COMMON_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CSP,
}
PAGE_HEADERS = {"Content-Type": "text/html; charset=utf-8", **_COMMON_HEADERS}
SCRIPT_HEADERS = {"Content-Type": "text/javascript; charset=utf-8", **_COMMON_HEADERS}


@dataclass(frozen=True)
class StatusDeps:
    """What the status page and /metrics read: the counters, the scrape-time gauges, and
    the store (recent changes), reached through its thread."""

    metrics: Metrics
    gauges: NodeCollector
    store: Store
    store_thread: StoreThread


def register(app: web.Application, deps: StatusDeps) -> None:
    static = resources.files("hashmesh.node.web").joinpath("static")
    page = static.joinpath("status.html").read_bytes()
    script = static.joinpath("status.js").read_bytes()

    async def status_page(request: web.Request) -> web.Response:
        return web.Response(body=page, headers=PAGE_HEADERS)

    async def status_script(request: web.Request) -> web.Response:
        return web.Response(body=script, headers=SCRIPT_HEADERS)

    async def history(request: web.Request) -> web.Response:
        return web.json_response({"minutes": deps.metrics.history.to_json()})

    async def recent(request: web.Request) -> web.Response:
        text = request.query.get("limit", "20")
        if not (text.isascii() and text.isdigit() and len(text) <= 3) or not 1 <= int(text) <= 500:
            raise NodeError("limit: must be an integer 1-500")
        changes = await deps.store_thread.call(deps.store.recent_changes, int(text))
        return web.json_response({"changes": changes})

    async def metrics(request: web.Request) -> web.Response:
        await deps.gauges.refresh()
        return web.Response(
            body=deps.metrics.render(grant_of(request).collections),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    app.router.add_get("/status", status_page)
    app.router.add_get(SCRIPT_PATH, status_script)
    app.router.add_get("/v1/status/history", history)
    app.router.add_get("/v1/status/recent", recent)
    app.router.add_get("/metrics", metrics)
