"""Statements: one signed envelope for every fact that is not an op in a log.

Certificates, hand-overs, key revocations, membership documents and witness cosigns are
facts *about* logs and keys, signed by parties that are not the log's author (an org, a
steward, a witness), so they cannot be ops inside a log. They share one envelope, one
parser with one set of bounds, one id and one way of adding signatures, so that each kind
is only its body model and its signing rule (one class, as signal types are).

API (the node and the other protocol modules use only these):

    MAX_BODY_BYTES, MAX_SIGS, MAX_WIRE_BYTES         bounds (16 KiB, 16, 32 KiB)
    context(kind) -> bytes                           b"hashmesh/statement/<kind>/v1"
    class StatementBody(BaseModel)                   base of every kind's body (kind, v, ts)
    class Kind                                       base of one kind: name, body_model,
        .check_body(body)                            extra rules across fields (raise)
        .check_signers(body, signers)                who must sign (raise StatementError)
        .may_sign(body, signer) -> bool              a signature by anyone else is refused
        .scope(body) -> str | None                   collection the fact is about, or none
        .slot(body) -> tuple[str, int] | None        (slot key, order) for superseding kinds
    class Registry(kinds)                            .get(name), .names(), .parse_body(bytes)
    class Statement                                  verified: kind, body, body_bytes, sigs,
        .id / .signers / .scope / .slot / .to_wire() / .to_json()
    parse_statement(wire, registry) -> Statement     verify everything; ProtocolError if not
    parse_statement_json(value, registry)            same, from an already decoded object
    sign_statement(body, keys, registry) -> Statement
    add_signatures(statement, keys) -> Statement     a co-signer adds its signature
    merge(a, b) -> Statement                         union of two copies' signatures
    encode_body(body) -> bytes                       canonical body bytes

The full registry of the kinds hashmesh knows is hashmesh.protocol.kinds.REGISTRY (that
module imports every kind module; this one imports none, so kinds may import it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from hashlib import sha256
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hashmesh.protocol.encoding import (
    MAX_SAFE_INT,
    b64url,
    canonical,
    from_b64url,
    parse_canonical,
)
from hashmesh.protocol.errors import (
    LimitError,
    ProtocolError,
    ProtocolUsageError,
    SignatureError,
    StatementError,
    UnknownKind,
)
from hashmesh.protocol.signing import SIGNATURE_SIZE, SigningKey, validate_node_id, verify

MAX_BODY_BYTES = 16 * 1024
MAX_SIGS = 16
MAX_WIRE_BYTES = 32 * 1024
KIND_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
ID_PATTERN = r"^[0-9a-f]{64}$"
NODE_ID_MAX = 64  # ed25519: + 43 base64url characters = 51; the bound is for the parser


def context(kind: str) -> bytes:
    """Each kind signs under its own context, so a signature for one kind never verifies
    as another (a cert's signature reused as a revocation)."""
    return b"hashmesh/statement/" + kind.encode("ascii") + b"/v1"


class StatementBody(BaseModel):
    """Fields every body has. `ts` is what the signer claims (no clock in the protocol)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    #: Optional fields that are absent rather than null on the wire (one byte form each).
    omit_if_none: ClassVar[frozenset[str]] = frozenset()
    #: Fields holding node or org ids, checked by validate_node_id after the model.
    id_fields: ClassVar[tuple[str, ...]] = ()

    kind: str
    v: Literal[1] = 1
    ts: int = Field(ge=0, le=MAX_SAFE_INT)


class Kind:
    """One statement kind. Subclasses set name and body_model and override the rules."""

    name: ClassVar[str]
    body_model: ClassVar[type[StatementBody]]
    description: ClassVar[str] = ""

    @classmethod
    def check_body(cls, body: StatementBody) -> None:
        """Rules across fields the model cannot say (raise StatementError naming a field)."""

    @classmethod
    def check_signers(cls, body: StatementBody, signers: frozenset[str]) -> None:
        """Raise StatementError unless `signers` (all verified) may have made this statement.

        Only what the body alone decides; rules needing other statements (an org's
        certificates for a lost-key hand-over, a previous membership version's stewards)
        are the authority's."""
        raise ProtocolUsageError(f"{cls.name}: kind has no signing rule")

    @classmethod
    def may_sign(cls, body: StatementBody, signer: str) -> bool:
        """Whether a signature by `signer` belongs on this statement at all. Signatures by
        anyone else are refused, so nobody can fill the 16 signature places with noise."""
        return True

    @classmethod
    def scope(cls, body: StatementBody) -> str | None:
        """The collection the fact is about (visible only to its readers), or None."""
        return None

    @classmethod
    def slot(cls, body: StatementBody) -> tuple[str, int] | None:
        """(slot key, order) if a newer statement replaces an older one, else None."""
        return None


def _field_error(what: str, exc: ValidationError) -> StatementError:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    return StatementError(f"{what}.{loc}: {first['msg']}" if loc else f"{what}: {first['msg']}")


def encode_body(body: StatementBody) -> bytes:
    value = body.model_dump()
    for name in body.omit_if_none:
        if value.get(name) is None:
            value.pop(name, None)
    return canonical(value)


class Registry:
    """The kinds a parser accepts. A kind not in it is refused by name."""

    def __init__(self, kinds: Iterable[type[Kind]]) -> None:
        self._kinds: dict[str, type[Kind]] = {}
        for kind in kinds:
            if kind.name in self._kinds:
                raise ProtocolUsageError(f"statement kind {kind.name!r} registered twice")
            if kind.body_model.model_fields["kind"].default != kind.name:
                raise ProtocolUsageError(f"{kind.name}: body_model.kind must default to its name")
            self._kinds[kind.name] = kind

    def get(self, name: str) -> type[Kind]:
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKind(
                f"statement body.kind: unknown kind {name!r} (known: {', '.join(self.names())})"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._kinds)

    def parse_body(self, body_bytes: bytes) -> tuple[type[Kind], StatementBody]:
        """Strict: canonical bytes, a known kind, v 1, no unknown field, every id valid."""
        if len(body_bytes) > MAX_BODY_BYTES:
            raise LimitError(f"statement body: {len(body_bytes)} bytes exceeds {MAX_BODY_BYTES}")
        value = parse_canonical(body_bytes, "statement body")
        if not isinstance(value, dict):
            raise StatementError("statement body: must be a JSON object")
        name = value.get("kind")
        if not isinstance(name, str):
            raise StatementError("statement body.kind: must be a string")
        kind = self.get(name)
        if type(value.get("v")) is not int or value["v"] != 1:  # Literal[1] would take true
            raise StatementError("statement body.v: must be the integer 1")
        for field_name in kind.body_model.omit_if_none:
            if field_name in value and value[field_name] is None:
                raise StatementError(
                    f"statement body.{field_name}: absent when not given, never null"
                )
        try:
            body = kind.body_model.model_validate(value)
        except ValidationError as exc:
            raise _field_error("statement body", exc) from None
        for field_name in body.id_fields:
            ids = getattr(body, field_name)
            if ids is None:  # an optional id, absent
                continue
            for i, one in enumerate(ids if isinstance(ids, (list, tuple)) else [ids]):
                suffix = f"[{i}]" if isinstance(ids, (list, tuple)) else ""
                validate_node_id(one, f"statement body.{field_name}{suffix}")
        kind.check_body(body)
        return kind, body


@dataclass(frozen=True, slots=True)
class Statement:
    """A statement whose body parsed and whose every signature verified."""

    kind: type[Kind]
    body: StatementBody
    body_bytes: bytes
    #: (signer id, signature), sorted by signer id, one per signer, all verified.
    sigs: tuple[tuple[str, bytes], ...]

    @property
    def id(self) -> str:
        """sha256 of the body bytes: the same fact with more signatures keeps its id."""
        return sha256(self.body_bytes).hexdigest()

    @property
    def signers(self) -> frozenset[str]:
        return frozenset(signer for signer, _ in self.sigs)

    @property
    def scope(self) -> str | None:
        return self.kind.scope(self.body)

    @property
    def slot(self) -> tuple[str, int] | None:
        """(slot key, order); the key starts with the kind, so kinds never share a slot."""
        slot = self.kind.slot(self.body)
        return None if slot is None else (f"{self.kind.name}:{slot[0]}", slot[1])

    def to_json(self) -> dict[str, Any]:
        return {
            "body": b64url(self.body_bytes),
            "sigs": [[signer, b64url(sig)] for signer, sig in self.sigs],
        }

    def to_wire(self) -> bytes:
        return canonical(self.to_json())


def _check_sigs(
    kind: type[Kind], body: StatementBody, body_bytes: bytes, sigs: Sequence[tuple[str, bytes]]
) -> None:
    if not sigs:
        raise StatementError("statement sigs: at least one signature is required")
    if len(sigs) > MAX_SIGS:
        raise LimitError(f"statement sigs: {len(sigs)} signatures exceeds {MAX_SIGS}")
    ctx = context(kind.name)
    previous = ""
    for i, (signer, sig) in enumerate(sigs):
        if signer <= previous:
            why = "a duplicate signer" if signer == previous else "not sorted by signer id"
            raise StatementError(f"statement sigs[{i}]: {why}")
        previous = signer
        if not kind.may_sign(body, signer):
            raise StatementError(f"statement sigs[{i}]: {signer} does not sign a {kind.name}")
        try:
            verify(signer, ctx, body_bytes, sig)
        except SignatureError as exc:
            raise SignatureError(f"statement sigs[{i}]: {exc}") from None
    kind.check_signers(body, frozenset(signer for signer, _ in sigs))


def parse_statement_json(value: Any, registry: Registry) -> Statement:
    """Verify a decoded wire object (as found inside a larger JSON message)."""
    if not isinstance(value, dict):
        raise StatementError("statement: must be a JSON object")
    extra = set(value) - {"body", "sigs"}
    if extra:
        raise StatementError(f"statement.{sorted(extra)[0]}: unknown field")
    if "body" not in value:
        raise StatementError("statement.body: missing")
    if "sigs" not in value:
        raise StatementError("statement.sigs: missing")
    raw_sigs = value["sigs"]
    if not isinstance(raw_sigs, list):
        raise StatementError("statement.sigs: must be a list of [signer, signature]")
    if len(raw_sigs) > MAX_SIGS:
        raise LimitError(f"statement sigs: {len(raw_sigs)} signatures exceeds {MAX_SIGS}")
    if not isinstance(value["body"], str):
        raise StatementError("statement.body: must be a base64url string")
    if len(value["body"]) > (MAX_BODY_BYTES * 4 + 2) // 3:
        raise LimitError(f"statement.body: more than {MAX_BODY_BYTES} bytes")
    body_bytes = from_b64url(value["body"], "statement.body")
    kind, body = registry.parse_body(body_bytes)
    sigs: list[tuple[str, bytes]] = []
    for i, pair in enumerate(raw_sigs):
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(p, str) for p in pair)
        ):
            raise StatementError(f"statement sigs[{i}]: must be [signer id, signature]")
        if len(pair[0]) > NODE_ID_MAX:
            raise StatementError(f"statement sigs[{i}]: signer id longer than {NODE_ID_MAX}")
        validate_node_id(pair[0], f"statement sigs[{i}] signer")
        sigs.append((pair[0], from_b64url(pair[1], f"statement sigs[{i}]", SIGNATURE_SIZE)))
    _check_sigs(kind, body, body_bytes, sigs)
    return Statement(kind, body, body_bytes, tuple(sigs))


def parse_statement(wire: bytes, registry: Registry) -> Statement:
    """Verify one statement's wire bytes; any fault is a ProtocolError naming the field."""
    if len(wire) > MAX_WIRE_BYTES:
        raise LimitError(f"statement: {len(wire)} bytes exceeds {MAX_WIRE_BYTES}")
    return parse_statement_json(parse_canonical(wire, "statement"), registry)


def _signed(kind: type[Kind], body_bytes: bytes, keys: Sequence[SigningKey]) -> dict[str, bytes]:
    ctx = context(kind.name)
    return {key.node_id: key.sign(ctx, body_bytes) for key in keys}


def sign_statement(
    body: StatementBody, keys: Sequence[SigningKey], registry: Registry
) -> Statement:
    """Sign a new statement; it is verified like a received one before it is returned, so
    a node or org never hands out a statement its peers would refuse (ProtocolUsageError)."""
    body_bytes = encode_body(body)
    kind = registry.get(body.kind)
    sigs = _signed(kind, body_bytes, keys)
    try:
        kind_, parsed = registry.parse_body(body_bytes)
        _check_sigs(kind_, parsed, body_bytes, sorted(sigs.items()))
    except ProtocolError as exc:
        raise ProtocolUsageError(f"refusing to sign: {exc}") from exc
    return Statement(kind_, parsed, body_bytes, tuple(sorted(sigs.items())))


def _with_sigs(statement: Statement, sigs: dict[str, bytes]) -> Statement:
    ordered = tuple(sorted(sigs.items()))
    if len(ordered) > MAX_SIGS:
        raise LimitError(f"statement sigs: {len(ordered)} signatures exceeds {MAX_SIGS}")
    return Statement(statement.kind, statement.body, statement.body_bytes, ordered)


def add_signatures(statement: Statement, keys: Sequence[SigningKey]) -> Statement:
    """A co-signer (a steward, the new key of a hand-over) adds its signature; the id stays."""
    sigs = dict(statement.sigs)
    for key in keys:
        if not statement.kind.may_sign(statement.body, key.node_id):
            raise ProtocolUsageError(f"{key.node_id} does not sign a {statement.kind.name}")
    sigs.update(_signed(statement.kind, statement.body_bytes, keys))
    return _with_sigs(statement, sigs)


def merge(a: Statement, b: Statement) -> Statement:
    """Two verified copies of one statement: the union of their signatures.

    A signer's signature is the same in both (Ed25519 is deterministic); if a signer has
    two different valid signatures, the smaller is kept so the merge is order-independent."""
    if a.body_bytes != b.body_bytes:
        raise ProtocolUsageError(f"merge: statements {a.id} and {b.id} differ")
    sigs = dict(a.sigs)
    for signer, sig in b.sigs:
        sigs[signer] = min(sig, sigs.get(signer, sig))
    return _with_sigs(a, sigs)


__all__ = [
    "ID_PATTERN",
    "KIND_PATTERN",
    "MAX_BODY_BYTES",
    "MAX_SIGS",
    "MAX_WIRE_BYTES",
    "Kind",
    "Registry",
    "Statement",
    "StatementBody",
    "add_signatures",
    "context",
    "encode_body",
    "merge",
    "parse_statement",
    "parse_statement_json",
    "sign_statement",
]
