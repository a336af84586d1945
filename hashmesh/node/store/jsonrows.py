"""Many rows through one SQLite step, as one JSON text each way.

Python's sqlite3 releases the GIL around every `sqlite3_step`, so `executemany` of 5,000
rows, or iterating 5,000 result rows, hands the GIL over 5,000 times. Beside a thread that
computes in Python (batch verification, an index update, the event loop) each hand-back
waits for that thread's switch interval: one 5,000-add batch took 7.8-24 s of store-thread
time instead of 46 ms (the convoy effect; docs/design-notes.md, "One SQLite step per bulk
statement"). Rows passed as one JSON parameter (`json_each`) or read back as one
`json_group_array` are one step, one hand-over, whatever their number.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def json_param(rows: Iterable[Sequence[Any]]) -> str:
    """Rows for `json_each(?)`: a JSON array of arrays (read `j.value ->> N`, order by
    `j.key`). Strings arrive as SQL text, ints as integers, None as NULL."""
    return _compact(list(map(list, rows)))


def json_rows(
    conn: sqlite3.Connection, columns: str, rest: str, params: Sequence[Any] = ()
) -> list[list[Any]]:
    """`SELECT columns rest` in one step. `columns` must not be BLOBs (JSON cannot hold
    them) and the rows come in no promised order: sort them where order matters."""
    (text,) = conn.execute(
        f"SELECT json_group_array(json_array({columns})) {rest}", params
    ).fetchone()
    rows: list[list[Any]] = json.loads(text)
    return rows
