"""Store-thread time of bulk work beside a thread computing in Python (the GIL convoy).

    .venv/bin/python bench/convoy.py [--old-tree DIR] [--rounds 3] [--no-write]

A node process never runs its store thread alone: batch verification, the index thread
and the event loop compute in Python beside it. Python's sqlite3 hands the GIL back at
every row of `executemany` and of a result set, and beside a busy thread each hand-back
waits up to the switch interval (0.5 ms, as the node sets it). Each case runs in a child
process, once quiet and once beside one busy Python thread, for the code of this tree
and, with `--old-tree`, of another checkout (a git worktree), alternating, so both see the
same machine. Cases: ingest of a 5,000-add batch, a 10,000-opinion batch and a
30,000-target revocation batch (one bulk transaction each, as a peer page slice), a
1,000-entry feed page, a 5,000-change index page (what a matcher worker's follow thread
reads).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchenv import machine, replace_section  # noqa: E402

SECTION = "## Store thread beside Python work (bench/convoy.py)"
INTRO = (
    "Store-thread time of bulk work, in a child process, quiet and beside one thread"
    " computing in Python, at the node's switch interval (0.5 ms). Ingest cases are one"
    " bulk transaction each, as a peer page slice: a 5,000-add batch, a 10,000-opinion"
    " batch, a 30,000-target revocation batch; reads: a 1,000-entry feed page and a"
    " 5,000-change index page (a matcher worker's follow thread). Old and new alternate"
    " in each round. Command: `.venv/bin/python bench/convoy.py --old-tree OLD`."
)
CASES = ("adds", "opinions", "revocations", "feed_page", "index_page")

CHILD = r"""
import json, os, random, sys, tempfile, threading, time
from pathlib import Path
from hashmesh.node.config import Home
from hashmesh.node.service import NodeService, init_home
from hashmesh.node.store import feed
from hashmesh.protocol import SigningKey, build_batch

busy = sys.argv[1] == "busy"
sys.setswitchinterval(0.0005)
key = SigningKey(os.urandom(32))
rng = random.Random(1)
log = f"{key.node_id}/bench"
batches, prev = [], None

def batch(ops):
    global prev
    b = build_batch(key, "bench", len(batches) + 1, prev, 1_700_000_000_000 + len(batches), ops)
    prev = b.hash
    batches.append(b)
    return b

def adds():
    return [{"op": "add", "type": "pdq", "value": "%064x" % rng.getrandbits(256),
             "category": "csam"} for _ in range(5000)]

for _ in range(8):
    batch(adds())
timed = {
    "adds": batch(adds()),
    "opinions": batch([{"op": "opinion", "opinion": "dispute", "target": f"{log}/{s}/{i}"}
                       for s in (1, 2) for i in range(5000)]),
}
targets = [f"{log}/{s}/{i}" for s in range(3, 9) for i in range(5000)]
timed["revocations"] = batch([{"op": "revoke", "reason": "x", "targets": targets[k:k + 25]}
                              for k in range(0, len(targets), 25)])
home_dir = Path(tempfile.mkdtemp()) / "h"
init_home(home_dir, "bench", None, None)
service = NodeService(Home(home_dir))
service.trust_add(key.node_id, "bench", "a")
store = service.store
for b in batches[:8]:
    with store.bulk("peer:x"):
        store.ingest(b, source="peer:x")
stop = False

def spin():
    x = 0
    while not stop:
        for i in range(1000):
            x += i * i

if busy:
    threading.Thread(target=spin, daemon=True).start()
out = {}
for name in ("adds", "opinions", "revocations"):
    t = time.perf_counter()
    with store.bulk("peer:x"):
        assert store.ingest(timed[name], source="peer:x").outcome == "applied"
    out[name] = time.perf_counter() - t
reader = feed.connect_reader(store.path)
t = time.perf_counter()
assert len(feed.feed_rows(reader, 0, 1000, None)) == 1000
out["feed_page"] = time.perf_counter() - t
t = time.perf_counter()
assert len(feed.index_changes(reader, 0, 5000)) == 5000
out["index_page"] = time.perf_counter() - t
stop = True
print(json.dumps(out))
"""


def run(tree: Path, mode: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, cwd=tree
    )
    if done.returncode != 0:
        raise SystemExit(f"child failed in {tree}: {done.stderr[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-tree", help="a checkout of the code to compare with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="do not touch docs/benchmarks.md")
    args = parser.parse_args()
    trees = [("new", ROOT)] + ([("old", Path(args.old_tree).resolve())] if args.old_tree else [])
    samples: dict[tuple[str, str], list[dict[str, float]]] = {}
    loads = []
    for n in range(args.rounds):
        order = trees if n % 2 == 0 else trees[::-1]
        for label, tree in order:
            for mode in ("quiet", "busy"):
                samples.setdefault((label, mode), []).append(run(tree, mode))
                loads.append(os.getloadavg()[0])
                print(f"round {n + 1} {label} {mode}: done", file=sys.stderr)
    lines = [
        SECTION,
        "",
        INTRO,
        "",
        f"Machine: {machine()}. Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC."
        f" Load average {min(loads):.1f}-{max(loads):.1f}. {args.rounds} rounds, medians.",
        "",
        "| code | beside | " + " | ".join(f"{c} ms" for c in CASES) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in CASES) + " |",
    ]
    for (label, mode), runs in samples.items():
        cells = [f"{statistics.median(r[c] for r in runs) * 1000:,.0f}" for c in CASES]
        beside = "a busy thread" if mode == "busy" else "nothing"
        lines.append(f"| {label} | {beside} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        replace_section(SECTION, table)


if __name__ == "__main__":
    main()
