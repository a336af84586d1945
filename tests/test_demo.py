"""`hashmesh demo` (what `make demo` runs) tells the whole story with four real nodes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def test_demo_runs_the_story_end_to_end(tmp_path: Path) -> None:
    rows_file = tmp_path / "rows.json"
    env = {**os.environ, "HASHMESH_DEMO_JSON": str(rows_file)}
    hashmesh = str(Path(sys.executable).with_name("hashmesh"))
    result = subprocess.run(
        [hashmesh, "demo", "--dir", str(tmp_path / "net")],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {what: outcome for what, outcome, _ in json.loads(rows_file.read_text())}
    assert rows["childfocus -> ncmec -> platform"] == "pdq matchable on the platform"
    assert rows["platform match --file"].startswith("PDQ distance ")
    assert rows["platform (no le-only access)"] == "not there 1 s later"
    assert rows["revocation reaches the platform"] == "platform no longer matches it"
    assert rows["platform dispute -> childfocus"].startswith("childfocus sees dispute=1")
    for name in ("ncmec", "childfocus", "platform", "police"):
        home = tmp_path / "net" / name
        assert (home / "hashmesh.db").exists()
        assert not (home / "node.json").exists()  # every node stopped cleanly
