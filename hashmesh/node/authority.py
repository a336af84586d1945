"""The node's accept decision for a batch: the local trust list, and what the statements it
holds say (protocol/authority.py decides; this module only asks it and the config).

One question, asked on every ingest path (a peer's push or page, a bundle, an import):
may this node store and relay this batch? Two parts:

- the log: its author is trusted in its collection by a trust entry of its own (as
  before issue 22), or some org trusted in that collection (trust kind org) certified the
  author key;
- the batch: the key that signed it (the header's signer, or the author) may sign that
  seq of that log at the header's time: not revoked after a lower seq, the right key for
  the seq after a hand-over, and, when the log is trusted only through an org, certified
  by that org at the header's time.

The statements are few; the authority is kept in memory and told of each new one by the
StatementBook, so the decision is a few dictionary lookups per batch. Store thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from hashmesh.node.config import Config
from hashmesh.node.statements import StatementBook
from hashmesh.protocol.authority import KEY_KINDS, Authority, DropRange, Refusal
from hashmesh.protocol.batches import Header, LogKey
from hashmesh.protocol.certificates import ALL_COLLECTIONS, HandoverBody, KeyRevokeBody
from hashmesh.protocol.statements import Statement


class WriterPolicy(Protocol):
    """Who may write a collection the node follows by a signed membership document
    (node/membership.py): the document in force decides, local trust can only narrow."""

    def followed(self, collection: str) -> bool: ...

    def may_write(
        self,
        key: str,
        collection: str,
        ts: int,
        vouchers: Callable[[str, int], frozenset[str]],
    ) -> bool: ...


#: (key, collection, after, statement id) of a revocation in force.
Revocation = tuple[str, str, int, str]
#: What changed: the logs (author, collection) whose held batches may now have to go.
ChangeListener = Callable[[set[tuple[str, str]]], None]


class NodeAuthority:
    def __init__(self, book: StatementBook) -> None:
        self.book = book
        self.authority = Authority(book.all(kinds=KEY_KINDS))
        self.change_listeners: list[ChangeListener] = []
        self.writers: WriterPolicy | None = None
        book.listeners.append(self._learn)

    def _learn(self, statements: list[Statement], source: str) -> None:
        """New key statements: the logs whose held batches they may withdraw go to the
        listeners (the service drops what the authority's drop ranges say)."""
        touched: set[tuple[str, str]] = set()
        for statement in statements:
            if not self.authority.add(statement):
                continue
            body = statement.body
            if isinstance(body, KeyRevokeBody):
                touched.update(self.authority.logs_signed_by(body.key))
                touched.add((body.key, body.collection))  # its own log ("*": all its logs)
            elif isinstance(body, HandoverBody):
                touched.add((body.author, body.collection))
        if touched:
            for listener in self.change_listeners:
                listener(touched)

    def revocations(self) -> list[Revocation]:
        return self.authority.revocations()

    def vouchers(self, key: str, ts: int) -> frozenset[str]:
        """Orgs holding a valid certificate of `key` at `ts` (seconds)."""
        return self.authority.vouchers(key, ts)

    def _followed(self, collection: str) -> bool:
        return self.writers is not None and self.writers.followed(collection)

    def _by_trust(self, config: Config, author: str, collection: str) -> bool:
        if config.accepts(author, collection):
            return True
        orgs = config.trusted_orgs(collection)
        return bool(orgs) and bool(self.authority.certified(author) & orgs)

    def accepts_log(self, config: Config, author: str, collection: str) -> bool:
        """Whether batches of this log are wanted at all (each batch is then checked)."""
        return self._followed(collection) or self._by_trust(config, author, collection)

    def still_refuses(self, config: Config, author: str, collection: str, seconds: int) -> bool:
        """Whether an author refused as untrusted would be refused again now: in a followed
        collection by the document in force (the log itself is always wanted there), else by
        trust, so the status page keeps a refusal until the fix for it is made."""
        if self._followed(collection):
            assert self.writers is not None
            return not self.writers.may_write(author, collection, seconds, self.vouchers)
        return not self._by_trust(config, author, collection)

    def refuses(self, config: Config, header: Header) -> Refusal | None:
        """None when the batch may be accepted, else why not (a Refusal's code:
        untrusted, or the authority's: revoked, handed-over, not-certified, ...)."""
        author, collection = header.author, header.collection
        if author == config.node_id:
            return self.authority.check_header(header)
        if self._followed(collection):
            assert self.writers is not None
            signer, seconds = header.signed_by, header.ts // 1000
            if not self.writers.may_write(signer, collection, seconds, self.vouchers):
                return Refusal(
                    "untrusted", f"key {signer} may not write {collection} by its membership"
                )
            if config.accepts_collection(collection) and not self._by_trust(
                config, author, collection
            ):
                return Refusal("untrusted", f"author {author} is not trusted in {collection}")
        elif not self._by_trust(config, author, collection):
            return Refusal("untrusted", f"author {author} is not trusted in {collection}")
        # trusted by name: the key rules only; through orgs only: a certificate as well
        orgs = None if config.accepts(author, collection) else config.trusted_orgs(collection)
        return self.authority.check_header(header, orgs or None)

    def trusts_key(self, config: Config, key: str, collection: str) -> bool:
        """Whether batches signed by `key` are accepted here in `collection` ("*": in any
        collection this node accepts): its own log trusted (by name, by a trusted org's
        certificate, or as a writer of a followed membership, now), or a log it signs by
        hand-over of an author trusted so."""
        if key == config.node_id:
            return True
        wanted = config.accepted_collections() if collection == ALL_COLLECTIONS else {collection}
        now = int(time.time())

        def writes(author: str, c: str) -> bool:
            if self._followed(c):
                assert self.writers is not None
                return self.writers.may_write(author, c, now, self.vouchers)
            return self._by_trust(config, author, c)

        if any(writes(key, c) for c in wanted):
            return True
        return any(c in wanted and writes(a, c) for a, c in self.authority.logs_signed_by(key))

    def admits_always(self, config: Config, statement: Statement) -> bool:
        """Whether a statement must be stored even past the statement caps
        (node/statements.py, REVOCATION_RESERVE): a key revocation that is in force (its
        org holds a certificate the key co-signed), of a key this node trusts, and that
        revokes more than the revocations held (a lower bound, or the first). So the
        exception is used only by orgs with power over a key we rely on, each use narrows
        what is accepted, and copies or weaker repeats fall under the caps like the rest."""
        body = statement.body
        if not isinstance(body, KeyRevokeBody):
            return False
        if body.org not in self.authority.accepted(body.key):
            return False  # not in force: it would change nothing
        if not self.trusts_key(config, body.key, body.collection):
            return False
        for key, collection, after, _ in self.authority.revocations():
            if key != body.key or after > body.after:
                continue
            if collection == ALL_COLLECTIONS or collection == body.collection:
                return False  # one held already revokes as much
        return True

    def signer_of_next(self, log: LogKey, head: int) -> str | None:
        """The key that signs the log's next batch (after `head`), None if none may."""
        return self.authority.signer_for(log.author, log.collection, head + 1)

    def drop_ranges(self, heads: dict[tuple[str, str], int]) -> list[DropRange]:
        return self.authority.drop_ranges(heads)
