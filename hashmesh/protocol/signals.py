"""Signal types: one class per type in a registry, as python-threatexchange does.

A signal type owns the rules for its values: how a value is normalised (case, white space),
when it is malformed, and whether it is matched exactly or by distance. Adding a type is
one class and one `register` call; nothing else in the protocol names a type.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import ClassVar

from hashmesh.protocol.errors import ProtocolUsageError, SignalError

MAX_RAW_VALUE = 4096


class SignalType:
    """Base of every signal type. Subclasses set `name` and implement `normalize`."""

    name: ClassVar[str]
    exact: ClassVar[bool] = True
    description: ClassVar[str] = ""

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


for _cls in (MD5Signal, SHA1Signal, SHA256Signal, PDQSignal, PhotoDNASignal):
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
        if isinstance(raw_value, str) and len(raw_value) > MAX_RAW_VALUE:
            raise SignalError(f"{type_name} value: longer than {MAX_RAW_VALUE} characters")
        signal_type = get_type(type_name)
        return cls(signal_type.name, signal_type.normalize(raw_value))


def validate_quality(signal_type: str, quality: int | None) -> None:
    if quality is None:
        return
    if signal_type != PDQSignal.name:
        raise SignalError(f"quality: only pdq signals carry a quality, not {signal_type}")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 0 <= quality <= 100:
        raise SignalError(f"quality: must be an integer 0-100, got {quality!r}")
