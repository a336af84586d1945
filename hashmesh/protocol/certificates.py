"""Which key may sign for a log: org certificates, hand-overs and key revocations.

Three statement kinds (hashmesh.protocol.statements) about node keys:

- "cert": an org certifies node key `key` for [not_before, not_after] (unix seconds; a
  batch header's ts must fall inside), optionally as the replacement of the peer identity
  `replaces` (a stolen key's successor, protocol/identity.py). Signed by the org; the key
  co-signs it when its node installs it (`key certificate add`), and only a co-signed
  certificate gives the org power over the key (revoking it, handing its logs over):
  otherwise any org could certify anyone's key and then revoke it or take its logs.
  Unscoped.
- "handover": log (author, collection) is signed by `key` up to and including `seq`, whose
  batch has header hash `head`, and by `next` after it. Signed by `next` and by `key` (or,
  when `key` is lost, by the org named in `org`; whether that org may is the authority's
  question). Scoped to the collection.
- "key-revoke": an org withdraws `key` in `collection` ("*" = every collection) for every
  seq above `after`. Signed by the org; effective only if that org certified the key.
  Scoped to the collection, unscoped for "*".

The body carries the log's `author` on a hand-over (deviation from the first design, which
had only key and next): without it a hand-over B -> C would not say whether it continues
B's own log or a log B took over from A.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from hashmesh.protocol.encoding import MAX_SAFE_INT
from hashmesh.protocol.errors import StatementError
from hashmesh.protocol.names import COLLECTION_PATTERN
from hashmesh.protocol.statements import NODE_ID_MAX, Kind, StatementBody

MAX_NAME = 128
MAX_REASON = 512
ALL_COLLECTIONS = "*"
_HEX64 = r"^[0-9a-f]{64}$"


class CertBody(StatementBody):
    omit_if_none: ClassVar[frozenset[str]] = frozenset({"name", "replaces"})
    id_fields: ClassVar[tuple[str, ...]] = ("org", "key", "replaces")

    kind: Literal["cert"] = "cert"
    org: str = Field(max_length=NODE_ID_MAX)
    key: str = Field(max_length=NODE_ID_MAX)
    not_before: int = Field(ge=0, le=MAX_SAFE_INT)
    not_after: int = Field(ge=0, le=MAX_SAFE_INT)
    name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME)
    #: the node key whose peer identity `key` takes over (protocol/identity.py): peers
    #: that name it in their config accept `key` as that peer, when the org has power
    #: over it. Absent on an ordinary certificate (and then the bytes are as before).
    replaces: str | None = Field(default=None, max_length=NODE_ID_MAX)


class HandoverBody(StatementBody):
    omit_if_none: ClassVar[frozenset[str]] = frozenset({"org"})
    id_fields: ClassVar[tuple[str, ...]] = ("author", "key", "next", "org")

    kind: Literal["handover"] = "handover"
    author: str = Field(max_length=NODE_ID_MAX)
    collection: str = Field(pattern=COLLECTION_PATTERN)
    key: str = Field(max_length=NODE_ID_MAX)
    next: str = Field(max_length=NODE_ID_MAX)
    seq: int = Field(ge=1, le=MAX_SAFE_INT)
    head: str = Field(pattern=_HEX64)
    #: the org that signs instead of a lost `key` (absent when `key` signs). Named in the
    #: body so that the signers are known from it: nobody can pad a hand-over with junk
    #: signatures until a real co-signature no longer fits in the 16 places.
    org: str | None = Field(default=None, max_length=NODE_ID_MAX)


class KeyRevokeBody(StatementBody):
    id_fields: ClassVar[tuple[str, ...]] = ("org", "key")

    kind: Literal["key-revoke"] = "key-revoke"
    org: str = Field(max_length=NODE_ID_MAX)
    key: str = Field(max_length=NODE_ID_MAX)
    collection: str = Field(pattern=r"^(\*|[a-z0-9][a-z0-9._-]{0,63})$")
    after: int = Field(ge=0, le=MAX_SAFE_INT)
    reason: str = Field(min_length=1, max_length=MAX_REASON)


def _need(signers: frozenset[str], who: str, field: str, kind: str) -> None:
    if who not in signers:
        raise StatementError(f"statement sigs: a {kind} must be signed by its {field} ({who})")


class CertKind(Kind):
    name: ClassVar[str] = "cert"
    body_model: ClassVar[type[StatementBody]] = CertBody
    description: ClassVar[str] = "an org certifies a node key for a period"

    @classmethod
    def check_body(cls, body: StatementBody) -> None:
        assert isinstance(body, CertBody)
        if body.not_after < body.not_before:
            raise StatementError("statement body.not_after: before not_before")
        if body.org == body.key:
            raise StatementError("statement body.key: an org key does not certify itself")
        if body.replaces is not None and body.replaces in (body.key, body.org):
            raise StatementError("statement body.replaces: names the certificate's own key or org")

    @classmethod
    def check_signers(cls, body: StatementBody, signers: frozenset[str]) -> None:
        assert isinstance(body, CertBody)
        _need(signers, body.org, "org", cls.name)

    @classmethod
    def may_sign(cls, body: StatementBody, signer: str) -> bool:
        """The org, and the certified key itself: its co-signature accepts the org's
        authority over it (to revoke it, to hand its logs over when it is lost)."""
        assert isinstance(body, CertBody)
        return signer in (body.org, body.key)


class HandoverKind(Kind):
    name: ClassVar[str] = "handover"
    body_model: ClassVar[type[StatementBody]] = HandoverBody
    description: ClassVar[str] = "a log continues under a new key after a seq"

    @classmethod
    def check_body(cls, body: StatementBody) -> None:
        assert isinstance(body, HandoverBody)
        if body.next == body.key:
            raise StatementError("statement body.next: the same key as key")
        if body.next == body.author:
            raise StatementError("statement body.next: a log never returns to its author")
        if body.org is not None and body.org in (body.key, body.next):
            raise StatementError("statement body.org: the org signs for another key")

    @classmethod
    def check_signers(cls, body: StatementBody, signers: frozenset[str]) -> None:
        assert isinstance(body, HandoverBody)
        _need(signers, body.next, "next key", cls.name)
        if body.key not in signers and (body.org is None or body.org not in signers):
            raise StatementError(
                f"statement sigs: a handover must also be signed by its key ({body.key}) "
                "or, if that key is lost, by the org it names (body.org)"
            )

    @classmethod
    def may_sign(cls, body: StatementBody, signer: str) -> bool:
        assert isinstance(body, HandoverBody)
        return signer in (body.key, body.next) or signer == body.org

    @classmethod
    def scope(cls, body: StatementBody) -> str | None:
        assert isinstance(body, HandoverBody)
        return body.collection


class KeyRevokeKind(Kind):
    name: ClassVar[str] = "key-revoke"
    body_model: ClassVar[type[StatementBody]] = KeyRevokeBody
    description: ClassVar[str] = "an org withdraws a node key after a seq"

    @classmethod
    def check_body(cls, body: StatementBody) -> None:
        assert isinstance(body, KeyRevokeBody)
        if body.org == body.key:
            raise StatementError("statement body.key: an org key does not revoke itself")

    @classmethod
    def check_signers(cls, body: StatementBody, signers: frozenset[str]) -> None:
        assert isinstance(body, KeyRevokeBody)
        _need(signers, body.org, "org", cls.name)

    @classmethod
    def may_sign(cls, body: StatementBody, signer: str) -> bool:
        assert isinstance(body, KeyRevokeBody)
        return signer == body.org

    @classmethod
    def scope(cls, body: StatementBody) -> str | None:
        assert isinstance(body, KeyRevokeBody)
        return None if body.collection == ALL_COLLECTIONS else body.collection


KINDS: tuple[type[Kind], ...] = (CertKind, HandoverKind, KeyRevokeKind)
