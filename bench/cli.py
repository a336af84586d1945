"""CLI latency: wall time of one `hashmesh` call against a running node, old and new.

    .venv/bin/python bench/cli.py [--runs 15] [--old REV] [--no-write]

Scripts call `hashmesh` in loops, so each call's start-up is the cost. A node is started
with `hashmesh run`; each command is run RUNS times and the median wall time is reported,
next to `python -c pass` (the interpreter's own start-up, the floor) and, for comparison,
the same command from a `git archive` of REV (default: the revision before the CLI imported
lazily), run with that tree first on sys.path. Target: `id`, `status` and `match TYPE
VALUE` at most 0.25 s each; the script exits 1 when a target is missed. `match --file` is
reported but has no target (it hashes the picture, which needs Pillow and numpy).

The table is printed and written to docs/benchmarks.md under "## CLI latency
(bench/cli.py)".
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchenv import Tree, free_port, load_text, machine, replace_section

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## CLI latency (bench/cli.py)"
OLD = "5f7a86c"  # the last revision whose CLI imported the store, numpy and pydantic eagerly
HASHMESH = str(Path(sys.executable).with_name("hashmesh"))
TARGET_S = 0.25
MD5 = "5d41402abc4b2a76b9719d911017c592"
IMAGE = ROOT / "tests" / "data" / "exif-rotn"
COMMANDS: list[tuple[str, list[str], bool]] = [  # (label, arguments, has the target)
    ("hashmesh id", ["id"], True),
    ("hashmesh status", ["status"], True),
    (f"hashmesh match md5 {MD5[:8]}…", ["match", "md5", MD5], True),
    ("hashmesh match --file JPEG", ["match", "--file", "{image}"], False),
]


def lscpu() -> list[str]:
    """`lscpu | head -20`, the machine as the issue asked to record it (empty without lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return ["```", *out.splitlines()[:20], "```", ""]


def picture() -> Path:
    found = sorted(p for p in IMAGE.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    if not found:
        raise SystemExit(f"no JPEG under {IMAGE}")
    return found[0]


def median_wall(argv: list[str], runs: int, env: dict[str, str], cwd: Path) -> float:
    subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)  # warm caches
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr!r}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--old", default=OLD, help="the revision to compare with")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    image = str(picture())
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHMESH")}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        home = root / "node"
        listen = f"127.0.0.1:{free_port()}"
        tree = Tree.archive(args.old, root / "old")
        # The old revision's own init: a config both revisions read (newer ones accept an
        # older config; an older CLI refuses the settings added since, e.g. [selfreport]).
        subprocess.run(
            tree.cli(["init", str(home), "--name", "bench", "--listen", listen]),
            env=env,
            cwd=root,
            capture_output=True,
            check=True,
        )
        env["HASHMESH_HOME"] = str(home)
        subprocess.run(
            [HASHMESH, "add", "md5", MD5, "-c", "csam"], env=env, capture_output=True, check=True
        )
        node = subprocess.Popen(
            [HASHMESH, "run"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while not (home / "node.json").exists():
                if time.monotonic() > deadline or node.poll() is not None:
                    raise SystemExit("the node did not start")
                time.sleep(0.1)
            floor = median_wall([sys.executable, "-c", "pass"], args.runs, env, root)
            rows = []
            for label, argv, target in COMMANDS:
                argv = [image if a == "{image}" else a for a in argv]
                new = median_wall([HASHMESH, *argv], args.runs, env, root)
                old = median_wall(tree.cli(argv), args.runs, env, root)
                rows.append((label, old, new, target))
        finally:
            node.terminate()
            node.wait(30)
    missed = [label for label, _, new, target in rows if target and new > TARGET_S]
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(
        [
            HEADING,
            "",
            f"{when}; {machine()}; load {load_text()}.",
            "",
            f"Median wall time of {args.runs} calls of each command against a running node"
            " (the CLI talks to it over its local HTTP API), from process start to exit."
            f" Old: `{args.old}` (the CLI imported the store, sqlite-utils, numpy, pydantic"
            " and cryptography on every call); new: this revision's console script, which"
            " imports them only in the commands that use them (tests/test_cli_imports.py"
            " keeps it so). `python -c pass` is the interpreter's own start-up, the floor."
            f" Target: at most {TARGET_S} s for `id`, `status` and `match TYPE VALUE`."
            " `python bench/cli.py` to repeat.",
            "",
            "| command | old | new | floor (`python -c pass`) | target |",
            "| --- | --- | --- | --- | --- |",
            *(
                f"| `{label}` | {old:.3f} s | {new:.3f} s | {floor:.3f} s |"
                f" {('met' if new <= TARGET_S else 'MISSED') if target else '-'} |"
                for label, old, new, target in rows
            ),
            "",
            "`match --file` has no target: it hashes the picture (md5, sha256 and PDQ), so it"
            " loads Pillow and numpy and decodes the JPEG before it asks the node.",
            "",
            "`lscpu | head -20`:",
            "",
            *lscpu(),
        ]
    )
    print(body)
    if not args.no_write:
        replace_section(HEADING, body)
    if missed:
        print(f"target of {TARGET_S} s missed: {', '.join(missed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
