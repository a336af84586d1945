"""Signed collection membership: who may write and read a collection, decided by stewards.

A membership document names a collection's writers and readers (node ids, or org ids that
cover every key the org certified), its stewards (org keys) and a threshold. As in TUF's
root rotation, version N is valid only when signed by `threshold` of version N-1's
stewards AND by `threshold` of its own, and names version N-1 by id (`prev`). Version 1
has no previous document: the node's operator pins the steward set and threshold it
follows (the anchor), and version 1 must satisfy the anchor as if it were version 0.

What is in force is a function of the SET of valid documents held, never of the order they
arrived in: the valid documents form a tree rooted at the anchor, and the one in force is
the tip of highest version. A lower or equal version can therefore never replace a higher
one, and replaying any held document changes nothing. Two valid documents at the highest
version (stewards signing two different successors: a compromise of the threshold, or a
ceremony gone wrong) are a conflict: both are reported, and only what every one of them
grants is granted (the intersection), so a conflict can narrow access but never widen it.
The stewards resolve it by signing the next version on one branch.

Sans-IO: signatures are checked by the statement envelope (statements.py); this module only
counts which valid signers a document carries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from hashmesh.protocol.errors import ProtocolUsageError, StatementError
from hashmesh.protocol.names import COLLECTION_PATTERN
from hashmesh.protocol.statements import Kind, Statement, StatementBody

KIND = "membership"
MAX_STEWARDS = 8  # two disjoint sets of 8 need at most 16 signatures: the envelope's limit
MAX_MEMBERS = 128  # writers, and readers, each: 2 x 128 ids of 51 characters fit 16 KiB
MAX_VERSION = 2**53 - 1
#: Documents kept per collection: a tree this wide only grows while stewards equivocate.
MAX_DOCUMENTS = 64

_ID = r"^ed25519:[A-Za-z0-9_-]{43}$"
_HEX = r"^[0-9a-f]{64}$"


class MembershipError(StatementError):
    """A membership document that is not valid where it is offered (wrong version, prev,
    or too few stewards' signatures)."""


def _sorted_ids(values: list[str], what: str, limit: int, minimum: int) -> list[str]:
    if not minimum <= len(values) <= limit:
        raise ValueError(f"{len(values)} entries, must be {minimum}-{limit}")
    if values != sorted(set(values)):
        raise ValueError("must be sorted and without duplicates (one byte form)")
    return values


class MembershipBody(StatementBody):
    """The body of a "membership" statement (common fields kind, v, ts, and the kind's)."""

    id_fields: ClassVar[tuple[str, ...]] = ("stewards", "writers", "readers")

    kind: Literal["membership"] = "membership"
    collection: str = Field(pattern=COLLECTION_PATTERN)
    version: int = Field(ge=1, le=MAX_VERSION)
    stewards: list[str]
    threshold: int = Field(ge=1, le=MAX_STEWARDS)
    writers: list[str]
    readers: list[str]
    prev: str | None = Field(pattern=_HEX)

    @field_validator("stewards")
    @classmethod
    def _stewards(cls, value: list[str]) -> list[str]:
        return _sorted_ids(value, "stewards", MAX_STEWARDS, 1)

    @field_validator("writers", "readers")
    @classmethod
    def _members(cls, value: list[str]) -> list[str]:
        return _sorted_ids(value, "members", MAX_MEMBERS, 0)

    @model_validator(mode="after")
    def _across(self) -> MembershipBody:
        if self.threshold > len(self.stewards):
            raise ValueError(
                f"threshold: {self.threshold} is more than the {len(self.stewards)} stewards"
            )
        if (self.version == 1) != (self.prev is None):
            raise ValueError("prev: must be null exactly when version is 1")
        return self


class MembershipKind(Kind):
    """Who may sign a membership document depends on the previous version (its stewards),
    which the body alone does not name, so the envelope takes any valid signature and
    `resolve` counts the ones that matter; a node stores a document only once it is valid
    (`admit`), with the signatures of anyone but the two steward sets dropped (`trim`)."""

    name = KIND
    body_model = MembershipBody
    description = "who may write and read a collection, signed by a threshold of stewards"

    @classmethod
    def check_signers(cls, body: StatementBody, signers: frozenset[str]) -> None:
        return None  # counted against the previous version by resolve()

    @classmethod
    def scope(cls, body: StatementBody) -> str | None:
        assert isinstance(body, MembershipBody)
        return body.collection

    @classmethod
    def slot(cls, body: StatementBody) -> tuple[str, int] | None:
        """None: every version is kept (append-only), since version N is verified by
        version N-1's stewards and a node that joins late needs the whole chain from its
        anchor. "A lower version never replaces a higher one" is resolve()'s rule."""
        return None


@dataclass(frozen=True, slots=True)
class Anchor:
    """The steward set and threshold a node's operator pins for a collection: what
    version 1 must be signed by (`hashmesh membership follow C --steward ... --threshold K`).
    """

    collection: str
    stewards: frozenset[str]
    threshold: int

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= len(self.stewards) <= MAX_STEWARDS:
            raise ProtocolUsageError(
                f"membership anchor: threshold {self.threshold} of {len(self.stewards)}"
                f" stewards (1 <= threshold <= stewards <= {MAX_STEWARDS})"
            )


@dataclass(frozen=True, slots=True)
class Document:
    """A membership document as held: its statement id, body and the signers whose
    signatures the envelope verified (by the membership context)."""

    id: str
    body: MembershipBody
    signers: frozenset[str]

    @property
    def version(self) -> int:
        return self.body.version

    @classmethod
    def of(cls, statement: Statement) -> Document:
        """A verified membership statement as a document (its signers all verified)."""
        if not isinstance(statement.body, MembershipBody):
            raise ProtocolUsageError(f"statement {statement.id} is not a membership document")
        return cls(statement.id, statement.body, statement.signers)


def _count(signers: frozenset[str], stewards: Iterable[str]) -> int:
    return len(signers.intersection(stewards))


def check_successor(doc: Document, parent: Document | Anchor) -> None:
    """Raise MembershipError unless `doc` is a valid successor of `parent` (the anchor for
    version 1): same collection, the next version, linked by id, and signed by the
    threshold of the parent's stewards and by the threshold of its own."""
    body = doc.body
    followed = parent.collection if isinstance(parent, Anchor) else parent.body.collection
    if body.collection != followed:
        raise MembershipError(f"membership.collection: {body.collection!r} is not the one followed")
    if isinstance(parent, Anchor):
        if body.version != 1:
            raise MembershipError(
                f"membership.version: {body.version} does not follow the pinned anchor (1)"
            )
        stewards, threshold, what = parent.stewards, parent.threshold, "the pinned stewards"
    else:
        if body.version != parent.version + 1:
            raise MembershipError(
                f"membership.version: {body.version} does not follow version {parent.version}"
            )
        if body.prev != parent.id:
            raise MembershipError(
                f"membership.prev: {body.prev} is not the id of version {parent.version}"
            )
        stewards = frozenset(parent.body.stewards)
        threshold = parent.body.threshold
        what = f"the stewards of version {parent.version}"
    have = _count(doc.signers, stewards)
    if have < threshold:
        raise MembershipError(
            f"membership version {body.version} of {body.collection}: signed by {have} of"
            f" {what}, needs {threshold} of {len(stewards)}"
        )
    own = _count(doc.signers, body.stewards)
    if own < body.threshold:
        raise MembershipError(
            f"membership version {body.version} of {body.collection}: signed by {own} of its"
            f" own stewards, needs {body.threshold} of {len(body.stewards)}"
        )


@dataclass(frozen=True, slots=True)
class Conflict:
    """Two or more valid documents at one version: which, so a node can show it."""

    version: int
    ids: tuple[str, ...]


@dataclass(frozen=True)
class InForce:
    """The membership in force for one collection, from a set of held documents.

    `tips`: the valid documents of the highest version (one unless stewards equivocated);
    `writers`/`readers`: what all tips grant; `refused`: documents held or offered that
    are not valid from the anchor (id -> reason), which change nothing."""

    collection: str
    tips: tuple[Document, ...]
    chain: tuple[Document, ...]  # the valid documents, by version then id
    writers: frozenset[str] = field(default_factory=frozenset)
    readers: frozenset[str] = field(default_factory=frozenset)
    conflict: Conflict | None = None
    refused: Mapping[str, str] = field(default_factory=dict)

    @property
    def version(self) -> int:
        """0 while no valid version 1 is held: then nobody is a member."""
        return self.tips[0].version if self.tips else 0

    @property
    def document(self) -> Document | None:
        """The single document in force, or None (none held, or a conflict)."""
        return self.tips[0] if len(self.tips) == 1 else None

    def _member(
        self, names: frozenset[str], key: str, orgs: Callable[[str], Iterable[str]] | None
    ) -> bool:
        if key in names:
            return True
        return orgs is not None and any(org in names for org in orgs(key))

    def may_write(self, key: str, orgs: Callable[[str], Iterable[str]] | None = None) -> bool:
        """Whether key (the node key that signs a batch) may write the collection: listed
        itself, or certified by a listed org. `orgs(key)` answers which orgs vouch for key
        (the authority's certificates, valid at the batch's ts); None: node ids only."""
        return self._member(self.writers, key, orgs)

    def may_read(self, key: str, orgs: Callable[[str], Iterable[str]] | None = None) -> bool:
        """Whether key may read the collection: a reader, or a writer (a writer reads what
        it writes to; listing every writer twice would only invite the two lists to
        disagree)."""
        return self._member(self.readers | self.writers, key, orgs)


def _order(doc: Document) -> tuple[int, str]:
    return doc.version, doc.id


def resolve(anchor: Anchor, documents: Iterable[Document]) -> InForce:
    """The membership in force for anchor.collection from any set of documents, in any
    order, with repeats: the result depends only on the set."""
    by_id: dict[str, Document] = {}
    for doc in documents:
        held = by_id.get(doc.id)
        # two copies of one document: the union of their signers (the envelope's merge)
        by_id[doc.id] = (
            doc if held is None else Document(doc.id, doc.body, held.signers | doc.signers)
        )
    valid: dict[str, Document] = {}
    refused: dict[str, str] = {}
    for doc in sorted(by_id.values(), key=_order):  # a parent always has a lower version
        if doc.body.collection != anchor.collection:
            refused[doc.id] = f"membership.collection: {doc.body.collection!r} is not followed"
            continue
        parent: Document | Anchor | None
        parent = anchor if doc.version == 1 else valid.get(doc.body.prev or "")
        if parent is None:
            refused[doc.id] = (
                f"membership version {doc.version}: its previous version {doc.body.prev}"
                " is not held or not valid"
            )
            continue
        try:
            check_successor(doc, parent)
        except MembershipError as exc:
            refused[doc.id] = str(exc)
            continue
        valid[doc.id] = doc
    chain = tuple(sorted(valid.values(), key=_order))
    if not chain:
        return InForce(anchor.collection, (), (), refused=refused)
    top = chain[-1].version
    tips = tuple(d for d in chain if d.version == top)
    writers = frozenset.intersection(*(frozenset(d.body.writers) for d in tips))
    readers = frozenset.intersection(*(frozenset(d.body.readers) for d in tips))
    conflict = Conflict(top, tuple(d.id for d in tips)) if len(tips) > 1 else None
    return InForce(anchor.collection, tips, chain, writers, readers, conflict, refused)


def admit(anchor: Anchor, held: Iterable[Document], offered: Document) -> str | None:
    """Whether a node should store `offered` beside `held`: None if it is valid (or a
    copy of a held document), else the reason it is refused. Storing only valid documents
    bounds what a peer can make a node keep to what stewards signed; a copy may still bring
    signatures the held one lacks."""
    held = list(held)
    if any(d.id == offered.id for d in held):
        return None
    result = resolve(anchor, [*held, offered])
    if offered.id in result.refused:
        return result.refused[offered.id]
    if len(result.chain) > MAX_DOCUMENTS:
        return f"membership of {anchor.collection}: more than {MAX_DOCUMENTS} documents held"
    return None


def order_for_admission(documents: Iterable[Document]) -> list[Document]:
    """Documents in the order a node admits them one by one (parents first), so a page
    that brings versions 2 and 3 together admits both whatever order they came in."""
    return sorted(documents, key=_order)


def trim(statement: Statement, parent: Document | Anchor) -> Statement:
    """The statement with only the signatures that count (the parent's stewards and its
    own): anyone may add a valid signature to a copy, and sixteen of them would leave no
    room for the stewards'."""
    body = statement.body
    assert isinstance(body, MembershipBody)
    stewards = parent.stewards if isinstance(parent, Anchor) else frozenset(parent.body.stewards)
    keep = stewards | frozenset(body.stewards)
    sigs = tuple((s, sig) for s, sig in statement.sigs if s in keep)
    return Statement(statement.kind, statement.body, statement.body_bytes, sigs)


def parent_of(anchor: Anchor, held: Iterable[Document], doc: Document) -> Document | Anchor | None:
    """The document (or anchor) `doc` claims to follow, if held and valid."""
    if doc.version == 1:
        return anchor
    result = resolve(anchor, held)
    return next((d for d in result.chain if d.id == doc.body.prev), None)


def draft(
    collection: str,
    version: int,
    stewards: Iterable[str],
    threshold: int,
    writers: Iterable[str],
    readers: Iterable[str],
    prev: str | None,
    ts: int,
) -> MembershipBody:
    """A new document's body from lists in any order (sorted here, duplicates dropped);
    a bad field is a StatementError naming it."""
    from pydantic import ValidationError

    try:
        return MembershipBody(
            collection=collection,
            version=version,
            stewards=sorted(set(stewards)),
            threshold=threshold,
            writers=sorted(set(writers)),
            readers=sorted(set(readers)),
            prev=prev,
            ts=ts,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise StatementError(f"membership{'.' + loc if loc else ''}: {first['msg']}") from None


KINDS = [MembershipKind]


def carried(result: InForce) -> list[Document]:
    """The documents a copy of the collection must carry for a reader that pins only the
    anchor: every tip in force and each of its ancestors down to version 1, by version
    (a branch that lost, or a document no tip descends from, is left out: it decides
    nothing). A reader that already holds the earlier versions finds copies of them,
    which change nothing."""
    by_id = {d.id: d for d in result.chain}
    keep: dict[str, Document] = {}
    for tip in result.tips:
        doc: Document | None = tip
        while doc is not None and doc.id not in keep:
            keep[doc.id] = doc
            doc = by_id.get(doc.body.prev or "")
    return sorted(keep.values(), key=_order)


def describe(documents: Iterable[Document]) -> list[dict[str, object]]:
    """What an offline reader with no anchor can say of carried documents: per version its
    stewards and threshold, which of them signed, and whether the threshold is met (its
    own stewards', and its previous version's when that is carried too; version 1's
    previous is the anchor each importer pins, checked at import)."""
    docs = sorted(documents, key=_order)
    by_id = {d.id: d for d in docs}
    out: list[dict[str, object]] = []
    for doc in docs:
        body = doc.body
        own = _count(doc.signers, body.stewards)
        entry: dict[str, object] = {
            "version": body.version,
            "id": doc.id,
            "collection": body.collection,
            "stewards": list(body.stewards),
            "threshold": body.threshold,
            "signed_by": sorted(doc.signers.intersection(body.stewards)),
            "threshold_met": own >= body.threshold,
            "writers": len(body.writers),
            "readers": len(body.readers),
        }
        if body.version == 1:
            entry["previous"] = "anchor"
        else:
            parent = by_id.get(body.prev or "")
            if parent is None or parent.version != body.version - 1:
                entry["previous"] = "not carried"
            else:
                entry["previous"] = "carried"
                met = _count(doc.signers, parent.body.stewards) >= parent.body.threshold
                entry["threshold_met"] = bool(entry["threshold_met"]) and met
        out.append(entry)
    return out
