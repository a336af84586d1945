"""Process-wide tuning shared by every hashmesh process (the node, the CLI, benchmarks).

Ingest allocates about ten short-lived objects per op (parsed JSON, pydantic models, op
ids), so CPython's default generation-0 threshold of 700 allocations runs a collection
every ~70 ops; a 10,000-op batch then spends about a sixth of its time in the collector
scanning objects that are about to die anyway. A larger threshold keeps collections rare
while the older generations still catch reference cycles.

After a large ingest CPython has freed its objects, but glibc's allocator keeps the pages
(a node and two workers held 778 MB PSS after a 300,000-signal sync, 296 MB once restarted
on the same data): `release_free_memory` hands them back. It costs milliseconds, so the node
calls it when it writes a checkpoint and each worker when it maps one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from collections.abc import Callable
from functools import cache

GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim): nothing to do
        return None
    return trim


def release_free_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
