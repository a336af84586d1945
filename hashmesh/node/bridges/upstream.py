"""What every upstream kind implements, and its registry (one class a kind, as
python-threatexchange does for signal types and exchanges).

An upstream turns one call of its API into a `Page`: the entries it returned, in the
upstream's own terms, and the checkpoint that is true once they are applied. Upstream
calls are blocking (python-threatexchange's clients use requests): the runner makes them
on a thread of its own and bounds them in seconds.
"""

from __future__ import annotations

import hashlib
import os
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from hashmesh.node.config import Bridge
from hashmesh.node.errors import NodeError
from hashmesh.node.store.bridges import Item

MAX_CREDENTIALS_BYTES = 4096
#: One upstream answer in memory at most: an NCMEC page of 1,000 entries is about 1 MB
#: (large fingerprints come as links), a StopNCII page of 800 records less.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
_READ = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Entry:
    """One upstream entry in its latest state: a full replacement of what came before.

    `key` names it upstream (NCMEC: member and entry id; StopNCII: type and hash);
    `fingerprints` maps the upstream's fingerprint names to raw values (empty for a
    deletion); `labels` are what the published adds carry (classification, ref);
    `detail` is the provenance kept on this node (never published); `withheld` says why
    a live upstream entry is not to be published (no fingerprints then): counted as
    skipped for that reason, and the adds it had are revoked."""

    key: str
    deleted: bool
    fingerprints: dict[str, str]
    classification: str | None
    ref: str
    detail: dict[str, Any] = field(default_factory=dict)
    withheld: str = ""


@dataclass(frozen=True, slots=True)
class Page:
    """One upstream call's entries and the checkpoint to commit with them. `caught_up`:
    nothing more to fetch until the next poll."""

    entries: list[Entry]
    checkpoint: dict[str, Any]
    caught_up: bool
    #: records the kind read but could not make an entry of, by reason (counted as skipped)
    skipped: dict[str, int] = field(default_factory=dict)


class UpstreamRefused(Exception):
    """An upstream answer that retrying the same call cannot change (4xx other than 408
    and 429, a reason id it does not know): recorded, never retried."""


class UpstreamTooLarge(Exception):
    """An answer longer than MAX_RESPONSE_BYTES: refused before it is read whole."""


def bound_responses(client: Any) -> None:
    """Make every answer `client` reads stop at MAX_RESPONSE_BYTES. python-threatexchange's
    clients read whole answers into memory through a requests session each call builds
    (`_get_session`); a response hook on that session runs before the body is read, and
    reads it itself, at most the bound (decompressed: a gzip bomb stops there too)."""
    make_session = client._get_session

    def bounded_session(*args: Any) -> Any:
        session = make_session(*args)
        session.hooks["response"].append(_read_bounded)
        return session

    client._get_session = bounded_session


def _read_bounded(response: Any, *args: Any, **kwargs: Any) -> Any:
    limit = MAX_RESPONSE_BYTES
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        response.close()
        raise UpstreamTooLarge(f"answer of {int(declared):,} bytes, more than {limit:,}")
    chunks, size = [], 0
    while size <= limit:
        chunk = response.raw.read(_READ, decode_content=True)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        response.close()
        raise UpstreamTooLarge(f"answer longer than {limit:,} bytes")
    response._content = b"".join(chunks)
    response._content_consumed = True
    return response


class Upstream(ABC):
    """One upstream kind. Subclasses set the class attributes and implement the calls."""

    kind: ClassVar[str]
    description: ClassVar[str]
    default_category: ClassVar[str]
    #: environment name -> base URL, as python-threatexchange knows them
    environments: ClassVar[dict[str, str]]
    default_environment: ClassVar[str]
    credentials_format: ClassVar[str]

    def __init__(self, bridge: Bridge, secret: str) -> None:
        self.bridge = bridge
        self.environment = environment_label(type(self), bridge)

    @classmethod
    @abstractmethod
    def check_secret(cls, secret: str) -> None:
        """Raise NodeError naming the expected format when `secret` cannot be used."""

    @abstractmethod
    def fetch(self, checkpoint: dict[str, Any], now: int) -> Page:
        """One upstream call after `checkpoint` (empty: from the beginning)."""

    @abstractmethod
    def our_type(self, fingerprint: str) -> str:
        """Our signal type name for the upstream's fingerprint name (the importers' map)."""

    @abstractmethod
    def send_feedback(self, item: Item, verdict: str, reason: str | None) -> dict[str, Any]:
        """Forward one confirm/dispute on a bridged item; returns what was sent."""

    @classmethod
    def describe(cls, checkpoint: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(checkpoint.items())) or "from the start"


_KINDS: dict[str, type[Upstream]] = {}


def register(kind: type[Upstream]) -> type[Upstream]:
    if kind.kind in _KINDS and _KINDS[kind.kind] is not kind:
        raise ValueError(f"bridge kind {kind.kind!r} is already registered")
    _KINDS[kind.kind] = kind
    return kind


def registered() -> dict[str, type[Upstream]]:
    """The kinds registered so far (bridges/kinds.py imports every module that registers)."""
    return dict(_KINDS)


def environment_name(kind: type[Upstream], given: str) -> str:
    """The upstream's own spelling of an environment (case-insensitive), or NodeError
    listing them."""
    for name in kind.environments:
        if name.lower() == given.lower():
            return name
    raise NodeError(
        f"{kind.kind} environment {given[:64]!r}: not one python-threatexchange knows"
        f" ({', '.join(kind.environments)}); or give --url for another server"
    )


def environment_label(kind: type[Upstream], bridge: Bridge) -> str:
    """The environment as provenance: its name, or `url` for a server given by URL."""
    if bridge.url:
        return "url"
    return environment_name(kind, bridge.environment or kind.default_environment)


def base_url(kind: type[Upstream], bridge: Bridge) -> str:
    if bridge.url:
        return bridge.url
    return kind.environments[environment_name(kind, bridge.environment or kind.default_environment)]


def read_credentials(bridge: Bridge, home: Path, environ: dict[str, str] | None = None) -> str:
    """The secret a bridge names: a file only its owner can read (0600 or stricter,
    relative paths inside the node's home), or an environment variable. Never logged."""
    if bridge.credentials_env:
        env = os.environ if environ is None else environ
        value = env.get(bridge.credentials_env, "")
        if not value.strip():
            raise NodeError(
                f"bridge {bridge.name}: environment variable {bridge.credentials_env} is not"
                " set or empty"
            )
        return value.strip()
    path = Path(bridge.credentials_file).expanduser()
    if not path.is_absolute():
        path = home / path
    try:
        info = path.stat()
    except FileNotFoundError:
        raise NodeError(f"bridge {bridge.name}: credentials file {path} does not exist") from None
    except OSError as exc:
        raise NodeError(f"bridge {bridge.name}: credentials file {path}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise NodeError(f"bridge {bridge.name}: credentials file {path} is not a regular file")
    if info.st_mode & 0o077:
        raise NodeError(
            f"bridge {bridge.name}: credentials file {path} is readable by others (mode"
            f" {stat.S_IMODE(info.st_mode):04o}); make it 0600: chmod 600 {path}"
        )
    with path.open("rb") as fh:
        data = fh.read(MAX_CREDENTIALS_BYTES + 1)
    if len(data) > MAX_CREDENTIALS_BYTES:
        raise NodeError(f"bridge {bridge.name}: credentials file {path} is too large")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise NodeError(f"bridge {bridge.name}: credentials file {path} is not UTF-8") from None
    if not text:
        raise NodeError(f"bridge {bridge.name}: credentials file {path} is empty")
    return text


def short_ref(text: str) -> str:
    """A ref (1-128 printable ASCII) from provenance that may be longer or not ASCII: kept
    when it fits, else its start and a digest of the whole (still unique)."""
    clean = "".join(c if "!" <= c <= "~" else "_" for c in text)
    if clean == text and len(text) <= 128:
        return text
    return clean[:95] + "#" + hashlib.sha256(text.encode()).hexdigest()[:32]


def describe_window(checkpoint: dict[str, Any], start: str, stop: str) -> str:
    """A time-window checkpoint (NCMEC's and ThreatExchange's: a window is drained before
    the next, its `next` page valid only inside it) as bridge show says it."""

    def day(ts: Any) -> str:
        return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

    if not checkpoint:
        return "from the start"
    if checkpoint.get("next"):
        return (
            f"inside the window {day(checkpoint[start])} - {day(checkpoint[stop])},"
            " at its next page"
        )
    return f"every window drained up to {day(checkpoint.get(start, 0))}"
