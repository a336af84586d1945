"""Peer identity: which key answers for a node that its peers configured by another id.

A node's peers name it in their config by one node id (`[[peers]] node_id`), and every
peer request and response is signed by that id's key (protocol/peerauth.py). Two facts
change which key that is, with no config edit:

- "identity" (a statement kind of this module): the node's identity key `key` hands the
  identity over to `next`. Signed by both keys: `key` says who follows it, `next` that it
  holds its key. Valid while `key` is not revoked: a stolen key cannot pass the identity
  on after its org revoked it.
- a certificate with `replaces` (protocol/certificates.py): org O certifies key NEW as
  the replacement of OLD. Valid when O has power over OLD (OLD co-signed O's certificate
  of it, the rule revocations follow), whether OLD is revoked or not: that is the stolen
  key's path, where OLD cannot sign anything trustworthy any more.

And one fact ends an identity: a key revocation in force (its org holds a co-signed
certificate of the key), in any collection and after any seq. A peer identity reads
every collection its peer shares, so a key an org withdrew anywhere is no peer identity.

From a configured id the links are followed, org links first (the org's word settles a key
that was stolen), at most MAX_CHAIN of them; two different links of equal rank from one
key are a conflict and end the identity, as does a revoked key at the end of the chain.

Pure: statements in, answers out. The node supplies, per identity statement, when it
learned it (milliseconds), so that it can keep accepting the previous key of a rotated
peer for the requests that were in flight when it rotated.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field

from hashmesh.protocol.certificates import CertBody, KeyRevokeBody
from hashmesh.protocol.errors import StatementError
from hashmesh.protocol.statements import NODE_ID_MAX, Kind, Statement, StatementBody

#: Links followed from a configured id, at most: a longer chain ends the identity.
MAX_CHAIN = 16
IDENTITY_KINDS = frozenset({"identity", "cert", "key-revoke"})


class IdentityBody(StatementBody):
    id_fields: ClassVar[tuple[str, ...]] = ("key", "next")

    kind: Literal["identity"] = "identity"
    key: str = Field(max_length=NODE_ID_MAX)
    next: str = Field(max_length=NODE_ID_MAX)


class IdentityKind(Kind):
    name: ClassVar[str] = "identity"
    body_model: ClassVar[type[StatementBody]] = IdentityBody
    description: ClassVar[str] = "a node's peer identity continues under a new key"

    @classmethod
    def check_body(cls, body: StatementBody) -> None:
        assert isinstance(body, IdentityBody)
        if body.next == body.key:
            raise StatementError("statement body.next: the same key as key")

    @classmethod
    def check_signers(cls, body: StatementBody, signers: frozenset[str]) -> None:
        assert isinstance(body, IdentityBody)
        for who, field in ((body.key, "key"), (body.next, "next key")):
            if who not in signers:
                raise StatementError(
                    f"statement sigs: an identity must be signed by its {field} ({who})"
                )

    @classmethod
    def may_sign(cls, body: StatementBody, signer: str) -> bool:
        assert isinstance(body, IdentityBody)
        return signer in (body.key, body.next)


KINDS: tuple[type[Kind], ...] = (IdentityKind,)


@dataclass(frozen=True, slots=True)
class Link:
    """`key` answers as `next` from now on: by an identity statement (org None) or by
    org `org`'s certificate of `next` replacing `key`."""

    id: str
    key: str
    next: str
    org: str | None


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where a configured id leads. `current` None: no key answers for it (`why`)."""

    configured: str
    current: str | None
    #: the keys followed, from the configured id to the current one (or where it ended)
    chain: tuple[str, ...]
    why: str = ""
    #: the key before `current` when an identity statement (not an org) linked them,
    #: and when the node learned that statement (ms): its requests in flight still count
    previous: str | None = None
    since_ms: int | None = None


def facts(
    statements: Iterable[Statement],
) -> tuple[dict[str, set[str]], list[tuple[str, KeyRevokeBody]], list[Link]]:
    """What identity needs of statements: per key the orgs whose certificate of it the key
    co-signed, the revocations (id, body), and the links (identity statements and
    replacement certificates). Copies of one statement need no merge: each adds to sets."""
    accepted: dict[str, set[str]] = {}
    revokes: list[tuple[str, KeyRevokeBody]] = []
    links: list[Link] = []
    for st in statements:
        body = st.body
        if isinstance(body, CertBody):
            if body.key in st.signers:
                accepted.setdefault(body.key, set()).add(body.org)
            if body.replaces is not None:
                links.append(Link(st.id, body.replaces, body.key, body.org))
        elif isinstance(body, KeyRevokeBody):
            revokes.append((st.id, body))
        elif isinstance(body, IdentityBody):
            links.append(Link(st.id, body.key, body.next, None))
    return accepted, revokes, links


class Identities:
    """An immutable snapshot of the identity facts held: built once per change on the
    store thread, then read from any thread (the event loop authenticates with it)."""

    def __init__(
        self, statements: Iterable[Statement] = (), learned: Mapping[str, int] | None = None
    ) -> None:
        self._build(*facts(statements), learned or {})

    @classmethod
    def of(
        cls,
        accepted: Mapping[str, Collection[str]],
        revokes: Iterable[tuple[str, KeyRevokeBody]],
        links: Iterable[Link],
        learned: Mapping[str, int],
    ) -> Identities:
        """From facts kept apart (a node keeps them as statements arrive): `accepted` needs
        only the keys that are revoked or that an org link starts from."""
        out = cls.__new__(cls)
        out._build(accepted, revokes, links, learned)
        return out

    def _build(
        self,
        accepted: Mapping[str, Collection[str]],
        revokes: Iterable[tuple[str, KeyRevokeBody]],
        links: Iterable[Link],
        learned: Mapping[str, int],
    ) -> None:
        self._revoked: dict[str, str] = {}
        for _id, rb in sorted(revokes, key=lambda r: (r[1].after, r[0])):
            if rb.org in accepted.get(rb.key, ()) and rb.key not in self._revoked:
                self._revoked[rb.key] = (
                    f"key {rb.key} revoked by {rb.org} in {rb.collection} after seq "
                    f"{rb.after} ({rb.reason})"
                )
        self._links: dict[str, list[Link]] = {}
        for link in links:
            if link.org is not None and link.org not in accepted.get(link.key, ()):
                continue  # an org without power over the key it says it replaces
            self._links.setdefault(link.key, []).append(link)
        self._learned = dict(learned)
        self._cache: dict[str, Resolution] = {}

    def revoked(self, key: str) -> str | None:
        """Why `key` is no peer identity (a revocation in force of it), or None."""
        return self._revoked.get(key)

    def resolve(self, configured: str) -> Resolution:
        found = self._cache.get(configured)
        if found is None:
            found = self._cache[configured] = self._resolve(configured)
        return found

    def _resolve(self, configured: str) -> Resolution:
        key, chain, last = configured, [configured], None
        while True:
            held = [x for x in self._links.get(key, ()) if x.next not in chain]
            by_org = [x for x in held if x.org is not None]
            pick = by_org or ([] if key in self._revoked else held)
            nexts = sorted({x.next for x in pick})
            if len(nexts) > 1:
                return Resolution(
                    configured,
                    None,
                    tuple(chain),
                    f"key {key} has {len(nexts)} different successors ({', '.join(nexts)})",
                )
            if not nexts:
                break
            if len(chain) > MAX_CHAIN:
                return Resolution(
                    configured,
                    None,
                    tuple(chain),
                    f"identity of {configured}: more than {MAX_CHAIN} successions",
                )
            last = min((x for x in pick), key=lambda x: x.id)
            key = nexts[0]
            chain.append(key)
        why = self._revoked.get(key)
        if why is not None:
            return Resolution(configured, None, tuple(chain), why)
        if last is None or last.org is not None:
            return Resolution(configured, key, tuple(chain))
        return Resolution(
            configured, key, tuple(chain), previous=chain[-2], since_ms=self._learned.get(last.id)
        )


__all__ = [
    "IDENTITY_KINDS",
    "KINDS",
    "MAX_CHAIN",
    "Identities",
    "IdentityBody",
    "Link",
    "Resolution",
    "facts",
]
