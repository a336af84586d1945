"""Operations: what a batch carries. `add`, `revoke` and `opinion`, with their limits.

Ops are pydantic models (strict, no extra fields, frozen) so that the schema is written
once and serves validation, documentation and construction alike. On the wire an op is
one canonical JSON object; absent optional fields are omitted, never `null`.
"""

from __future__ import annotations

from itertools import compress
from operator import attrgetter
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from hashmesh.protocol.encoding import canonical, parse_canonical
from hashmesh.protocol.errors import LimitError, OpError, ProtocolError, SignalError
from hashmesh.protocol.names import COLLECTION_PATTERN as COLLECTION_PATTERN
from hashmesh.protocol.names import validate_collection as validate_collection
from hashmesh.protocol.names import validate_node_id
from hashmesh.protocol.signals import (
    MAX_LARGE_VALUE,
    Signal,
    get_type,
    signal_registry,
    validate_quality,
)

LABEL_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
CLASSIFICATION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,15}$"
REF_PATTERN = r"^[\x21-\x7e]{1,128}$"
MAX_REVOKE_TARGETS = 1000
MAX_REASON = 256
# An opinion's reason: 1-256 characters, none of them a control character (it is shown to
# the author's reviewers as one line). Codes of OPINION_REASONS first, by convention.
OPINION_REASON_PATTERN = r"^[^\x00-\x1f\x7f]{1,256}$"
#: Reasons with a meaning every node agrees on; any other reason is free text.
OPINION_REASONS = {
    "match-spike": "the disputing node quarantined the add on a spike of its match rate",
    "false-positive": "a reviewer found the matched content is not what the add's labels say",
    "degenerate": "the hash describes no picture (a flat colour, an empty file)",
}
MAX_OP_BYTES = 2048
#: An add whose type allows values over 512 characters (vpdq, tmk) may be this long.
MAX_LARGE_OP_BYTES = MAX_LARGE_VALUE + MAX_OP_BYTES


# (author, collection) pairs OpId.parse found valid: a 100,000-target revocation names one
# log 100,000 times, and checking its node id (a base64 round trip) each time was 60 % of
# parsing it. A pure memo of successes, bounded; what fails is checked again every time.
_VALID_PREFIXES: set[tuple[str, str]] = set()
_VALID_PREFIXES_MAX = 4096


class OpId(NamedTuple):
    """An op's place in the network: (author, collection, seq, index). Unique without coordination.

    A NamedTuple rather than a dataclass: ingest makes one per op, and tuples are cheap.
    """

    author: str
    collection: str
    seq: int
    index: int  # type: ignore[assignment]  # shadows tuple.index, on purpose

    def __str__(self) -> str:
        return f"{self.author}/{self.collection}/{self.seq}/{self.index}"

    @classmethod
    def parse(cls, text: str, what: str = "op id") -> OpId:
        if not isinstance(text, str) or len(text) > 200:
            raise OpError(f"{what}: not an op id string")
        parts = text.split("/")
        if len(parts) != 4:
            raise OpError(f"{what}: {text!r} is not of the form AUTHOR/COLLECTION/SEQ/INDEX")
        author, collection, seq, index = parts
        if (author, collection) not in _VALID_PREFIXES:
            try:
                validate_node_id(author, f"{what} author")
            except ProtocolError as exc:
                raise OpError(str(exc)) from None
            validate_collection(collection, f"{what} collection")
            if len(_VALID_PREFIXES) >= _VALID_PREFIXES_MAX:
                _VALID_PREFIXES.clear()
            _VALID_PREFIXES.add((author, collection))
        for label, number in (("seq", seq), ("index", index)):
            if not number.isdigit() or not number.isascii() or (number != "0" and number[0] == "0"):
                raise OpError(f"{what}: {label} {number!r} is not a decimal integer")
        seq_n, index_n = int(seq), int(index)
        if seq_n < 1 or seq_n > 2**53 - 1 or index_n > 2**53 - 1:
            raise OpError(f"{what}: seq must be >= 1 and both numbers < 2**53")
        return cls(author, collection, seq_n, index_n)


_strict = ConfigDict(strict=True, extra="forbid", frozen=True)


class AddOp(BaseModel):
    """Publish a signal with labels. No personal data: labels are categories and references."""

    model_config = _strict

    # Fields in key order: the ingest fast path re-serialises models to check canonical form.
    category: str = Field(pattern=LABEL_PATTERN)
    classification: str | None = Field(default=None, pattern=CLASSIFICATION_PATTERN)
    op: Literal["add"] = "add"
    quality: int | None = Field(default=None, ge=0, le=100)
    ref: str | None = Field(default=None, pattern=REF_PATTERN)
    type: str = Field(max_length=32)
    value: str = Field(max_length=MAX_LARGE_VALUE)  # each type's own bound: check_signal

    @classmethod
    def create(
        cls,
        type: str,
        value: str,
        *,
        category: str,
        quality: int | None = None,
        classification: str | None = None,
        ref: str | None = None,
    ) -> AddOp:
        """Build an add from user input: the value is normalised, every field checked."""
        signal = Signal.parse(type, value)
        validate_quality(signal.type, quality)
        try:
            return cls(
                type=signal.type,
                value=signal.value,
                quality=quality,
                category=category,
                classification=classification,
                ref=ref,
            )
        except ValidationError as exc:
            raise OpError(_explain(exc, "add")) from None

    def check_signal(self) -> None:
        """The signal rules pydantic cannot express: a registered type, a normalised value.

        Kept out of a model validator because a Python callback per op would halve the
        ingest rate; `parse_op(s)` and `AddOp.create` always call it.
        """
        signal_type = get_type(self.type)
        if len(self.value) > signal_type.max_value:
            raise SignalError(f"{self.type} value: longer than {signal_type.max_value} characters")
        if not signal_type.is_canonical(self.value):
            normal = signal_type.normalize(self.value)  # raises with the precise reason
            raise SignalError(f"{self.type} value: not normalised (expected {normal!r})")
        if self.quality is not None:
            validate_quality(self.type, self.quality)


class RevokeOp(BaseModel):
    """Withdraw earlier adds of the same log, by op id (observed-remove)."""

    model_config = _strict

    # Fields in key order, as in AddOp: the ingest fast path depends on it.
    op: Literal["revoke"] = "revoke"
    reason: str = Field(default="", max_length=MAX_REASON)
    targets: list[str] = Field(min_length=1, max_length=MAX_REVOKE_TARGETS)

    def target_ids(self) -> list[OpId]:
        return [OpId.parse(t, "revoke target") for t in self.targets]


class OpinionOp(BaseModel):
    """Any author's view of an add: confirm, dispute (false positive), seen, or retract.

    `reason` is optional and says why (a code of OPINION_REASONS, or free text); an
    opinion without one is byte for byte what it was before the field existed."""

    model_config = _strict

    # Fields in key order, as in AddOp: the ingest fast path depends on it.
    op: Literal["opinion"] = "opinion"
    opinion: Literal["confirm", "dispute", "seen", "retract"]
    reason: str | None = Field(default=None, pattern=OPINION_REASON_PATTERN)
    target: str = Field(max_length=200)

    @classmethod
    def create(cls, target: str, opinion: str, reason: str | None = None) -> OpinionOp:
        """Build an opinion from user input, each field checked and named when refused."""
        fields: dict[str, Any] = {} if reason is None else {"reason": reason}
        try:
            return cls(target=target, opinion=opinion, **fields)
        except ValidationError as exc:
            raise OpError(_explain(exc, "opinion")) from None

    def target_id(self) -> OpId:
        return OpId.parse(self.target, "opinion target")


AnyOp = AddOp | RevokeOp | OpinionOp
Op = Annotated[AnyOp, Field(discriminator="op")]
_ops_adapter: TypeAdapter[list[Op]] = TypeAdapter(list[Op])
_op_adapter: TypeAdapter[Op] = TypeAdapter(Op)


def _message(error: Any) -> str:
    if error["type"] == "string_pattern_mismatch" and error["loc"][-1:] == ("reason",):
        return "must be 1-256 characters, none of them a control character"
    return str(error["msg"])


def _explain(exc: ValidationError, prefix: str) -> str:
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    return f"{prefix}{'.' + loc if loc else ''}: {_message(first)}"


def op_to_wire(op: AddOp | RevokeOp | OpinionOp) -> dict[str, Any]:
    return op.model_dump(exclude_none=True)


def op_size(op: AddOp | RevokeOp | OpinionOp) -> int:
    """An op's size on the wire: what MAX_OP_BYTES and a batch's MAX_OPS_BYTES count."""
    return len(canonical(op_to_wire(op)))


def op_size_limit(op: AddOp | RevokeOp | OpinionOp | dict[str, Any]) -> int:
    """The most bytes `op`'s line may have: MAX_OP_BYTES, more for an add of a long type."""
    if type(op) is AddOp:
        name: Any = op.type
    elif isinstance(op, dict) and op.get("op") == "add":
        name = op.get("type")
    else:
        return MAX_OP_BYTES
    signal_type = signal_registry().get(name) if isinstance(name, str) else None
    if signal_type is not None and signal_type.max_value > 512:
        return MAX_LARGE_OP_BYTES
    return MAX_OP_BYTES


def may_be_long(line: bytes) -> bool:
    """Whether a line over MAX_OP_BYTES can be an add of a long type, read before parsing.

    Canonical key order puts `type` and then `value` last, so such an add names its type
    within its first MAX_OP_BYTES; any other long line is refused without being parsed.
    """
    head = line[:MAX_OP_BYTES]
    return any(
        b',"type":"' + name.encode() + b'","value":"' in head
        for name, signal_type in signal_registry().items()
        if signal_type.max_value > 512
    )


def check_op_sizes(
    lines: list[bytes], ops: list[AddOp | RevokeOp | OpinionOp], what: str = "batch ops"
) -> None:
    """Refuse a line longer than its op may be (lines over MAX_LARGE_OP_BYTES are refused
    before parsing; this is the per-type rule for the ones between)."""
    for i, (line, op) in enumerate(zip(lines, ops, strict=True)):
        if len(line) > MAX_OP_BYTES and len(line) > op_size_limit(op):
            raise LimitError(f"{what}[{i}]: {len(line)} bytes exceeds {MAX_OP_BYTES}")


def pack_revokes(targets: list[str], reason: str = "") -> list[RevokeOp]:
    """Revocations of `targets`, in order, each op as full as MAX_OP_BYTES allows.

    An op id is 60-70 bytes, so only about 30 fit in one op, far below MAX_REVOKE_TARGETS:
    the budget is counted from each target's canonical encoding (and the comma between
    two), not guessed, so every op built here is one its author's peers accept.
    """
    try:
        empty = len(canonical(op_to_wire(RevokeOp(targets=["x"], reason=reason)))) - 3
    except ValidationError as exc:
        raise OpError(_explain(exc, "revoke")) from None
    ops: list[RevokeOp] = []
    chunk: list[str] = []
    size = empty
    for target in targets:
        cost = len(canonical(target)) + (1 if chunk else 0)
        if chunk and (size + cost > MAX_OP_BYTES or len(chunk) >= MAX_REVOKE_TARGETS):
            ops.append(RevokeOp(targets=chunk, reason=reason))
            chunk, size, cost = [], empty, cost - 1
        if size + cost > MAX_OP_BYTES:
            raise OpError(f"revoke target {target[:80]!r}: longer than an op may be")
        chunk.append(target)
        size += cost
    if chunk:
        ops.append(RevokeOp(targets=chunk, reason=reason))
    return ops


def parse_op(value: Any, what: str = "op") -> AddOp | RevokeOp | OpinionOp:
    return parse_ops([value], what)[0]


def parse_ops(values: list[Any], what: str = "ops") -> list[AddOp | RevokeOp | OpinionOp]:
    """Validate many ops at once; the error names the index of the first bad op."""
    for i, value in enumerate(values):
        if type(value) is not dict:
            raise OpError(f"{what}[{i}]: must be a JSON object")
        if None in value.values():
            key = next(k for k, v in value.items() if v is None)
            raise OpError(f"{what}[{i}].{key}: null is not allowed; omit the field")
    try:
        ops = _ops_adapter.validate_python(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        index = first["loc"][0] if first["loc"] else "?"
        loc = ".".join(str(part) for part in first["loc"][2:])
        raise OpError(f"{what}[{index}]{'.' + loc if loc else ''}: {_message(first)}") from None
    check_signals(ops, what)
    return ops


def check_signals(ops: list[AddOp | RevokeOp | OpinionOp], what: str = "ops") -> None:
    """Apply `AddOp.check_signal` to every add, one regex per signal type instead of per op."""
    adds: list[AddOp] = (
        ops  # type: ignore[assignment]
        if set(map(type, ops)) == {AddOp}
        else [op for op in ops if type(op) is AddOp]
    )
    if not adds:
        return
    registry = signal_registry()
    type_list = list(map(_get_type, adds))
    types = set(type_list)
    ok = types <= registry.keys() and (
        set(map(_get_quality, adds)) == {None}
        or types == {"pdq"}
        or not any(op.quality is not None for op in adds if op.type != "pdq")
    )
    if ok:
        values = list(map(_get_value, adds))
        for name in types:
            chosen = values
            if len(types) > 1:
                chosen = list(compress(values, map(name.__eq__, type_list)))
            cls = registry[name]
            if max(map(len, chosen)) > cls.max_value or not cls.all_canonical(chosen):
                ok = False
                break
    if ok:
        return
    for i, op in enumerate(ops):
        if type(op) is AddOp:
            try:
                op.check_signal()
            except SignalError as exc:
                raise SignalError(f"{what}[{i}]: {exc}") from None
    raise SignalError(f"{what}: a signal is malformed")  # the loop above names it first


_get_type = attrgetter("type")
_get_value = attrgetter("value")
_get_quality = attrgetter("quality")


def _parse_lines_fast(ops_bytes: bytes, count: int) -> list[AddOp | RevokeOp | OpinionOp] | None:
    """The common case in one pydantic call, or None to take the exact (slower) path.

    Parsing `[line,\nline,...]` with pydantic's JSON parser and re-serialising the models
    (fields are declared in key order, only keys that were present) must give back exactly
    `[line,line,...]`. Because a raw newline can never occur inside a JSON string and every
    line starts with `{`, no op can span two lines, so each line is one op in canonical form.
    Anything unusual (a null, a schema error) falls back to the exact path, which also
    produces the precise error message.
    """
    if (
        not ops_bytes.startswith(b"{")
        or ops_bytes.count(b"\n{") != count - 1
        or b"null" in ops_bytes
    ):
        return None
    try:
        ops = _ops_adapter.validate_json(b"[" + ops_bytes.replace(b"\n", b",\n") + b"]")
    except ValidationError:
        return None
    if len(ops) != count:
        return None
    if (
        _ops_adapter.dump_json(ops, exclude_unset=True)
        != b"[" + ops_bytes.replace(b"\n", b",") + b"]"
    ):
        return None
    return ops


def parse_op_lines(ops_bytes: bytes, lines: list[bytes], what: str = "batch ops") -> list[AnyOp]:
    """Parse a batch's ops blob: each newline-separated line is exactly one canonical op."""
    ops = _parse_lines_fast(ops_bytes, len(lines))
    if ops is not None:
        check_signals(ops, what)
        return ops
    values = [parse_canonical(line, f"{what}[{i}]") for i, line in enumerate(lines)]
    return parse_ops(values, what)
