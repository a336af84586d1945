"""A python-threatexchange exchange that subscribes to a hashmesh node's change feed.

Load it with `threatexchange config extensions add node.integrations.threatexchange`, then
`threatexchange config collab edit hashmesh NAME --create --url http://NODE:7400`; the
token comes from TX_HASHMESH_TOKEN or ~/.tx_hashmesh_token (pytx's `config api` command
only knows its built-in exchanges, so an extension cannot store credentials there).

Fetched records are keyed by op id, not by hash: two organisations may publish the same
hash, and one revoking its add must not delete the other's. A revocation in the feed
becomes a deletion of exactly the add it names; opinions are merged into the add they
concern. The feed cursor is the checkpoint, so a fetch resumes where the last one ended
and never expires (revocations stay in the feed forever).

No `from __future__ import annotations` here: pytx builds its CLI arguments from the
config dataclass's runtime field types.
"""

import json
import typing as t
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace

from threatexchange.exchanges import auth
from threatexchange.exchanges import fetch_state as state
from threatexchange.exchanges.collab_config import CollaborationConfigWithDefaults
from threatexchange.exchanges.signal_exchange_api import SignalExchangeAPI
from threatexchange.extensions.manifest import ThreatExchangeExtensionManifest
from threatexchange.signal_type.md5 import VideoMD5Signal
from threatexchange.signal_type.pdq.signal import PdqSignal
from threatexchange.signal_type.sha256 import VideoSHA256Signal
from threatexchange.signal_type.signal_base import SignalType

# hashmesh signal type -> pytx SignalType. sha1 and photodna have no pytx type: skipped.
SIGNAL_TYPES: dict[str, type[SignalType]] = {
    "pdq": PdqSignal,
    "md5": VideoMD5Signal,
    "sha256": VideoSHA256Signal,
}
HASHMESH_TYPE_OF = {st.get_name(): name for name, st in SIGNAL_TYPES.items()}
PAGE_SIZE = 10_000
TIMEOUT_S = 60.0
_VERDICT_OF = {
    state.SignalOpinionCategory.NEGATIVE_CLASS: "dispute",
    state.SignalOpinionCategory.POSITIVE_CLASS: "confirm",
    state.SignalOpinionCategory.INVESTIGATION_SEED: "seen",
}


@dataclass
class _RequiredFields:
    url: str = field(metadata={"help": "the node's API address, e.g. http://127.0.0.1:7400"})


@dataclass
class HashmeshCollabConfig(CollaborationConfigWithDefaults, _RequiredFields):
    collection: str = field(
        default="",
        metadata={"help": "only this collection (default: all the token may read)"},
    )


@dataclass
class HashmeshCredentials(auth.CredentialHelper):
    ENV_VARIABLE: t.ClassVar[str] = "TX_HASHMESH_TOKEN"
    FILE_NAME: t.ClassVar[str] = "~/.tx_hashmesh_token"

    token: str

    @classmethod
    def _from_str(cls, s: str) -> "HashmeshCredentials":
        return cls(s.strip())

    def _are_valid(self) -> bool:
        return bool(self.token)


@dataclass
class HashmeshCheckpoint(state.FetchCheckpointBase):
    cursor: int
    progress_time: int = 0

    def get_progress_timestamp(self) -> int | None:
        return self.progress_time or None


@dataclass
class HashmeshSignalMetadata(state.FetchedSignalMetadata):
    """One add (or, with opinion_update, only a change of opinions on one)."""

    signal_type: str = ""
    signal: str = ""
    op_ids: list[str] = field(default_factory=list)
    authors: list[str] = field(default_factory=list)
    collection: str = ""
    category: str = ""
    classification: str = ""
    verdicts: dict[str, str] = field(default_factory=dict)
    opinion_update: bool = False

    def get_as_opinions(self) -> t.Sequence[state.SignalOpinion]:
        tags = {self.category} | ({self.classification} if self.classification else set())
        opinions = [
            state.SignalOpinion(False, state.SignalOpinionCategory.POSITIVE_CLASS, tags)
            for _ in self.authors or [""]
        ]
        for verdict in self.verdicts.values():
            category = (
                state.SignalOpinionCategory.NEGATIVE_CLASS
                if verdict == "dispute"
                else state.SignalOpinionCategory.POSITIVE_CLASS
            )
            opinions.append(state.SignalOpinion(False, category, set()))
        return opinions

    def with_verdicts(self, verdicts: dict[str, str]) -> "HashmeshSignalMetadata":
        merged = dict(self.verdicts)
        for author, verdict in verdicts.items():
            if verdict == "retract":
                merged.pop(author, None)
            else:
                merged[author] = verdict
        return replace(self, verdicts=merged)

    def combined(self, other: "HashmeshSignalMetadata") -> "HashmeshSignalMetadata":
        """The same hash published by several authors: one index entry with all of them."""
        return replace(
            self,
            op_ids=self.op_ids + other.op_ids,
            authors=self.authors + other.authors,
            verdicts={**self.verdicts, **other.verdicts},
        )


Updates = dict[str, HashmeshSignalMetadata | None]


class HashmeshSignalExchangeAPI(
    auth.SignalExchangeWithAuth[HashmeshCollabConfig, HashmeshCredentials],
    SignalExchangeAPI[
        HashmeshCollabConfig,
        HashmeshCheckpoint,
        HashmeshSignalMetadata,
        str,
        HashmeshSignalMetadata,
    ],
):
    """A hashmesh node's change feed as a pytx exchange (fetch, opinions)."""

    def __init__(self, collab: HashmeshCollabConfig, token: str) -> None:
        self.collab = collab
        self.token = token
        self.base = collab.url.rstrip("/")

    @classmethod
    def get_name(cls) -> str:
        return "hashmesh"

    @staticmethod
    def get_config_cls() -> type[HashmeshCollabConfig]:
        return HashmeshCollabConfig

    @staticmethod
    def get_checkpoint_cls() -> type[HashmeshCheckpoint]:
        return HashmeshCheckpoint

    @staticmethod
    def get_record_cls() -> type[HashmeshSignalMetadata]:
        return HashmeshSignalMetadata

    @staticmethod
    def get_credential_cls() -> type[HashmeshCredentials]:
        return HashmeshCredentials

    @classmethod
    def for_collab(
        cls,
        collab: HashmeshCollabConfig,
        credentials: HashmeshCredentials | None = None,
    ) -> "HashmeshSignalExchangeAPI":
        credentials = credentials or HashmeshCredentials.get(cls)
        return cls(collab, credentials.token)

    # -- HTTP ----------------------------------------------------------------------------

    def _call(self, method: str, path: str, body: t.Any = None) -> t.Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code}"
            if exc.code == 401:
                raise auth.SignalExchangeAPIInvalidAuthException(type(self), message) from None
            raise RuntimeError(f"hashmesh node {self.base}: {message}") from None

    # -- fetching ------------------------------------------------------------------------

    @classmethod
    def fetch_value_merge(
        cls,
        old: HashmeshSignalMetadata | None,
        new: HashmeshSignalMetadata | None,
    ) -> HashmeshSignalMetadata | None:
        if new is None or not new.opinion_update:
            return new
        if old is None:
            return None  # an opinion on an add we do not hold (other type, or revoked)
        return old.with_verdicts(new.verdicts)

    def fetch_iter(
        self,
        supported_signal_types: t.Sequence[type[SignalType]],
        checkpoint: HashmeshCheckpoint | None,
    ) -> t.Iterator[state.FetchDelta[str, HashmeshSignalMetadata, HashmeshCheckpoint]]:
        wanted = {st.get_name() for st in supported_signal_types}
        cursor = checkpoint.cursor if checkpoint else 0
        progress = checkpoint.progress_time if checkpoint else 0
        while True:
            query = {"after": cursor, "limit": PAGE_SIZE}
            if self.collab.collection:
                query["collection"] = self.collab.collection  # type: ignore[assignment]
            page = self._call("GET", "/v1/feed?" + urllib.parse.urlencode(query))
            updates: Updates = {}
            for entry in page["entries"]:
                self._take(entry, wanted, updates)
                progress = max(progress, int(entry.get("at", 0)) // 1000)
            cursor = int(page["next"])
            if page["entries"]:
                yield state.FetchDelta(updates, HashmeshCheckpoint(cursor, progress))
            if not page["more"]:
                return

    def _take(self, entry: dict[str, t.Any], wanted: set[str], updates: Updates) -> None:
        kind = entry["kind"]
        if kind == "add":
            signal_type = SIGNAL_TYPES.get(entry["type"])
            if signal_type is None or signal_type.get_name() not in wanted:
                return
            updates[entry["op_id"]] = HashmeshSignalMetadata(
                signal_type=signal_type.get_name(),
                signal=entry["value"],
                op_ids=[entry["op_id"]],
                authors=[entry.get("author_name") or entry["author"]],
                collection=entry["collection"],
                category=entry.get("category", ""),
                classification=entry.get("classification", ""),
            )
        elif kind == "revoke":
            updates[entry["target"]] = None
        elif kind == "opinion" and entry["opinion"] in ("confirm", "dispute", "retract"):
            key = entry["target"]
            change = HashmeshSignalMetadata(
                verdicts={entry["author"]: entry["opinion"]}, opinion_update=True
            )
            if key not in updates:
                updates[key] = change
            else:
                held = updates[key]
                updates[key] = None if held is None else held.with_verdicts(change.verdicts)

    @classmethod
    def naive_convert_to_signal_type(
        cls,
        signal_types: t.Sequence[type[SignalType]],
        collab: HashmeshCollabConfig,
        fetched: t.Mapping[str, HashmeshSignalMetadata],
    ) -> dict[type[SignalType], dict[str, HashmeshSignalMetadata]]:
        by_name = {st.get_name(): st for st in signal_types}
        out: dict[type[SignalType], dict[str, HashmeshSignalMetadata]] = {}
        for record in fetched.values():
            if record is None or record.opinion_update:
                continue
            signal_type = by_name.get(record.signal_type)
            if signal_type is None:
                continue
            inner = out.setdefault(signal_type, {})
            held = inner.get(record.signal)
            inner[record.signal] = record if held is None else held.combined(record)
        return out

    # -- opinions ------------------------------------------------------------------------

    def report_opinion(
        self,
        s_type: type[SignalType],
        signal: str,
        opinion: state.SignalOpinion,
    ) -> None:
        """Publish an opinion op on every live add of this hash: dispute for a false
        positive (NEGATIVE_CLASS), confirm for a true one, seen for an investigation seed.

        The token needs the `match` scope (to find the adds) and `publish`."""
        hm_type = HASHMESH_TYPE_OF.get(s_type.get_name())
        if hm_type is None:
            raise ValueError(f"hashmesh has no signal type for {s_type.get_name()}")
        value = signal.strip().lower()
        found = self._call(
            "POST", "/v1/match", {"queries": [{"type": hm_type, "value": value}], "threshold": 0}
        )
        op_ids = [
            m["op_id"]
            for m in found["results"][0]["matches"]
            if m["type"] == hm_type
            and m["value"] == value
            and (not self.collab.collection or m["collection"] == self.collab.collection)
        ]
        if not op_ids:
            raise ValueError(f"no live {hm_type} {value} on the hashmesh node {self.base}")
        verdict = _VERDICT_OF[opinion.category]
        for op_id in op_ids:
            self._call("POST", "/v1/opinions", {"op_id": op_id, "opinion": verdict})


TX_MANIFEST = ThreatExchangeExtensionManifest(apis=(HashmeshSignalExchangeAPI,))
