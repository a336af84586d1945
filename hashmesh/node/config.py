"""The node's home folder and its TOML configuration (identity, listen address, policy).

Policy (peers and trusted authors) lives in the config so an operator can read and diff it;
the running node re-reads the file when it changes, so neither a CLI change nor a hand edit
needs a restart.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import tomllib
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any

import tomli_w

from hashmesh.node.errors import Conflict, HomeError, NodeError, NotFound
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.names import validate_collection, validate_node_id

CONFIG_FILE = "config.toml"
KEY_FILE = "node.key"
DB_FILE = "hashmesh.db"
ADMIN_TOKEN_FILE = "admin.token"
LOCK_FILE = "node.lock"
RUNTIME_FILE = "node.json"
DEFAULT_PORT = 7400
MAX_MATCH_WORKERS = 64


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise NodeError(f"listen address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:7400")
    return host.strip("[]"), int(port)


def check_url(url: str, what: str = "url") -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 500:
        raise NodeError(f"{what} {url!r}: must start with http:// or https://")
    return url.rstrip("/")


class _SettingError(ValueError):
    """A config.toml setting that is missing or of the wrong type, named by its TOML key."""


_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


def _table(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise _SettingError(f"[{key}]: expected a table, got {type(value).__name__}")
    return value


def _setting(data: dict[str, Any], key: str, kind: type, default: Any, where: str = "") -> Any:
    """One setting, type-checked, so a bad value is reported by its key, not by a traceback."""
    if key not in data:
        if default is None:
            raise _SettingError(f"{where}{key}: missing (required)")
        return default
    value = data[key]
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        raise _SettingError(f"{where}{key}: expected {_KINDS[kind]}, got {value!r}")
    return value


def _entries(data: dict[str, Any], key: str, kind: type) -> list[dict[str, Any]]:
    """[[peers]] / [[trust]] entries, each checked for unknown and missing keys."""
    value = data.get(key, [])
    if not isinstance(value, list):
        raise _SettingError(f"{key}: expected [[{key}]] tables, got {type(value).__name__}")
    fields = {f.name: f for f in dataclass_fields(kind)}
    required = [n for n, f in fields.items() if f.default is f.default_factory is MISSING]
    for i, entry in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(entry, dict):
            raise _SettingError(f"{where}: expected a table, got {type(entry).__name__}")
        for name in entry:
            if name not in fields:
                raise _SettingError(f"{where}.{name}: unknown setting (known: {', '.join(fields)})")
        for name in required:
            if name not in entry:
                raise _SettingError(f"{where}.{name}: missing (required)")
    return value


@dataclass
class Peer:
    name: str
    url: str
    node_id: str
    share: list[str] = field(default_factory=list)


@dataclass
class Trust:
    node_id: str
    collection: str
    name: str = ""
    # Labels a quorum may count by (matching/policy.py, quorum_by): the author's
    # organisation, and its country as ISO 3166-1 alpha-2 ("BE"). Empty: unlabelled.
    org: str = ""
    country: str = ""
    # "node": node_id is an author's node key (its own logs); "org": node_id is an
    # organisation key, and every node key it certified is trusted for the period
    # certified (issue 22; the authority, protocol/authority.py, decides per batch).
    kind: str = "node"


TRUST_KINDS = ("node", "org")


@dataclass
class Follow:
    """A collection whose writers and readers this node takes from a signed membership
    document (issue 22, hashmesh/node/membership.py): the steward org keys and threshold
    pinned here are what the document's version 1 must be signed by; later versions are
    verified by the version before them."""

    collection: str
    stewards: list[str]
    threshold: int


MAX_FOLLOWS = 256


@dataclass(frozen=True)
class MemberView:
    """What the membership documents in force say for the collections followed, built by
    node/membership.py from the statements held (not a TOML setting). Until it is built,
    a followed collection has no writers and no readers: closed, never open."""

    writers: dict[str, frozenset[str]] = field(default_factory=dict)  # ids, node or org
    # (node id, collection) -> may read by the document (listed, or certified now by a
    # listed org); None until built
    may_read: Callable[[str, str], bool] | None = None


_NO_MEMBERS = MemberView()


#: Upstream kinds a bridge can follow (hashmesh/node/bridges/ holds one class per kind).
BRIDGE_KINDS = ("ncmec", "stopncii", "threatexchange")
MAX_BRIDGES = 32


@dataclass
class Bridge:
    """A bridge (hashmesh/node/bridges/): an upstream hash API this node follows and
    publishes from into `collection`. Credentials are named, never held: a file (0600) or
    an environment variable."""

    name: str
    kind: str
    collection: str
    environment: str = ""  # the upstream's own name of it (pytx's), or "" with url
    url: str = ""  # any server speaking the API (staging, a test double)
    credentials_file: str = ""
    credentials_env: str = ""
    interval_s: float = 300.0
    timeout_s: float = 120.0  # an upstream call not answered by then is a failure
    category: str = ""  # "" : csam for ncmec, ncii for stopncii
    dispute_reason: str = ""  # NCMEC: the negative-feedback reason guid a dispute sends
    privacy_group: str = ""  # ThreatExchange: the privacy group (collaboration) id followed


def check_bridge(bridge: Bridge) -> None:
    """What config.toml can tell of a bridge by itself; the upstream kind checks its own
    environment names and credentials (hashmesh/node/bridges/)."""
    if not isinstance(bridge.name, str) or not _BRIDGE_NAME.fullmatch(bridge.name):
        raise NodeError(
            f"bridge name {str(bridge.name)[:70]!r}: must be 1-32 of a-z 0-9 _ -, starting"
            " with a letter or digit"
        )
    if bridge.kind not in BRIDGE_KINDS:
        raise NodeError(
            f"bridge kind {str(bridge.kind)[:40]!r}: must be one of {', '.join(BRIDGE_KINDS)}"
        )
    _check_collection(bridge.collection)
    if bridge.environment and bridge.url:
        raise NodeError("bridge: give an environment or a url, not both")
    if bridge.url:
        check_url(bridge.url, "bridge url")
    if bool(bridge.credentials_file) == bool(bridge.credentials_env):
        raise NodeError(
            "bridge credentials: name exactly one of a credentials file or an environment"
            " variable (the secret itself never goes into config.toml)"
        )
    if bridge.credentials_env and not _ENV_NAME.fullmatch(bridge.credentials_env):
        raise NodeError(
            f"bridge credentials_env {bridge.credentials_env[:70]!r}: not an environment"
            " variable name (A-Z, 0-9, _)"
        )
    if not 1 <= bridge.interval_s <= 86_400:
        raise NodeError(f"bridge interval {bridge.interval_s:g} s: must be 1-86400 seconds")
    if not 1 <= bridge.timeout_s <= 600:
        raise NodeError(f"bridge timeout {bridge.timeout_s:g} s: must be 1-600 seconds")
    if bridge.category and not _BRIDGE_NAME.fullmatch(bridge.category):
        raise NodeError(f"bridge category {bridge.category[:40]!r}: not a label")
    if len(bridge.environment) > 64 or len(bridge.dispute_reason) > 64:
        raise NodeError("bridge environment and dispute_reason: at most 64 characters")
    if bridge.privacy_group and not _PRIVACY_GROUP.fullmatch(bridge.privacy_group):
        raise NodeError(
            f"bridge privacy group {bridge.privacy_group[:40]!r}: must be a ThreatExchange"
            " privacy group id (1-20 digits)"
        )
    if bool(bridge.privacy_group) != (bridge.kind == "threatexchange"):
        raise NodeError(
            "bridge privacy group: a threatexchange bridge needs --privacy-group ID (the"
            " collaboration it follows); other kinds take none"
        )


_BRIDGE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_PRIVACY_GROUP = re.compile(r"[1-9][0-9]{0,19}")


@dataclass
class Config:
    name: str
    node_id: str
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    url: str = ""
    batch_size: int = 5000
    batch_delay_ms: int = 200
    apply_wait_ms: int = 100
    min_pdq_quality: int = 50
    sync_interval_s: float = 30.0
    fanout: int = 3
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    # Matcher worker processes (hashmesh/node/workers.py): 0 matches in the node process.
    match_workers: int = 0
    match_listen: str = "127.0.0.1:0"
    # The workers' nice value (0-19), set at their start: a node short of CPU publishes,
    # ingests and applies revocations before it matches, and matches wait
    # (docs/operators.md; 0 shares the CPU evenly).
    match_worker_nice: int = 10
    # Seconds between PDQ index checkpoints while the feed moves (matching/checkpoint.py):
    # what a restart replays, and how soon workers remap what they added in memory.
    index_checkpoint_s: int = 60
    peers: list[Peer] = field(default_factory=list)
    trust: list[Trust] = field(default_factory=list)
    bridges: list[Bridge] = field(default_factory=list)  # hashmesh/node/bridges/
    # -- self-report page ([selfreport], web/selfreport.py; off by default) -------------
    selfreport_enabled: bool = False
    selfreport_collection: str = "takeitdown"
    selfreport_pow_bits: int = 16
    selfreport_submits_per_hour: int = 5
    selfreport_checks_per_hour: int = 30
    selfreport_total_submits_per_hour: int = 500
    selfreport_max_files: int = 20
    selfreport_client_ip_header: str = ""
    selfreport_display_name: str = ""  # the hotline's name in the page header
    selfreport_logo: str = ""  # an image file in the node's home, served at /takeitdown/logo
    selfreport_site_url: str = ""  # https only
    selfreport_contact: dict[str, str] = field(default_factory=dict)  # language -> line
    # the logo file's bytes, read by Home.load_config (not a TOML setting)
    logo_image: Logo | None = field(default=None, repr=False, compare=False)
    # -- end self-report --------------------------------------------------------------
    # [[membership]]: collections that follow a steward-signed membership document
    memberships: list[Follow] = field(default_factory=list)

    # -- policy --------------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("trust", "peers"):
            self.__dict__.pop("_lookup", None)
        if name == "memberships":
            self.__dict__.pop("_follows", None)
        object.__setattr__(self, name, value)

    @property
    def members(self) -> MemberView:
        """What the membership documents in force say (node/membership.py sets it). Not a
        dataclass field: it holds the node's live read decision, which to_toml's asdict
        must never copy."""
        view = self.__dict__.get("_members")
        return view if isinstance(view, MemberView) else _NO_MEMBERS

    @members.setter
    def members(self, view: MemberView) -> None:
        self.__dict__["_members"] = view

    def follows(self, collection: str) -> Follow | None:
        """The membership anchor pinned for `collection`, if this node follows one."""
        index = self.__dict__.get("_follows")
        if index is None or len(index) != len(self.memberships):
            index = self.__dict__["_follows"] = {f.collection: f for f in self.memberships}
        return index.get(collection)

    @property
    def _index(self) -> _Lookup:
        """The trust and peer entries indexed by what they are looked up by: with thousands
        of authors a scan of the list per batch, feed entry or status row was the node's
        main cost (docs/design-notes.md, "Scale in participants"). Rebuilt after the lists
        are replaced (every method here replaces them) or change length in place."""
        index = self.__dict__.get("_lookup")
        if index is None or index.sizes != (len(self.trust), len(self.peers)):
            index = self.__dict__["_lookup"] = _Lookup(self.trust, self.peers)
        return index

    def accepts(self, author: str, collection: str) -> bool:
        """Whether batches by `author` in `collection` may be stored and relayed, by a
        trust entry of the author itself (an org's certificates are the authority's:
        node/authority.py asks `trusted_orgs` as well)."""
        if author == self.node_id:
            return True
        trusted = (author, collection) in self._index.trusted
        if self.follows(collection) is None:
            return trusted
        # a followed collection: the document's writers, narrowed by local entries if any
        if author not in self.members.writers.get(collection, frozenset()):
            return False
        return trusted or collection not in self._index.collections

    def trusted_orgs(self, collection: str) -> frozenset[str]:
        """Organisations trusted in `collection` (trust entries of kind org); in a followed
        collection the ids the document lists as writers (an id that is no org certifies
        nothing), narrowed by the local org entries when the collection has trust entries."""
        local = self._index.orgs.get(collection, frozenset())
        if self.follows(collection) is None:
            return local
        listed = self.members.writers.get(collection, frozenset())
        return listed & local if collection in self._index.collections else listed

    def has_org_trust(self) -> bool:
        return bool(self._index.orgs) or bool(self.memberships)

    def accepted_collections(self) -> set[str]:
        """Collections with at least one trusted author (besides our own logs), and the
        collections followed by membership."""
        return set(self._index.collections) | {f.collection for f in self.memberships}

    def trust_labels(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(author, collection): (org, country) of every labelled trust entry. Shared,
        not copied: callers only read it."""
        return self._index.labels

    def accepts_collection(self, collection: str) -> bool:
        return collection in self._index.collections or self.follows(collection) is not None

    def peer(self, node_id: str) -> Peer | None:
        return self._index.peers.get(node_id)

    def peer_may_read(self, node_id: str, collection: str) -> bool:
        """A peer whose share list names the collection; in a followed collection, also
        one the document in force lets read (the share list narrows, never widens it)."""
        peer = self.peer(node_id)
        if peer is None or collection not in peer.share:
            return False
        if self.follows(collection) is None:
            return True
        may_read = self.members.may_read
        return may_read is not None and may_read(node_id, collection)

    def follow(self, entry: Follow) -> None:
        """Follow (or re-pin) a collection's membership: the anchor replaces an older one."""
        check_follow(entry)
        rest = [f for f in self.memberships if f.collection != entry.collection]
        if len(rest) >= MAX_FOLLOWS:
            raise NodeError(f"membership: at most {MAX_FOLLOWS} collections followed")
        self.memberships = [*rest, entry]

    def unfollow(self, collection: str) -> Follow:
        entry = self.follows(collection)
        if entry is None:
            raise NotFound(f"membership {collection!r}: this node does not follow it")
        self.memberships = [f for f in self.memberships if f.collection != collection]
        return entry

    def author_name(self, node_id: str) -> str:
        if node_id == self.node_id:
            return self.name
        name = self._index.names.get(node_id)
        if name:
            return name
        peer = self.peer(node_id)
        return peer.name if peer else ""

    def peer_named(self, name: str) -> Peer:
        peer = next((p for p in self.peers if p.name == name), None)
        if peer is None:
            known = ", ".join(p.name for p in self.peers) or "none"
            raise NotFound(f"peer {name!r}: no such peer (peers: {known}; see hashmesh peer list)")
        return peer

    def _check_peer(self, peer: Peer) -> None:
        validate_name(peer.name, "peer name")
        check_url(peer.url, "peer url")
        _check_node_id(peer.node_id)
        if peer.node_id == self.node_id:
            raise NodeError("peer node id: that is this node's own id")
        for c in peer.share:
            _check_collection(c)

    def add_peer(self, peer: Peer) -> None:
        """A new peer only: replacing one silently (as `peer add` once did) dropped the
        collections it read, so an existing name or node id is refused, naming the entry
        and the command that changes it."""
        self._check_peer(peer)
        for p in self.peers:
            if p.name == peer.name or p.node_id == peer.node_id:
                same = "name" if p.name == peer.name else "node id"
                raise Conflict(
                    f"peer {p.name!r} already exists with this {same} (url {p.url}, node id"
                    f" {p.node_id}, reads: {', '.join(p.share) or 'nothing'}); nothing changed."
                    f" To change it: hashmesh peer update {p.name} [--url URL] [--node-id ID],"
                    f" hashmesh peer share {p.name} COLLECTION; to replace it: hashmesh peer"
                    f" remove {p.name}, then add it again"
                )
        self.peers = [*self.peers, peer]

    def update_peer(
        self,
        name: str,
        url: str | None = None,
        node_id: str | None = None,
        share: list[str] | None = None,
    ) -> Peer:
        old = self.peer_named(name)
        new = Peer(
            name=name,
            url=old.url if url is None else check_url(url, "peer url"),
            node_id=old.node_id if node_id is None else node_id,
            share=list(old.share) if share is None else sorted(set(share)),
        )
        self._check_peer(new)
        other = next((p for p in self.peers if p.node_id == new.node_id and p.name != name), None)
        if other is not None:
            raise Conflict(
                f"peer node id {new.node_id}: already the node id of peer {other.name!r}"
            )
        self.peers = [new if p.name == name else p for p in self.peers]
        return new

    def remove_peer(self, name: str) -> Peer:
        peer = self.peer_named(name)
        self.peers = [p for p in self.peers if p.name != name]
        return peer

    def add_trust(self, trust: Trust) -> None:
        _check_node_id(trust.node_id)
        _check_trust_kind(trust.kind)
        _check_collection(trust.collection)
        if trust.name:
            validate_name(trust.name, "name")
        check_trust_labels(trust)
        self.trust = [
            *(
                t
                for t in self.trust
                if not (t.node_id == trust.node_id and t.collection == trust.collection)
            ),
            trust,
        ]

    def remove_trust(self, node_id: str, collection: str) -> Trust:
        _check_node_id(node_id)
        _check_collection(collection)
        entry = next(
            (t for t in self.trust if t.node_id == node_id and t.collection == collection), None
        )
        if entry is None:
            held = [t.collection for t in self.trust if t.node_id == node_id]
            raise NotFound(
                f"author {node_id} is not trusted in {collection!r}; nothing changed"
                f" (trusted in: {', '.join(held) or 'nothing'}; see hashmesh trust list)"
            )
        self.trust = [t for t in self.trust if t is not entry]
        return entry

    # -- serialisation -------------------------------------------------------------------

    def to_toml(self) -> str:
        data: dict[str, Any] = {
            "name": self.name,
            "node_id": self.node_id,
            "listen": self.listen,
            "url": self.url,
            **(
                {"match_workers": self.match_workers, "match_listen": self.match_listen}
                if self.match_workers or self.match_listen != Config.match_listen
                else {}
            ),
            **(
                {"match_worker_nice": self.match_worker_nice}
                if self.match_worker_nice != Config.match_worker_nice
                else {}
            ),
            **(
                {"index_checkpoint_s": self.index_checkpoint_s}
                if self.index_checkpoint_s != Config.index_checkpoint_s
                else {}
            ),
            "publish": {
                "batch_size": self.batch_size,
                "batch_delay_ms": self.batch_delay_ms,
                "apply_wait_ms": self.apply_wait_ms,
                "min_pdq_quality": self.min_pdq_quality,
            },
            "sync": {"interval_s": self.sync_interval_s, "fanout": self.fanout},
            "tls": {"cert": self.tls_cert, "key": self.tls_key, "ca": self.tls_ca},
            "peers": [asdict(p) for p in self.peers],
            "trust": [
                {
                    k: v
                    for k, v in asdict(t).items()
                    if (v or k not in ("org", "country")) and (k != "kind" or v != "node")
                }
                for t in self.trust
            ],
        }
        if self.memberships:  # hashmesh/node/membership.py
            data["membership"] = [asdict(f) for f in self.memberships]
        if self.bridges:  # hashmesh/node/bridges/
            data["bridges"] = [
                {k: v for k, v in asdict(b).items() if v != "" or k in ("name", "kind")}
                for b in self.bridges
            ]
        data["selfreport"] = {  # self-report page (hashmesh/node/web/selfreport.py)
            k.removeprefix("selfreport_"): v
            for k, v in asdict(self).items()
            if k.startswith("selfreport_")
        }
        return tomli_w.dumps(data)

    @classmethod
    def from_toml(cls, text: str, source: str = CONFIG_FILE) -> Config:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise HomeError(f"config {source}: not valid TOML: {exc}") from None
        try:
            publish = _table(data, "publish")
            sync = _table(data, "sync")
            tls = _table(data, "tls")
            config = cls(
                name=_setting(data, "name", str, None),
                node_id=_setting(data, "node_id", str, None),
                listen=_setting(data, "listen", str, cls.listen),
                url=_setting(data, "url", str, ""),
                match_workers=_setting(data, "match_workers", int, cls.match_workers),
                match_listen=_setting(data, "match_listen", str, cls.match_listen),
                match_worker_nice=_setting(data, "match_worker_nice", int, cls.match_worker_nice),
                index_checkpoint_s=_setting(
                    data, "index_checkpoint_s", int, cls.index_checkpoint_s
                ),
                batch_size=_setting(publish, "batch_size", int, cls.batch_size, "publish."),
                batch_delay_ms=_setting(
                    publish, "batch_delay_ms", int, cls.batch_delay_ms, "publish."
                ),
                apply_wait_ms=_setting(
                    publish, "apply_wait_ms", int, cls.apply_wait_ms, "publish."
                ),
                min_pdq_quality=_setting(
                    publish, "min_pdq_quality", int, cls.min_pdq_quality, "publish."
                ),
                sync_interval_s=_setting(sync, "interval_s", float, cls.sync_interval_s, "sync."),
                fanout=_setting(sync, "fanout", int, cls.fanout, "sync."),
                tls_cert=_setting(tls, "cert", str, "", "tls."),
                tls_key=_setting(tls, "key", str, "", "tls."),
                tls_ca=_setting(tls, "ca", str, "", "tls."),
                peers=[Peer(**p) for p in _entries(data, "peers", Peer)],
                trust=[Trust(**t) for t in _entries(data, "trust", Trust)],
                bridges=[Bridge(**b) for b in _entries(data, "bridges", Bridge)],
                memberships=[Follow(**m) for m in _entries(data, "membership", Follow)],
                **_selfreport_fields(data.get("selfreport", {})),  # hashmesh/node/web/selfreport.py
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise HomeError(f"config {source}: {exc}") from None
        try:
            parse_listen(config.listen)
        except NodeError as exc:
            raise HomeError(f"config {source}: listen: {exc}") from None
        try:
            parse_listen(config.match_listen)
        except NodeError as exc:
            raise HomeError(f"config {source}: match_listen: {exc}") from None
        if not 0 <= config.match_workers <= MAX_MATCH_WORKERS:
            raise HomeError(f"config {source}: match_workers must be 0-{MAX_MATCH_WORKERS}")
        if not 0 <= config.match_worker_nice <= 19:
            raise HomeError(f"config {source}: match_worker_nice must be 0-19 (a nice value)")
        if not 1 <= config.index_checkpoint_s <= 86_400:
            raise HomeError(f"config {source}: index_checkpoint_s must be 1-86400 (seconds)")
        if not 1 <= config.batch_size <= 10_000:
            raise HomeError(f"config {source}: publish.batch_size must be 1-10000")
        if not 0 <= config.batch_delay_ms <= 60_000:
            raise HomeError(f"config {source}: publish.batch_delay_ms must be 0-60000")
        if not 0 <= config.apply_wait_ms <= 10_000:
            raise HomeError(f"config {source}: publish.apply_wait_ms must be 0-10000")
        for n, entry in enumerate(config.trust):
            try:
                check_trust_labels(entry)
                _check_trust_kind(entry.kind)
            except NodeError as exc:
                raise HomeError(f"config {source}: trust[{n}].{exc}") from None
        _check_selfreport(config, source)  # hashmesh/node/web/selfreport.py
        _check_bridges(config, source)
        for n, follow in enumerate(config.memberships):
            try:
                check_follow(follow)
            except NodeError as exc:
                raise HomeError(f"config {source}: membership[{n}]: {exc}") from None
        if len({f.collection for f in config.memberships}) != len(config.memberships):
            raise HomeError(f"config {source}: membership: a collection is followed twice")
        if len(config.memberships) > MAX_FOLLOWS:
            raise HomeError(f"config {source}: at most {MAX_FOLLOWS} [[membership]]")
        return config


def check_follow(entry: Follow) -> None:
    """A membership anchor: a collection, 1-8 steward org ids and a threshold among them."""
    from hashmesh.protocol.membership import MAX_STEWARDS

    if not isinstance(entry.collection, str):
        raise NodeError("collection: expected a string")
    _check_collection(entry.collection)
    if not isinstance(entry.stewards, list) or not all(isinstance(s, str) for s in entry.stewards):
        raise NodeError("stewards: expected a list of org ids")
    if not 1 <= len(set(entry.stewards)) == len(entry.stewards) <= MAX_STEWARDS:
        raise NodeError(f"stewards: 1-{MAX_STEWARDS} different org ids")
    for steward in entry.stewards:
        _check_node_id(steward)
    threshold = entry.threshold
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise NodeError("threshold: expected an integer")
    if not 1 <= threshold <= len(entry.stewards):
        raise NodeError(
            f"threshold: {threshold} must be 1-{len(entry.stewards)} (of the stewards named)"
        )


def _check_bridges(config: Config, source: str) -> None:
    if len(config.bridges) > MAX_BRIDGES:
        raise HomeError(f"config {source}: at most {MAX_BRIDGES} [[bridges]]")
    seen: set[str] = set()
    for n, bridge in enumerate(config.bridges):
        strings = ("name", "kind", "collection", "environment", "url", "credentials_file")
        for key in (*strings, "credentials_env", "category", "dispute_reason", "privacy_group"):
            if not isinstance(getattr(bridge, key), str):
                raise HomeError(f"config {source}: bridges[{n}].{key}: expected a string")
        for key in ("interval_s", "timeout_s"):
            value = getattr(bridge, key)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(bridge, key, float(value))
            elif not isinstance(value, float):
                raise HomeError(f"config {source}: bridges[{n}].{key}: expected a number")
        try:
            check_bridge(bridge)
        except NodeError as exc:
            raise HomeError(f"config {source}: bridges[{n}]: {exc}") from None
        if bridge.name in seen:
            raise HomeError(f"config {source}: bridges[{n}]: name {bridge.name!r} twice")
        seen.add(bridge.name)


class _Lookup:
    """Config.trust and Config.peers as dictionaries, built once per change of either."""

    def __init__(self, trust: list[Trust], peers: list[Peer]) -> None:
        self.sizes = (len(trust), len(peers))
        self.trusted = {(t.node_id, t.collection) for t in trust if t.kind == "node"}
        orgs: dict[str, set[str]] = {}
        for t in trust:
            if t.kind == "org":
                orgs.setdefault(t.collection, set()).add(t.node_id)
        self.orgs = {c: frozenset(ids) for c, ids in orgs.items()}
        self.collections = frozenset(t.collection for t in trust)
        self.labels = {
            (t.node_id, t.collection): (t.org, t.country) for t in trust if t.org or t.country
        }
        self.names: dict[str, str] = {}
        for t in trust:
            if t.name:
                self.names.setdefault(t.node_id, t.name)
        self.peers: dict[str, Peer] = {}
        for p in peers:
            self.peers.setdefault(p.node_id, p)


# -- self-report page settings ([selfreport], web/selfreport.py) ----------------------


def _selfreport_fields(table: dict[str, Any]) -> dict[str, Any]:
    """[selfreport] keys as Config fields, each converted to its field's type."""
    kinds: dict[str, type] = {"enabled": bool, "collection": str, "client_ip_header": str}
    kinds.update(display_name=str, logo=str, site_url=str, contact=dict)
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = "selfreport_" + key
        if name not in Config.__dataclass_fields__:
            raise ValueError(f"selfreport.{key}: unknown setting")
        kind = kinds.get(key, int)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"selfreport.{key}: expected {kind.__name__}")
        out[name] = value
    return out


def _check_selfreport(config: Config, source: str) -> None:
    try:
        validate_collection(config.selfreport_collection, "selfreport.collection")
    except ProtocolError as exc:
        raise HomeError(f"config {source}: {exc}") from None
    if not 0 <= config.selfreport_pow_bits <= 28:
        raise HomeError(f"config {source}: selfreport.pow_bits must be 0-28")
    for key in ("submits_per_hour", "checks_per_hour", "total_submits_per_hour", "max_files"):
        if not 1 <= getattr(config, "selfreport_" + key) <= 1_000_000:
            raise HomeError(f"config {source}: selfreport.{key} must be 1-1000000")
    _check_selfreport_branding(config, source)


#: The page's languages (web/static/selfreport/i18n.js); contact lines are keyed by them.
SELFREPORT_LANGUAGES = ("en", "nl", "fr")
SELFREPORT_LOGO_TYPES = (".png", ".jpg", ".jpeg", ".webp", ".gif")


def _plain_text(value: str, limit: int) -> bool:
    return 1 <= len(value) <= limit and value.isprintable() and value == value.strip()


def _check_selfreport_branding(config: Config, source: str) -> None:
    """The hotline's name, logo, site and contact lines: shown to a person in distress, so
    each is short plain text (the page renders it as text, never as HTML)."""

    def refuse(key: str, why: str) -> HomeError:
        return HomeError(f"config {source}: selfreport.{key} {why}")

    name = config.selfreport_display_name
    if name and not _plain_text(name, 80):
        raise refuse("display_name", "must be 1-80 printable characters on one line")
    logo = config.selfreport_logo
    if logo:
        path = Path(logo)
        if (
            len(logo) > 200
            or path.is_absolute()
            or "\\" in logo
            or any(part in ("..", "") for part in logo.split("/"))
        ):
            raise refuse("logo", f"{logo!r}: must be a file name inside the node's home")
        if path.suffix.lower() not in SELFREPORT_LOGO_TYPES:
            raise refuse("logo", f"{logo!r}: must be a .png, .jpg, .webp or .gif file")
    site = config.selfreport_site_url
    if site and (
        not site.startswith("https://")
        or len(site) > 300
        or len(site) <= len("https://")
        or any(c.isspace() or not c.isprintable() or c in "\"'<>`" for c in site)
    ):
        raise refuse("site_url", f"{site!r}: must be an https:// address of at most 300 characters")
    for lang, line in config.selfreport_contact.items():
        if lang not in SELFREPORT_LANGUAGES:
            raise refuse(
                f"contact.{lang}",
                f"is not a language of the page ({', '.join(SELFREPORT_LANGUAGES)})",
            )
        if not isinstance(line, str) or not _plain_text(line, 300):
            raise refuse(f"contact.{lang}", "must be 1-300 printable characters on one line")


#: The logo: small, and a raster image told by its bytes, never by its name.
SELFREPORT_MAX_LOGO_BYTES = 256 * 1024
SELFREPORT_LOGO_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


@dataclass(frozen=True)
class Logo:
    """The logo's bytes as read at config load, so the page serves it from memory and a
    missing or bad file is an error the operator sees when the config loads, not a broken
    image a person in distress sees later."""

    body: bytes
    content_type: str
    etag: str


def load_selfreport_logo(home: Path, name: str, source: str) -> Logo:
    """Read `[selfreport] logo` from inside the node's home (a link out of it is
    refused), at most SELFREPORT_MAX_LOGO_BYTES, typed by its bytes."""

    def refuse(why: str) -> HomeError:
        return HomeError(f"config {source}: selfreport.logo {name!r}: {why}")

    root = home.resolve()
    path = (root / name).resolve()
    if not path.is_relative_to(root):
        raise refuse(f"the file is outside the node's home {root} (a link out is refused)")
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise refuse("not a regular file")
        with path.open("rb") as fh:
            body = fh.read(SELFREPORT_MAX_LOGO_BYTES + 1)
    except FileNotFoundError:
        raise refuse(f"no such file in {root}") from None
    except OSError as exc:
        raise refuse(f"cannot be read ({exc.strerror or exc})") from None
    if len(body) > SELFREPORT_MAX_LOGO_BYTES:
        raise refuse(f"the file is larger than {SELFREPORT_MAX_LOGO_BYTES // 1024} KiB")
    kind = "image/webp" if body[:4] == b"RIFF" and body[8:12] == b"WEBP" else ""
    kind = kind or next(
        (t for magic, t in SELFREPORT_LOGO_MAGIC.items() if body.startswith(magic)), ""
    )
    if not kind:
        raise refuse("the file is not a PNG, JPEG, WebP or GIF image")
    return Logo(body, kind, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')


# -- end self-report ---------------------------------------------------------------------


def validate_name(name: str, what: str = "name") -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isprintable():
        raise NodeError(f"{what} {name!r}: must be 1-64 printable characters")
    return name


def check_trust_labels(trust: Trust) -> None:
    """An org is a short printable name; a country two upper-case letters (ISO 3166-1)."""
    org, country = trust.org, trust.country
    if not isinstance(org, str) or (org and (len(org) > 64 or not _plain_text(org, 64))):
        raise NodeError(f"org {str(org)[:70]!r}: must be 1-64 printable characters on one line")
    two_letters = len(country) == 2 and country.isascii() and country.isalpha()
    if not isinstance(country, str) or (country and not (two_letters and country.isupper())):
        raise NodeError(
            f"country {str(country)[:10]!r}: must be an ISO 3166-1 alpha-2 code, e.g. BE"
        )


def _check_node_id(node_id: str) -> None:
    try:
        validate_node_id(node_id)
    except ProtocolError as exc:
        raise NodeError(str(exc)) from None


def _check_trust_kind(kind: str) -> None:
    if kind not in TRUST_KINDS:
        raise NodeError(f"kind: {kind!r} is not a trust kind (one of: {', '.join(TRUST_KINDS)})")


def _check_collection(name: str) -> None:
    try:
        validate_collection(name)
    except ProtocolError as exc:
        raise NodeError(str(exc)) from None


class Home:
    """Paths inside a node's home folder, and the config file's load/save."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def key_path(self) -> Path:
        return self.path / KEY_FILE

    @property
    def db_path(self) -> Path:
        return self.path / DB_FILE

    @property
    def admin_token_path(self) -> Path:
        return self.path / ADMIN_TOKEN_FILE

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def runtime_path(self) -> Path:
        return self.path / RUNTIME_FILE

    @property
    def index_dir(self) -> Path:
        """The PDQ index checkpoint (matching/checkpoint.py): written by the node only,
        memory-mapped by it and its matcher workers."""
        return self.path / "index" / "pdq"

    def exists(self) -> bool:
        return self.config_path.exists() or self.key_path.exists()

    def require(self) -> None:
        if not self.config_path.exists():
            raise HomeError(f"{self.path} is not a hashmesh home (run: hashmesh init {self.path})")

    def load_config(self) -> Config:
        self.require()
        source = str(self.config_path)
        config = Config.from_toml(self.config_path.read_text("utf-8"), source)
        if config.selfreport_logo:
            config.logo_image = load_selfreport_logo(self.path, config.selfreport_logo, source)
        return config

    def config_mtime(self) -> float:
        return self.config_path.stat().st_mtime

    def save_config(self, config: Config) -> None:
        tmp = self.config_path.with_suffix(".toml.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(config.to_toml())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.config_path)


class HomeLock:
    """An exclusive flock on HOME/node.lock: held by the running node, or by a CLI command
    working on the store directly, so two writers never share the database."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        import fcntl

        fd = os.open(self.home.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
