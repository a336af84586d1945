"""Where the shared test data lives: Meta's PDQ reference images and sample videos (with
vpdq's output for them) and the list formats.

Looked up in $HASHMESH_TESTDATA, then beside the repository (../shared/testdata, the
layout of this workplace), then at /work/shared/testdata, so a clone anywhere finds it.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def _find() -> Path:
    candidates = [
        os.environ.get("HASHMESH_TESTDATA", ""),
        str(_REPO.parent / "shared" / "testdata"),
        "/work/shared/testdata",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "pdq" / "expected.csv").exists():
            return Path(candidate)
    raise RuntimeError(
        "shared test data not found: set HASHMESH_TESTDATA to the folder holding pdq/ and formats/"
    )


TESTDATA = _find()
PDQ = TESTDATA / "pdq"
IMAGES = PDQ / "images"
FORMATS = TESTDATA / "formats"
VIDEO = TESTDATA / "video"  # videos/ and vpdq-hashes/
