"""Signal types: one class per type in a registry, as python-threatexchange does.

A signal type owns the rules for its values: how a value is normalised (case, white space),
when it is malformed, and whether it is matched exactly or by distance. Adding a type is
one class and one `register` call; nothing else in the protocol names a type.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import ClassVar, NamedTuple

from hashmesh.protocol.errors import ProtocolUsageError, SignalError

MAX_RAW_VALUE = 4096
#: The longest wire value of a type that is not fixed-length (`vpdq`, the opaque types).
MAX_LARGE_VALUE = 360_000
#: The longest user input for such a type (pytx's JSON form of a vpdq is the widest).
MAX_LARGE_RAW = 1 << 20


class SignalType:
    """Base of every signal type. Subclasses set `name` and implement `normalize`."""

    name: ClassVar[str]
    exact: ClassVar[bool] = True
    description: ClassVar[str] = ""
    #: Longest wire value. An add of a type allowing more than 512 may have a longer op line.
    max_value: ClassVar[int] = 512
    max_raw: ClassVar[int] = MAX_RAW_VALUE

    @classmethod
    def normalize(cls, raw: str) -> str:
        raise ProtocolUsageError(f"{cls.name}: signal type has no normaliser")

    @classmethod
    def is_canonical(cls, value: str) -> bool:
        """Fast check used on the ingest path, where values must already be normalised."""
        try:
            return cls.normalize(value) == value
        except SignalError:
            return False

    @classmethod
    def all_canonical(cls, values: list[str]) -> bool:
        """`is_canonical` for a whole batch at once; types override it with one regex call."""
        return all(map(cls.is_canonical, values))


class HexDigestSignal(SignalType):
    """A fixed-length digest written as lower-case hex."""

    hex_length: ClassVar[int]
    _pattern: ClassVar[re.Pattern[str]]
    _many: ClassVar[re.Pattern[str]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._pattern = re.compile(f"[0-9a-f]{{{cls.hex_length}}}")
        cls._many = re.compile(f"(?:[0-9a-f]{{{cls.hex_length}}}\n)*[0-9a-f]{{{cls.hex_length}}}")

    @classmethod
    def normalize(cls, raw: str) -> str:
        if not isinstance(raw, str):
            raise SignalError(f"{cls.name} value: expected a string, got {type(raw).__name__}")
        value = raw.strip().lower()
        if not value:
            raise SignalError(f"{cls.name} value: is empty")
        if len(value) != cls.hex_length:
            raise SignalError(
                f"{cls.name} value: expected {cls.hex_length} hex characters, got {len(value)}"
            )
        if not cls._pattern.fullmatch(value):
            bad = next(c for c in value if c not in "0123456789abcdef")
            raise SignalError(f"{cls.name} value: {bad!r} is not a hex digit")
        return value

    @classmethod
    def is_canonical(cls, value: str) -> bool:
        return cls._pattern.fullmatch(value) is not None

    @classmethod
    def all_canonical(cls, values: list[str]) -> bool:
        return _all_fixed(cls._many, cls.hex_length, values)


def _all_fixed(pattern: re.Pattern[str], length: int, values: list[str]) -> bool:
    """One regex over the joined values: blocks of `length` characters separated by newlines.

    The length test makes sure no value hides a newline (which would split it into two
    blocks), so every value is exactly one block.
    """
    if not values:
        return True
    joined = "\n".join(values)
    return len(joined) == len(values) * (length + 1) - 1 and pattern.fullmatch(joined) is not None


class MD5Signal(HexDigestSignal):
    name = "md5"
    hex_length = 32
    description = "MD5 of the file bytes (exact)"


class SHA1Signal(HexDigestSignal):
    name = "sha1"
    hex_length = 40
    description = "SHA-1 of the file bytes (exact)"


class SHA256Signal(HexDigestSignal):
    name = "sha256"
    hex_length = 64
    description = "SHA-256 of the file bytes (exact)"


class PDQSignal(HexDigestSignal):
    """Meta's 256-bit perceptual hash, matched by Hamming distance."""

    name = "pdq"
    hex_length = 64
    exact = False
    description = "PDQ perceptual hash, 256 bits (Hamming distance)"
    quality_range: ClassVar[tuple[int, int]] = (0, 100)


class PhotoDNASignal(SignalType):
    """Microsoft PhotoDNA: 144 bytes, written as standard padded base64 (192 characters).

    Matched exactly until a distance matcher is added; input may also be given as 144
    comma-separated byte values, the form NCMEC's API uses.
    """

    name = "photodna"
    size: ClassVar[int] = 144
    description = "PhotoDNA hash, 144 bytes in base64 (exact)"
    _pattern: ClassVar[re.Pattern[str]] = re.compile(r"[A-Za-z0-9+/]{192}")
    _many: ClassVar[re.Pattern[str]] = re.compile(r"(?:[A-Za-z0-9+/]{192}\n)*[A-Za-z0-9+/]{192}")

    @classmethod
    def normalize(cls, raw: str) -> str:
        if not isinstance(raw, str):
            raise SignalError(f"{cls.name} value: expected a string, got {type(raw).__name__}")
        value = "".join(raw.split())
        if not value:
            raise SignalError(f"{cls.name} value: is empty")
        if "," in value:
            try:
                numbers = [int(part) for part in value.split(",")]
            except ValueError:
                raise SignalError(f"{cls.name} value: byte list holds a non-number") from None
            if len(numbers) != cls.size:
                raise SignalError(
                    f"{cls.name} value: expected {cls.size} byte values, got {len(numbers)}"
                )
            bad = next((n for n in numbers if not 0 <= n <= 255), None)
            if bad is not None:
                raise SignalError(f"{cls.name} value: byte value {bad} is outside 0-255")
            data = bytes(numbers)
        else:
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise SignalError(f"{cls.name} value: not valid base64") from None
            if len(data) != cls.size:
                raise SignalError(f"{cls.name} value: expected {cls.size} bytes, got {len(data)}")
        return base64.b64encode(data).decode("ascii")

    @classmethod
    def is_canonical(cls, value: str) -> bool:
        return cls._pattern.fullmatch(value) is not None

    @classmethod
    def all_canonical(cls, values: list[str]) -> bool:
        return _all_fixed(cls._many, 192, values)


_REGISTRY: dict[str, type[SignalType]] = {}


def register(signal_type: type[SignalType]) -> type[SignalType]:
    """Add a signal type to the registry (also usable as a class decorator)."""
    if signal_type.name in _REGISTRY and _REGISTRY[signal_type.name] is not signal_type:
        raise ProtocolUsageError(f"signal type {signal_type.name!r} is already registered")
    _REGISTRY[signal_type.name] = signal_type
    return signal_type


class VpdqFrame(NamedTuple):
    """One sampled frame of a video: number in decode order, PDQ quality, PDQ, time in ms.

    Time is kept in whole milliseconds so that one value has one spelling (Meta's vpdq
    writes seconds with three decimals); `seconds` is for display and pytx.
    """

    number: int
    quality: int
    pdq: str
    millis: int

    @property
    def seconds(self) -> float:
        return self.millis / 1000


VPDQ_MAX_FRAMES = 3600  # an hour at vpdq's default of one frame per second
VPDQ_MAX_FRAME_NUMBER = 2**31 - 1
VPDQ_MAX_MILLIS = 999_999_999  # 999999.999 s, eleven days
_FRAME_TEXT = (
    r"(?:0|[1-9][0-9]{0,9}),(?:100|[1-9]?[0-9]),[0-9a-f]{64},(?:0|[1-9][0-9]{0,5})\.[0-9]{3}"
)
_DIGITS = re.compile(r"[0-9]{1,10}")
_SECONDS = re.compile(r"(?:[0-9]{1,12}(?:\.[0-9]{0,12})?|\.[0-9]{1,12})(?:[eE][+-]?[0-9]{1,3})?")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MILLI = Decimal("0.001")


class VPDQSignal(SignalType):
    """Meta's vPDQ: the PDQ and quality of a video's sampled frames, matched frame by frame.

    The wire value is Meta's vpdq hash file on one line: a frame is
    ``NUMBER,QUALITY,PDQHEX,SECONDS`` (seconds with exactly three decimals, as Meta's
    ``vpdq-hash-video`` writes them), frames in increasing frame number joined by one space.
    Input may also be such a file as it is (a frame per line), or python-threatexchange's
    string form (a JSON list of ``"PDQHEX,QUALITY,SECONDS"``), which has no frame numbers:
    its frames are numbered by position. `to_pytx` gives that form back, as pytx's
    `vpdq_to_json` writes it.
    """

    name = "vpdq"
    exact = False
    description = "vPDQ video hash: PDQ and quality of sampled frames (frame by frame)"
    max_value = MAX_LARGE_VALUE
    max_raw = MAX_LARGE_RAW
    max_frames: ClassVar[int] = VPDQ_MAX_FRAMES
    _pattern: ClassVar[re.Pattern[str]] = re.compile(f"(?:{_FRAME_TEXT} )*{_FRAME_TEXT}")

    @classmethod
    def normalize(cls, raw: str) -> str:
        if not isinstance(raw, str):
            raise SignalError(f"{cls.name} value: expected a string, got {type(raw).__name__}")
        if len(raw) > cls.max_raw:
            raise SignalError(f"{cls.name} value: longer than {cls.max_raw} characters")
        text = raw.strip()
        if not text:
            raise SignalError(f"{cls.name} value: is empty")
        frames = cls._from_pytx(text) if text.startswith("[") else cls._from_lines(text)
        return cls.format(frames)

    @classmethod
    def is_canonical(cls, value: str) -> bool:
        if not isinstance(value, str) or len(value) > cls.max_value:
            return False
        if cls._pattern.fullmatch(value) is None:
            return False
        return _order_fault(cls.parse(value)) is None

    @classmethod
    def parse(cls, value: str) -> list[VpdqFrame]:
        """The frames of a canonical value (`is_canonical` must hold; not checked here)."""
        frames = []
        for text in value.split(" "):
            number, quality, pdq, seconds = text.split(",")
            whole, _, fraction = seconds.partition(".")
            frames.append(VpdqFrame(int(number), int(quality), pdq, int(whole + fraction)))
        return frames

    @classmethod
    def format(cls, frames: list[VpdqFrame]) -> str:
        """The canonical value of `frames`; refuses frames no valid video hash has."""
        if not frames:
            raise SignalError(f"{cls.name} value: has no frames")
        if len(frames) > cls.max_frames:
            raise SignalError(
                f"{cls.name} value: {len(frames)} frames, more than the {cls.max_frames} allowed"
            )
        for i, frame in enumerate(frames):
            fault = _frame_fault(frame)
            if fault:
                raise SignalError(f"{cls.name} value: frame[{i}]: {fault}")
        fault = _order_fault(frames)
        if fault:
            raise SignalError(f"{cls.name} value: {fault}")
        return " ".join(
            f"{f.number},{f.quality},{f.pdq},{f.millis // 1000}.{f.millis % 1000:03d}"
            for f in frames
        )

    @classmethod
    def to_pytx(cls, value: str) -> str:
        """python-threatexchange's string form of a canonical value (`vpdq_to_json`'s bytes)."""
        return json.dumps([f"{f.pdq},{f.quality},{f.seconds:.3}" for f in cls.parse(value)])

    @classmethod
    def _from_lines(cls, text: str) -> list[VpdqFrame]:
        parts = text.split()
        cls._check_count(len(parts))
        frames = []
        for i, part in enumerate(parts):
            fields = part.split(",")
            if len(fields) != 4:
                raise SignalError(
                    f"{cls.name} value: frame[{i}]: expected NUMBER,QUALITY,PDQHEX,SECONDS,"
                    f" got {len(fields)} fields"
                )
            number = _number(fields[0], "frame number", i)
            frames.append(_frame(number, fields[1], fields[2], fields[3], i))
        return frames

    @classmethod
    def _from_pytx(cls, text: str) -> list[VpdqFrame]:
        try:
            items = json.loads(text)
        except (ValueError, RecursionError):
            raise SignalError(
                f"{cls.name} value: starts with '[' but is not a JSON list"
                " (python-threatexchange's form)"
            ) from None
        if not isinstance(items, list):
            raise SignalError(f"{cls.name} value: expected a JSON list of strings")
        cls._check_count(len(items))
        frames = []
        for i, item in enumerate(items):
            if not isinstance(item, str):
                raise SignalError(f"{cls.name} value: frame[{i}]: expected a string")
            fields = item.split(",")
            if len(fields) != 3:
                raise SignalError(
                    f"{cls.name} value: frame[{i}]: expected PDQHEX,QUALITY,SECONDS,"
                    f" got {len(fields)} fields"
                )
            frames.append(_frame(i, fields[1], fields[0], fields[2], i))
        return frames

    @classmethod
    def _check_count(cls, count: int) -> None:
        if count == 0:
            raise SignalError(f"{cls.name} value: has no frames")
        if count > cls.max_frames:
            raise SignalError(
                f"{cls.name} value: {count} frames, more than the {cls.max_frames} allowed"
            )


def _number(text: str, what: str, i: int) -> int:
    text = text.strip()
    if not _DIGITS.fullmatch(text):
        raise SignalError(f"vpdq value: frame[{i}]: {what} {text[:20]!r} is not a whole number")
    return int(text)


def _frame(number: int, quality: str, pdq: str, seconds: str, i: int) -> VpdqFrame:
    q = _number(quality, "quality", i)
    value = pdq.strip().lower()
    if len(value) != 64:
        raise SignalError(
            f"vpdq value: frame[{i}]: PDQ must be 64 hex characters, got {len(value)}"
        )
    if not _HEX64.fullmatch(value):
        bad = next(c for c in value if c not in "0123456789abcdef")
        raise SignalError(f"vpdq value: frame[{i}]: PDQ: {bad!r} is not a hex digit")
    text = seconds.strip()
    if not _SECONDS.fullmatch(text):
        raise SignalError(
            f"vpdq value: frame[{i}]: timestamp {text[:20]!r} is not a number of seconds"
        )
    try:
        millis = int((Decimal(text) / _MILLI).to_integral_value(ROUND_HALF_EVEN))
    except InvalidOperation:
        raise SignalError(
            f"vpdq value: frame[{i}]: timestamp {text[:20]!r} is out of range"
        ) from None
    frame = VpdqFrame(number, q, value, millis)
    fault = _frame_fault(frame)
    if fault:
        raise SignalError(f"vpdq value: frame[{i}]: {fault}")
    return frame


def _frame_fault(frame: VpdqFrame) -> str | None:
    number, quality, pdq, millis = frame
    if type(number) is not int or not 0 <= number <= VPDQ_MAX_FRAME_NUMBER:
        return f"frame number {number!r} is outside 0-{VPDQ_MAX_FRAME_NUMBER}"
    if type(quality) is not int or not 0 <= quality <= 100:
        return f"quality {quality!r} is outside 0-100"
    if not isinstance(pdq, str) or not _HEX64.fullmatch(pdq):
        return "PDQ must be 64 lower-case hex characters"
    if type(millis) is not int or not 0 <= millis <= VPDQ_MAX_MILLIS:
        return f"timestamp {millis!r} ms is outside 0-{VPDQ_MAX_MILLIS}"
    return None


def _order_fault(frames: list[VpdqFrame]) -> str | None:
    """Frames must come as the decoder gave them: each number new and larger, time never back."""
    for i in range(1, len(frames)):
        before, frame = frames[i - 1], frames[i]
        if frame.number == before.number:
            return f"frame[{i}]: frame number {frame.number} appears twice"
        if frame.number < before.number:
            return (
                f"frame[{i}]: frame number {frame.number} comes after {before.number};"
                " frames must be in increasing order"
            )
        if frame.millis < before.millis:
            return (
                f"frame[{i}]: timestamp {frame.seconds:.3f} s is before the previous frame's"
                f" {before.seconds:.3f} s"
            )
    return None


class OpaqueSignal(SignalType):
    """A hash hashmesh can neither compute nor compare by distance, kept as its source wrote it.

    Matched exactly, on the text: the value is base64 or hex as the list gave it (white
    space removed, case kept, since base64 is case-sensitive), so two lists that spell the
    same hash differently do not match each other.
    """

    max_value = MAX_LARGE_VALUE
    max_raw = MAX_LARGE_RAW
    _pattern: ClassVar[re.Pattern[str]] = re.compile(r"[A-Za-z0-9+/=_-]+")

    @classmethod
    def normalize(cls, raw: str) -> str:
        if not isinstance(raw, str):
            raise SignalError(f"{cls.name} value: expected a string, got {type(raw).__name__}")
        if len(raw) > cls.max_raw:
            raise SignalError(f"{cls.name} value: longer than {cls.max_raw} characters")
        value = "".join(raw.split())
        if not value:
            raise SignalError(f"{cls.name} value: is empty")
        if len(value) > cls.max_value:
            raise SignalError(f"{cls.name} value: longer than {cls.max_value} characters")
        if not cls._pattern.fullmatch(value):
            bad = next(c for c in value if not cls._pattern.fullmatch(c))
            raise SignalError(f"{cls.name} value: {bad!r} is neither base64 nor hex")
        return value

    @classmethod
    def is_canonical(cls, value: str) -> bool:
        return (
            isinstance(value, str)
            and len(value) <= cls.max_value
            and cls._pattern.fullmatch(value) is not None
        )


class TMKSignal(OpaqueSignal):
    """Meta's TMK+PDQF video hash, as NCMEC (TMK_PDQF) and StopNCII (VideoTMK) list it."""

    name = "tmk"
    description = "TMK+PDQF video hash, base64 or hex as listed (exact)"


class NetCleanSignal(OpaqueSignal):
    """NetClean's video and image hash, as NCMEC lists it (NETCLEAN); kept as listed."""

    name = "netclean"
    description = "NetClean hash, base64 or hex as listed (exact)"


class VidentifierSignal(OpaqueSignal):
    """Videntifier's video fingerprint, as NCMEC lists it (VIDENTIFIER); kept as listed."""

    name = "videntifier"
    description = "Videntifier video fingerprint, base64 or hex as listed (exact)"


for _cls in (
    MD5Signal,
    SHA1Signal,
    SHA256Signal,
    PDQSignal,
    PhotoDNASignal,
    VPDQSignal,
    TMKSignal,
    NetCleanSignal,
    VidentifierSignal,
):
    register(_cls)


def signal_types() -> dict[str, type[SignalType]]:
    return dict(_REGISTRY)


def signal_registry() -> dict[str, type[SignalType]]:
    """The live registry (not a copy), for hot loops that look a type up per op."""
    return _REGISTRY


def get_type(name: str) -> type[SignalType]:
    cls = _REGISTRY.get(name) if isinstance(name, str) else None
    if cls is None:
        known = ", ".join(sorted(_REGISTRY))
        raise SignalError(f"signal type: unknown type {name!r} (known: {known})")
    return cls


@dataclass(frozen=True, slots=True)
class Signal:
    """A normalised (type, value) pair; construct it with `Signal.parse`."""

    type: str
    value: str

    @classmethod
    def parse(cls, type_name: str, raw_value: str) -> Signal:
        signal_type = get_type(type_name)
        limit = signal_type.max_raw
        if isinstance(raw_value, str) and len(raw_value) > limit:
            raise SignalError(f"{type_name} value: longer than {limit} characters")
        return cls(signal_type.name, signal_type.normalize(raw_value))


def validate_quality(signal_type: str, quality: int | None) -> None:
    if quality is None:
        return
    if signal_type != PDQSignal.name:
        raise SignalError(f"quality: only pdq signals carry a quality, not {signal_type}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 100:
        raise SignalError(f"quality: must be an integer 0-100, got {quality!r}")
