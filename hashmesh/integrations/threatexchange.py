"""A python-threatexchange exchange that subscribes to a hashmesh node's change feed.

Load it with `threatexchange config extensions add hashmesh.integrations.threatexchange`, then
`threatexchange config collab edit hashmesh NAME --create --url http://NODE:7400`; the
token comes from TX_HASHMESH_TOKEN or ~/.tx_hashmesh_token (pytx's `config api` command
only knows its built-in exchanges, so an extension cannot store credentials there).

Fetched records are keyed by op id, not by hash: two organisations may publish the same
hash, and one revoking its add must not delete the other's. A revocation in the feed
becomes a deletion of exactly the add it names. Every record is complete: an opinion
becomes a whole new record of the add it concerns (type, value, labels and all opinions
on it as the node holds them), never a partial one. HMA replaces a record with
`dict.update` and converts each one on its own (a record that converts to no signal is a
delete), so a partial record would delete the add; pytx's CLI merges with
`fetch_value_merge`, which here just takes the newer record. The feed cursor is the
checkpoint, so a fetch resumes where the last one ended and never expires (revocations
stay in the feed forever).

One credential per node. HMA and pytx keep one credential per exchange *type*
(`get_name()`), so two hashmesh nodes with different tokens need two types:
`exchange_api("police")` returns a class named `hashmesh_police` whose token comes from
its own credential (in HMA `POST /c/exchanges/api/hashmesh_police`), else
TX_HASHMESH_TOKEN_POLICE, else ~/.tx_hashmesh_token_police. List each one in HMA's
`exchange_types`. Alternatively a collab config names its token's environment variable
(`token_env`) or file (`token_file`), which then wins over the stored credential.

Collab options: `collection` (only one collection), `drop_disputed` (leave out adds that
any author readable with the token disputes) and `min_confirmations` (leave out adds
confirmed by fewer authors). Both act where records become signals, so in HMA a dispute
removes the hash from the bank at the next fetch and a retraction brings it back.

The node's match policy reaches consumers marked, not hidden: a feed entry the node holds
back (negative list, suppressed, quarantined, below quorum, review required ...) carries
`policy`, kept in the record as `held_back` and shown as a pytx opinion tagged
`policy:VERDICT` (NEGATIVE_CLASS, so pytx shows DISPUTED; INVESTIGATION_SEED for
review_required). `drop_held_back` leaves such adds out instead.

A `vpdq` reaches pytx and HMA as the vpdq extension's own signal string (its JSON form,
what `vpdq_to_json` writes), so an HMA bank with the vpdq extension matches it; the
extension itself needs Meta's `vpdq` binding, which only HMA's image installs.

`HashmeshSignalMetadata` is pickled by HMA and pytx under this module path: its path and
field names are a compatibility promise; new fields get immutable defaults, so records
pickled by older versions still load. Version 0.1 lived at `node.integrations.threatexchange`
(a top-level `node` package); importing this module makes that old path resolve here, so
HMA's stored records of 0.1 still unpickle (see `_LegacyPath`).

No `from __future__ import annotations` here: pytx builds its CLI arguments from the
config dataclass's runtime field types.
"""

import importlib.abc
import importlib.machinery
import json
import os
import re
import sys
import types
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
# hashmesh type -> pytx type name, for pytx types whose class cannot always be imported:
# pytx's vpdq extension imports Meta's `vpdq` binding, which HMA installs but pip cannot.
PYTX_NAMES: dict[str, str] = {
    **{name: st.get_name() for name, st in SIGNAL_TYPES.items()},
    "vpdq": "vpdq",
}
HASHMESH_TYPE_OF = {pytx: name for name, pytx in PYTX_NAMES.items()}
PAGE_SIZE = 10_000
TIMEOUT_S = 60.0
MAX_TOKEN_BYTES = 4096
_NODE_NAME = re.compile(r"[a-z0-9][a-z0-9_]{0,39}")
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
    drop_disputed: bool = field(
        default=False,
        metadata={"help": "leave out adds disputed by any author the token can read"},
    )
    min_confirmations: int = field(
        default=0,
        metadata={"help": "leave out adds confirmed by fewer authors than this"},
    )
    drop_held_back: bool = field(
        default=False,
        metadata={"help": "leave out adds the node's match policy holds back (default: mark)"},
    )
    token_env: str = field(
        default="",
        metadata={"help": "read the token from this environment variable"},
    )
    token_file: str = field(
        default="",
        metadata={"help": "read the token from this file"},
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

    @classmethod
    def named_by(cls, collab: "HashmeshCollabConfig") -> "HashmeshCredentials | None":
        """The token a collab config points at (token_env, then token_file), if it does."""
        if collab.token_env:
            value = os.environ.get(collab.token_env, "").strip()
            if not value:
                raise ValueError(f"token_env: environment variable {collab.token_env} is empty")
            return cls(value)
        if collab.token_file:
            path = os.path.expanduser(collab.token_file)
            try:
                with open(path, "rb") as f:
                    raw = f.read(MAX_TOKEN_BYTES + 1)
            except OSError as exc:
                raise ValueError(f"token_file: cannot read {path}: {exc.strerror}") from None
            if len(raw) > MAX_TOKEN_BYTES:
                raise ValueError(f"token_file: {path} is over {MAX_TOKEN_BYTES} bytes")
            value = raw.decode("utf-8", "replace").strip()
            if not value:
                raise ValueError(f"token_file: {path} is empty")
            return cls(value)
        return None


@dataclass
class HashmeshCheckpoint(state.FetchCheckpointBase):
    cursor: int
    progress_time: int = 0

    def get_progress_timestamp(self) -> int | None:
        return self.progress_time or None


@dataclass
class HashmeshSignalMetadata(state.FetchedSignalMetadata):
    """One add, complete: its hash, labels, and every author's verdict on it.

    `verdicts` maps an opinion author's node id to confirm or dispute. `opinion_update` is
    kept for records pickled by versions before 2026-12 and is never set now."""

    signal_type: str = ""
    signal: str = ""
    op_ids: list[str] = field(default_factory=list)
    authors: list[str] = field(default_factory=list)
    collection: str = ""
    category: str = ""
    classification: str = ""
    verdicts: dict[str, str] = field(default_factory=dict)
    opinion_update: bool = False
    ref: str = ""
    author_ids: tuple[str, ...] = ()
    verdict_names: tuple[tuple[str, str], ...] = ()
    # (op id, verdict, reasons) of each add the node's match policy holds back.
    held_back: tuple[tuple[str, str, str], ...] = ()

    @property
    def confirmations(self) -> int:
        return sum(1 for v in self.verdicts.values() if v == "confirm")

    @property
    def disputes(self) -> int:
        return sum(1 for v in self.verdicts.values() if v == "dispute")

    def tags(self) -> set[str]:
        """Labels as pytx tags: category, classification, collection:C, author:NAME, ref:R."""
        tags = {self.category} if self.category else set()
        if self.classification:
            tags.add(self.classification)
        if self.collection:
            tags.add(f"collection:{self.collection}")
        if self.ref:
            tags.add(f"ref:{self.ref}")
        tags.update(f"author:{a}" for a in self.authors)
        tags.update(f"policy:{verdict}" for _, verdict, _ in self.held_back)
        return tags

    def get_as_opinions(self) -> t.Sequence[state.SignalOpinion]:
        """The publishers' positive opinions with the labels as tags, then one opinion per
        other author's verdict, tagged with who said it (pytx shows a dispute as DISPUTED)."""
        tags = self.tags()
        opinions = [
            state.SignalOpinion(False, state.SignalOpinionCategory.POSITIVE_CLASS, tags)
            for _ in self.authors or [""]
        ]
        names = dict(self.verdict_names)
        for author, verdict in sorted(self.verdicts.items()):
            category = (
                state.SignalOpinionCategory.NEGATIVE_CLASS
                if verdict == "dispute"
                else state.SignalOpinionCategory.POSITIVE_CLASS
            )
            who = names.get(author) or author
            opinions.append(state.SignalOpinion(False, category, {f"{verdict}:{who}"}))
        for _, verdict, _ in self.held_back:
            category = (
                state.SignalOpinionCategory.INVESTIGATION_SEED
                if verdict == "review_required"
                else state.SignalOpinionCategory.NEGATIVE_CLASS
            )
            opinions.append(state.SignalOpinion(False, category, {f"policy:{verdict}"}))
        return opinions

    def passes(self, collab: "HashmeshCollabConfig") -> bool:
        """Whether the collab's drop_disputed / min_confirmations let this add through."""
        if getattr(collab, "drop_disputed", False) and self.disputes >= 1:
            return False
        if getattr(collab, "drop_held_back", False) and self.held_back:
            return False
        return self.confirmations >= getattr(collab, "min_confirmations", 0)

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
            author_ids=self.author_ids + other.author_ids,
            verdict_names=self.verdict_names + other.verdict_names,
            held_back=self.held_back + other.held_back,
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
        credentials = (
            credentials or HashmeshCredentials.named_by(collab) or cls.get_credential_cls().get(cls)
        )
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
        """Records are complete, so the newer one is the state (as HMA's dict.update has
        it). A partial record from an older version merges into the held one."""
        if new is not None and new.opinion_update:
            return None if old is None else old.with_verdicts(new.verdicts)
        return new

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
            record = _record(
                entry, wanted, entry["op_id"], entry["author"], entry.get("author_name")
            )
            if record is not None:
                updates[entry["op_id"]] = record
        elif kind == "revoke":
            updates[entry["target"]] = None
        elif kind == "opinion" and entry.get("target_live") is True:
            # The whole add again with the opinions as they now stand; an opinion on an
            # add the node does not hold, or one already revoked, changes nothing.
            target = entry["target"]
            record = _record(
                entry, wanted, target, entry["target_author"], entry.get("target_author_name")
            )
            if record is not None:
                updates[target] = record

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
            if record is None or record.opinion_update or not record.passes(collab):
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
        value = signal.strip() if hm_type == "vpdq" else signal.strip().lower()
        found = self._call(
            "POST", "/v1/match", {"queries": [{"type": hm_type, "value": value}], "threshold": 0}
        )
        op_ids = [
            m["op_id"]
            for m in found["results"][0]["matches"]
            if m["type"] == hm_type
            and _as_pytx(hm_type, m["value"]) == value
            and (not self.collab.collection or m["collection"] == self.collab.collection)
        ]
        if not op_ids:
            raise ValueError(f"no live {hm_type} {value} on the hashmesh node {self.base}")
        verdict = _VERDICT_OF[opinion.category]
        for op_id in op_ids:
            self._call("POST", "/v1/opinions", {"op_id": op_id, "opinion": verdict})


def _record(
    entry: dict[str, t.Any], wanted: set[str], op_id: str, author: str, author_name: str | None
) -> HashmeshSignalMetadata | None:
    kind = entry.get("type", "")
    pytx_name = PYTX_NAMES.get(kind)
    if pytx_name is None or pytx_name not in wanted:
        return None
    verdicts = {str(a): str(v) for a, v in (entry.get("verdicts") or {}).items()}
    names = entry.get("verdict_names") or {}
    policy = entry.get("policy")
    held: tuple[tuple[str, str, str], ...] = ()
    if isinstance(policy, dict) and isinstance(policy.get("verdict"), str):
        reasons = policy.get("reasons") or []
        held = ((op_id, policy["verdict"], "; ".join(str(r) for r in reasons)),)
    return HashmeshSignalMetadata(
        signal_type=pytx_name,
        signal=_as_pytx(kind, entry["value"]),
        op_ids=[op_id],
        authors=[author_name or author],
        collection=op_id.split("/")[1] if op_id.count("/") == 3 else entry["collection"],
        category=entry.get("category", ""),
        classification=entry.get("classification", ""),
        verdicts=verdicts,
        ref=entry.get("ref", ""),
        author_ids=(author,),
        verdict_names=tuple(sorted((str(a), str(n)) for a, n in names.items() if a in verdicts)),
        held_back=held,
    )


def _as_pytx(kind: str, value: str) -> str:
    """A value as pytx spells it. A vpdq (frames `NUMBER,QUALITY,PDQ,SECONDS` joined by
    spaces, docs/protocol.md) becomes pytx's JSON form, exactly `vpdq_to_json`'s bytes; this
    module imports nothing of hashmesh's, so protocol/signals.py's `to_pytx` is restated."""
    if kind != "vpdq":
        return value
    frames = []
    for frame in value.split(" "):
        _, quality, pdq, seconds = frame.split(",")
        frames.append(f"{pdq},{quality},{float(seconds):.3}")
    return json.dumps(frames)


_PER_NODE: dict[str, type[HashmeshSignalExchangeAPI]] = {}


def exchange_api(name: str) -> type[HashmeshSignalExchangeAPI]:
    """An exchange type of its own for one node, so its token is kept apart from the
    others': get_name() is `hashmesh_NAME`, the credential class reads
    TX_HASHMESH_TOKEN_NAME or ~/.tx_hashmesh_token_NAME. The same name gives the same
    class (HMA and pytx compare classes). NAME: lower-case letters, digits, `_`, 1-40."""
    if not _NODE_NAME.fullmatch(name):
        raise ValueError(
            f"exchange name {name!r}: use 1-40 lower-case letters, digits or _, starting"
            " with a letter or digit"
        )
    held = _PER_NODE.get(name)
    if held is not None:
        return held
    suffix = "".join(part.capitalize() for part in name.split("_"))
    credentials = type(
        f"HashmeshCredentials{suffix}",
        (HashmeshCredentials,),
        {
            "ENV_VARIABLE": f"TX_HASHMESH_TOKEN_{name.upper()}",
            "FILE_NAME": f"~/.tx_hashmesh_token_{name}",
            "_DEFAULT": None,
            "_DEFAULT_SRC": "",
            "__module__": __name__,
        },
    )
    credentials = dataclass(credentials)

    def get_name(cls: type) -> str:
        return f"hashmesh_{name}"

    def get_credential_cls() -> type[HashmeshCredentials]:
        return credentials

    api = type(
        f"HashmeshSignalExchangeAPI{suffix}",
        (HashmeshSignalExchangeAPI,),
        {
            "get_name": classmethod(get_name),
            "get_credential_cls": staticmethod(get_credential_cls),
            "__module__": __name__,
            "__doc__": f"The hashmesh node {name!r} as an exchange of its own.",
        },
    )
    _PER_NODE[name] = api
    return api


TX_MANIFEST = ThreatExchangeExtensionManifest(apis=(HashmeshSignalExchangeAPI,))


_LEGACY_MODULE = "node.integrations.threatexchange"
_LEGACY_PARENTS = ("node", "node.integrations")


class _LegacyPath(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolve 0.1's module path `node.integrations.threatexchange` to this module.

    HMA unpickles fetched records with `find_class`, which imports the module path stored
    in each pickle; 0.1 stored `node.integrations...`. The finder sits last on
    `sys.meta_path`, so it answers only when no installed package provides the name: a
    real `node` package elsewhere is never shadowed (its records then need the package
    that wrote them). The parents it makes are empty packages holding nothing else.
    """

    def find_spec(
        self,
        fullname: str,
        path: t.Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == _LEGACY_MODULE:
            return importlib.machinery.ModuleSpec(fullname, self)
        if fullname in _LEGACY_PARENTS:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        if spec.name == _LEGACY_MODULE:
            return sys.modules[__name__]
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        if module.__name__ in _LEGACY_PARENTS:
            module.__path__ = []


if not any(isinstance(f, _LegacyPath) for f in sys.meta_path):
    sys.meta_path.append(_LegacyPath())
