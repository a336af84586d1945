"""Witnessed log heads: cosigns, and the split views they expose.

A log's author can show one history to some peers and another to others (a split view, as
in Certificate Transparency): each peer's chain verifies, and version vectors compare only
seq numbers, so two peers holding different batches at the same seq never fetch from each
other and never see the fork. A cosign is a node's signed statement "I verified this log up
to `seq`, and the header there hashes to `head`" (C2SP tlog-witness's cosignature, for a
hash chain instead of a Merkle tree). Gossiped to those who may read the collection, cosigns
let every node compare the heads others verified with its own: two different heads named
for one (log, seq), by two cosigns or by a cosign and a header held here, prove a split
view without any central log. The prev links make one head at seq S commit to the whole
history before it, so agreeing at S is agreeing on everything up to S.

Sans-IO: the envelope (statements.py) verifies the witness's signature; this module only
reads verified bodies.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

from pydantic import Field

from hashmesh.protocol.batches import MAX_HEADER_BYTES, Header, verify_header
from hashmesh.protocol.encoding import canonical, from_b64url, parse_canonical
from hashmesh.protocol.errors import EncodingError, LimitError, ProtocolError, StatementError
from hashmesh.protocol.evidence import SignedHeader
from hashmesh.protocol.names import COLLECTION_PATTERN, validate_collection, validate_node_id
from hashmesh.protocol.statements import Kind, StatementBody

KIND = "cosign"

_ID = r"^ed25519:[A-Za-z0-9_-]{43}$"
_HEX = r"^[0-9a-f]{64}$"


class CosignBody(StatementBody):
    """The body of a "cosign" statement, signed by `witness` (a node key)."""

    id_fields: ClassVar[tuple[str, ...]] = ("witness", "author")

    kind: Literal["cosign"] = "cosign"
    witness: str = Field(pattern=_ID)
    author: str = Field(pattern=_ID)
    collection: str = Field(pattern=COLLECTION_PATTERN)
    seq: int = Field(ge=1, le=2**53 - 1)
    head: str = Field(pattern=_HEX)


class CosignKind(Kind):
    """Signed by the witness alone; scoped to the log's collection, since a head is a fact
    about the collection (that it exists, how far it is); one slot per (witness, log), so a
    witness's newer head supersedes its older one and a node keeps one cosign per witness
    per log however long the log grows."""

    name = KIND
    body_model = CosignBody
    description = "a witness's signed view of a log's head"

    @classmethod
    def check_signers(cls, body: StatementBody, signers: frozenset[str]) -> None:
        assert isinstance(body, CosignBody)
        if signers != {body.witness}:
            raise StatementError("cosign sigs: must be signed by its witness, and only by it")

    @classmethod
    def may_sign(cls, body: StatementBody, signer: str) -> bool:
        assert isinstance(body, CosignBody)
        return signer == body.witness

    @classmethod
    def scope(cls, body: StatementBody) -> str | None:
        assert isinstance(body, CosignBody)
        return body.collection

    @classmethod
    def slot(cls, body: StatementBody) -> tuple[str, int] | None:
        assert isinstance(body, CosignBody)
        return f"{body.witness} {body.author} {body.collection}", body.seq


class Claim(Protocol):
    """What a cosign claims, as the functions below read it: a CosignBody, or the compact
    copy (Cosign) a node keeps of each one it holds."""

    @property
    def witness(self) -> str: ...
    @property
    def author(self) -> str: ...
    @property
    def collection(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def head(self) -> str: ...


class Cosign(NamedTuple):
    """A cosign's claim without its envelope: what a node keeps in memory per slot. A
    parsed body was about 1.9 KB a cosign, and a node of 32 witnesses x 10,000 logs holds
    320,000; ids and names are interned, shared by every cosign naming them."""

    witness: str
    author: str
    collection: str
    seq: int
    head: str

    @classmethod
    def of(cls, body: CosignBody) -> Cosign:
        return cls(
            sys.intern(body.witness),
            sys.intern(body.author),
            sys.intern(body.collection),
            body.seq,
            body.head,
        )


@dataclass(frozen=True, slots=True)
class Sighting:
    """One party's view of (log, seq): a witness's cosign, or this node's own header."""

    witness: str
    head: str
    own: bool = False  # a header this node holds, not a cosign


@dataclass(frozen=True)
class SplitView:
    """Two or more heads for one (log, seq): evidence that the author showed different
    histories to different parties. `heads` maps each head to who saw it, sorted."""

    author: str
    collection: str
    seq: int
    heads: Mapping[str, tuple[str, ...]]

    def to_json(self) -> dict[str, object]:
        return {
            "author": self.author,
            "collection": self.collection,
            "seq": self.seq,
            "heads": [{"head": h, "witnesses": list(w)} for h, w in sorted(self.heads.items())],
        }


def split_views(
    cosigns: Iterable[Claim],
    held: Callable[[str, str, int], str | None],
    me: str,
    ignore: Collection[str] = (),
) -> list[SplitView]:
    """Every (log, seq) for which the cosigns, and this node's own headers, name more than
    one head. `held(author, collection, seq)` is the hex hash of the header this node holds
    there, or None; `me` names this node among the witnesses; the cosigns of the witnesses
    in `ignore` (caught equivocating) count for nothing. Depends only on the set of
    cosigns, not their order; sorted by log then seq."""
    seen: dict[tuple[str, str, int], dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for c in cosigns:
        if c.witness in ignore:
            continue
        seen[(c.author, c.collection, c.seq)][c.head].add(c.witness)
    out: list[SplitView] = []
    for (author, collection, seq), heads in sorted(seen.items()):
        ours = held(author, collection, seq)
        if ours is not None:
            heads[ours].add(me)
        if len(heads) > 1:
            out.append(
                SplitView(author, collection, seq, {h: tuple(sorted(w)) for h, w in heads.items()})
            )
    return out


Agreement = Literal["same", "different", "ahead", "unknown"]


@dataclass(frozen=True, slots=True)
class WitnessLine:
    """What one witness saw of a log, against this node's copy."""

    witness: str
    seq: int
    head: str
    agreement: Agreement
    orgs: tuple[str, ...] = ()
    equivocating: bool = False  # caught signing two heads at one seq: its word counts not

    def to_json(self) -> dict[str, object]:
        return {
            "witness": self.witness,
            "orgs": list(self.orgs),
            "seq": self.seq,
            "head": self.head,
            "agreement": self.agreement,
            "equivocating": self.equivocating,
        }


def witnesses(
    author: str,
    collection: str,
    cosigns: Iterable[Claim],
    held: Callable[[int], str | None],
    our_seq: int,
    orgs: Callable[[str], Iterable[str]] | None = None,
    convicted: Collection[str] = (),
) -> list[WitnessLine]:
    """Who saw what of one log: each witness's latest cosign (the highest seq; at one seq,
    every distinct head it signed is kept, since a witness signing two is itself news), and
    whether it agrees with the header this node holds at that seq (`held(seq)`, our head
    is `our_seq`): "same", "different" (a split view), "ahead" (beyond our head: nothing to
    compare yet), or "unknown" (we hold no header there). `orgs(witness)` names the
    organisations vouching for a witness key, for "which organisations saw this head";
    a witness in `convicted` is flagged as equivocating."""
    latest: dict[str, tuple[int, set[str]]] = {}
    for c in cosigns:
        if c.author != author or c.collection != collection:
            continue
        have = latest.get(c.witness)
        if have is None or c.seq > have[0]:
            latest[c.witness] = (c.seq, {c.head})
        elif c.seq == have[0]:
            have[1].add(c.head)
    out: list[WitnessLine] = []
    for witness, (seq, heads) in sorted(latest.items()):
        ours = held(seq) if seq <= our_seq else None
        for head in sorted(heads):
            agreement: Agreement
            if seq > our_seq:
                agreement = "ahead"
            elif ours is None:
                agreement = "unknown"
            else:
                agreement = "same" if ours == head else "different"
            names = tuple(sorted(set(orgs(witness)))) if orgs is not None else ()
            out.append(WitnessLine(witness, seq, head, agreement, names, witness in convicted))
    return out


def cosign_body(
    witness: str, author: str, collection: str, seq: int, head: str, ts: int
) -> CosignBody:
    """The body a witness signs for the head it verified."""
    return CosignBody(
        ts=ts,
        witness=witness,
        author=author,
        collection=collection,
        seq=seq,
        head=head,
    )


def equivocates(held: Claim, new: Claim) -> bool:
    """Whether two cosigns convict their witness: one witness, one log, one seq, two heads.
    An honest witness verified one chain, so it never signs two heads at one seq (a newer
    seq supersedes; a second signature of the same head is the same claim)."""
    return (
        held.witness == new.witness
        and held.author == new.author
        and held.collection == new.collection
        and held.seq == new.seq
        and held.head != new.head
    )


def equivocation_evidence(first: Mapping[str, Any], second: Mapping[str, Any]) -> bytes:
    """The record of a witness's equivocation: its two signed cosign statements (their wire
    objects), ordered by statement id so equal evidence has equal bytes. Each half verifies
    on its own (protocol/statements.py), so anyone can check the record without trusting
    whoever kept it."""
    a, b = sorted([dict(first), dict(second)], key=lambda o: canonical(o))
    return canonical({"v": 1, "kind": "cosign-equivocation", "a": a, "b": b})


# -- proving a split view: the header a witness cosigned, fetched from it ------------------

#: A header request: {v: 1, author, collection, seq}; an answer {v: 1, header, sig}.
MAX_HEADER_REQUEST_BYTES = 512
MAX_HEADER_ANSWER_BYTES = 2 * MAX_HEADER_BYTES + 256


@dataclass(frozen=True, slots=True)
class HeaderRequest:
    """Which header the caller asks for: the one held at (author, collection, seq)."""

    author: str
    collection: str
    seq: int

    def to_bytes(self) -> bytes:
        return canonical(
            {"v": 1, "author": self.author, "collection": self.collection, "seq": self.seq}
        )


def parse_header_request(data: bytes) -> HeaderRequest:
    """A peer's header request, bounded and checked field by field."""
    if len(data) > MAX_HEADER_REQUEST_BYTES:
        raise LimitError(f"header request: {len(data)} bytes exceeds {MAX_HEADER_REQUEST_BYTES}")
    value = parse_canonical(data, "header request")
    if not isinstance(value, dict) or set(value) != {"v", "author", "collection", "seq"}:
        raise EncodingError("header request: must be {v, author, collection, seq}")
    if type(value["v"]) is not int or value["v"] != 1:
        raise EncodingError("header request.v: must be the integer 1")
    author, collection, seq = value["author"], value["collection"], value["seq"]
    if not isinstance(author, str):
        raise EncodingError("header request.author: must be a node id")
    validate_node_id(author, "header request.author")
    if not isinstance(collection, str):
        raise EncodingError("header request.collection: must be a collection name")
    validate_collection(collection, "header request.collection")
    if type(seq) is not int or not 1 <= seq <= 2**53 - 1:
        raise EncodingError("header request.seq: must be an integer from 1 to 2^53 - 1")
    return HeaderRequest(author, collection, seq)


def encode_header_answer(signed: SignedHeader | None) -> bytes:
    """The header held, or `{"v":1,"held":false}`: an answer of its own rather than a
    404, which an older node gives for a route it does not have and which must not read
    as a witness that cannot back its cosign."""
    if signed is None:
        return canonical({"v": 1, "held": False})
    return canonical({"v": 1, **signed.to_wire()})


def decode_header_answer(data: bytes) -> SignedHeader | None:
    """A witness's answer: the signed header it holds, unverified (see `prove_head`), or
    None when it holds none (or may not say: the same answer)."""
    if len(data) > MAX_HEADER_ANSWER_BYTES:
        raise LimitError(f"header answer: {len(data)} bytes exceeds {MAX_HEADER_ANSWER_BYTES}")
    value = parse_canonical(data, "header answer")
    if isinstance(value, dict) and set(value) == {"v", "held"}:
        if type(value["v"]) is not int or value["v"] != 1 or value["held"] is not False:
            raise EncodingError('header answer: a header not held is {"v":1,"held":false}')
        return None
    if not isinstance(value, dict) or set(value) != {"v", "header", "sig"}:
        raise EncodingError("header answer: must be {v, header, sig} or {v, held: false}")
    if type(value["v"]) is not int or value["v"] != 1:
        raise EncodingError("header answer.v: must be the integer 1")
    if not isinstance(value["header"], str) or not isinstance(value["sig"], str):
        raise EncodingError("header answer: header and sig must be base64url strings")
    return SignedHeader(
        from_b64url(value["header"], "header answer.header"),
        from_b64url(value["sig"], "header answer.sig", 64),
    )


def prove_head(signed: SignedHeader, claim: Claim) -> Header:
    """Check that `signed` is the header `claim` cosigned: a valid signature by the key the
    header names, at the claimed log and seq, hashing to the claimed head. Whether that
    key may sign this log at this seq is the authority's question, asked by the caller.
    Raises ProtocolError naming the field that does not match (the witness's fault)."""
    header = verify_header(signed.header_bytes, signed.signature)
    if (header.author, header.collection) != (claim.author, claim.collection):
        raise ProtocolError("header answer: names another log than the cosign")
    if header.seq != claim.seq:
        raise ProtocolError(f"header answer.seq: {header.seq}, the cosign names {claim.seq}")
    if sha256(signed.header_bytes).hexdigest() != claim.head:
        raise ProtocolError("header answer: does not hash to the head the witness cosigned")
    return header


KINDS = [CosignKind]
