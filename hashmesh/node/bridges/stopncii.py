"""StopNCII's FetchHashes and SubmitFeedback, through python-threatexchange's client.

Each hash record is the whole current state of one (signal type, hash): a record seen
again replaces the one before (hashStatus Received/Active: live; Withdrawn/Deleted:
revoked). The checkpoint is `{start, seen}` between fetches: `start` the newest
lastModtimestamp the last completed fetch returned, `seen` the digests of the records it
returned at exactly that second (startTimestamp is inclusive: they come back, and are
dropped). Inside a fetch it is `{start, seen, token, top, at_top}`: the page token is
valid only with the startTimestamp it was issued for, and `top`/`at_top` are the newest
second so far and its records, to become the next `start` and `seen`. Case numbers are
never read (one victim's cases would link their images across every node that receives
them).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hashmesh.node.bridges.upstream import (
    Entry,
    Page,
    Upstream,
    UpstreamRefused,
    base_url,
    bound_responses,
    register,
    short_ref,
)
from hashmesh.node.config import Bridge
from hashmesh.node.errors import NodeError
from hashmesh.node.lists.importers import STOPNCII_REVOKE, STOPNCII_TYPES
from hashmesh.node.store.bridges import Item

stopncii_api: Any
try:
    from threatexchange.exchanges.clients.stopncii import api as stopncii_api
except ImportError:  # pragma: no cover - the threatexchange extra is not installed
    stopncii_api = None

PAGE_SIZE = 800
#: Records of one second remembered as applied (a checkpoint holds their digests); past
#: it, those records are fetched again next poll and skipped as unchanged.
MAX_SEEN = 2000


def record_digest(record: Any) -> str:
    """What identifies one state of one record: its key, status, time and feedback."""
    tags = sorted({t for f in record.CSPFeedbacks for t in f.tags})
    text = json.dumps(
        [record.signalType.value, record.hashValue, record.hashStatus.value,
         int(record.lastModtimestamp), tags]
    )  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _need_pytx() -> Any:
    if stopncii_api is None:
        raise NodeError(
            "the stopncii bridge needs python-threatexchange: pip install"
            " 'hashmesh[threatexchange]'"
        )
    return stopncii_api


@register
class StopNCIIUpstream(Upstream):
    kind = "stopncii"
    description = "StopNCII.org FetchHashes (full-replacement records) and SubmitFeedback"
    default_category = "ncii"
    environments = {"production": "https://api.stopncii.org/v1"}
    default_environment = "production"
    credentials_format = (
        "FETCH_FUNCTION_KEY,SUBSCRIPTION_KEY[,FEEDBACK_FUNCTION_KEY] (python-threatexchange's"
        " order; the third field is the SubmitFeedback key, the URL is --url)"
    )

    def __init__(self, bridge: Bridge, secret: str) -> None:
        super().__init__(bridge, secret)
        api = _need_pytx()
        self.check_secret(secret)
        parts = [p.strip() for p in secret.strip().split(",")]
        extra = {api.StopNCIIEndpoint.SubmitFeedback: parts[2]} if len(parts) > 2 else None
        self.client = api.StopNCIIAPI(
            subscription_key=parts[1],
            fetch_function_key=parts[0],
            additional_function_keys=extra,
            base_url_override=base_url(type(self), bridge),
        )
        self.can_feed_back = len(parts) > 2
        bound_responses(self.client)

    @classmethod
    def check_secret(cls, secret: str) -> None:
        parts = [p.strip() for p in secret.strip().split(",")]
        if len(parts) not in (2, 3) or not all(parts):
            raise NodeError(f"stopncii credentials: expected {cls.credentials_format}")

    def our_type(self, fingerprint: str) -> str:
        return STOPNCII_TYPES.get(fingerprint, fingerprint)

    def fetch(self, checkpoint: dict[str, Any], now: int) -> Page:
        """One FetchHashes call. startTimestamp is inclusive, so the records at the last
        fetch's newest timestamp come back; those already applied (their digest is in
        `seen`) are dropped here, and any other at that timestamp (written after that
        fetch, or changed within the same second) is applied: none seen twice, none
        missed. The checkpoint's start is the newest lastModtimestamp the fetch returned
        (not nextSetTimestamp, which may be later than a record still to be written at
        the same second)."""
        api = _need_pytx()
        start = int(checkpoint.get("start", api.StopNCIIAPI.DEFAULT_START_TIME))
        token = str(checkpoint.get("token", ""))
        seen = frozenset(checkpoint.get("seen", ()))
        at_top: list[str] | None
        top, at_top = start, []  # the newest second so far and its records' digests
        if token:
            top = int(checkpoint.get("top", start))
            stored = checkpoint.get("at_top", [])
            at_top = None if stored is None else list(stored)
        response = self.client.fetch_hashes(
            page_size=PAGE_SIZE, start_timestamp=start, next_page=token
        )
        entries = []
        for record in response.hashRecords:
            digest, ts = record_digest(record), int(record.lastModtimestamp)
            if ts > top:
                top, at_top = ts, [digest]
            elif ts == top and at_top is not None:
                at_top.append(digest)
                if len(at_top) > MAX_SEEN:
                    at_top = None  # too many in one second to remember: seen again
            if ts == start and digest in seen:
                continue
            entries.append(self._entry(record))
        if response.hasMoreRecords and response.nextPageToken:
            inside = {
                "start": start,
                "token": response.nextPageToken,
                "seen": sorted(seen),
                "top": top,
                "at_top": at_top,
            }
            return Page(entries, inside, False)
        return Page(entries, {"start": top, "seen": sorted(set(at_top or ()))}, True)

    def _entry(self, record: Any) -> Entry:
        kind = record.signalType.value
        status = record.hashStatus.value
        value = record.hashValue
        key = (
            f"{kind}:{value}"
            if len(value) <= 200
            else f"{kind}:sha256:" + (hashlib.sha256(value.encode()).hexdigest())
        )
        return Entry(
            key=key,
            deleted=status in STOPNCII_REVOKE,
            fingerprints={} if status in STOPNCII_REVOKE else {kind: value},
            classification=None,
            ref=short_ref(f"stopncii:{self.environment}:{status.lower()}"),
            detail={
                "upstream": "stopncii",
                "environment": self.environment,
                "signal_type": kind,
                "hash_status": status,
                **({"hash_value": value} if len(value) <= 200 else {}),
                "last_modified": record.lastModtimestamp,
                "feedback_tags": sorted({t for f in record.CSPFeedbacks for t in f.tags})[:20],
            },
        )

    def send_feedback(self, item: Item, verdict: str, reason: str | None) -> dict[str, Any]:
        api = _need_pytx()
        if not self.can_feed_back:
            raise UpstreamRefused(
                "no SubmitFeedback function key: add it as the third field of the credentials"
            )
        value = api.StopNCIICSPFeedbackValue.Blocked
        if verdict == "dispute":
            value = api.StopNCIICSPFeedbackValue.NotBlocked
        kind = api.StopNCIISignalType(item.fingerprint)
        tags = {reason} if reason else set()
        hash_value = str(item.detail.get("hash_value") or item.value)
        self.client.submit_feedback(kind, hash_value, value, tags)
        return {"signal_type": item.fingerprint, "feedback": value.value, "tags": sorted(tags)}

    @classmethod
    def describe(cls, checkpoint: dict[str, Any]) -> str:
        if not checkpoint:
            return "from the start"
        if checkpoint.get("token"):
            return f"inside the fetch from timestamp {checkpoint['start']}, at its next page"
        return f"every record up to timestamp {checkpoint.get('start')}"
