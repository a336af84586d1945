"""store/inlist.py: a short IN list (placeholders) and a long one (json_each) select the
same rows of a real SQLite table, duplicates and all."""

from __future__ import annotations

import sqlite3

from hashmesh.node.store.inlist import SMALL_IN, in_list


def test_short_and_long_lists_select_the_same_rows() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    conn.executemany("INSERT INTO t VALUES (?)", [(f"k{n}",) for n in range(1000)])
    for size in (1, SMALL_IN, SMALL_IN + 1, 400):
        wanted = [f"k{n}" for n in range(0, size * 2, 2)] + ["absent", "k0"]
        where, args = in_list(wanted)
        assert ("json_each" in where) is (len(wanted) > SMALL_IN)
        got = {k for (k,) in conn.execute(f"SELECT k FROM t WHERE k IN {where}", args)}
        assert got == set(wanted) - {"absent"}
