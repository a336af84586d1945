"""NCMEC's hash-sharing API v2, through python-threatexchange's client (hash_api).

The paging rule (python-threatexchange issue #1744): entries of a time window come in no
time order, so the largest timestamp seen says nothing about what is still to come; a
window's end becomes the next start only once the window is drained (no `next`), and a
`next` URL is valid only with the window (`from`, `to`) that produced it. The checkpoint
is therefore either `{from}` (windows before it are drained) or `{from, to, next, next_at}`
(inside the window [from, to], resume at `next`). NCMEC asks that a `next` URL not be kept
long: one older than 12 hours restarts its window from `from`, which fetches entries again
but changes nothing (an entry seen again unchanged is skipped).
"""

from __future__ import annotations

import re
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
from hashmesh.node.lists.importers import NCMEC_FINGERPRINTS
from hashmesh.node.store.bridges import Item
from hashmesh.protocol.ops import CLASSIFICATION_PATTERN

hash_api: Any
try:
    from threatexchange.exchanges.clients.ncmec import hash_api
except ImportError:  # pragma: no cover - the threatexchange extra is not installed
    hash_api = None

NEXT_VALID_S = 12 * 3600
#: Stay this far behind the clock: entries of the last seconds may still be written.
SETTLE_S = 5
_classification_re = re.compile(CLASSIFICATION_PATTERN)
#: NCMEC's fingerprint element names -> the feedback API's type names (pytx FingerprintType)
FEEDBACK_TYPES = {
    "md5": "MD5",
    "sha1": "SHA1",
    "pdna": "PDNA",
    "pdq": "PDQ",
    "tmk-pdqf": "TMK_PDQF",
    "netclean": "NETCLEAN",
    "videntifier": "VIDENTIFIER",
}


def _need_pytx() -> Any:
    if hash_api is None:
        raise NodeError(
            "the ncmec bridge needs python-threatexchange: pip install 'hashmesh[threatexchange]'"
        )
    return hash_api


def _environments() -> dict[str, str]:
    if hash_api is None:
        return {"Industry": "https://report.cybertip.org/hashsharing"}
    return {e.name: e.value for e in hash_api.NCMECEnvironment}


@register
class NCMECUpstream(Upstream):
    kind = "ncmec"
    description = "NCMEC hash-sharing API v2 (images, videos, deletions, feedback)"
    default_category = "csam"
    environments = _environments()
    default_environment = "Industry"
    credentials_format = "USER:PASSWORD (python-threatexchange's NCMEC credentials format)"

    def __init__(self, bridge: Bridge, secret: str) -> None:
        super().__init__(bridge, secret)
        api = _need_pytx()
        self.check_secret(secret)
        user, _, password = secret.partition(":")
        self.client = api.NCMECHashAPI(user, password, api.NCMECEnvironment.Industry)
        # The client takes an environment only; --url points it at any server that
        # speaks the API (a staging one, a test double) by its one base-URL attribute.
        self.client._base_url = base_url(type(self), bridge)
        bound_responses(self.client)
        self._reasons: dict[str, dict[str, str]] = {}

    @classmethod
    def check_secret(cls, secret: str) -> None:
        user, _, password = secret.strip().partition(":")
        if not user or not password:
            raise NodeError(f"ncmec credentials: expected {cls.credentials_format}")

    def our_type(self, fingerprint: str) -> str:
        return NCMEC_FINGERPRINTS.get(fingerprint.lower(), fingerprint)

    def fetch(self, checkpoint: dict[str, Any], now: int) -> Page:
        start = int(checkpoint.get("from", 0))
        next_url = str(checkpoint.get("next", ""))
        end = int(checkpoint.get("to", 0))
        if next_url and now - int(checkpoint.get("next_at", 0)) > NEXT_VALID_S:
            next_url = ""  # too old to trust: the window again, from its start
        if not next_url:
            end = max(start, now - SETTLE_S)
            if end <= start:
                return Page([], {"from": start}, caught_up=True)
        response = self.client.get_entries(start_timestamp=start, end_timestamp=end, next_=next_url)
        entries = [self._entry(update) for update in response.updates]
        if response.next:
            window = {"from": start, "to": end, "next": response.next, "next_at": now}
            return Page(entries, window, caught_up=False)
        return Page(entries, {"from": end}, caught_up=True)

    def _entry(self, update: Any) -> Entry:
        key = f"{update.member_id}-{update.id}"
        raw_class = update.classification
        classification = raw_class if raw_class and _classification_re.match(raw_class) else None
        return Entry(
            key=key,
            deleted=bool(update.deleted),
            fingerprints={} if update.deleted else dict(update.fingerprints),
            classification=classification,
            ref=short_ref(f"ncmec:{self.environment}:{update.member_id}:{update.id}"),
            detail={
                "upstream": "ncmec",
                "environment": self.environment,
                "entry_id": update.id,
                "member_id": update.member_id,
                "entry_type": update.entry_type.value,
                "classification": raw_class,
            },
        )

    def send_feedback(self, item: Item, verdict: str, reason: str | None) -> dict[str, Any]:
        api = _need_pytx()
        fingerprint = FEEDBACK_TYPES.get(item.fingerprint.lower())
        if fingerprint is None:
            raise UpstreamRefused(f"NCMEC takes no feedback on {item.fingerprint} fingerprints")
        fp_type = api.FingerprintType(fingerprint)
        esp_id = int(item.detail["member_id"])
        entry_id = str(item.detail["entry_id"])
        sent: dict[str, Any] = {
            "esp_id": esp_id,
            "entry_id": entry_id,
            "fingerprint": fingerprint,
        }
        if verdict == "confirm":
            self.client.submit_feedback(esp_id, entry_id, fp_type, api.FeedbackType.upvote)
            return {**sent, "feedback": "upvote"}
        guid = self.bridge.dispute_reason or self._reason_for(fp_type, reason)
        try:
            self.client.submit_feedback(
                esp_id, entry_id, fp_type, api.FeedbackType.downvote, guid or None
            )
        except Exception as exc:
            if str(exc).startswith(("Need to pick a feedback reason", "No feedback options")):
                raise UpstreamRefused(
                    f"{exc}: set dispute_reason in this bridge's [[bridges]] entry"
                ) from None
            raise
        chosen = guid or next(iter(self.client._feedback_reason_map.get(fp_type, {})), "")
        return {**sent, "feedback": "downvote", "reason_id": chosen}

    def _reason_for(self, fp_type: Any, reason: str | None) -> str:
        """The reason guid whose NCMEC name is the opinion's reason (false-positive matches
        "False Positive"), or "" to let the client take the only one there is."""
        if not reason:
            return ""
        wanted = _words(reason)
        reasons = self._reasons.get(fp_type.value)
        if reasons is None:
            reasons = self._reasons[fp_type.value] = self.client.feedback_reasons(fp_type)
        return next((guid for guid, name in reasons.items() if _words(name) == wanted), "")

    @classmethod
    def describe(cls, checkpoint: dict[str, Any]) -> str:
        return describe_window(checkpoint, "from", "to")


def _words(text: str) -> str:
    return " ".join(re.split(r"[\s_-]+", text.strip().lower()))
