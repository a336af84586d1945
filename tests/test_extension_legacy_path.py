"""Records HMA stored under 0.1's module path still load after the move into `hashmesh`.

HMA keeps each fetched record as a pickle, and a pickle names its class by module path.
0.1 shipped the extension as `node.integrations.threatexchange`; tests/data/
hma_records_0_1.pickle was written by that release (a disputed PDQ record and a feed
checkpoint). Each check runs in a fresh interpreter outside the source tree, as HMA's
worker does: the only thing imported first is the extension, as HMA's config imports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data" / "hma_records_0_1.pickle"


def _python(code: str, cwd: Path, extra_path: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_a_record_pickled_by_0_1_loads_as_the_current_class(tmp_path: Path) -> None:
    assert b"node.integrations.threatexchange" in DATA.read_bytes()
    out = _python(
        "import json, pickle\n"
        "from hashmesh.integrations import threatexchange as ext\n"
        f"data = pickle.loads(open({str(DATA)!r}, 'rb').read())\n"
        "rec, cp = data['record'], data['checkpoint']\n"
        "print(json.dumps({'cls': type(rec) is ext.HashmeshSignalMetadata,\n"
        "  'cp': type(cp) is ext.HashmeshCheckpoint, 'cursor': cp.cursor,\n"
        "  'disputes': rec.disputes, 'tags': sorted(rec.get_as_opinions()[1].tags),\n"
        "  'module': type(rec).__module__}))\n",
        cwd=tmp_path,
    )
    got = json.loads(out)
    assert got == {
        "cls": True,
        "cp": True,
        "cursor": 1234,
        "disputes": 1,
        "tags": ["dispute:platform"],
        "module": "hashmesh.integrations.threatexchange",
    }


def test_a_real_package_named_node_is_not_shadowed(tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    (other / "node").mkdir(parents=True)
    (other / "node" / "__init__.py").write_text("WHOSE = 'theirs'\n")
    out = _python(
        "import hashmesh.integrations.threatexchange\nimport node\nprint(node.WHOSE)\n",
        cwd=tmp_path,
        extra_path=other,
    )
    assert out.strip() == "theirs"


def test_without_the_extension_the_old_path_does_not_exist(tmp_path: Path) -> None:
    """The alias is the extension's doing, not a `node` package the distribution installs."""
    out = _python(
        "import importlib.util\nprint(importlib.util.find_spec('node') is None)\n",
        cwd=tmp_path,
    )
    assert out.strip() == "True"
