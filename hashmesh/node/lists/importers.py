"""Parsers for the hash lists hotlines already hold (python-threatexchange files, CSV,
StopNCII FetchHashes pages, NCMEC hash-sharing v2 entries pages).

Parsing only: nothing here publishes, stores or signs. Each parser turns a file into a
stream of `ImportRecord` (an add or a revoke, already normalised and checked against the
op schema) and `ImportIssue` (a row that could not be imported, with where and why), in
file order, so that the node can publish in batches and report every refusal. Files are
read incrementally: a list of millions of entries never sits in memory at once.

What the source formats carry beyond hashes and labels (member names, case numbers,
feedback of other platforms, timestamps) is dropped here, at the edge, so that no later
layer can leak it: see docs/import-formats.md.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, ClassVar, Literal

from hashmesh.node.hashing.degenerate import degenerate_reason
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.ops import LABEL_PATTERN, REF_PATTERN, AddOp
from hashmesh.protocol.signals import Signal, signal_types

Source = str | os.PathLike[str] | BinaryIO
Action = Literal["add", "revoke"]

MAX_LINE_BYTES = 64 * 1024
MAX_JSON_DOCUMENT = 256 * 1024 * 1024
_READ_CHUNK = 1024 * 1024

_ref_re = re.compile(REF_PATTERN)
_label_re = re.compile(LABEL_PATTERN)
_LABEL_RULE = "1-32 of a-z 0-9 _ -, starting with a letter or digit"


class ImportFormatError(ValueError):
    """The file cannot be read as the format at all (not UTF-8, broken XML or JSON, wrong
    root element, cannot be opened). Raised at the point the parser finds out, so records
    yielded before it came from the readable part of the file."""


@dataclass(frozen=True, slots=True)
class ImportRecord:
    """One add or revoke taken from a list, ready to become an op of our own.

    A revoke names a signal and/or the source's entry `ref`, never an op id: the source
    does not know our op ids, so the node revokes its own earlier adds that match. A
    revoke with `signal_type` None (NCMEC deletions carry only the entry id) means every
    live add of ours that carries this `ref`.
    """

    action: Action
    signal_type: str | None
    value: str | None
    category: str
    location: str
    quality: int | None = None
    classification: str | None = None
    ref: str | None = None

    def to_add_op(self) -> AddOp:
        """The add op this record stands for; parsers have already checked that it builds."""
        if self.action != "add" or self.signal_type is None or self.value is None:
            raise ValueError(f"{self.location}: only add records become add ops")
        return AddOp.create(
            self.signal_type,
            self.value,
            category=self.category,
            quality=self.quality,
            classification=self.classification,
            ref=self.ref,
        )


@dataclass(frozen=True, slots=True)
class ImportIssue:
    """A row or value that was not imported; the rest of the file still is."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


Item = ImportRecord | ImportIssue

# Names other tools (python-threatexchange above all) give to the types we hold.
_TYPE_ALIASES: dict[str, str] = {
    "video_md5": "md5",
    "photo_md5": "md5",
    "video_sha256": "sha256",
    "photo_dna": "photodna",
    "pdna": "photodna",
    "video_tmk_pdqf": "tmk",
    "tmk_pdqf": "tmk",
}
_UNSUPPORTED_TYPES = frozenset(
    {
        "url",
        "url_md5",
        "raw_text",
        "text_md5",
        "trend_query",
        "tlsh",
        "pdq_ocr",
        "clip",
    }
)


def _our_type(name: str) -> str:
    """Map a foreign type name to ours, or raise with the sentence an operator needs."""
    key = name.strip().lower()
    key = _TYPE_ALIASES.get(key, key)
    if key in signal_types():
        return key
    if key in _UNSUPPORTED_TYPES:
        raise ValueError(f"signal type {name!r} is not supported by hashmesh (skipped)")
    known = ", ".join(sorted(signal_types()))
    shown = name if len(name) <= 40 else name[:40] + "..."
    raise ValueError(f"unknown signal type {shown!r} (known: {known})")


def _photodna_hint(raw: str) -> str | None:
    if raw.rstrip().endswith(("...", "\u2026")):
        return "photodna value is truncated (ends with '...'); skipped"
    return None


def make_add(
    location: str,
    type_name: str,
    raw_value: str,
    *,
    category: str,
    quality: int | None = None,
    classification: str | None = None,
    ref: str | None = None,
) -> Item:
    """An add record checked as every importer checks one (type names, truncated PhotoDNA,
    labels, the value, degenerate hashes), or the issue that refuses it."""
    op = checked_add(
        location,
        type_name,
        raw_value,
        category=category,
        quality=quality,
        classification=classification,
        ref=ref,
    )
    if isinstance(op, ImportIssue):
        return op
    return ImportRecord(
        "add",
        op.type,
        op.value,
        op.category,
        location,
        quality=op.quality,
        classification=op.classification,
        ref=op.ref,
    )


def checked_add(
    location: str,
    type_name: str,
    raw_value: str,
    *,
    category: str,
    quality: int | None = None,
    classification: str | None = None,
    ref: str | None = None,
) -> AddOp | ImportIssue:
    """The add op itself, through the same gate as `make_add`: the bridges
    (hashmesh/node/bridges/) publish it as it is, without building it a second time."""
    try:
        signal_type = _our_type(type_name)
    except ValueError as exc:
        return ImportIssue(location, str(exc))
    if signal_type == "photodna" and (hint := _photodna_hint(raw_value)):
        return ImportIssue(location, hint)
    if not _label_re.match(category):
        shown = category[:40]
        return ImportIssue(location, f"category {shown!r} is not a label ({_LABEL_RULE})")
    try:
        op = AddOp.create(
            signal_type,
            raw_value,
            category=category,
            quality=quality,
            classification=classification,
            ref=ref,
        )
    except ProtocolError as exc:
        return ImportIssue(location, str(exc))
    if (degenerate := degenerate_reason(op.type, op.value)) is not None:
        return ImportIssue(location, f"value refused, {degenerate}")
    return op


class ListParser(ABC):
    """Base of every format: subclasses set `name`, `description`, `default_category` and
    implement `parse`. Options are keyword arguments so the CLI can pass them through."""

    name: ClassVar[str]
    description: ClassVar[str]
    default_category: ClassVar[str] = "csam"

    def __init__(self, *, category: str | None = None, revocations: bool = True) -> None:
        chosen = category if category is not None else self.default_category
        if not isinstance(chosen, str) or not _label_re.match(chosen):
            raise ValueError(f"category {chosen!r} is not a label ({_LABEL_RULE})")
        self.category = chosen
        self.revocations = revocations

    @abstractmethod
    def parse(self, stream: BinaryIO) -> Iterator[Item]:
        """Records and issues in file order (each format implements this)."""

    def _add(
        self,
        location: str,
        type_name: str,
        raw_value: str,
        *,
        category: str | None = None,
        quality: int | None = None,
        classification: str | None = None,
        ref: str | None = None,
    ) -> Item:
        """Build an add through `AddOp.create` so every record can be published as is."""
        return make_add(
            location,
            type_name,
            raw_value,
            category=category if category is not None else self.category,
            quality=quality,
            classification=classification,
            ref=ref,
        )

    def _revoke(
        self,
        location: str,
        type_name: str | None,
        raw_value: str | None,
        *,
        ref: str | None = None,
    ) -> Item | None:
        """A revoke record, or None when the caller asked for revocations to be skipped."""
        if not self.revocations:
            return None
        signal_type = value = None
        if type_name is not None and raw_value is not None:
            try:
                signal = Signal.parse(_our_type(type_name), raw_value)
            except ValueError as exc:
                return ImportIssue(location, f"revocation: {exc}")
            signal_type, value = signal.type, signal.value
        if ref is not None and not _ref_re.match(ref):
            return ImportIssue(
                location, f"revocation: reference {ref[:40]!r} is not 1-128 printable ASCII"
            )
        if signal_type is None and ref is None:
            return ImportIssue(location, "revocation names neither a signal nor an entry id")
        return ImportRecord("revoke", signal_type, value, self.category, location, ref=ref)


_REGISTRY: dict[str, type[ListParser]] = {}


def register_format(parser: type[ListParser]) -> type[ListParser]:
    """Add a format (also usable as a class decorator)."""
    if parser.name in _REGISTRY and _REGISTRY[parser.name] is not parser:
        raise ValueError(f"import format {parser.name!r} is already registered")
    _REGISTRY[parser.name] = parser
    return parser


def formats() -> dict[str, str]:
    """Format names with a one-line description, for `--help` and error messages."""
    return {name: cls.description for name, cls in sorted(_REGISTRY.items())}


def get_parser(format: str, **options: Any) -> ListParser:
    cls = _REGISTRY.get(format) if isinstance(format, str) else None
    if cls is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ValueError(f"unknown import format {format!r}; known formats are: {known}")
    return cls(**options)


def parse_file(format: str, source: Source, **options: Any) -> Iterator[Item]:
    """Records and issues of one file, in file order.

    The format and options are checked at once (ValueError); the file is opened on the
    first `next()`, and a path is closed when the iterator is exhausted or closed. A
    stream passed in is left open. For all-or-nothing imports, consume the whole
    iterator before publishing anything: `ImportFormatError` may come after records.
    """
    parser = get_parser(format, **options)
    return _run(parser, source)


def _run(parser: ListParser, source: Source) -> Iterator[Item]:
    with _open(source) as stream:
        yield from parser.parse(stream)


@contextmanager
def _open(source: Source) -> Iterator[BinaryIO]:
    if isinstance(source, str | os.PathLike):
        try:
            stream = open(source, "rb")  # noqa: SIM115
        except OSError as exc:
            raise ImportFormatError(f"cannot open {os.fsdecode(source)}: {exc.strerror}") from None
        with stream:
            yield stream
    else:
        yield source


def _lines(stream: BinaryIO) -> Iterator[tuple[str, str] | ImportIssue]:
    """(location, text) of each line with content (blank lines and `#` comments skipped),
    or an issue: line by line so that an undecodable or huge line costs one issue, not the
    import."""
    number = 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        if len(raw) > MAX_LINE_BYTES:
            tail = raw
            while tail and not tail.endswith(b"\n"):
                tail = stream.readline(MAX_LINE_BYTES)
            yield ImportIssue(f"line {number}", f"line longer than {MAX_LINE_BYTES} bytes; skipped")
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield ImportIssue(
                f"line {number}", f"not UTF-8 text (byte {exc.start + 1} of the line); skipped"
            )
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")
        text = text.strip()
        if text and not text.startswith("#"):
            yield f"line {number}", text


@register_format
class PyTXFileParser(ListParser):
    """python-threatexchange's local file exchange: one `TYPE VALUE` per line, pytx type
    names (`pdq`, `video_md5`, ...). With `signal_type` set, lines hold values only, as
    pytx's `--signal-type` collaboration option does."""

    name = "pytx"
    description = "python-threatexchange local file: one 'TYPE VALUE' line per signal"

    def __init__(self, *, signal_type: str | None = None, **options: Any) -> None:
        super().__init__(**options)
        self.signal_type = signal_type

    def parse(self, stream: BinaryIO) -> Iterator[Item]:
        for line in _lines(stream):
            if isinstance(line, ImportIssue):
                yield line
                continue
            location, text = line
            if self.signal_type is not None:
                type_name, value = self.signal_type, text
            else:
                parts = text.split(maxsplit=1)
                if len(parts) != 2:
                    yield ImportIssue(location, "expected 'TYPE VALUE', found one word")
                    continue
                type_name, value = parts
            yield self._add(location, type_name, value)


_CSV_COLUMNS = ("type", "value", "category", "classification", "quality", "ref")
_CSV_HEADER_ALIASES = {"signal_type": "type", "hash": "value", "signal": "value"}


@register_format
class CSVParser(ListParser):
    """`type,value[,category,classification]`, or any order under a header row that names
    the columns (then `quality` and `ref` may be given too). Each physical line is one
    row: hash lists never need quoted line breaks, and exact line numbers matter more."""

    name = "csv"
    description = "CSV: type,value[,category,classification] with an optional header row"

    def parse(self, stream: BinaryIO) -> Iterator[Item]:
        columns: dict[str, int] | None = None
        seen_row = False
        for line in _lines(stream):
            if isinstance(line, ImportIssue):
                yield line
                continue
            location, text = line
            try:
                row = next(csv.reader([text], strict=True))
            except (csv.Error, StopIteration) as exc:
                yield ImportIssue(location, f"not a CSV row ({exc})")
                continue
            cells = [cell.strip() for cell in row]
            if not seen_row:
                seen_row = True
                first = cells[0].lower() if cells else ""
                if _CSV_HEADER_ALIASES.get(first, first) == "type":
                    columns, issues = self._header(location, cells)
                    yield from issues
                    continue
            yield self._row(location, cells, columns)

    def _header(self, location: str, cells: list[str]) -> tuple[dict[str, int], list[Item]]:
        columns: dict[str, int] = {}
        issues: list[Item] = []
        for index, cell in enumerate(cells):
            name = cell.lower()
            name = _CSV_HEADER_ALIASES.get(name, name)
            if name in _CSV_COLUMNS and name not in columns:
                columns[name] = index
            else:
                shown = cell if len(cell) <= 40 else cell[:40] + "..."
                issues.append(ImportIssue(location, f"column {shown!r} is not imported"))
        if "value" not in columns:
            raise ImportFormatError(f"{location}: the header row names no 'value' column")
        return columns, issues

    def _row(self, location: str, cells: list[str], columns: dict[str, int] | None) -> Item:
        if columns is None:
            if not 2 <= len(cells) <= 4:
                return ImportIssue(
                    location,
                    f"expected 2 to 4 columns (type,value[,category,classification]), "
                    f"found {len(cells)}",
                )
            columns = {name: i for i, name in enumerate(_CSV_COLUMNS[: len(cells)])}

        def cell(name: str) -> str | None:
            index = columns.get(name)
            if index is None or index >= len(cells) or not cells[index]:
                return None
            return cells[index]

        type_name, value = cell("type"), cell("value")
        if type_name is None or value is None:
            return ImportIssue(location, "type and value are required")
        quality: int | None = None
        if (raw_quality := cell("quality")) is not None:
            if not raw_quality.isascii() or not raw_quality.isdigit() or len(raw_quality) > 3:
                return ImportIssue(location, f"quality {raw_quality[:20]!r} is not 0-100")
            quality = int(raw_quality)
        return self._add(
            location,
            type_name,
            value,
            category=cell("category"),
            quality=quality,
            classification=cell("classification"),
            ref=cell("ref"),
        )


# VideoMD5 is the MD5 of the video file's bytes (pytx maps it to its video_md5), so ours;
# VideoTMK is TMK+PDQF, which hashmesh keeps as listed (matched exactly).
STOPNCII_TYPES = {"ImagePDQ": "pdq", "VideoMD5": "md5", "VideoTMK": "tmk"}
STOPNCII_ADD = frozenset({"Received", "Active"})
STOPNCII_REVOKE = frozenset({"Withdrawn", "Deleted"})
_STOPNCII_TYPES, _STOPNCII_ADD, _STOPNCII_REVOKE = STOPNCII_TYPES, STOPNCII_ADD, STOPNCII_REVOKE
_json_space = re.compile(r"[ \t\r\n]*")


def _json_documents(stream: BinaryIO) -> Iterator[Any]:
    """Successive JSON documents of a stream: one page, a saved list of pages, JSON Lines,
    or pages simply concatenated, without reading more than one document ahead."""
    decoder = json.JSONDecoder()
    text_decoder = codecs.getincrementaldecoder("utf-8-sig")()
    buffer = ""
    position = 0
    lines_before = 0
    eof = False

    def more(size: int) -> None:
        nonlocal buffer, position, lines_before, eof
        lines_before += buffer.count("\n", 0, position)
        chunk = stream.read(size)
        try:
            text = text_decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError:
            raise ImportFormatError(
                f"line {lines_before + buffer.count(chr(10), position) + 1}: not UTF-8 text"
            ) from None
        buffer = buffer[position:] + text
        position = 0
        eof = not chunk

    while True:
        match = _json_space.match(buffer, position)
        position = match.end() if match else position
        if position == len(buffer):
            if eof:
                return
            more(_READ_CHUNK)
            continue
        try:
            document, end = decoder.raw_decode(buffer, position)
        except json.JSONDecodeError as exc:
            if not eof:
                if len(buffer) - position > MAX_JSON_DOCUMENT:
                    raise ImportFormatError(
                        f"a JSON document is larger than {MAX_JSON_DOCUMENT} bytes"
                    ) from None
                more(max(_READ_CHUNK, len(buffer) - position))
                continue
            line = lines_before + buffer.count("\n", 0, exc.pos) + 1
            raise ImportFormatError(f"line {line}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise ImportFormatError("JSON nested too deeply to read") from None
        if end == len(buffer) and not eof and not isinstance(document, dict | list | str):
            more(_READ_CHUNK)
            continue
        position = end
        yield document


@register_format
class StopNCIIParser(ListParser):
    """StopNCII FetchHashes responses. `hashStatus` is the aggregate of all cases of a
    hash: Received/Active add it, Withdrawn/Deleted revoke it (or are skipped with
    `revocations=False`). Case numbers are never read: one victim's cases would link
    their images across every node that receives them."""

    name = "stopncii"
    description = "StopNCII FetchHashes JSON pages (hashValue, signalType, hashStatus)"
    default_category = "ncii"

    def parse(self, stream: BinaryIO) -> Iterator[Item]:
        page = 0
        for document in _json_documents(stream):
            pages = document if isinstance(document, list) else [document]
            for content in pages:
                page += 1
                records = content.get("hashRecords") if isinstance(content, dict) else None
                if not isinstance(records, list):
                    yield ImportIssue(
                        f"page {page}", "not a FetchHashes page (no hashRecords list)"
                    )
                    continue
                for index, record in enumerate(records):
                    item = self._record(f"page {page} hashRecords[{index}]", record)
                    if item is not None:
                        yield item

    def _record(self, location: str, record: Any) -> Item | None:
        if not isinstance(record, dict):
            return ImportIssue(location, "a hash record must be a JSON object")
        value, kind, status = (
            record.get("hashValue"),
            record.get("signalType"),
            record.get("hashStatus"),
        )
        if not isinstance(value, str) or not isinstance(kind, str):
            return ImportIssue(location, "hashValue and signalType must be strings")
        if kind not in _STOPNCII_TYPES:
            return ImportIssue(
                location, f"signalType {kind[:40]!r} is not supported by hashmesh (skipped)"
            )
        if isinstance(status, str) and status in _STOPNCII_ADD:
            return self._add(location, _STOPNCII_TYPES[kind], value)
        if isinstance(status, str) and status in _STOPNCII_REVOKE:
            return self._revoke(location, _STOPNCII_TYPES[kind], value)
        shown = status[:40] if isinstance(status, str) else type(status).__name__
        return ImportIssue(
            location,
            f"hashStatus {shown!r} is not one of Received, Active, Withdrawn, Deleted (skipped)",
        )


#: NCMEC's fingerprint element names (the XML's; pytx's FingerprintType values differ).
NCMEC_FINGERPRINTS = {
    "md5": "md5",
    "sha1": "sha1",
    "pdna": "photodna",
    "pdq": "pdq",
    "tmk-pdqf": "tmk",
    "netclean": "netclean",
    "videntifier": "videntifier",
}
_NCMEC_FINGERPRINTS = NCMEC_FINGERPRINTS
_NCMEC_ADD = frozenset({"image", "video"})
_NCMEC_DELETE = frozenset({"deletedImage", "deletedVideo"})
_NCMEC_REF_PREFIX = "ncmec:"


def _local(tag: Any) -> str:
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


@register_format
class NCMECParser(ListParser):
    """NCMEC hash-sharing API v2 `entries` responses. One entry gives one add per valid
    fingerprint, all with the entry id as `ref` (prefixed `ncmec:`) so that a later
    deletedImage/deletedVideo, which names only the id, can revoke them. Member, feedback
    and timestamps are not read."""

    name = "ncmec"
    description = "NCMEC hash-sharing API v2 entries XML (images, videos, deletions)"

    def parse(self, stream: BinaryIO) -> Iterator[Item]:
        stack: list[ET.Element] = []
        entry_number = 0
        try:
            for event, element in ET.iterparse(stream, events=("start", "end")):
                if event == "start":
                    if not stack and _local(element.tag) != "queryResult":
                        raise ImportFormatError(
                            f"not an NCMEC entries page (root element "
                            f"<{_local(element.tag)[:40]}>, expected <queryResult>)"
                        )
                    stack.append(element)
                    continue
                stack.pop()
                depth = len(stack)
                if depth == 2 and _local(stack[1].tag) in ("images", "videos"):
                    tag = _local(element.tag)
                    if tag in _NCMEC_ADD or tag in _NCMEC_DELETE:
                        entry_number += 1
                        yield from self._entry(entry_number, tag, element)
                if 1 <= depth <= 2:
                    element.clear()
                    stack[-1].remove(element)
        except ET.ParseError as exc:
            line, column = exc.position
            raise ImportFormatError(
                f"line {line} column {column}: not well-formed XML ({_expat_reason(exc)})"
            ) from None
        except (LookupError, UnicodeError) as exc:
            raise ImportFormatError(f"cannot decode the XML ({exc})") from None

    def _entry(self, number: int, tag: str, entry: ET.Element) -> Iterator[Item]:
        entry_id = None
        classification = None
        fingerprints: ET.Element | None = None
        for child in entry:
            name = _local(child.tag)
            if name == "id":
                entry_id = (child.text or "").strip() or None
            elif name == "classification":
                classification = (child.text or "").strip() or None
            elif name == "fingerprints":
                fingerprints = child
        shown_id = f" id={entry_id[:64]}" if entry_id else ""
        where = f"entry {number} ({tag}{shown_id})"
        ref = _NCMEC_REF_PREFIX + entry_id if entry_id else None
        if tag in _NCMEC_DELETE:
            if ref is None:
                yield ImportIssue(where, "deletion without an id; cannot revoke")
                return
            item = self._revoke(where, None, None, ref=ref)
            if item is not None:
                yield item
            return
        if fingerprints is None or len(fingerprints) == 0:
            yield ImportIssue(where, "entry has no fingerprints")
            return
        for fingerprint in fingerprints:
            kind = _local(fingerprint.tag)
            location = f"{where} fingerprints/{kind[:40]}"
            signal_type = _NCMEC_FINGERPRINTS.get(kind)
            if signal_type is None:
                yield ImportIssue(
                    location, f"fingerprint type {kind[:40]!r} is not supported (skipped)"
                )
                continue
            value = (fingerprint.text or "").strip()
            if not value and fingerprint.get("href"):
                # NCMEC sends large fingerprints (TMK+PDQF, Videntifier) as a link only.
                yield ImportIssue(
                    location,
                    f"{kind[:40]} is given as a link ({fingerprint.get('href', '')[:100]}),"
                    " not its value: fetch it from NCMEC's API to import it (skipped)",
                )
                continue
            if not value:
                yield ImportIssue(location, f"{signal_type} value: is empty")
                continue
            yield self._add(location, signal_type, value, classification=classification, ref=ref)


def _expat_reason(exc: ET.ParseError) -> str:
    message = str(exc)
    return message.split(":", 1)[0] if ":" in message else message
