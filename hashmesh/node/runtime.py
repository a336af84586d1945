"""Process-wide tuning shared by every hashmesh process (the node, the CLI, benchmarks).

Ingest allocates about ten short-lived objects per op (parsed JSON, pydantic models, op
ids), so CPython's default generation-0 threshold of 700 allocations runs a collection
every ~70 ops; a 10,000-op batch then spends about a sixth of its time in the collector
scanning objects that are about to die anyway. A larger threshold keeps collections rare
while the older generations still catch reference cycles.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)
