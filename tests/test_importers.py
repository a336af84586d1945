"""List importers on the real service samples, on broken files, and under fuzzing."""

from __future__ import annotations

import io
import json
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testdata import FORMATS

from hashmesh.node.lists.importers import (
    ImportFormatError,
    ImportIssue,
    ImportRecord,
    formats,
    get_parser,
    parse_file,
)

SAMPLES = FORMATS
DATA = Path(__file__).parent / "data"
PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"

# Everything personal or foreign the samples carry; none of it may reach a record.
PERSONAL = (
    "Example Member",
    "TX Example",
    "member",
    "27664732-76e1-4a17-8099-455798e67022",
    "a2696edf-1237-4eb8-a9c1-cd8ee6c055e5",
    "9fbb73d7-c177-4ed2-b4e8-0050b72decd0",
    "bd2bff7c-8160-4615-8dce-38c2f066d1ac",
    "cc592711-7068-442f-b5d2-24d50d389751",
    "5d1f3a1e-",
    "Facebook",
    "ExamplePlatform",
    "Blocked",
    "Nude",
    "Objectionable",
    "Example Reason",
    "01234567-abcd",
    "2017-10-24",
    "2023-06-01",
    "1625167804",
    "Jane Analyst",
)


def run(fmt: str, source: object, **options: object) -> list[ImportRecord | ImportIssue]:
    return list(parse_file(fmt, source, **options))  # type: ignore[arg-type]


def adds(items: Iterable[object]) -> list[ImportRecord]:
    return [i for i in items if isinstance(i, ImportRecord) and i.action == "add"]


def revokes(items: Iterable[object]) -> list[ImportRecord]:
    return [i for i in items if isinstance(i, ImportRecord) and i.action == "revoke"]


def issues(items: Iterable[object]) -> list[ImportIssue]:
    return [i for i in items if isinstance(i, ImportIssue)]


def assert_no_personal(items: Iterable[ImportRecord | ImportIssue]) -> None:
    for item in items:
        if isinstance(item, ImportRecord):
            text = repr(item)
            for needle in PERSONAL:
                assert needle not in text, (needle, item)


# --- registry -----------------------------------------------------------------------


def test_formats_lists_each_parser_with_a_description() -> None:
    listed = formats()
    assert set(listed) == {"pytx", "csv", "stopncii", "ncmec"}
    assert all(isinstance(d, str) and d and "\n" not in d for d in listed.values())


def test_unknown_format_is_a_value_error_naming_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown import format 'xml'.*csv, ncmec, pytx, stopncii"
    ):
        parse_file("xml", DATA / "hashes.csv")
    assert not issubclass(ImportFormatError, ImportIssue)


def test_bad_category_option_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="is not a label"):
        get_parser("csv", category="Not A Label")


def test_missing_file_is_an_import_format_error() -> None:
    with pytest.raises(ImportFormatError, match="cannot open"):
        run("csv", DATA / "does-not-exist.csv")


def test_stream_source_is_read_and_left_open() -> None:
    stream = io.BytesIO(f"pdq {PDQ}\n".encode())
    assert len(adds(run("pytx", stream))) == 1
    assert not stream.closed


# --- ncmec ----------------------------------------------------------------------------


def test_ncmec_page_1_adds_revokes_and_truncated_pdna() -> None:
    items = run("ncmec", SAMPLES / "ncmec-entries-1.xml")
    added = adds(items)
    assert [(r.signal_type, r.value, r.classification, r.ref) for r in added] == [
        ("md5", "a1" * 16, "A1", "ncmec:image1"),
        ("sha1", "a1" * 20, "A1", "ncmec:image1"),
        ("md5", "b1" * 16, None, "ncmec:video1"),
        ("sha1", "b1" * 20, None, "ncmec:video1"),
    ]
    assert all(r.category == "csam" for r in items if isinstance(r, ImportRecord))
    assert [(r.signal_type, r.value, r.ref) for r in revokes(items)] == [
        (None, None, "ncmec:image4"),
        (None, None, "ncmec:video4"),
    ]
    [issue] = issues(items)
    assert issue.location == "entry 1 (image id=image1) fingerprints/pdna"
    assert "truncated" in issue.message
    # File order: the issue sits between image1's sha1 and the deletion of image4.
    assert [type(i).__name__ for i in items] == [
        "ImportRecord",
        "ImportRecord",
        "ImportIssue",
        "ImportRecord",
        "ImportRecord",
        "ImportRecord",
        "ImportRecord",
    ]
    assert_no_personal(items)


def test_ncmec_page_2_keeps_md5_and_sha1_of_the_entry_with_bad_pdna() -> None:
    items = run("ncmec", SAMPLES / "ncmec-entries-2.xml")
    assert [(r.signal_type, r.ref) for r in adds(items)] == [
        ("md5", "ncmec:image10"),
        ("sha1", "ncmec:image10"),
    ]
    assert revokes(items) == []
    assert [(i.location, "truncated" in i.message) for i in issues(items)] == [
        ("entry 1 (image id=image10) fingerprints/pdna", True)
    ]


def test_ncmec_pages_3_and_4_update_then_delete() -> None:
    first = run("ncmec", SAMPLES / "ncmec-entries-3.xml")
    second = run("ncmec", SAMPLES / "ncmec-entries-4.xml")
    assert [(r.value, r.classification, r.ref) for r in adds(first)] == [
        ("face" * 8, "A1", "ncmec:willupdate"),
        ("bace" * 8, "A1", "ncmec:willdelete"),
    ]
    assert issues(first) == [] and revokes(first) == []
    assert [(r.value, r.classification, r.ref) for r in adds(second)] == [
        ("face" * 8, "A2", "ncmec:willupdate"),
    ]
    [revoke] = revokes(second)
    assert revoke.ref == "ncmec:willdelete" and revoke.signal_type is None
    assert issues(second) == []
    assert_no_personal(first + second)


def test_ncmec_large_fingerprint_links_are_reported_not_imported() -> None:
    items = run("ncmec", SAMPLES / "ncmec-entries-large-fingerprints.xml")
    assert [(r.signal_type, r.ref) for r in adds(items)] == [("md5", "ncmec:largetags")]
    assert [i.location for i in issues(items)] == [
        "entry 1 (video id=largetags) fingerprints/tmk-pdqf",
        "entry 1 (video id=largetags) fingerprints/videntifier",
    ]
    tmk, videntifier = issues(items)
    assert "is given as a link (/v2/entries/1/fingerprints/TMK_PDQF)" in tmk.message
    assert "is given as a link (/v2/entries/1/fingerprints/VIDENTIFIER)" in videntifier.message


def test_ncmec_revocations_can_be_skipped() -> None:
    items = run("ncmec", SAMPLES / "ncmec-entries-1.xml", revocations=False)
    assert revokes(items) == [] and len(adds(items)) == 4


def test_ncmec_pdq_and_photodna_byte_list_are_imported() -> None:
    byte_list = ",".join(str(n) for n in range(144))
    xml = f"""<?xml version="1.0"?>
<queryResult xmlns="https://hashsharing.ncmec.org/hashsharing/v2"><images count="1">
<image><member id="7">Someone Person</member><id>77</id><classification>B2</classification>
<fingerprints><pdq>{PDQ.upper()}</pdq><pdna>{byte_list}</pdna><md5></md5></fingerprints>
</image></images></queryResult>""".encode()
    items = run("ncmec", io.BytesIO(xml))
    assert [(r.signal_type, r.classification, r.ref) for r in adds(items)] == [
        ("pdq", "B2", "ncmec:77"),
        ("photodna", "B2", "ncmec:77"),
    ]
    assert adds(items)[0].value == PDQ
    assert [i.location for i in issues(items)] == ["entry 1 (image id=77) fingerprints/md5"]
    assert "Someone Person" not in repr(items)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "not well-formed|no element found"),
        (b"<queryResult><images><image><id>x</id>", "line 1 column"),
        (b"<?xml version='1.0'?>\n<queryResult>\n<images>\n</videos>", "line 4 column"),
        (b"<other/>", "expected <queryResult>"),
        (b'{"hashRecords": []}', "not well-formed"),
    ],
)
def test_ncmec_broken_xml_is_an_import_format_error(content: bytes, reason: str) -> None:
    with pytest.raises(ImportFormatError, match=reason):
        run("ncmec", io.BytesIO(content))


def test_ncmec_records_before_a_break_come_out_first() -> None:
    content = (SAMPLES / "ncmec-entries-3.xml").read_bytes()[:-40]
    parser = parse_file("ncmec", io.BytesIO(content))
    got: list[object] = []
    with pytest.raises(ImportFormatError):
        for item in parser:
            got.append(item)
    assert len(adds(got)) == 2


def _big_ncmec(entries: int) -> Iterator[bytes]:
    yield b'<?xml version="1.0"?><queryResult xmlns="https://hashsharing.ncmec.org/hashsharing/v2">'
    yield b"<images>"
    for n in range(entries):
        yield (
            f"<image><member id='1'>M</member><id>{n}</id><classification>A1</classification>"
            f"<fingerprints><md5>{n:032x}</md5></fingerprints></image>"
        ).encode()
    yield b"</images></queryResult>"


class _ChunkStream(io.RawIOBase):
    """A file-like view of a generator, so a big file never exists in memory at once."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._rest = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._rest:
            try:
                self._rest = next(self._chunks)
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._rest))
        buffer[:size] = self._rest[:size]
        self._rest = self._rest[size:]
        return size


@pytest.mark.slow
def test_ncmec_streams_a_large_file_in_bounded_memory() -> None:
    entries = 40_000
    stream = io.BufferedReader(_ChunkStream(_big_ncmec(entries)))
    tracemalloc.start()
    try:
        count = 0
        for item in parse_file("ncmec", stream):
            assert isinstance(item, ImportRecord)
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == entries
    assert peak < 2 * 1024 * 1024, peak  # the file is ~6 MB; a full tree of it takes ~40 MB


# --- stopncii -------------------------------------------------------------------------


def test_stopncii_sample_pages() -> None:
    first = run("stopncii", SAMPLES / "stopncii-fetchhashes-1.json")
    second = run("stopncii", SAMPLES / "stopncii-fetchhashes-2.json")
    assert [(r.signal_type, r.value, r.category, r.ref) for r in adds(first)] == [
        ("pdq", "2afc4a5c09628a7961c14d436493bba66b89b831453baa1d556ba385554daa82", "ncii", None),
        ("pdq", "79e07de27d7295339435d63cd31cf35a7bfa29eb2885008500a588a5ea3ae75a", "ncii", None),
    ]
    assert [r.location for r in adds(first)] == ["page 1 hashRecords[0]", "page 1 hashRecords[1]"]
    assert [(r.value, r.category) for r in adds(second)] == [
        ("9def0b7dafa86a1c90f2abd78e79ceb25ec3d1a4b3d4bc7a4354baf7717ea038", "ncii"),
    ]
    assert issues(first + second) == [] and revokes(first + second) == []
    assert_no_personal(first + second)


def test_stopncii_withdrawn_and_deleted_become_revokes() -> None:
    items = run("stopncii", DATA / "stopncii-withdrawn.jsonl")
    assert [(r.signal_type, r.value, r.location) for r in revokes(items)] == [
        (
            "pdq",
            "2afc4a5c09628a7961c14d436493bba66b89b831453baa1d556ba385554daa82",
            "page 1 hashRecords[0]",
        ),
        ("md5", "0cc175b9c0f1b6a831c399e269772661", "page 2 hashRecords[0]"),
    ]
    assert [(r.signal_type, r.value) for r in adds(items)] == [
        ("md5", "0cc175b9c0f1b6a831c399e269772661"),
    ]
    assert [(i.location, i.message.split(" ")[0]) for i in issues(items)] == [
        ("page 1 hashRecords[2]", "signalType"),
        ("page 2 hashRecords[1]", "pdq"),
        ("page 2 hashRecords[2]", "hashStatus"),
    ]
    assert_no_personal(items)


def test_stopncii_revocations_can_be_skipped() -> None:
    items = run("stopncii", DATA / "stopncii-withdrawn.jsonl", revocations=False)
    assert revokes(items) == [] and len(adds(items)) == 1 and len(issues(items)) == 3


def test_stopncii_accepts_a_saved_list_of_pages_and_concatenated_pages() -> None:
    pages = [json.loads((SAMPLES / f"stopncii-fetchhashes-{n}.json").read_text()) for n in (1, 2)]
    as_list = run("stopncii", io.BytesIO(json.dumps(pages).encode()))
    concatenated = run(
        "stopncii",
        io.BytesIO(
            b"".join((SAMPLES / f"stopncii-fetchhashes-{n}.json").read_bytes() for n in (1, 2))
        ),
    )
    assert len(adds(as_list)) == len(adds(concatenated)) == 3
    assert adds(concatenated)[-1].location == "page 2 hashRecords[0]"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"count": 1, "hashRecords": [', "line 1: not valid JSON"),
        (b'{"hashRecords": []}\n{"hashRecords": [}\n', "line 2: not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 100_000, "JSON"),
        (b"<queryResult/>", "not valid JSON"),
    ],
)
def test_stopncii_bad_json_is_an_import_format_error(content: bytes, reason: str) -> None:
    with pytest.raises(ImportFormatError, match=reason):
        run("stopncii", io.BytesIO(content))


def test_stopncii_wrong_shapes_are_issues() -> None:
    bad_status = {"hashValue": "a", "signalType": "ImagePDQ", "hashStatus": []}
    content = b"5 " + json.dumps({"hashRecords": [7, {"hashValue": 1}, bad_status]}).encode()
    items = run("stopncii", io.BytesIO(content))
    assert [i.location for i in issues(items)] == [
        "page 1",
        "page 2 hashRecords[0]",
        "page 2 hashRecords[1]",
        "page 2 hashRecords[2]",
    ]
    assert len(items) == 4


# --- pytx -----------------------------------------------------------------------------


def test_pytx_file() -> None:
    items = run("pytx", DATA / "pytx-signals.txt")
    assert [(r.signal_type, r.location) for r in adds(items)] == [
        ("pdq", "line 1"),
        ("md5", "line 2"),
        ("photodna", "line 6"),
        ("sha256", "line 9"),
    ]
    assert adds(items)[1].value == "5d41402abc4b2a76b9719d911017c592"
    found = {i.location: i.message for i in issues(items)}
    assert found == {
        "line 4": "signal type 'url' is not supported by hashmesh (skipped)",
        "line 5": "signal type 'raw_text' is not supported by hashmesh (skipped)",
        "line 7": "pdq value: expected 64 hex characters, got 4",
        "line 8": "expected 'TYPE VALUE', found one word",
    }
    assert all(r.category == "csam" for r in adds(items))


def test_pytx_single_type_file_and_category_option() -> None:
    content = f"{PDQ}\n\n{PDQ.upper()}\nnothex\n".encode()
    items = run("pytx", io.BytesIO(content), signal_type="pdq", category="terror")
    assert [(r.value, r.category, r.location) for r in adds(items)] == [
        (PDQ, "terror", "line 1"),
        (PDQ, "terror", "line 3"),
    ]
    assert [i.location for i in issues(items)] == ["line 4"]


def test_pytx_unknown_type_lists_ours() -> None:
    [issue] = run("pytx", io.BytesIO(b"blake3 abcd\n"))
    assert isinstance(issue, ImportIssue)
    assert "unknown signal type 'blake3'" in issue.message and "photodna" in issue.message


# --- csv ------------------------------------------------------------------------------


def test_csv_with_header() -> None:
    items = run("csv", DATA / "hashes.csv")
    assert [
        (r.signal_type, r.category, r.classification, r.quality, r.ref, r.location)
        for r in adds(items)
    ] == [
        ("md5", "csam", "A1", None, "case-17", "line 3"),
        ("pdq", "csam", None, 90, None, "line 4"),
        ("pdq", "ncii", None, None, None, "line 6"),
        ("sha256", "csam", None, None, None, "line 8"),
    ]
    assert [(i.location, i.message) for i in issues(items)] == [
        ("line 1", "column 'submitter' is not imported"),
        ("line 5", "sha1 value: 'g' is not a hex digit"),
        (
            "line 7",
            "category 'Bad Category' is not a label "
            "(1-32 of a-z 0-9 _ -, starting with a letter or digit)",
        ),
    ]
    assert_no_personal(items)


def test_csv_without_header_and_bad_hex_on_line_n() -> None:
    content = (
        "md5,5D41402ABC4B2A76B9719D911017C592\r\n"
        f"pdq,{PDQ},ncii\r\n"
        "sha1,da39a3ee5e6b4b0d3255bfef95601890afd8070z,csam,A2\r\n"
        "md5\r\n"
        "md5,5d41402abc4b2a76b9719d911017c592,csam,A1,extra\r\n"
        "\r\n"
        'md5,"5d41402abc4b2a76b9719d911017c592,csam\r\n'
    ).encode()
    items = run("csv", io.BytesIO(content))
    assert [(r.signal_type, r.category, r.location) for r in adds(items)] == [
        ("md5", "csam", "line 1"),
        ("pdq", "ncii", "line 2"),
    ]
    found = [(i.location, i.message) for i in issues(items)]
    assert found[0] == ("line 3", "sha1 value: 'z' is not a hex digit")
    assert [loc for loc, _ in found] == ["line 3", "line 4", "line 5", "line 7"]
    assert "found 1" in found[1][1] and "found 5" in found[2][1]


def test_csv_bad_quality_and_bom_and_non_utf8_line() -> None:
    content = (
        (
            "\ufefftype,value,quality\n"
            f"pdq,{PDQ},101\n"
            f"pdq,{PDQ},high\n"
            f"md5,5d41402abc4b2a76b9719d911017c592,50\n"
        ).encode()
        + b"md5,\xff\xfe\n"
        + f"pdq,{PDQ},7\n".encode()
    )
    items = run("csv", io.BytesIO(content))
    assert [(r.quality, r.location) for r in adds(items)] == [(7, "line 6")]
    found = {i.location: i.message for i in issues(items)}
    assert set(found) == {"line 2", "line 3", "line 4", "line 5"}
    assert "quality" in found["line 2"] and "only pdq" in found["line 4"]
    assert "UTF-8" in found["line 5"]


def test_csv_header_without_value_column_is_refused() -> None:
    with pytest.raises(ImportFormatError, match="line 1: the header row names no 'value'"):
        run("csv", io.BytesIO(b"type,hash_value\nmd5,x\n"))


def test_overlong_line_is_one_issue() -> None:
    content = b"md5," + b"a" * 200_000 + b"\n" + b"md5,5d41402abc4b2a76b9719d911017c592\n"
    items = run("csv", io.BytesIO(content))
    assert [i.location for i in issues(items)] == ["line 1"]
    assert [r.location for r in adds(items)] == ["line 2"]


# --- fuzz -----------------------------------------------------------------------------


def _check_items(fmt: str, content: bytes) -> None:
    try:
        for item in parse_file(fmt, io.BytesIO(content)):
            assert isinstance(item, ImportRecord | ImportIssue)
            if isinstance(item, ImportIssue):
                assert item.location and item.message
            elif item.action == "add":
                item.to_add_op()
            else:
                assert item.action == "revoke"
                assert item.ref is not None or item.signal_type is not None
    except ImportFormatError:
        pass


def _sample_bytes() -> list[bytes]:
    files = sorted(SAMPLES.glob("*.xml")) + sorted(SAMPLES.glob("*.json"))
    files += sorted(p for p in DATA.iterdir() if p.is_file())  # data/ also holds folders
    return [f.read_bytes() for f in files]


@st.composite
def mutated_samples(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_sample_bytes())))
    for _ in range(draw(st.integers(0, 4))):
        if not data:
            break
        start = draw(st.integers(0, len(data) - 1))
        end = draw(st.integers(start, min(len(data), start + 40)))
        data[start:end] = draw(st.binary(max_size=20))
    return bytes(data)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=80)
    | st.sampled_from(
        [
            "ImagePDQ",
            "VideoMD5",
            "URL",
            "Received",
            "Active",
            "Withdrawn",
            "Deleted",
            PDQ,
            "5d41402abc4b2a76b9719d911017c592",
        ]
    ),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["hashRecords", "hashValue", "signalType", "hashStatus", "caseNumbers"])
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@st.composite
def csv_like(draw: st.DrawFn) -> bytes:
    cells = st.sampled_from(
        [
            "md5",
            "pdq",
            "sha1",
            "photodna",
            "type",
            "value",
            "quality",
            "ref",
            "category",
            "classification",
            "A1",
            "90",
            "-1",
            '"',
            PDQ,
            "5d41402abc4b2a76b9719d911017c592",
            "",
        ]
    ) | st.text(max_size=10)
    rows = draw(st.lists(st.lists(cells, max_size=7), max_size=8))
    sep = draw(st.sampled_from([",", " ", "\t"]))
    return "\n".join(sep.join(row) for row in rows).encode("utf-8", "surrogatepass")


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("fmt", ["pytx", "csv", "stopncii", "ncmec"])
@FUZZ
@given(content=st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes(fmt: str, content: bytes) -> None:
    _check_items(fmt, content)


@pytest.mark.parametrize("fmt", ["pytx", "csv", "stopncii", "ncmec"])
@FUZZ
@given(content=st.text(max_size=500))
def test_fuzz_arbitrary_text(fmt: str, content: str) -> None:
    _check_items(fmt, content.encode("utf-8", "surrogatepass"))


@pytest.mark.parametrize("fmt", ["pytx", "csv", "stopncii", "ncmec"])
@FUZZ
@given(content=mutated_samples())
def test_fuzz_mutated_samples(fmt: str, content: bytes) -> None:
    _check_items(fmt, content)


@FUZZ
@given(document=_json_values)
def test_fuzz_stopncii_json_shapes(document: object) -> None:
    _check_items("stopncii", json.dumps(document).encode())
    _check_items("stopncii", json.dumps({"hashRecords": [document, document]}).encode())


@pytest.mark.parametrize("fmt", ["pytx", "csv"])
@FUZZ
@given(content=csv_like())
def test_fuzz_line_formats(fmt: str, content: bytes) -> None:
    _check_items(fmt, content)
