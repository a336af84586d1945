"""Signal rows as JSON: the one place a stored signal becomes what the API, the feed and the
snapshot answer with, so a label added to the schema appears everywhere or nowhere.

Absent labels are left out rather than sent as null, as on the wire (protocol.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hashmesh.protocol.batches import LogKey

LABEL_COLUMNS = "type, value, quality, category, classification, ref"
SIGNAL_COLUMNS = f"id, log_id, seq, idx, {LABEL_COLUMNS}, revoked_by, revoked_reason"


def op_id_text(author: str, collection: str, seq: int, index: int) -> str:
    """`OpId(...)` as text without building one: the feed renders millions."""
    return f"{author}/{collection}/{seq}/{index}"


def labels(out: dict[str, Any], row: Sequence[Any], at: int) -> None:
    """Type, value and labels from a row slice in LABEL_COLUMNS order starting at `at`."""
    out["type"] = row[at]
    out["value"] = row[at + 1]
    if row[at + 2] is not None:
        out["quality"] = row[at + 2]
    out["category"] = row[at + 3]
    if row[at + 4] is not None:
        out["classification"] = row[at + 4]
    if row[at + 5] is not None:
        out["ref"] = row[at + 5]


def signal_json(
    author: str,
    collection: str,
    seq: int,
    index: int,
    row: Sequence[Any],
    at: int,
    author_name: str | None = None,
) -> dict[str, Any]:
    """An add as {op_id, author, [author_name], collection, type, value, labels...}, its
    labels read from `row` at `at` (LABEL_COLUMNS order)."""
    out: dict[str, Any] = {"op_id": op_id_text(author, collection, seq, index), "author": author}
    if author_name is not None:
        out["author_name"] = author_name
    out["collection"] = collection
    labels(out, row, at)
    return out


def signal_dict(row: Sequence[Any], log: LogKey) -> dict[str, Any]:
    """A row in SIGNAL_COLUMNS order as the API answers with it: the add, its row id, and
    whether (and by what) it was revoked."""
    out: dict[str, Any] = {"id": row[0]}
    out.update(signal_json(log.author, log.collection, row[2], row[3], row, 4))
    out["live"] = row[10] is None
    if row[10] is not None:
        out["revoked_by"] = row[10]
        out["revoked_reason"] = row[11]
    return out
