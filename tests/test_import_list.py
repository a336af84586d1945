"""`hashmesh import-list` and `export-list`: every import format with good and broken
files, all-or-nothing publishing, withdrawals as revocations, exports of live signals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import Cli, HomeFactory, NodeFactory
from testdata import FORMATS

DATA = Path(__file__).resolve().parent / "data"
PDQ_A = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"
PDQ_WITHDRAWN = "2afc4a5c09628a7961c14d436493bba66b89b831453baa1d556ba385554daa82"
MD5_HELLO = "5d41402abc4b2a76b9719d911017c592"
SHA256_HELLO = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


def live_values(cli: Cli, home: Path, collection: str) -> set[tuple[str, str]]:
    out = home.parent / f"{collection}-live.csv"
    cli("export-list", "csv", out, "--collection", collection, home=home)
    lines = out.read_text().splitlines()
    assert lines[0] == "type,value,category,classification,op_id,author"
    return {tuple(line.split(",")[:2]) for line in lines[1:]}  # type: ignore[misc]


def test_pytx_file_imports_valid_lines_and_reports_the_rest(cli: Cli, home: HomeFactory) -> None:
    a = home("A")
    result = cli("import-list", "pytx", DATA / "pytx-signals.txt", "-c", "csam", "--json", home=a)
    summary = result.json()
    assert summary["published"] == 4
    assert summary["invalid"] == 4
    for location in ("line 4:", "line 5:", "line 7:", "line 8:"):
        assert location in result.stderr
    assert live_values(cli, a, "csam") >= {("pdq", PDQ_A), ("md5", MD5_HELLO)}


def test_csv_skip_publishes_valid_rows_and_abort_publishes_nothing(
    cli: Cli, home: HomeFactory
) -> None:
    a = home("A")
    refused = cli(
        "import-list",
        "csv",
        DATA / "hashes.csv",
        "-c",
        "csam",
        "--on-error",
        "abort",
        home=a,
        expect=2,
    )
    assert "line 5" in refused.stderr and "nothing imported" in refused.stderr
    assert cli.json("status", home=a)["feed_cursor"] == 0
    skipped = cli(
        "import-list",
        "csv",
        DATA / "hashes.csv",
        "-c",
        "csam",
        "--on-error",
        "skip",
        "--json",
        home=a,
    )
    assert skipped.json()["published"] == 3
    assert "line 5" in skipped.stderr
    assert "note: line 1: column 'submitter' is not imported" in skipped.stderr
    assert live_values(cli, a, "csam") == {
        ("md5", MD5_HELLO),
        ("pdq", PDQ_A),
        ("sha256", SHA256_HELLO),
    }
    again = cli("import-list", "csv", DATA / "hashes.csv", "-c", "csam", "--json", home=a).json()
    assert again["published"] == 0 and again["already_live"] == 3


def test_unreadable_file_changes_nothing(cli: Cli, home: HomeFactory, tmp_path: Path) -> None:
    a = home("A")
    broken = tmp_path / "broken.xml"
    good = (FORMATS / "ncmec-entries-1.xml").read_text()
    broken.write_text(good[: len(good) * 2 // 3])
    result = cli("import-list", "ncmec", broken, "-c", "csam", home=a, expect=2)
    assert "nothing imported" in result.stderr
    assert cli.json("status", home=a)["feed_cursor"] == 0


def test_stopncii_withdrawal_revokes_our_own_add(
    cli: Cli, home: HomeFactory, tmp_path: Path
) -> None:
    a = home("A")
    mine = tmp_path / "mine.txt"
    mine.write_text(f"pdq {PDQ_WITHDRAWN}\n")
    cli("import-list", "pytx", mine, "-c", "ncii", home=a)
    assert ("pdq", PDQ_WITHDRAWN) in live_values(cli, a, "ncii")
    result = cli(
        "import-list",
        "stopncii",
        DATA / "stopncii-withdrawn.jsonl",
        "-c",
        "ncii",
        "--json",
        home=a,
    )
    summary = result.json()
    assert summary["revoked"] == 1
    assert "page 1 hashRecords[2]" in result.stderr
    # the md5 added on page 1 and deleted on page 2 never becomes live
    assert live_values(cli, a, "ncii") == set()
    revoked = cli.json("match", "pdq", PDQ_WITHDRAWN, home=a, expect=1)
    assert revoked["matched"] is False


def test_stopncii_page_imports(cli: Cli, home: HomeFactory) -> None:
    a = home("A")
    summary = cli.json(
        "import-list", "stopncii", FORMATS / "stopncii-fetchhashes-1.json", "-c", "ncii", home=a
    )
    assert summary["published"] == 2 and summary["invalid"] == 0
    assert len(live_values(cli, a, "ncii")) == 2


def test_ncmec_truncated_photodna_reported_valid_fingerprints_imported_and_deletion_revokes(
    cli: Cli, home: HomeFactory
) -> None:
    a = home("A")
    first = cli(
        "import-list", "ncmec", FORMATS / "ncmec-entries-1.xml", "-c", "csam", "--json", home=a
    )
    assert first.json()["published"] == 4
    assert "entry 1 (image id=image1) fingerprints/pdna" in first.stderr
    cli("import-list", "ncmec", FORMATS / "ncmec-entries-3.xml", "-c", "csam", home=a)
    before = live_values(cli, a, "csam")
    deleted = cli.json(
        "import-list", "ncmec", FORMATS / "ncmec-entries-4.xml", "-c", "csam", home=a
    )
    assert deleted["revoked"] == 1
    after = live_values(cli, a, "csam")
    assert len(after) == len(before) - 1 and after < before


def test_import_through_running_node_and_no_progress_bar_off_tty(
    cli: Cli, home: HomeFactory, start_node: NodeFactory
) -> None:
    a = home("A")
    start_node(a)
    result = cli("import-list", "csv", DATA / "hashes.csv", "-c", "csam", "--json", home=a)
    assert result.json()["published"] == 3
    assert "reading" not in result.stderr
    status = cli.json("status", home=a)
    assert status["running"] is True and status["live_signals"] == 3
    assert live_values(cli, a, "csam") == {
        ("md5", MD5_HELLO),
        ("pdq", PDQ_A),
        ("sha256", SHA256_HELLO),
    }


@pytest.mark.parametrize("running", [False, True])
def test_export_hma_writes_pytx_lines_of_live_signals(
    cli: Cli, home: HomeFactory, start_node: NodeFactory, tmp_path: Path, running: bool
) -> None:
    a = home("A")
    signals = tmp_path / "s.csv"
    signals.write_text(
        f"md5,{MD5_HELLO}\npdq,{PDQ_A}\nsha1,aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d\n"
        f"sha256,{SHA256_HELLO}\n"
    )
    cli("import-list", "csv", signals, "-c", "csam", home=a)
    op = cli.json("match", "sha256", SHA256_HELLO, home=a)["results"][0]["matches"][0]["op_id"]
    cli("revoke", op, home=a)
    if running:
        start_node(a)
    out = tmp_path / "bank.txt"
    result = cli("export-list", "hma", out, "--collection", "csam", "--json", home=a)
    assert sorted(out.read_text().splitlines()) == sorted(
        [f"video_md5 {MD5_HELLO}", f"pdq {PDQ_A}"]
    )
    assert json.loads(result.stdout)["skipped_types"] == {"sha1": 1}
    assert "skipped 1 sha1" in result.stderr
