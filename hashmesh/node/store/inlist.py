"""SQL IN lists over a caller's values, sized for what the statement gets."""

from __future__ import annotations

import json

SMALL_IN = 64


def in_list(values: list[str]) -> tuple[str, list[str]]:
    """An IN list and its arguments: placeholders for a short one (a match's few hits:
    10 us against 30-38 us through json_each per statement, measured on this project's
    2-core machine), one json_each argument for a long one, however long."""
    if len(values) <= SMALL_IN:
        return "(" + ",".join("?" * len(values)) + ")", list(values)
    return "(SELECT value FROM json_each(?))", [json.dumps(values)]
