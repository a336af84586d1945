"""Long operations show a progress bar on a terminal and stay quiet otherwise."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

from netnodes import HASHMESH, NodeProc


def run_in_pty(args: list[str]) -> tuple[int, str]:
    """Run a command with stdout and stderr on a pseudo-terminal; return its output."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(args[0], args)
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")


def test_export_and_import_progress_only_on_a_terminal(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "hotline")
    for i in range(3):
        node.cli("add", "md5", "%032x" % i, "-c", "csam")
    bundle = tmp_path / "b.bundle"
    quiet = node.cli("export", "-c", "csam", str(bundle))
    assert quiet.stderr == ""
    code, out = run_in_pty(
        [HASHMESH, "--home", str(node.home), "export", "-c", "csam", str(bundle)]
    )
    assert code == 0 and "exporting" in out and "100%" in out
    quiet = node.cli("import", str(bundle))
    assert quiet.stderr == ""
    code, out = run_in_pty([HASHMESH, "--home", str(node.home), "import", str(bundle)])
    assert code == 0 and "importing" in out and "100%" in out
    assert subprocess.run([HASHMESH, "--help"], capture_output=True).returncode == 0
