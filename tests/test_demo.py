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
    table = json.loads(rows_file.read_text())
    rows = {what: outcome for what, outcome, *_ in table}
    times = {what: (command_s, visible_s) for what, _, command_s, visible_s in table}
    # Each figure is what its column says: a command's own time, then the wait after it.
    assert all(isinstance(t, float) for t in times["revocation reaches the platform"])
    assert times["platform (no le-only access)"] == (None, None)
    assert times["childfocus -> ncmec -> platform"][0] is None
    assert times["platform match --file"][1] is None
    summary = result.stdout.split("== summary", 1)[1].splitlines()
    header_line = next(line for line in summary if line.strip().startswith("step "))
    columns = [c.strip() for c in header_line.split("  ") if c.strip()]
    assert columns == ["step", "result", "command", "visible after"]
    assert rows["childfocus -> ncmec -> platform"] == "pdq matchable on the platform"
    assert rows["platform match --file"].startswith("PDQ distance ")
    assert rows["platform (no le-only access)"] == "not there after a sync round with ncmec"
    assert rows["revocation reaches the platform"] == "platform no longer matches it"
    assert rows["platform dispute -> childfocus"].startswith("childfocus sees dispute=1")
    for name in ("ncmec", "childfocus", "platform", "police"):
        home = tmp_path / "net" / name
        assert (home / "hashmesh.db").exists()
        assert not (home / "node.json").exists()  # every node stopped cleanly
