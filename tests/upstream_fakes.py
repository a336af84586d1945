"""Fake NCMEC, StopNCII and ThreatExchange servers on 127.0.0.1 that speak each API in its
real shape.

The shapes are those of ../shared/testdata/formats (from python-threatexchange's test
data) and of what python-threatexchange's unchanged clients send and parse (for
ThreatExchange, which has no recorded answers there: the Graph API's threat_updates
fields pytx asks for and reads, and its paging and error objects): NCMEC's v2
`entries` XML with images/videos, deletedImage/deletedVideo, `paging/next` URLs carrying
their window; StopNCII's FetchHashes JSON with nextPageToken/nextSetTimestamp/
hasMoreRecords. Like the real NCMEC API, a window's entries come in no time order (a
stable shuffle) and a `next` URL pages through the result of its own window (a
server-side snapshot). Faults on demand: every call failing with a status (`down`),
calls answered late (`delay_s`).

Each server runs an aiohttp app on a thread of its own, so a test drives it directly
(put, delete, read what feedback arrived) while a node process calls it over HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from aiohttp import web

_DATE = "%Y-%m-%dT%H:%M:%SZ"


def _ts(text: str) -> int:
    # pytx's client writes local time with a Z (datetime.fromtimestamp); read it the same way
    return int(datetime.strptime(text.split(".")[0].rstrip("Z"), "%Y-%m-%dT%H:%M:%S").timestamp())


def _date(ts: int) -> str:
    return datetime.fromtimestamp(ts).strftime(_DATE)


class _Server:
    """An aiohttp app on its own thread and loop."""

    def __init__(self) -> None:
        self.app = web.Application(middlewares=[self._faults])
        self.down: int | None = None  # every call answers this HTTP status
        self.delay_s = 0.0
        self.calls = 0
        self.failed_calls = 0
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self.url = ""

    @web.middleware
    async def _faults(self, request: web.Request, handler: Any) -> web.StreamResponse:
        with self.lock:
            self.calls += 1
            down, delay = self.down, self.delay_s
        if delay:
            await asyncio.sleep(delay)
        if down is not None:
            with self.lock:
                self.failed_calls += 1
            return web.Response(status=down, text="upstream unavailable")
        response: web.StreamResponse = await handler(request)
        return response

    def start(self) -> str:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)

            async def up() -> None:
                self._runner = web.AppRunner(self.app, access_log=None)
                await self._runner.setup()
                site = web.TCPSite(self._runner, "127.0.0.1", 0)
                await site.start()
                port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                self.url = f"http://127.0.0.1:{port}"
                ready.set()

            self._loop.run_until_complete(up())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self.url

    def stop(self) -> None:
        async def down() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(down(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


# -- NCMEC hash-sharing API v2 ---------------------------------------------------------


@dataclass
class NCMECEntry:
    member: int
    id: str
    ts: int
    kind: str = "image"  # image | video
    deleted: bool = False
    classification: str | None = None
    fingerprints: dict[str, str] = field(default_factory=dict)

    def xml(self) -> str:
        tag = ("deleted" + self.kind.capitalize()) if self.deleted else self.kind
        parts = [
            f'<member id="{self.member}">Member {self.member}</member>',
            f"<timestamp>{_date(self.ts)}</timestamp>",
            f"<id>{escape(self.id)}</id>",
        ]
        if not self.deleted:
            if self.classification:
                parts.append(f"<classification>{escape(self.classification)}</classification>")
            fps = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in self.fingerprints.items())
            parts.append(f"<fingerprints>{fps}</fingerprints>")
        return f"<{tag}>{''.join(parts)}</{tag}>"


class FakeNCMEC(_Server):
    """NCMEC's /v2/status, /v2/entries (windows, paging), /v2/feedback/TYPE/reasons and
    PUT /v2/entries/ESP/ID/TYPE/feedback, with basic authentication."""

    REASONS = {
        "11111111-0000-0000-0000-000000000001": "False Positive",
        "11111111-0000-0000-0000-000000000002": "Not CSAM",
    }

    def __init__(self, user: str = "bridge", password: str = "s3cret", page_size: int = 1000):
        super().__init__()
        self.user, self.password = user, password
        self.page_size = page_size
        self.chunked = False  # answer entries pages without a Content-Length
        self.entries: dict[tuple[int, str], NCMECEntry] = {}
        self.snapshots: dict[tuple[int, int], list[NCMECEntry]] = {}
        self.feedback: list[dict[str, Any]] = []
        self.entry_calls: list[dict[str, str]] = []
        self.app.router.add_get("/v2/status", self._status)
        self.app.router.add_get("/v2/entries", self._entries)
        self.app.router.add_get("/v2/feedback/{type}/reasons", self._reasons)
        self.app.router.add_put("/v2/entries/{esp}/{entry}/{type}/feedback", self._feedback)

    # what a test does to the upstream
    def put(self, entry: NCMECEntry) -> None:
        with self.lock:
            self.entries[(entry.member, entry.id)] = entry

    def delete(self, member: int, entry_id: str, ts: int) -> None:
        with self.lock:
            old = self.entries[(member, entry_id)]
            self.entries[(member, entry_id)] = NCMECEntry(
                member, entry_id, ts, old.kind, deleted=True
            )

    def _authorized(self, request: web.Request) -> bool:
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        return request.headers.get("Authorization", "") == f"Basic {expected}"

    async def _status(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401)
        return _xml('<status><member id="7">Bridge Test</member></status>')

    async def _entries(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401)
        q = request.query
        start, end = _ts(q["from"]), _ts(q["to"])
        offset = int(q.get("start", "1")) - 1
        with self.lock:
            self.entry_calls.append(dict(q))
            key = (start, end)
            if key not in self.snapshots or "start" not in q:
                chosen = [e for e in self.entries.values() if start <= e.ts < end]
                # no time order, as NCMEC's: a stable shuffle by a digest of the id
                chosen.sort(key=lambda e: hashlib.sha256(f"{e.member}-{e.id}".encode()).digest())
                self.snapshots[key] = chosen
            chosen = self.snapshots[key]
            page = chosen[offset : offset + self.page_size]
        images = [e for e in page if e.kind == "image"]
        videos = [e for e in page if e.kind == "video"]
        body = ""
        for tag, group in (("images", images), ("videos", videos)):
            if group:
                top = max(e.ts for e in group)
                body += (
                    f'<{tag} count="{len(group)}" maxTimestamp="{_date(top)}">'
                    + "".join(e.xml() for e in group)
                    + f"</{tag}>"
                )
        nxt = offset + self.page_size
        if nxt < len(chosen):
            params = urllib.parse.urlencode(
                {
                    "from": q["from"],
                    "to": q["to"],
                    "start": nxt + 1,
                    "size": self.page_size,
                    "max": len(chosen),
                }
            )
            body += f"<paging><next>{escape('/v2/entries?' + params)}</next></paging>"
        xml = f'<queryResult xmlns="https://hashsharing.ncmec.org/hashsharing/v2">{body}</queryResult>'
        if not self.chunked:
            return _xml(xml)
        streamed = web.StreamResponse(headers={"Content-Type": "application/xml"})
        streamed.enable_chunked_encoding()
        await streamed.prepare(request)
        await streamed.write(xml.encode())
        await streamed.write_eof()
        return streamed  # type: ignore[return-value]

    async def _reasons(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401)
        kind = request.match_info["type"]
        reasons = "".join(
            f"<reason guid={quoteattr(g)} name={quoteattr(n)} type={quoteattr(kind)}/>"
            for g, n in self.REASONS.items()
        )
        return _xml(
            "<feedbackReasons><availableFeedbackReasons>"
            f"{reasons}</availableFeedbackReasons></feedbackReasons>"
        )

    async def _feedback(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401)
        body = await request.text()
        vote = "affirmative" if "<affirmative" in body else "negative"
        guid = body.split("<guid>")[1].split("</guid>")[0] if "<guid>" in body else None
        with self.lock:
            self.feedback.append(
                {
                    "esp": int(request.match_info["esp"]),
                    "entry": request.match_info["entry"],
                    "type": request.match_info["type"],
                    "vote": vote,
                    "reason": guid,
                }
            )
        return web.Response(status=200)


def _xml(text: str) -> web.Response:
    return web.Response(
        body=('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>' + text).encode(),
        content_type="application/xml",
    )


# -- StopNCII ----------------------------------------------------------------------------


@dataclass
class StopNCIIRecord:
    signal_type: str
    value: str
    ts: int
    status: str = "Received"
    cases: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "lastModtimestamp": self.ts,
            "hashValue": self.value,
            "hashStatus": self.status,
            "caseNumbers": self.cases or {"00000000-0000-0000-0000-000000000000": self.status},
            "signalType": self.signal_type,
            "CSPFeedbacks": [
                {"feedbackValue": "Blocked", "tags": self.tags, "source": "Example CSP"}
            ]
            if self.tags
            else [],
        }


class FakeStopNCII(_Server):
    """StopNCII's FetchHashes (startTimestamp, pageSize, nextPageToken) and
    SubmitFeedback, keyed by function key and subscription key."""

    def __init__(
        self,
        fetch_key: str = "fetch-key",
        subscription_key: str = "sub-key",
        feedback_key: str = "feedback-key",
    ) -> None:
        super().__init__()
        self.keys = {"FetchHashes": fetch_key, "SubmitFeedback": feedback_key}
        self.subscription_key = subscription_key
        self.records: dict[tuple[str, str], StopNCIIRecord] = {}
        self.snapshots: dict[str, list[StopNCIIRecord]] = {}
        self.feedback: list[dict[str, Any]] = []
        self.app.router.add_get("/FetchHashes", self._fetch)
        self.app.router.add_post("/SubmitFeedback", self._submit_feedback)

    def put(self, *records: StopNCIIRecord) -> None:
        """Records changed at once (no fetch sees only some of them)."""
        with self.lock:
            for record in records:
                self.records[(record.signal_type, record.value)] = record

    def _authorized(self, request: web.Request, endpoint: str) -> bool:
        return (
            request.headers.get("x-functions-key") == self.keys[endpoint]
            and request.headers.get("Ocp-Apim-Subscription-Key") == self.subscription_key
        )

    async def _fetch(self, request: web.Request) -> web.Response:
        if not self._authorized(request, "FetchHashes"):
            return web.Response(status=401)
        start = int(request.query["startTimestamp"])
        size = int(request.query.get("pageSize", "800"))
        token = request.query.get("nextPageToken", "")
        with self.lock:
            if token:
                state = json.loads(base64.urlsafe_b64decode(token))
                snap, offset = self.snapshots[state["s"]], state["o"]
            else:
                snap = sorted(
                    (r for r in self.records.values() if r.ts >= start),
                    key=lambda r: (r.ts, r.signal_type, r.value),
                )
                snap = [StopNCIIRecord(**vars(r)) for r in snap]
                sid = str(len(self.snapshots))
                self.snapshots[sid] = snap
                state, offset = {"s": sid}, 0
            page = snap[offset : offset + size]
            more = offset + size < len(snap)
            top = max((r.ts for r in snap), default=start)
        next_token = (
            base64.urlsafe_b64encode(json.dumps({**state, "o": offset + size}).encode()).decode()
            if more
            else None
        )
        return web.json_response(
            {
                "count": len(page),
                "nextSetTimestamp": top,
                "nextPageToken": next_token,
                "hasMoreRecords": more,
                "hashRecords": [r.json() for r in page],
            }
        )

    async def _submit_feedback(self, request: web.Request) -> web.Response:
        if not self._authorized(request, "SubmitFeedback"):
            return web.Response(status=401)
        body = await request.json()
        with self.lock:
            self.feedback.extend(body["hashFeedbacks"])
        return web.json_response({"count": len(body["hashFeedbacks"])})


# -- Meta ThreatExchange Graph API -------------------------------------------------------


@dataclass
class TEDescriptor:
    id: str
    owner: int
    status: str = "MALICIOUS"  # MALICIOUS | NON_MALICIOUS | SUSPICIOUS | UNKNOWN
    tags: list[str] = field(default_factory=list)
    review_status: str = "REVIEWED_MANUALLY"
    owner_visible: bool = True  # ThreatExchange's visibility bug: the owner not given

    def json(self, n: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "review_status": self.review_status,
            # the descriptor's tags edge, in its Graph API shape (a list of tag objects)
            "tags": {"data": [{"id": str(9000 + i), "text": t} for i, t in enumerate(self.tags)]}
            if n % 2 == 0
            else list(self.tags),  # and as a plain list, which pytx also reads
        }
        if self.owner_visible:
            out["owner"] = {"id": str(self.owner)}
        return out


@dataclass
class TEIndicator:
    id: str
    type: str
    indicator: str
    ts: int  # the update time the API orders and pages by (not always last_updated)
    descriptors: list[TEDescriptor] = field(default_factory=list)
    deleted: bool = False

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "indicator": self.indicator,
            "type": self.type,
            # what the record says: not the ordering time (ThreatExchange issue #1269)
            "last_updated": str(self.ts - 3600),
            "should_delete": self.deleted,
        }
        if not self.deleted:
            out["descriptors"] = {"data": [d.json(n) for n, d in enumerate(self.descriptors)]}
        return out


class FakeThreatExchange(_Server):
    """The Graph API's /PRIVACY_GROUP/threat_updates/ (start_time <= t < stop_time,
    `limit`, `paging.next` URLs carrying the access token and an `after` cursor over a
    server-side snapshot of the window, entries in no time order inside it) and
    POST /DESCRIPTOR_ID/?reactions=... , authenticated by `access_token`. Errors answer in
    the Graph API's JSON shape ({"error": {message, type, code}})."""

    def __init__(
        self, token: str = "1234567890|bridgeTestSecret_0123456789", privacy_group: int = 1012185296
    ) -> None:
        super().__init__()
        self.token = token
        self.privacy_group = privacy_group
        self.page_size_cap = 1000
        self.indicators: dict[str, TEIndicator] = {}
        self.snapshots: dict[str, list[TEIndicator]] = {}
        self.reactions: list[dict[str, str]] = []
        self.update_calls: list[dict[str, str]] = []
        self.refuse_cursors = False  # answer any `after` cursor with Graph's 400
        self.app.router.add_get("/{group}/threat_updates/", self._updates)
        self.app.router.add_post("/{descriptor}/", self._react)

    @property
    def app_id(self) -> int:
        return int(self.token.split("|")[0])

    def put(self, *indicators: TEIndicator) -> None:
        with self.lock:
            for indicator in indicators:
                self.indicators[indicator.id] = indicator

    def delete(self, indicator_id: str, ts: int) -> None:
        with self.lock:
            old = self.indicators[indicator_id]
            self.indicators[indicator_id] = TEIndicator(
                old.id, old.type, old.indicator, ts, deleted=True
            )

    @staticmethod
    def _error(status: int, code: int, message: str, kind: str = "GraphMethodException") -> Any:
        body = {"error": {"message": message, "type": kind, "code": code, "fbtrace_id": "Fake"}}
        return web.json_response(body, status=status)

    async def _updates(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("access_token") != self.token:
            return self._error(400, 190, "Invalid OAuth access token.", "OAuthException")
        if request.match_info["group"] != str(self.privacy_group):
            return self._error(400, 100, "Unsupported get request: no such privacy group")
        start = int(q.get("start_time") or 0)
        stop = int(q.get("stop_time") or 2**31)
        limit = min(int(q.get("limit") or 25), self.page_size_cap)
        after = q.get("after", "")
        with self.lock:
            self.update_calls.append({k: v for k, v in q.items() if k != "access_token"})
            if after:
                if self.refuse_cursors:
                    return self._error(400, 100, "Invalid cursor")
                state = json.loads(base64.urlsafe_b64decode(after))
                snap, offset = self.snapshots[state["s"]], state["o"]
            else:
                chosen = [i for i in self.indicators.values() if start <= i.ts < stop]
                # no time order inside a window (ThreatExchange issue #1269): a stable shuffle
                chosen.sort(key=lambda i: hashlib.sha256(i.id.encode()).digest())
                snap = [TEIndicator(**vars(i)) for i in chosen]
                sid = str(len(self.snapshots))
                self.snapshots[sid] = snap
                state, offset = {"s": sid}, 0
            page = snap[offset : offset + limit]
            more = offset + limit < len(snap)
        body: dict[str, Any] = {"data": [i.json() for i in page]}
        cursor_after = base64.urlsafe_b64encode(
            json.dumps({**state, "o": offset + limit}).encode()
        ).decode()
        body["paging"] = {"cursors": {"before": "QVFIUm", "after": cursor_after}}
        if more:
            params = {k: v for k, v in q.items() if k != "after"}
            params["after"] = cursor_after
            body["paging"]["next"] = (
                f"{self.url}/{self.privacy_group}/threat_updates/?" + urllib.parse.urlencode(params)
            )
        return web.json_response(body)

    async def _react(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("access_token") != self.token:
            return self._error(400, 190, "Invalid OAuth access token.", "OAuthException")
        descriptor = request.match_info["descriptor"]
        with self.lock:
            known = any(d.id == descriptor for i in self.indicators.values() for d in i.descriptors)
            if not known:
                return self._error(400, 100, f"Unsupported post request: {descriptor}")
            for reaction in q.get("reactions", "").split(","):
                self.reactions.append({"descriptor": descriptor, "reaction": reaction})
        return web.json_response({"success": True})
