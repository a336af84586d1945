"""Bearer tokens for operators and platforms: scopes, optional collection restrictions.

Only the SHA-256 of a token is stored (a token is 256 random bits, so a plain hash is
enough); the token itself is shown once, when it is created. The admin token file of the
home stays valid as an `admin` token, so nothing changes for an existing node.

The rows live in the node's database (hashmesh/node/store/tokens.py holds their SQL); the
rules about them live here, so the store never decides what a token may do.

`admin` is never restricted to collections: an admin token can mint tokens, add peers,
back up the whole database and read status and metrics, so a restriction on it would be
a promise nothing keeps. Creating one is refused; one stored by an older version loads
with no admin rights (see `Grant.allows`), so the node still starts and the token is
refused wherever it reached beyond its collections.

`metrics` reads `/metrics` and nothing else, for a Prometheus scraper. Restricted to
collections, it sees only the series labelled with one of them (hashmesh/node/web/metrics.py).

`replicate` reads /v1/replica/state, for a matcher replica (`hashmesh matcher --follow`):
the head cursor, author names, and the hashes, scopes and collections of the tokens that
may match, cut to the replica token's collections (hashmesh/node/web/replicas.py). A
replica's token needs `read` too, for the snapshot and the feed it follows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from hashmesh.node.errors import Conflict, NodeError, NotFound
from hashmesh.node.keys import hash_token, new_token
from hashmesh.node.store.core import Store, now_ms
from hashmesh.node.store.tokens import NameTaken
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.ops import validate_collection

log = logging.getLogger("hashmesh.tokens")

SCOPES = ("read", "match", "publish", "admin", "metrics", "replicate")
RESTRICTED_ADMIN = (
    "collections: an admin token cannot be restricted to collections (--collection):"
    " admin can mint tokens, add peers and back up the whole database, so it would reach"
    " every collection anyway; give read, match, publish or metrics scopes with the"
    " collections instead"
)

_name_re = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Grant:
    """What one token may do. `collections` None means every collection."""

    name: str
    scopes: frozenset[str]
    collections: frozenset[str] | None = None

    def allows(self, scope: str) -> bool:
        if self.restricted:
            # A restricted grant never carries admin rights, even if a stored row says so.
            return scope != "admin" and scope in self.scopes
        return "admin" in self.scopes or scope in self.scopes

    @property
    def admin_disabled(self) -> bool:
        """True for a restricted token that names `admin` (stored by an older version)."""
        return self.restricted and "admin" in self.scopes

    def can_use(self, collection: str) -> bool:
        return self.collections is None or collection in self.collections

    @property
    def restricted(self) -> bool:
        return self.collections is not None


ADMIN = Grant("admin.token", frozenset({"admin"}))


def _row_info(row: tuple[Any, ...]) -> dict[str, Any]:
    collections = row[4].split(",") if row[4] else None
    return {
        "id": row[0],
        "name": row[1],
        "scopes": row[3].split(","),
        "collections": collections,
        "created_at": row[5],
        "revoked_at": row[6],
        "live": row[6] is None,
        **(
            {"warning": "admin ignored: a token restricted to collections has no admin rights"}
            if collections and "admin" in row[3].split(",")
            else {}
        ),
    }


class TokenStore:
    """The node's tokens, in its store (the caller owns the store's thread)."""

    def __init__(self, store: Store) -> None:
        self.table = store.tokens

    def create(
        self, name: str, scopes: Iterable[str], collections: Iterable[str] | None = None
    ) -> dict[str, Any]:
        """A new token; the answer is the only place the token itself ever appears."""
        if not isinstance(name, str) or not _name_re.match(name) or name.isdigit():
            raise NodeError(f"token name {name!r}: 1-64 of letters, digits, _ . -, not only digits")
        wanted = sorted(set(scopes))
        if not wanted:
            raise NodeError("token scopes: give at least one of " + ", ".join(SCOPES))
        for scope in wanted:
            if scope not in SCOPES:
                raise NodeError(f"token scope {scope!r}: expected one of {', '.join(SCOPES)}")
        chosen: list[str] | None = None
        if collections is not None:
            chosen = sorted(set(collections))
            for collection in chosen:
                try:
                    validate_collection(collection)
                except ProtocolError as exc:
                    raise NodeError(str(exc)) from None
            if not chosen:
                chosen = None
        if chosen is not None and "admin" in wanted:
            raise NodeError(RESTRICTED_ADMIN)
        token = new_token()
        try:
            token_id = self.table.insert(
                name, hash_token(token), ",".join(wanted), ",".join(chosen or []) or None, now_ms()
            )
        except NameTaken:
            raise Conflict(f"token {name!r} already exists (revoke it first)") from None
        return {
            "id": token_id,
            "name": name,
            "token": token,
            "scopes": wanted,
            "collections": chosen,
        }

    def list(self) -> list[dict[str, Any]]:
        return [_row_info(row) for row in self.table.rows()]

    def revoke(self, name_or_id: str) -> dict[str, Any]:
        """Revoke by name (the live token of that name) or by numeric id."""
        key = str(name_or_id)
        if key.isascii() and key.isdigit() and len(key) <= 18:
            row = self.table.by_id(int(key))
        else:
            row = self.table.live_by_name(key)
        if row is None:
            raise NotFound(f"token {key!r}: no such live token")
        if row[6] is not None:
            raise Conflict(f"token {key!r} is already revoked")
        at = now_ms()
        self.table.mark_revoked(row[0], at)
        return {**_row_info(row), "revoked_at": at, "live": False}

    def grants(self) -> dict[str, Grant]:
        """Every live token as hash -> Grant, for the API's in-memory lookup."""
        out: dict[str, Grant] = {}
        for name, hash_, scopes, collections in self.table.live():
            grant = Grant(
                name,
                frozenset(scopes.split(",")),
                frozenset(collections.split(",")) if collections else None,
            )
            if grant.admin_disabled:
                log.warning(
                    "token %r is restricted to collections yet names the admin scope (made by"
                    " an older version): it has no admin rights; revoke it and create the"
                    " token you meant",
                    name,
                )
            out[hash_] = grant
        return out
