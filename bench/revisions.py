"""The architecture step against the revision before it, side by side, in one sitting.

    .venv/bin/python bench/revisions.py [--old REV] [--signals N] [--rounds R] [--no-write]

A restructure must not make the node slower, and on a shared 2-core machine only a
comparison run in the same minutes means anything. Each round runs every measure once
with the old revision's code (a `git archive` of REV, default 179643c, the last revision
before the `hashmesh` package) and once with the working tree, alternating which goes
first; the table gives the median of the rounds and the ratio new/old. Measures:

- bundle import: `hashmesh import` of N md5 adds (batches of 5,000) into a fresh home,
  each tree's own CLI in a child process (the store's ingest path, end to end);
- verify+apply: `protocol.state.State` applying two 10,000-op batches of adds;
- exact match: `NodeService.match`, 1,000 md5 queries per call, 50,000 queries, on the
  imported home (the matcher's read path, off the store thread);
- feed paging: each tree's node runs (`hashmesh run` on 127.0.0.1:0) on the imported home
  and a subscriber pages `GET /v1/feed` to the end, 10,000 a page, decoding every page
  (the platform feed through the web, access and store layers).

Sync between nodes, the feed and CLI latency have benchmarks of their own
(propagation.py, feed.py, cli.py --old REV).

The table is printed and written to docs/benchmarks.md under "## The architecture step,
old and new (bench/revisions.py)".
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import store as store_bench
from benchenv import Tree, load_text, machine, replace_section

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## The architecture step, old and new (bench/revisions.py)"
OLD = "179643c"
BATCH = store_bench.BATCH
COLLECTION = store_bench.COLLECTION

# Runs in a child with one tree first on sys.path; prints one JSON object.
CHILD = r"""
import json, sys, time, random
sys.path.insert(0, TREE)
def mod(name):
    import importlib
    m = importlib.import_module(NAMES.get(name, name))
    assert m.__file__.startswith(TREE), (name, m.__file__)
    return m
out = {}
batches = mod("hashmesh.protocol.batches")
state_m = mod("hashmesh.protocol.state")
ops_m = mod("hashmesh.protocol.ops")
signing = mod("hashmesh.protocol.signing")
runtime = mod("hashmesh.node.runtime")
runtime.tune_gc()
key = signing.SigningKey(bytes([9]) * 32)
def ops(n, salt):
    make = ops_m.AddOp.create
    return [make("md5", f"{(salt << 32) | i:032x}", category="csam") for i in range(n)]
frames = []
prev = None
for seq in (1, 2):
    b = batches.build_batch(key, "c", seq, prev, 1_700_000_000_000 + seq, ops(10_000, seq))
    frames.append(b.to_bytes()); prev = b.hash
best = []
for _ in range(5):
    st = state_m.State()
    t0 = time.perf_counter()
    for f in frames:
        st.receive(batches.verify_batch(f))
    best.append(20_000 / (time.perf_counter() - t0))
best.sort(); out["verify_apply"] = best[len(best) // 2]
config = mod("hashmesh.node.config"); service_m = mod("hashmesh.node.service")
svc = service_m.NodeService(config.Home(HOME))
rng = random.Random(7)
nb = (SIGNALS + BATCH - 1) // BATCH
hits = [f"{rng.randint(1, nb):08x}{rng.randrange(BATCH):024x}" for _ in range(50_000)]
svc.match([{"type": "md5", "value": hits[0]}])
t0 = time.perf_counter()
for s in range(0, len(hits), 1000):
    r = svc.match([{"type": "md5", "value": v} for v in hits[s:s + 1000]])
    assert all(x["matches"] for x in r["results"])
out["match"] = len(hits) / (time.perf_counter() - t0)
svc.close()
print(json.dumps(out))
"""


def build_bundle(path: Path, signals: int) -> str:
    """store.py's bundle (N md5 adds in batches of BATCH), signed by a fixed key; its id."""
    from hashmesh.protocol import SigningKey

    key = SigningKey(bytes([7]) * 32)
    store_bench.build_bundle(path, key, signals)
    return key.node_id


def run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[:3]}...: {proc.stderr[-2000:]}")
    return proc.stdout


def one_round(tree: Tree, work: Path, bundle: Path, author: str, signals: int) -> dict[str, float]:
    home = work / "home"
    run(tree.cli(["init", str(home), "--name", "bench"]))
    run(tree.cli(["--home", str(home), "trust", "add", author, COLLECTION, "--name", "author"]))
    started = time.perf_counter()
    run(tree.cli(["--home", str(home), "import", str(bundle), "--json"]))
    got = {"import": signals / (time.perf_counter() - started)}
    names = {name: tree.module_name(name) for name in _NAMES}
    code = (
        f"TREE = {str(tree.path)!r}\nHOME = {str(home)!r}\nNAMES = {names!r}\n"
        f"SIGNALS = {signals}\nBATCH = {BATCH}\n" + CHILD
    )
    got.update(json.loads(run([sys.executable, "-c", code]).strip().splitlines()[-1]))
    got["feed"] = feed_rate(tree, home, signals)
    return got


def feed_rate(tree: Tree, home: Path, signals: int) -> float:
    """Changes a second a subscriber reads from the tree's running node, paging the feed."""
    config = (home / "config.toml").read_text()
    (home / "config.toml").write_text(config.replace("127.0.0.1:7400", "127.0.0.1:0"))
    with open(home.parent / "node.log", "wb") as log:
        proc = subprocess.Popen(tree.cli(["--home", str(home), "run"]), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 120
        api = ""
        while not api:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{tree.rev}: node did not start: {home.parent / 'node.log'}")
            try:
                runtime = json.loads((home / "node.json").read_text())
                if runtime.get("pid") == proc.pid:
                    api = str(runtime["api"])
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        host, port = api.removeprefix("http://").rsplit(":", 1)
        token = (home / "admin.token").read_text().strip()
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        headers = {"Authorization": f"Bearer {token}"}
        after, total = 0, 0
        started = time.perf_counter()
        while True:
            conn.request("GET", f"/v1/feed?after={after}&limit=10000", headers=headers)
            response = conn.getresponse()
            data = json.loads(response.read())
            if response.status != 200:
                raise SystemExit(f"{tree.rev}: feed answered {response.status}: {data}")
            total += len(data["entries"])
            after = data["next"]
            if not data["more"]:
                break
        elapsed = time.perf_counter() - started
        conn.close()
        if total != signals:
            raise SystemExit(f"{tree.rev}: feed had {total} changes, expected {signals}")
        return total / elapsed
    finally:
        proc.terminate()
        proc.wait(timeout=60)


_NAMES = (
    "hashmesh.protocol.batches",
    "hashmesh.protocol.state",
    "hashmesh.protocol.ops",
    "hashmesh.protocol.signing",
    "hashmesh.node.runtime",
    "hashmesh.node.config",
    "hashmesh.node.service",
)
LABELS = {
    "import": "bundle import, signals/s",
    "verify_apply": "verify+apply (State), ops/s",
    "match": "exact match, 1,000 queries a call, queries/s",
    "feed": "feed paging from the running node, changes/s",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--old", default=OLD)
    parser.add_argument("--signals", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hm-rev-") as tmp:
        base = Path(tmp)
        trees = {"old": Tree.archive(args.old, base / "old"), "new": Tree(ROOT, "working tree")}
        bundle = base / "bundle.hmb"
        author = build_bundle(bundle, args.signals)
        results: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
        loads = [load_text()]
        for r in range(args.rounds):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for which in order:
                work = base / f"{which}-{r}"
                work.mkdir()
                results[which].append(one_round(trees[which], work, bundle, author, args.signals))
                print(f"round {r + 1} {which}: {results[which][-1]}", flush=True)
            loads.append(load_text())
    lines = [
        HEADING,
        "",
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, {machine(sqlite=True)}.",
        f"Old: {trees['old'].rev} (before the `hashmesh` package); new: the working tree.",
        f"{args.rounds} rounds, alternating which tree goes first; medians. Import of"
        f" {args.signals:,} md5 adds. Load averages during the run: {'; '.join(loads)}.",
        "",
        "| measure | old | new | new/old |",
        "| --- | ---: | ---: | ---: |",
    ]
    for key, label in LABELS.items():
        old = statistics.median(x[key] for x in results["old"])
        new = statistics.median(x[key] for x in results["new"])
        lines.append(f"| {label} | {old:,.0f} | {new:,.0f} | {new / old:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        replace_section(HEADING, text)


if __name__ == "__main__":
    main()
