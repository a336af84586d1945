"""POST /v1/match and /v1/match/file: one copy of the handlers, over a small deps object.

The node (matching in its own process, or forwarding to its matcher workers), the worker
processes (web/matchserver.py) and stand-alone replicas answer these two routes with the
same request parsing, bounds and answer shape; only where the answer comes from differs.
That is the `MatchDeps.answer` coroutine: given the request (for its token's grant), the
caller's queries (still unparsed: the matcher checks them) and a checked threshold, it
returns the answer dict, or raises `Refused` with a ready response (a stale replica's 503
with its freshness, a worker's refusal passed through).
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any, Protocol

import aiohttp
from aiohttp import BodyPartReader, web

from hashmesh.node.errors import NodeError, PayloadTooLarge, ServiceBusy
from hashmesh.node.hashing.hasher import ImageError, ImageTooLarge, hash_bytes
from hashmesh.node.matching.freshness import Freshness
from hashmesh.node.matching.matcher import check_threshold
from hashmesh.node.matching.pdq_index import DEFAULT_THRESHOLD
from hashmesh.node.net.bodies import BodyPace, request_body
from hashmesh.node.web.http import read_json

MAX_UPLOAD = 50 * 1024 * 1024
MAX_FORM_OVERHEAD = 64 * 1024  # multipart boundaries, headers, threshold and dihedral parts
# A worker's answer: at most MAX_MATCHES_PER_REQUEST rows of ~1 KiB, with room to spare.
MAX_FORWARDED_ANSWER = 64 << 20
FORWARD_TIMEOUT_S = 60.0
WATCH_PROBE_S = 0.1


class Refused(Exception):
    """The answer is this response instead (its status, body and headers as they are)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response

    @classmethod
    def not_current(cls, what: str, why: str, fresh: Freshness) -> Refused:
        """A matcher too far behind its source: 503 with Retry-After 1, so a load balancer
        retries elsewhere, and the freshness that refused it."""
        body = {"error": f"this {what} is not current: {why}", **fresh.json()}
        return cls(web.json_response(body, status=503, headers={"Retry-After": "1"}))


class MatchDeps(Protocol):
    async def answer(self, request: web.Request, queries: Any, threshold: int) -> dict[str, Any]:
        """The match answer for `queries` as the request's token may see it."""
        ...


MATCH_KEY: web.AppKey[MatchDeps] = web.AppKey("match", MatchDeps)


def match_fields(body: dict[str, Any]) -> tuple[Any, int]:
    """The queries (unparsed: the matcher checks them) and the checked threshold of a
    /v1/match body; the aiohttp route and the matchers' fast path (web/fastmatch.py) both
    refuse through here, so their 400s are the same."""
    if "queries" not in body:
        raise NodeError("queries: required")
    unknown = set(body) - {"queries", "threshold"}
    if unknown:
        raise NodeError(f"{sorted(unknown)[0]}: unknown field")
    return body["queries"], check_threshold(body.get("threshold", DEFAULT_THRESHOLD))


async def match(request: web.Request) -> web.Response:
    queries, threshold = match_fields(await read_json(request))
    try:
        result = await request.app[MATCH_KEY].answer(request, queries, threshold)
    except Refused as refused:
        return refused.response
    return web.json_response(result)


async def match_file(request: web.Request) -> web.Response:
    """Hash an uploaded image in memory and match its hashes; the image is never stored.

    PDQ is of the stored pixels (EXIF orientation not applied, as HMA and pytx hash). The
    part ``dihedral=true`` also queries the picture's 7 rotations and mirrors: off by
    default (as in HMA), since it costs 8 PDQ lookups and gives 8 chances of a false match.
    Each PDQ result names its variant.
    """
    if not request.content_type.startswith("multipart/"):
        raise NodeError("upload: expected multipart/form-data with a 'file' part")
    deps = request.app[MATCH_KEY]
    if isinstance(deps, Forward):
        forwarded = await deps.forward_file(request)
        if forwarded is not None:
            return forwarded
    reader = await request.multipart()
    data = b""
    threshold = DEFAULT_THRESHOLD
    dihedral = False
    pace = BodyPace("upload")

    async def small_part(part: BodyPartReader, refusal: str) -> str:
        raw = b""
        while chunk := await pace.next(part.read_chunk(64)):
            raw += chunk
            if len(raw) > 16:  # a part is otherwise read whole, whatever its size
                raise NodeError(refusal)
        return raw.decode("ascii", "replace").strip()

    try:
        while (part := await pace.next(reader.next())) is not None:
            if not isinstance(part, BodyPartReader):
                continue
            if part.name == "threshold":
                text = await small_part(part, "threshold: must be an integer")
                if not text.isdigit() or len(text) > 6:
                    raise NodeError("threshold: must be an integer")
                threshold = check_threshold(int(text))
            elif part.name == "dihedral":
                text = await small_part(part, "dihedral: must be true or false")
                if text not in ("true", "false"):
                    raise NodeError("dihedral: must be true or false")
                dihedral = text == "true"
            elif part.name == "file":
                chunks = []
                size = 0
                while chunk := await pace.next(part.read_chunk(1 << 16)):
                    size += len(chunk)
                    if size > MAX_UPLOAD:
                        raise PayloadTooLarge(f"upload: larger than {MAX_UPLOAD // (1 << 20)} MiB")
                    chunks.append(chunk)
                data = b"".join(chunks)
    except ValueError as exc:  # aiohttp: not the multipart body it claims to be
        raise NodeError(f"upload: malformed multipart body ({exc})") from None
    if not data:
        raise NodeError("upload: no 'file' part, or it is empty")
    loop = asyncio.get_running_loop()
    try:
        hashes = await loop.run_in_executor(None, partial(hash_bytes, data, dihedral=dihedral))
    except ImageTooLarge as exc:
        raise PayloadTooLarge(f"upload: {exc}") from None
    except ImageError as exc:
        raise NodeError(f"upload: {exc}") from None
    del data
    variants = hashes.pdq_dihedral or {"original": hashes.pdq or ""}
    queries = [
        {"type": "md5", "value": hashes.md5},
        {"type": "sha256", "value": hashes.sha256},
        *({"type": "pdq", "value": value} for value in variants.values()),
    ]
    try:
        result = await request.app[MATCH_KEY].answer(request, queries, threshold)
    except Refused as refused:
        return refused.response
    for entry, name in zip(result["results"][2:], variants, strict=True):
        entry["variant"] = name
    result["hashes"] = {
        "md5": hashes.md5,
        "sha256": hashes.sha256,
        "pdq": hashes.pdq,
        "quality": hashes.quality,
    }
    if hashes.pdq_dihedral is not None:
        result["hashes"]["pdq_dihedral"] = hashes.pdq_dihedral
    return web.json_response(result)


def register(app: web.Application, deps: MatchDeps) -> None:
    app[MATCH_KEY] = deps
    app.router.add_post("/v1/match", match)
    app.router.add_post("/v1/match/file", match_file)


class Forward:
    """`MatchDeps` that asks the node's matcher workers (at `url`) instead of matching here:
    the caller's Authorization header goes along (the workers check the same tokens), and
    a worker's refusal (its status, body, Retry-After) reaches the caller as it is."""

    def __init__(self, url: str, local: MatchDeps | None = None) -> None:
        self.base = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        # Until a worker answers (they start, import and map their index for a second or
        # more; without a checkpoint only once the node has written one), the node answers
        # itself: exact matches at once, PDQ ones once its own index is in.
        self.local = local
        self.serving = local is None

    async def watch(self) -> None:
        """Poll the match socket until a worker answers anything, then forward for good
        (a worker restarted later leaves the others accepting on the same socket)."""
        probe = aiohttp.ClientTimeout(total=WATCH_PROBE_S)
        while not self.serving:
            try:
                async with self._client().get(self.base + "/healthz", timeout=probe) as r:
                    await r.read()
                self.serving = True
            except (TimeoutError, aiohttp.ClientError):
                await asyncio.sleep(WATCH_PROBE_S)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S),
                connector=aiohttp.TCPConnector(limit=256),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def answer(self, request: web.Request, queries: Any, threshold: int) -> dict[str, Any]:
        if not self.serving and self.local is not None:
            return await self.local.answer(request, queries, threshold)
        body = json.dumps({"queries": queries, "threshold": threshold}).encode()
        raw = await self._post(request, "/v1/match", body, "application/json")
        try:
            result: dict[str, Any] = json.loads(raw)
        except ValueError:
            raise ServiceBusy("matcher workers: an answer that is not JSON") from None
        return result

    async def forward_file(self, request: web.Request) -> web.Response | None:
        """The upload passed to a worker as it came (bounded and paced here), so hashing
        an image never holds the node's GIL either; None while no worker answers yet."""
        if not self.serving:
            return None
        body = await request_body(request, MAX_UPLOAD + MAX_FORM_OVERHEAD, "upload")
        try:
            raw = await self._post(request, "/v1/match/file", body, request.headers["Content-Type"])
        except Refused as refused:
            return refused.response
        return web.Response(body=raw, content_type="application/json")

    async def _post(self, request: web.Request, path: str, body: bytes, content_type: str) -> bytes:
        """A worker's 200 body; its refusal raised as `Refused`, as it answered."""
        headers = {"Content-Type": content_type}
        auth = request.headers.get("Authorization")
        if auth is not None:
            headers["Authorization"] = auth
        try:
            async with self._client().post(
                self.base + path, data=body, headers=headers
            ) as response:
                raw = await response.content.read(MAX_FORWARDED_ANSWER + 1)
                if len(raw) > MAX_FORWARDED_ANSWER:
                    raise ServiceBusy("matcher workers: answer larger than expected")
                if response.status != 200:
                    retry = response.headers.get("Retry-After")
                    out = {"Retry-After": retry} if retry is not None else {}
                    raise Refused(
                        web.Response(
                            body=raw,
                            status=response.status,
                            content_type="application/json",
                            headers=out,
                        )
                    )
                return raw
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ServiceBusy(f"matcher workers not answering ({type(exc).__name__})") from None
