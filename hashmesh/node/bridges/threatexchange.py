"""Meta's ThreatExchange Graph API (`/PRIVACY_GROUP/threat_updates` and descriptor
reactions), through python-threatexchange's client (fb_threatexchange.api).

A threat update is one ThreatIndicator of the privacy group in its latest state: its type,
its indicator (the hash) and its descriptors, each one app's opinion on it (status,
tags, review status); or a tombstone, `should_delete` (the indicator left the group or
was deleted) or no descriptors at all (python-threatexchange's reading of ThreatExchange
issue #834). Each update is a full replacement of the indicator's state, keyed by the
indicator id. A descriptor whose owner is not visible is dropped, as pytx drops it; an
indicator with no visible descriptor left is gone, as pytx's fetch treats it.

The checkpoint (ThreatExchange issue #1269: the `last_updated` a record carries is not the
time the API orders and pages by, so the largest one seen says nothing of what is still to
come, and pytx's own `update_time` checkpoint can skip updates): as NCMEC's, a window
[since, until) with `until` fixed when the window opens, drained page by page through the
Graph API's `paging.next` cursor; `{since}` between windows, `{since, until, next,
next_at}` inside one. A drained window's `until` is the next `since`, so consecutive
windows neither overlap nor leave a gap. The next URL is kept without its access_token
(the token stays in its credentials file), is followed only under the bridge's base URL
(never sends the token elsewhere), and one older than NEXT_VALID_S, or one the API
refuses with a 4xx, restarts its window from `since` (which fetches entries again but
changes nothing: an entry seen again unchanged is skipped).
"""

from __future__ import annotations

import urllib.parse
from typing import Any

from hashmesh.node.bridges.upstream import (
    Entry,
    Page,
    Upstream,
    UpstreamRefused,
    base_url,
    bound_responses,
    describe_window,
    register,
    short_ref,
)
from hashmesh.node.config import Bridge
from hashmesh.node.errors import NodeError
from hashmesh.node.store.bridges import Item

te_api: Any
te_updates: Any
try:
    from threatexchange.exchanges.clients.fb_threatexchange import api as te_api
    from threatexchange.exchanges.clients.fb_threatexchange import (
        threat_updates as te_updates,
    )
except ImportError:  # pragma: no cover - the threatexchange extra is not installed
    te_api = te_updates = None

PAGE_SIZE = 500  # pytx's ThreatUpdatesDelta page
NEXT_VALID_S = 3600
#: Stay this far behind the clock: updates of the last seconds may still be written.
SETTLE_S = 5
MAX_NEXT_URL = 8192
MAX_DESCRIPTORS = 50  # of one indicator kept as provenance (the feedback targets)
MAX_TAGS = 20
#: What a threat update is asked for: pytx's fields, with the descriptor's id (what a
#: reaction names) and review status (provenance).
FIELDS = (
    "id",
    "indicator",
    "type",
    "last_updated",
    "should_delete",
    "descriptors{id,owner{id},status,review_status,tags}",
)
#: ThreatExchange indicator types -> ours. python-threatexchange's signal types name the
#: same ones (INDICATOR_TYPE): HASH_PDQ for pdq; HASH_VIDEO_MD5, and HASH_MD5 tagged
#: media_type_video, for video_md5; HASH_VIDEO_SHA256 and HASH_SHA256 likewise. Our md5
#: and sha256 hold photos and videos alike, so the tag changes nothing here.
TE_TYPES = {
    "HASH_PDQ": "pdq",
    "HASH_MD5": "md5",
    "HASH_VIDEO_MD5": "md5",
    "HASH_SHA1": "sha1",
    "HASH_SHA256": "sha256",
    "HASH_VIDEO_SHA256": "sha256",
    "HASH_TMK": "tmk",
}
#: pytx's convention for a type ThreatExchange has no name for: a DEBUG_STRING indicator
#: tagged `signal_type:NAME` (HasFbThreatExchangeIndicatorType's docstring).
SIGNAL_TYPE_TAG = "signal_type:"
#: Graph API error codes that retrying can change (temporary, throttled).
TRANSIENT_CODES = frozenset({1, 2, 4, 17, 32, 341, 613})
#: What a platform's opinion is sent as: the two reactions pytx reads back as opinions
#: (HELPFUL: positive; DISAGREE_WITH_TAGS: negative, pytx's false positive).
REACTIONS = {"confirm": "HELPFUL", "dispute": "DISAGREE_WITH_TAGS"}


def _need_pytx() -> Any:
    if te_api is None:
        raise NodeError(
            "the threatexchange bridge needs python-threatexchange: pip install"
            " 'hashmesh[threatexchange]'"
        )
    return te_api


def _environments() -> dict[str, str]:
    if te_api is None:
        return {"production": "https://graph.facebook.com/v26.0"}
    return {"production": te_api.ThreatExchangeAPI._TE_BASE_URL}


def _token(secret: str) -> str:
    return secret.strip().replace("%7C", "|").replace("%7c", "|")


@register
class ThreatExchangeUpstream(Upstream):
    kind = "threatexchange"
    description = "Meta ThreatExchange Graph API threat_updates of one privacy group, reactions"
    default_category = "threatexchange"
    environments = _environments()
    default_environment = "production"
    credentials_format = (
        "APP_ID|APP_SECRET (a Meta app access token, as python-threatexchange's"
        " TX_ACCESS_TOKEN or ~/.txtoken holds it)"
    )

    def __init__(self, bridge: Bridge, secret: str) -> None:
        super().__init__(bridge, secret)
        api = _need_pytx()
        self.check_secret(secret)
        if not bridge.privacy_group:
            raise NodeError("threatexchange bridge: no privacy_group in its [[bridges]] entry")
        self.privacy_group = int(bridge.privacy_group)
        self.base = base_url(type(self), bridge).rstrip("/")
        self.client = api.ThreatExchangeAPI(_token(secret), endpoint_override=self.base)
        self.app_id = int(self.client.app_id)
        _through_session(self.client)
        bound_responses(self.client)

    @classmethod
    def check_secret(cls, secret: str) -> None:
        api = _need_pytx()
        if not api.is_valid_app_token(_token(secret)) or "|" not in _token(secret):
            raise NodeError(f"threatexchange credentials: expected {cls.credentials_format}")

    def our_type(self, fingerprint: str) -> str:
        if fingerprint.startswith(SIGNAL_TYPE_TAG):
            return fingerprint.removeprefix(SIGNAL_TYPE_TAG)
        return TE_TYPES.get(fingerprint, fingerprint)

    # -- fetching ----------------------------------------------------------------------

    def fetch(self, checkpoint: dict[str, Any], now: int) -> Page:
        since = int(checkpoint.get("since", 0))
        until = int(checkpoint.get("until", 0))
        next_url = str(checkpoint.get("next", ""))
        if next_url and now - int(checkpoint.get("next_at", 0)) > NEXT_VALID_S:
            next_url = ""  # too old to trust: the window again, from its start
        if not next_url:
            until = max(since, now - SETTLE_S)
            if until <= since:
                return Page([], {"since": since}, caught_up=True)
        try:
            updates, following = self._page(since, until, next_url)
        except Exception as exc:
            if not next_url or not _refused(exc):
                raise
            updates, following = self._page(since, until, "")  # the cursor is gone
        entries: list[Entry] = []
        skipped: dict[str, int] = {}
        for update in updates:
            entry = self._entry(update)
            if isinstance(entry, str):
                skipped[entry] = skipped.get(entry, 0) + 1
            else:
                entries.append(entry)
        if following:
            window = {"since": since, "until": until, "next": following, "next_at": now}
            return Page(entries, window, caught_up=False, skipped=skipped)
        return Page(entries, {"since": until}, caught_up=True, skipped=skipped)

    def _page(self, since: int, until: int, next_url: str) -> tuple[list[Any], str]:
        """One page of the window: pytx's cursor, opened on the window or resumed at
        `next_url` (the token given back as a parameter); the next URL, token removed."""
        cursor = self.client.get_threat_updates(
            self.privacy_group,
            start_time=since,
            stop_time=until,
            page_size=PAGE_SIZE,
            fields=FIELDS,
            decode_fn=te_updates.ThreatUpdateJSON,
        )
        if next_url:
            cursor.next_url = self._checked_next(next_url)
            cursor.params = {"access_token": self.client.api_token}
        updates = list(cursor.next())
        following = "" if cursor.done else self._checked_next(str(cursor.next_url))
        return updates, following

    def _checked_next(self, url: str) -> str:
        """A next URL under our base URL, without its access_token; else ValueError (an
        upstream answer we cannot follow)."""
        if len(url) > MAX_NEXT_URL:
            raise ValueError(f"next page URL of {len(url):,} characters")
        parts = urllib.parse.urlsplit(url)
        base = urllib.parse.urlsplit(self.base)
        if (parts.scheme, parts.netloc) != (base.scheme, base.netloc) or not parts.path.startswith(
            base.path
        ):
            raise ValueError("next page URL is not under the bridge's base URL; not followed")
        query = [
            (k, v)
            for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
            if k != "access_token"
        ]
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))

    def _entry(self, update: Any) -> Entry | str:
        """One threat update as an entry, or the reason it cannot be one."""
        raw = update.raw_json
        if not isinstance(raw, dict):
            return "malformed update"
        indicator_id = str(raw.get("id", ""))
        kind = raw.get("type")
        if not indicator_id.isdigit() or len(indicator_id) > 24 or not isinstance(kind, str):
            return "malformed update"
        ref = short_ref(f"threatexchange:{self.environment}:{self.privacy_group}:{indicator_id}")
        detail: dict[str, Any] = {
            "upstream": "threatexchange",
            "environment": self.environment,
            "privacy_group": str(self.privacy_group),
            "indicator_id": indicator_id,
            "indicator_type": kind[:64],
            "last_updated": str(raw.get("last_updated", ""))[:32],  # upstream's: bounded
        }
        descriptors = _visible_descriptors(raw)
        if bool(raw.get("should_delete")) or "descriptors" not in raw or not descriptors:
            return Entry(indicator_id, True, {}, None, ref, detail)
        indicator = raw.get("indicator")
        if not isinstance(indicator, str) or not indicator:
            return "malformed update"
        detail["descriptors"] = descriptors[:MAX_DESCRIPTORS]
        if all(d["status"] == "NON_MALICIOUS" for d in descriptors):
            return Entry(
                indicator_id, False, {}, None, ref, detail, withheld="every opinion NON_MALICIOUS"
            )
        tags = {t for d in descriptors for t in d["tags"]}
        if kind == "DEBUG_STRING":
            fingerprints = {t: indicator for t in tags if t.startswith(SIGNAL_TYPE_TAG)}
            if not fingerprints:
                return Entry(indicator_id, False, {}, None, ref, detail, withheld=(
                    "DEBUG_STRING without a signal_type: tag"
                ))  # fmt: skip
        else:
            fingerprints = {kind: indicator}
        return Entry(indicator_id, False, fingerprints, None, ref, detail)

    # -- feedback ----------------------------------------------------------------------

    def send_feedback(self, item: Item, verdict: str, reason: str | None) -> dict[str, Any]:
        """A reaction on every other app's descriptor of the indicator: the opinion is
        ours about what they said. A reaction is a set member on ThreatExchange (one per
        app, descriptor and kind), so a call repeated after a partial failure adds
        nothing twice."""
        reaction = REACTIONS[verdict]
        targets = [
            str(d["id"])
            for d in item.detail.get("descriptors", [])
            if str(d.get("owner")) != str(self.app_id)
        ]
        if not targets:
            raise UpstreamRefused(
                f"indicator {item.detail.get('indicator_id')}: every descriptor is this app's"
                " own; ThreatExchange takes no reaction of an app on its own opinion"
            )
        for descriptor in targets:
            _check_answer(self.client.react_to_threat_descriptor(descriptor, reaction))
        return {
            "indicator_id": item.detail.get("indicator_id"),
            "reaction": reaction,
            "descriptors": targets,
        }

    @classmethod
    def describe(cls, checkpoint: dict[str, Any]) -> str:
        return describe_window(checkpoint, "since", "until")


def _visible_descriptors(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """The descriptors whose owner is visible (pytx drops the others: a ThreatExchange
    visibility bug), each as the provenance we keep: id, owner, status, review status,
    tags (as a list: threat_updates may give them as a list or as an edge of {text})."""
    edge = raw.get("descriptors")
    data = edge.get("data") if isinstance(edge, dict) else None
    out: list[dict[str, Any]] = []
    for d in data if isinstance(data, list) else []:
        owner = d.get("owner") if isinstance(d, dict) else None
        if not isinstance(owner, dict) or not str(owner.get("id", "")).isdigit():
            continue
        tags = d.get("tags") or []
        if isinstance(tags, dict):
            tags = [t.get("text") for t in tags.get("data", []) if isinstance(t, dict)]
        clean = sorted({t[:100] for t in tags if isinstance(t, str) and t})[:MAX_TAGS]
        out.append(
            {
                "id": str(d.get("id", ""))[:24],
                "owner": str(owner["id"])[:24],
                "status": str(d.get("status", ""))[:32],
                "review_status": str(d.get("review_status", ""))[:32],
                "tags": clean,
            }
        )
    return out


def _through_session(client: Any) -> None:
    """pytx's `get_json_from_url` calls `requests.get`, not the session it builds (its own
    comment: "Typo? session.get?"), so its GETs have no timeout, no retries and no bound on
    the answer. The same call through that session has all three (pytx's TimeoutHTTPAdapter
    and Retry, our response bound)."""

    def get_json_from_url(url: str, params: Any = None, *, json_obj_hook: Any = None) -> Any:
        with client._get_session() as session:
            response = session.get(url, params=params or {})
            response.raise_for_status()
            return response.json(object_hook=json_obj_hook)

    client.get_json_from_url = get_json_from_url


def _refused(exc: BaseException) -> bool:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)


def _check_answer(result: Any) -> None:
    """pytx's POST returns [error, exception, body] and does not look at the status: a
    Graph API error is a body {"error": {message, code}}."""
    body = result[2] if isinstance(result, list) and len(result) == 3 else None
    if result and isinstance(result, list) and result[0]:
        raise UpstreamRefused(str(result[0])[:300])
    if not isinstance(body, dict):
        raise RuntimeError("ThreatExchange answered the reaction with no JSON object")
    error = body.get("error")
    if error is None:
        return
    if not isinstance(error, dict):
        raise RuntimeError("ThreatExchange answered the reaction with an error")
    message = f"ThreatExchange error {error.get('code')}: {str(error.get('message'))[:200]}"
    if error.get("code") in TRANSIENT_CODES:
        raise RuntimeError(message)
    raise UpstreamRefused(message)
