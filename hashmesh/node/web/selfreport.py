"""Self-report ("Take It Down") page: a person hashes their own pictures in the browser.

A hotline that enables it ([selfreport] enabled = true) serves a page at /takeitdown/ on
which a young person (or any victim of intimate-image abuse) picks photos and videos. The
page computes MD5 and PDQ (of a picture, or vPDQ: of each second of a video, at most
MAX_VIDEO_FRAMES) in JavaScript on the device; only those hashes reach this node,
which publishes them into the configured collection, labelled `self-reported`, so every
platform node that trusts the hotline receives them within seconds and reviews before
removing. The person gets a case number and a secret to check the status or withdraw
(withdrawal publishes revocations that travel the same way).

Why it is built the way it is:

- No login and no personal data: the database keeps the case number, a scrypt hash of the
  secret (case numbers are short enough to guess, so the secret's hash must be slow to
  brute-force), the op ids, the UTC day and the withdrawal day. No IP address or user agent
  is stored or logged: rate limits key on an HMAC of the address under a per-process
  random key that is never written anywhere, and they live in memory only.
- Abuse resistance without a third party (no CAPTCHA service, which would leak the
  visitor to it): a signed proof-of-work challenge solved with SHA-256 in the page, per
  client and global rate limits, size limits, at most MAX_PDQS_PER_CASE PDQs and
  MAX_VIDEOS_PER_CASE vPDQs per case, and refusal of low-quality PDQ hashes and of
  degenerate hashes (hashing/degenerate.py: blank pictures, the empty file; a video's
  frames one by one), judged from the hash itself since the quality is the browser's claim.
- The routes always exist and answer 404 while the feature is off, so turning it on in
  config.toml takes effect without a restart, like every other config change.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hashmesh.node.errors import Forbidden, NodeError, NotFound, TooManyRequests
from hashmesh.node.hashing.degenerate import degenerate_reason
from hashmesh.node.limits import Clock, RateLimiter
from hashmesh.node.net.bodies import parse_json_object, request_body
from hashmesh.protocol.batches import LogKey
from hashmesh.protocol.errors import ProtocolError, SignalError
from hashmesh.protocol.ops import OpId, pack_revokes
from hashmesh.protocol.signals import VPDQSignal

if TYPE_CHECKING:
    from hashmesh.node.service import NodeService
    from hashmesh.node.store.executor import StoreThread

PREFIX = "/takeitdown"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "pdq.js": "text/javascript; charset=utf-8",
    "video.js": "text/javascript; charset=utf-8",
    "md5.js": "text/javascript; charset=utf-8",
    "i18n.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
API = ("info", "challenge", "submit", "status", "withdraw")
ADMIN_PATH = "/v1/admin/selfreport"
#: Paths served without a bearer token (hashmesh/node/web/api.py adds them to its OPEN_PATHS).
OPEN_PATHS = frozenset(
    {PREFIX, PREFIX + "/", PREFIX + "/logo"}
    | {f"{PREFIX}/{name}" for name in ASSETS}
    | {f"{PREFIX}/api/{name}" for name in API}
)

CLASSIFICATION = "self-reported"
CATEGORIES = ("ncii", "csam")
WITHDRAW_REASON = "withdrawn by the person who reported it"
MAX_BODY = 64 * 1024
#: Logo fetches a visitor may make in an hour, per submission allowed: one a page view,
#: so a person reloading the page keeps their logo, and a client looping on it gets 429.
LOGO_PER_SUBMIT = 12
#: Similarity hashes are what can match innocent pictures, and an automated poisoner gets
#: the most out of each solved proof of work by packing many of them into one case.
MAX_PDQS_PER_CASE = 10
#: A video's vPDQ is up to MAX_VIDEO_FRAMES such hashes (the page's cap: one frame a second
#: of the first 10 minutes), so a case holds few of them.
MAX_VIDEOS_PER_CASE = 3
MAX_VIDEO_FRAMES = 600
#: The longest vpdq value the page sends for MAX_VIDEO_FRAMES frames (a frame is at most
#: "2147483647,100,<64 hex>,999999.999 ": 93 characters).
MAX_VPDQ_CHARS = MAX_VIDEO_FRAMES * 93
#: A submission's body: MAX_BODY for its pictures' hashes, plus its videos' frames.
MAX_SUBMIT_BODY = MAX_BODY + MAX_VIDEOS_PER_CASE * (MAX_VPDQ_CHARS + 64)
CHALLENGE_TTL_S = 600
#: No single address block (IPv4 /24, IPv6 /48) may take more than 1/BLOCK_SHARE of a
#: node-wide budget, so one attacker cannot leave victims facing 429 for an hour,
BLOCK_SHARE = 10
#: nor a wide block (IPv4 /16, IPv6 /32: one provider's range) more than 1/WIDE_SHARE.
WIDE_SHARE = 4
#: 1/RESERVE_SHARE of each node-wide budget is kept for blocks that have nothing charged in
#: the window (a victim's fresh address): once the rest is spent, each such block may draw
#: one event from the reserve, and each wide block at most 1/RESERVE_WIDE_SHARE of it, so
#: spending it takes many providers' ranges, not ten /24s.
RESERVE_SHARE = 2
RESERVE_WIDE_SHARE = 50
#: Node-wide status and withdrawal budgets, per submission the node accepts in an hour:
#: each answer costs a scrypt hash, and withdrawal has its own budget so that a flood of
#: status checks cannot keep a person from withdrawing.
STATUS_PER_SUBMIT = 4
WITHDRAW_PER_SUBMIT = 2
#: Extra proof-of-work bits as the submit budget is spent: +1 at half of its general part,
#: +2 at three quarters, +3 once it is spent (each bit doubles the work of a submission).
POW_EXTRA_BITS = 3
MAX_POW_BITS = 28
#: scrypt runs at most this many at once, whatever the number of callers.
SCRYPT_CONCURRENCY = 2
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}
# Crockford base32 without I, L, O, U: readable aloud and hard to mistype.
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CASE_CHARS = 8  # 40 bits: unique, not secret
SECRET_CHARS = 20  # 100 bits: the only thing that proves ownership of a case

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        # The chosen video, decoded from a blob: URL of the local file (video.js).
        "media-src blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def today() -> str:
    """The UTC day only: enough for statistics, too coarse to correlate with other logs."""
    return datetime.now(UTC).strftime("%Y-%m-%d")


def day_ms() -> int:
    """Midnight UTC of today in milliseconds: the only time a self-report's batches carry."""
    return int(time.time()) // 86400 * 86400 * 1000


def normalise_code(text: Any, length: int, what: str) -> str:
    """Accept what a person types: any case, spaces or dashes, O for 0 and I/L for 1."""
    if not isinstance(text, str) or len(text) > 80:
        raise Forbidden("case number or secret is wrong")
    clean = text.upper().translate(str.maketrans("OIL", "011", " -_.\t"))
    if len(clean) != length or any(c not in ALPHABET for c in clean):
        raise Forbidden("case number or secret is wrong")
    return clean


def group(code: str) -> str:
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def random_code(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def hash_secret(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode("ascii"), salt=salt, **SCRYPT)


# -- rate limits and proof of work -------------------------------------------------------


def _parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_block(address: str) -> str:
    """The unit a per-client limit counts: an IPv6 host gets a whole /64 from its provider
    and can rotate through it at will, so the /64 is the client; IPv4 addresses are scarce
    and shared behind NAT, so the full address is."""
    ip = _parse_address(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _block(address: str, v4: int, v6: int) -> str:
    ip = _parse_address(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, v6), strict=False))
    return str(ipaddress.IPv4Network((ip, v4), strict=False))


def share_block(address: str) -> str:
    """The unit that may take at most 1/BLOCK_SHARE of a node-wide budget: one attacker
    controls an IPv4 /24 or an IPv6 /48 (one site's allocation) far more easily than a
    spread of them."""
    return _block(address, 24, 48)


def wide_block(address: str) -> str:
    """The unit that may take at most 1/WIDE_SHARE of a node-wide budget and a small part
    of its reserve: an IPv4 /16 or IPv6 /32, about one provider's range."""
    return _block(address, 16, 32)


ALL = b"*"
#: Every self-report limit counts events in the last hour.
WINDOW_S = 3600.0
Charges = list[tuple[RateLimiter[bytes], bytes]]


def wait_s(limiter: RateLimiter[bytes], key: bytes) -> int:
    """Whole seconds to wait, rounded up and at least one, for a refusal's message."""
    return max(1, int(limiter.retry_after(key)) + 1)


class Budget:
    """A node-wide budget of `total` events a window that a spread of address blocks cannot
    spend alone.

    Each event is charged to its block (IPv4 /24, IPv6 /48: 1/BLOCK_SHARE of the total),
    its wide block (IPv4 /16, IPv6 /32: 1/WIDE_SHARE) and the general pool (the total less
    the reserve). Once the general pool is spent, a block with no event in the window (a
    person on an address not seen this hour) may still draw once from the reserve, each
    wide block at most 1/RESERVE_WIDE_SHARE of it.
    """

    def __init__(
        self, total: int, window_s: float = WINDOW_S, clock: Clock = time.monotonic
    ) -> None:
        self.total = total
        reserve = total // RESERVE_SHARE

        def limiter(limit: int) -> RateLimiter[bytes]:
            return RateLimiter(limit, window_s, clock=clock)

        self.general = limiter(total - reserve)
        self.reserve = limiter(reserve)
        self.block = limiter(max(1, total // BLOCK_SHARE))
        self.wide = limiter(max(1, total // WIDE_SHARE))
        self.wide_reserve = limiter(max(1, reserve // RESERVE_WIDE_SHARE))

    def plan(self, block: bytes, wide: bytes) -> Charges:
        """The limiters one more event would be charged to; TooManyRequests when it does not fit."""
        for limiter, key in ((self.block, block), (self.wide, wide)):
            if not limiter.allows(key):
                raise TooManyRequests.waiting(
                    "too many requests from your network", wait_s(limiter, key)
                )
        charges = [(self.block, block), (self.wide, wide)]
        if self.general.allows(ALL):
            return [*charges, (self.general, ALL)]
        if (
            self.block.count(block) == 0
            and self.reserve.allows(ALL)
            and self.wide_reserve.allows(wide)
        ):
            return [*charges, (self.reserve, ALL), (self.wide_reserve, wide)]
        raise TooManyRequests.waiting(
            "too many requests reach this hotline right now", wait_s(self.general, ALL)
        )

    def load(self) -> float:
        """How much of the general pool is spent, 0 to 1."""
        limit = self.general.limit
        return 1.0 if limit == 0 else min(1.0, self.general.count(ALL) / limit)


def extra_pow_bits(load: float) -> int:
    """+1 bit from half the general pool spent, +2 from three quarters, +3 once spent."""
    if load >= 1.0:
        return POW_EXTRA_BITS
    if load >= 0.75:
        return 2
    return 1 if load >= 0.5 else 0


class ProofOfWork:
    """Stateless signed challenges; solved ones are remembered until they expire.

    A challenge is `expires.bits.nonce.mac` with an HMAC under a random per-process key, so
    the server keeps nothing per visitor until a solution arrives. A solution is a counter
    such that SHA-256(challenge ":" counter) starts with `bits` zero bits: about 2**bits
    hashes for the client, one for the server.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._used: dict[str, float] = {}

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()[:18]
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, bits: int, now: float | None = None) -> str:
        expires = int((time.time() if now is None else now) + CHALLENGE_TTL_S)
        body = f"{expires}.{bits}.{secrets.token_urlsafe(12)}"
        return f"{body}.{self._mac(body)}"

    def verify(
        self, challenge: Any, solution: Any, min_bits: int, now: float | None = None
    ) -> None:
        now = time.time() if now is None else now
        if not isinstance(challenge, str) or not isinstance(solution, str):
            raise NodeError("proof of work: challenge and solution are required")
        if len(challenge) > 200 or not solution.isdigit() or len(solution) > 16:
            raise NodeError("proof of work: malformed")
        body, _, mac = challenge.rpartition(".")
        parts = body.split(".")
        if len(parts) != 3 or not hmac.compare_digest(mac, self._mac(body)):
            raise NodeError("proof of work: this challenge was not issued by this node")
        expires, bits = int(parts[0]), int(parts[1])
        if expires < now:
            raise NodeError("proof of work: the challenge expired; please try again")
        if bits < min_bits:
            raise NodeError("proof of work: the challenge is easier than required now")
        digest = hashlib.sha256(f"{challenge}:{solution}".encode()).digest()
        if not leading_zero_bits_ok(digest, bits):
            raise NodeError("proof of work: the solution is wrong")
        for old in [c for c, t in self._used.items() if t < now]:
            del self._used[old]
        if challenge in self._used:
            raise NodeError("proof of work: this challenge was already used")
        self._used[challenge] = float(expires)


def leading_zero_bits_ok(digest: bytes, bits: int) -> bool:
    return bits == 0 or int.from_bytes(digest, "big") >> (256 - bits) == 0


# -- cases in the node's database ---------------------------------------------------------


@dataclass
class Submission:
    category: str
    signals: list[dict[str, Any]]


class CaseStore:
    """The self-report cases, in the node's store (store thread only)."""

    def __init__(self, service: NodeService) -> None:
        self.service = service
        self.table = service.store.cases

    def create(
        self, collection: str, submission: Submission, salt: bytes, secret_hash: bytes
    ) -> dict[str, Any]:
        """Publish the hashes and record the case in one transaction, so a crash between
        the two cannot leave published hashes that no case can withdraw.

        The batches carry the UTC day (midnight) as their signed time and the node's own
        rows about them are set to it too: the page promises the day only, and the exact
        second would be recoverable from the case's op ids otherwise. An op that already
        existed is recorded only when another case made it, so withdrawing never revokes
        an add the hotline's analysts published themselves.
        """
        items = [
            {**s, "category": submission.category, "classification": CLASSIFICATION}
            for s in submission.signals
        ]
        day = day_ms()
        store = self.service.store
        with store.bulk(source="local"):
            published = self.service.add_many(collection, items, ts=day)
            while True:
                number = random_code(CASE_CHARS)
                if not self.table.exists(number):
                    break
            ops: set[tuple[str, str]] = set()
            for s in published["signals"]:
                if not s["op_id"]:
                    continue
                if not s["new"] and not self.table.made_by_a_case(s["op_id"]):
                    continue
                ops.add((s["op_id"], s["type"]))
            self.table.insert(
                number,
                salt,
                secret_hash,
                submission.category,
                today(),
                sorted(ops),
                len(submission.signals),
            )
            self._coarsen_times([s["op_id"] for s in published["signals"] if s["new"]], day)
        return {
            "case": number,
            "hashes": len(submission.signals),
            "published": published["published"],
        }

    def _coarsen_times(self, op_ids: list[str], day: int) -> None:
        """The node's own receipt times of these ops' batches (batch, feed and log rows) set
        to the day, as their signed time already is."""
        store = self.service.store
        batches = {(o.author, o.collection, o.seq) for o in map(OpId.parse, op_ids)}
        for author, collection, seq in sorted(batches):
            store.set_batch_time(LogKey(author, collection), seq, day)

    def secret_of(self, number: str) -> tuple[bytes, bytes] | None:
        return self.table.secret_of(number)

    def _signal(self, op_id: str) -> dict[str, Any] | None:
        try:
            signal_id = self.service.store.signal_id(OpId.parse(op_id))
        except ProtocolError:
            return None
        return None if signal_id is None else self.service.store.signal(signal_id)

    def status(self, number: str) -> dict[str, Any]:
        """The case as the person made it, never what others did with the same hashes: its
        count is the hashes it sent (not the ops it owns, fewer when a hash was already
        live), and a hash another case or an analyst also holds counts as live while the
        case is active and as gone once it is withdrawn, so the answer is no oracle for
        "did someone else report this picture"."""
        row = self.table.case(number)
        if row is None:
            raise NotFound("case number or secret is wrong")
        ops = self.table.ops(number)
        size = self.table.size(number)
        hashes = len(ops) if size is None else size
        if row[2]:
            live = 0
        else:
            gone = sum(1 for op in ops if (s := self._signal(op)) is None or not s["live"])
            live = max(0, hashes - gone)
        return {
            "case": group(number),
            "state": "withdrawn" if row[2] else "active",
            "category": row[0],
            "created_day": row[1],
            "withdrawn_day": row[2],
            "hashes": hashes,
            "live": live,
        }

    def withdraw(self, number: str) -> dict[str, Any]:
        """Revoke the case's adds that no other active case shares, then mark it withdrawn.

        add_many returns the existing op when the same hash is already live in the
        collection: two people may report the same picture, or an analyst may have
        published it before. Such an op is revoked only when it is a self-report and no
        other active case still names it. The answer's `revoked` is the case's own count
        all the same: how many revocations were really published would tell the person
        which of their hashes someone else also holds.
        """
        state = self.status(number)
        if state["state"] == "withdrawn":
            return {**state, "revoked": 0}
        ops = self.table.ops(number)
        by_collection: dict[str, list[str]] = {}
        for op_id in ops:
            signal = self._signal(op_id)
            if (
                signal is None
                or not signal["live"]
                or signal["author"] != self.service.node_id
                or signal.get("classification") != CLASSIFICATION
            ):
                continue
            if not self.table.shared_with_active(op_id, number):
                by_collection.setdefault(signal["collection"], []).append(op_id)
        day = day_ms()
        with self.service.store.bulk(source="local"):
            for collection, targets in by_collection.items():
                # Each op as full as MAX_OP_BYTES allows (about 28 op ids, not 1,000).
                revokes = pack_revokes(targets, WITHDRAW_REASON)
                made = self.service.publish(collection, list(revokes), ts=day)[0]
                self._coarsen_times([str(op) for op in made], day)
            self.table.mark_withdrawn(number, today())
        return {**self.status(number), "revoked": state["hashes"]}

    def report(self, days: int = 60) -> dict[str, Any]:
        """Per-day counts and the opinions platforms published on self-reported hashes."""
        since = (datetime.now(UTC) - timedelta(days=days)).strftime("%Y-%m-%d")
        return self.table.report(since)


# -- HTTP ---------------------------------------------------------------------------------


class SelfReport:
    """The routes, their in-memory limits and the proof-of-work state of one node process."""

    def __init__(self, service: NodeService, store_thread: StoreThread) -> None:
        self.service = service
        self.store_thread = store_thread
        self.pow = ProofOfWork()
        self._salt = secrets.token_bytes(32)  # per process, never stored
        self._cases: CaseStore | None = None
        self._limits: dict[str, RateLimiter[bytes]] = {}
        self._budgets: dict[str, Budget] = {}
        self._limit_settings: tuple[int, ...] = ()
        self._scrypt = asyncio.Semaphore(SCRYPT_CONCURRENCY)
        folder = resources.files("hashmesh.node.web").joinpath("static/selfreport")
        self.page = folder.joinpath("index.html").read_bytes()
        self.assets = {name: folder.joinpath(name).read_bytes() for name in ASSETS}

    @property
    def config(self) -> Any:
        return self.service.config

    def _rebuild(self) -> None:
        """The limiters, rebuilt when the config's limits change (config is hot-reloaded)."""
        c = self.config
        settings = (
            c.selfreport_submits_per_hour,
            c.selfreport_checks_per_hour,
            c.selfreport_total_submits_per_hour,
        )
        if settings != self._limit_settings:
            self._limit_settings = settings
            self._limits = {
                "submit": RateLimiter(settings[0], WINDOW_S),
                "challenge": RateLimiter(settings[0] * 4, WINDOW_S),
                "check": RateLimiter(settings[1], WINDOW_S),
                "logo": RateLimiter(settings[0] * LOGO_PER_SUBMIT, WINDOW_S),
            }
            self._budgets = {
                "submit": Budget(settings[2]),
                "status": Budget(settings[2] * STATUS_PER_SUBMIT),
                "withdraw": Budget(settings[2] * WITHDRAW_PER_SUBMIT),
            }

    def limiter(self, name: str) -> RateLimiter[bytes]:
        """A per-client limiter: submit, challenge, check or logo."""
        self._rebuild()
        return self._limits[name]

    def budget(self, name: str) -> Budget:
        """A node-wide budget: submit, status or withdraw."""
        self._rebuild()
        return self._budgets[name]

    def pow_bits(self) -> int:
        """The proof of work asked for now: the configured bits, more as submits load the
        node, so spending the budget costs an attacker more with every step."""
        base = int(self.config.selfreport_pow_bits)
        return min(MAX_POW_BITS, base + extra_pow_bits(self.budget("submit").load()))

    def client_address(self, request: web.Request) -> str:
        address = request.remote or ""
        header = self.config.selfreport_client_ip_header
        if header and request.headers.get(header):
            # The right-most entry is the one the operator's own proxy appended.
            address = request.headers[header].split(",")[-1].strip()
        return address

    def key(self, text: str) -> bytes:
        """An opaque limiter key: HMAC under a key never stored, so the table in memory
        holds no address."""
        return hmac.new(self._salt, text.encode(), hashlib.sha256).digest()[:16]

    def client_key(self, request: web.Request) -> bytes:
        return self.key("client:" + client_block(self.client_address(request)))

    def plan(self, request: web.Request, per_client: str, budget: str | None = None) -> Charges:
        """The limits this request would be charged to (its client's, then its blocks' and
        the node's); TooManyRequests, charging nothing, when any is spent."""
        key = self.client_key(request)
        limiter = self.limiter(per_client)
        if not limiter.allows(key):
            raise TooManyRequests.waiting(
                "too many requests from your connection", wait_s(limiter, key)
            )
        charges = [(limiter, key)]
        if budget is not None:
            address = self.client_address(request)
            block = self.key("block:" + share_block(address))
            wide = self.key("wide:" + wide_block(address))
            charges.extend(self.budget(budget).plan(block, wide))
        return charges

    @staticmethod
    def spend(charges: Charges) -> None:
        """Charge a plan made with no await since, so concurrent requests cannot both pass
        a check that only one of them fits."""
        for limiter, key in charges:
            limiter.hit(key)

    def limit(self, request: web.Request, per_client: str, budget: str | None = None) -> None:
        self.spend(self.plan(request, per_client, budget))

    async def slow_hash(self, secret: str, salt: bytes) -> bytes:
        async with self._scrypt:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, hash_secret, secret, salt)

    async def cases(self) -> CaseStore:
        if self._cases is None:
            self._cases = await self.store_thread.call(CaseStore, self.service)
        return self._cases

    def require_enabled(self) -> None:
        if not self.config.selfreport_enabled:
            raise NotFound("not found")

    # -- handlers ------------------------------------------------------------------------

    async def index(self, request: web.Request) -> web.StreamResponse:
        self.require_enabled()
        if request.path == PREFIX:
            raise web.HTTPFound(PREFIX + "/", headers=HEADERS)
        return web.Response(
            body=self.page, headers={**HEADERS, "Content-Type": "text/html; charset=utf-8"}
        )

    async def asset(self, request: web.Request) -> web.Response:
        self.require_enabled()
        name = request.match_info["name"]
        if name not in ASSETS:
            raise NotFound("not found")
        return web.Response(
            body=self.assets[name], headers={**HEADERS, "Content-Type": ASSETS[name]}
        )

    async def info(self, request: web.Request) -> web.Response:
        self.require_enabled()
        c = self.config
        return json_response(
            {
                "hotline": c.selfreport_display_name or c.name,
                "site_url": c.selfreport_site_url,
                "contact": dict(c.selfreport_contact),
                "logo": bool(c.selfreport_logo),
                "max_files": c.selfreport_max_files,
                "min_quality": c.min_pdq_quality,
                "max_video_frames": MAX_VIDEO_FRAMES,
                "categories": list(CATEGORIES),
            }
        )

    async def logo(self, request: web.Request) -> web.Response:
        """The logo as read and checked when the config loaded (config.load_selfreport_logo),
        from memory. Limited per visitor like the page's API: each answer is up to 256 KiB.
        It stays `no-store` like the rest of the page, so a shared device's browser cache
        keeps no trace of the visit; the ETag saves the bytes for a client that asks with
        If-None-Match anyway."""
        self.require_enabled()
        logo = self.config.logo_image
        if logo is None:
            raise NotFound("no logo is configured")
        self.limit(request, "logo")
        headers = {**HEADERS, "Content-Type": logo.content_type, "ETag": logo.etag}
        header = request.headers.get("If-None-Match", "")
        asked = {t.strip().removeprefix("W/") for t in header.split(",")}
        if logo.etag in asked or "*" in asked:
            return web.Response(status=304, headers=headers)
        return web.Response(body=logo.body, headers=headers)

    async def challenge(self, request: web.Request) -> web.Response:
        self.require_enabled()
        self.limit(request, "challenge")
        bits = self.pow_bits()
        return json_response({"challenge": self.pow.issue(bits), "bits": bits})

    async def submit(self, request: web.Request) -> web.Response:
        self.require_enabled()
        body = await read_body(request, MAX_SUBMIT_BODY)
        submission = self.parse_submission(body)
        self.plan(request, "submit", "submit")
        # One bit of slack: the load may rise while the person's device solves.
        required = max(self.config.selfreport_pow_bits, self.pow_bits() - 1)
        self.pow.verify(body.get("challenge"), body.get("solution"), required)
        self.limit(request, "submit", "submit")
        secret = random_code(SECRET_CHARS)
        salt = secrets.token_bytes(16)
        secret_hash = await self.slow_hash(secret, salt)
        cases = await self.cases()
        result = await self.store_thread.call(
            cases.create, self.config.selfreport_collection, submission, salt, secret_hash
        )
        return json_response(
            {
                "case": group(result["case"]),
                "secret": group(secret),
                "hashes": result["hashes"],
            }
        )

    def parse_submission(self, body: dict[str, Any]) -> Submission:
        unknown = set(body) - {"challenge", "solution", "category", "signals"}
        if unknown:
            raise NodeError(f"{sorted(unknown)[0]}: unknown field")
        category = body.get("category")
        if category not in CATEGORIES:
            raise NodeError("category: choose one of " + ", ".join(CATEGORIES))
        signals = body.get("signals")
        limit = self.config.selfreport_max_files * 2
        if not isinstance(signals, list) or not signals:
            raise NodeError("signals: expected a non-empty list")
        if len(signals) > limit:
            raise NodeError(f"signals: at most {limit} hashes at a time")
        minimum = self.config.min_pdq_quality

        def count(kind: str) -> int:
            return sum(1 for item in signals if isinstance(item, dict) and item.get("type") == kind)

        if count("pdq") > MAX_PDQS_PER_CASE:
            raise NodeError(
                f"signals: at most {MAX_PDQS_PER_CASE} pictures' similarity fingerprints (pdq)"
                " per report; please send the others in a second report"
            )
        if count("vpdq") > MAX_VIDEOS_PER_CASE:
            raise NodeError(
                f"signals: at most {MAX_VIDEOS_PER_CASE} videos' similarity fingerprints (vpdq)"
                " per report; please send the others in a second report"
            )
        out: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for n, item in enumerate(signals):
            entry = self.parse_signal(n, item, minimum)
            if (entry["type"], entry["value"]) not in seen:
                seen.add((entry["type"], entry["value"]))
                out.append(entry)
        return Submission(category, out)

    def parse_signal(self, n: int, item: Any, minimum: int) -> dict[str, Any]:
        if not isinstance(item, dict) or item.get("type") not in ("md5", "pdq", "vpdq"):
            raise NodeError(f"signals[{n}]: expected an md5, pdq or vpdq hash")
        kind, value = item["type"], item.get("value")
        if set(item) - {"type", "value", "quality"}:
            raise NodeError(f"signals[{n}]: unknown field")
        if kind == "vpdq":
            if "quality" in item:
                raise NodeError(f"signals[{n}]: a vpdq hash has a quality per frame only")
            return self.parse_video(n, value, minimum)
        if not isinstance(value, str) or len(value) > 64:
            raise NodeError(f"signals[{n}]: value must be a hex string")
        entry: dict[str, Any] = {"type": kind, "value": value.lower()}
        if kind == "pdq":
            quality = item.get("quality")
            if type(quality) is not int or not 0 <= quality <= 100:
                raise NodeError(f"signals[{n}]: a pdq hash needs its quality (0-100)")
            if quality < minimum:
                raise NodeError(
                    f"signals[{n}]: this picture is too plain or too small for a reliable "
                    f"fingerprint (quality {quality}, at least {minimum} is needed): it "
                    "would match unrelated pictures. Its exact (md5) fingerprint can "
                    "still be sent."
                )
            entry["quality"] = quality
        elif "quality" in item:
            raise NodeError(f"signals[{n}]: only pdq hashes have a quality")
        degenerate = degenerate_reason(kind, entry["value"])
        if degenerate is not None:
            raise NodeError(f"signals[{n}]: value refused, {degenerate}")
        return entry

    @staticmethod
    def parse_video(n: int, value: Any, minimum: int) -> dict[str, Any]:
        """A video's vpdq as the page computes it: the signal type's own validation, then the
        page's bounds and the rules its frames' PDQs share with a picture's (quality,
        degenerate hashes), each refusal naming the frame."""
        if not isinstance(value, str) or len(value) > MAX_VPDQ_CHARS:
            raise NodeError(
                f"signals[{n}]: a vpdq value is a string of at most {MAX_VPDQ_CHARS} characters"
            )
        try:
            frames = VPDQSignal.parse(VPDQSignal.normalize(value))
        except SignalError as exc:
            raise NodeError(f"signals[{n}]: {exc}") from None
        if len(frames) > MAX_VIDEO_FRAMES:
            raise NodeError(
                f"signals[{n}]: {len(frames)} video frames, at most {MAX_VIDEO_FRAMES}"
                " (one a second of the first 10 minutes)"
            )
        for i, frame in enumerate(frames):
            if frame.quality < minimum:
                raise NodeError(
                    f"signals[{n}]: frame[{i}]: quality {frame.quality} is under {minimum}:"
                    " such frames match unrelated videos, leave them out"
                )
            degenerate = degenerate_reason("pdq", frame.pdq)
            if degenerate is not None:
                raise NodeError(f"signals[{n}]: frame[{i}]: refused, {degenerate}")
        return {"type": "vpdq", "value": VPDQSignal.format(frames)}

    async def _authenticate(self, request: web.Request, budget: str) -> tuple[str, CaseStore]:
        """The case number, once its secret checks out; the same refusal for every failure
        (unknown case or wrong secret), after the same scrypt work, so neither the answer
        nor its timing tells which case numbers exist."""
        self.require_enabled()
        body = await read_body(request)
        number = normalise_code(body.get("case"), CASE_CHARS, "case number")
        secret = normalise_code(body.get("secret"), SECRET_CHARS, "secret")
        self.limit(request, "check", budget)
        cases = await self.cases()
        stored = await self.store_thread.call(cases.secret_of, number)
        salt, expected = stored if stored is not None else (b"\0" * 16, b"")
        actual = await self.slow_hash(secret, salt)
        if stored is None or not hmac.compare_digest(actual, expected):
            raise Forbidden("case number or secret is wrong")
        return number, cases

    async def status(self, request: web.Request) -> web.Response:
        number, cases = await self._authenticate(request, "status")
        return json_response(await self.store_thread.call(cases.status, number))

    async def withdraw(self, request: web.Request) -> web.Response:
        number, cases = await self._authenticate(request, "withdraw")
        result = await self.store_thread.call(cases.withdraw, number)
        return json_response(result)

    async def admin(self, request: web.Request) -> web.Response:
        """Operator statistics (admin token: the path is not in OPEN_PATHS)."""
        c = self.config
        out: dict[str, Any] = {
            "enabled": c.selfreport_enabled,
            "collection": c.selfreport_collection,
            "path": PREFIX + "/",
        }
        if c.selfreport_enabled or self._cases is not None:
            cases = await self.cases()
            out.update(await self.store_thread.call(cases.report))
        return web.json_response(out)


def json_response(value: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(value),
        status=status,
        headers={**HEADERS, "Content-Type": "application/json; charset=utf-8"},
    )


async def read_body(request: web.Request, limit: int = MAX_BODY) -> dict[str, Any]:
    raw = await request_body(request, limit, too_large=NodeError)
    return parse_json_object(raw)


@web.middleware
async def headers_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Security headers on every answer under the prefix, errors included (the node's
    errors middleware, inside this one, turns refusals into JSON answers without them)."""
    response: web.StreamResponse = await handler(request)
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        for key, value in HEADERS.items():
            response.headers.setdefault(key, value)
    return response


def register(app: web.Application, service: NodeService, store_thread: StoreThread) -> SelfReport:
    """Add the self-report routes (they answer 404 while [selfreport] enabled is false)."""
    report = SelfReport(service, store_thread)
    app.middlewares.insert(0, headers_middleware)
    app.router.add_get(PREFIX, report.index)
    app.router.add_get(PREFIX + "/", report.index)
    app.router.add_get(PREFIX + "/api/info", report.info)
    app.router.add_get(PREFIX + "/api/challenge", report.challenge)
    app.router.add_post(PREFIX + "/api/submit", report.submit)
    app.router.add_post(PREFIX + "/api/status", report.status)
    app.router.add_post(PREFIX + "/api/withdraw", report.withdraw)
    app.router.add_get(PREFIX + "/logo", report.logo)
    app.router.add_get(PREFIX + "/{name}", report.asset)
    app.router.add_get(ADMIN_PATH, report.admin)
    return report
