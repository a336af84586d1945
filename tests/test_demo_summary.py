"""The demo's summary table: one column per header cell, each figure under the header that
names it (the old table had one "time" column whose note said "from the command's return"
while every row was timed from before the command, and a check with no time showed 0 ms)."""

from __future__ import annotations

from itertools import pairwise

from hashmesh.node.cli.demo import SUMMARY_HEADER, Row, summary_lines


def _cells(line: str, widths: list[int]) -> list[str]:
    out, at = [], 0
    for w in widths:
        out.append(line[at : at + w].strip())
        at += w + 2
    return out


def test_every_row_has_a_cell_under_each_header_column() -> None:
    rows = [
        Row("childfocus submit", "9 hashes of 3 pictures", command_s=0.671),
        Row("childfocus -> ncmec -> platform", "pdq matchable", visible_s=0.003),
        Row("platform (no le-only access)", "not there 1 s later"),
        Row("revocation reaches the platform", "no longer matches", 0.481, 0.052),
    ]
    note, header, *lines = summary_lines(rows)
    assert "command" in note and "visible after" in note
    starts = [header.index(h) for h in SUMMARY_HEADER]
    widths = [b - a - 2 for a, b in pairwise(starts)] + [len(header)]
    assert _cells(header, widths) == list(SUMMARY_HEADER)
    table = [_cells(line, widths) for line in lines]
    assert table[0][2:] == ["671 ms", "-"]
    assert table[1][2:] == ["-", "3 ms"]
    assert table[2][2:] == ["-", "-"]  # a check that took no timed command shows no time
    assert table[3][2:] == ["481 ms", "52 ms"]
