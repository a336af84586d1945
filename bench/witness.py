"""Cost of membership resolution and split-view detection (issue 22), printed as a table.

    .venv/bin/python bench/witness.py [--logs 100,1000,10000] [--witnesses 3] [--repeat 5]

Pure parts (protocol/membership.py, protocol/witness.py): resolving the membership in force
from a chain of documents, and finding split views among witnesses x logs cosigns (one log
in a hundred shown two ways). Node part (node/witness.py, a real store in a temporary
home): the first cosigning tick over N logs held (sign + store every cosign) and an idle
tick after it. Medians of --repeat runs; the machine is shared, so compare within a run.

    .venv/bin/python bench/witness.py --gate 32x1000 [--gate-only]

Admission of cosigns through the statement book (node/statements.py and, where the code
has it, the cosign gate of node/witness.py): W witnesses, all configured peers, each
cosigning every one of L logs held, pushed in pages of 200 (signing not timed); then a
page of 200 from unknown witnesses. Prints the time per page, what was stored and
refused, and the process's resident memory growth (with the witness's in-memory view of
the cosigns, which a running node builds at its first tick). Run it against an old checkout
(PYTHONPATH=that checkout) beside the new one to compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.membership import Anchor, Document, draft, resolve
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import sign_statement
from hashmesh.protocol.witness import cosign_body, split_views


def median_s(call: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def key(n: int) -> SigningKey:
    return SigningKey(n.to_bytes(4, "big") + bytes(28))


def resolve_row(versions: int, repeat: int) -> tuple[str, float]:
    stewards = [key(900_000 + i) for i in range(3)]
    members = [key(i).node_id for i in range(1, 257)]
    anchor = Anchor("csam", frozenset(s.node_id for s in stewards), 2)
    docs, prev = [], None
    for v in range(1, versions + 1):
        body = draft(
            "csam", v, [s.node_id for s in stewards], 2, members[:128], members[128:], prev, v
        )
        statement = sign_statement(body, stewards[:2], REGISTRY)
        docs.append(Document.of(statement))
        prev = statement.id
    return f"resolve, {versions} versions of 128+128 members", median_s(
        lambda: resolve(anchor, docs), repeat
    )


def split_row(logs: int, witnesses: int, repeat: int) -> tuple[str, float]:
    ws = [key(800_000 + i).node_id for i in range(witnesses)]
    authors = [key(1000 + i).node_id for i in range(logs)]
    bodies = []
    for n, author in enumerate(authors):
        for w, witness in enumerate(ws):
            head = ("b" if n % 100 == 0 and w == 0 else "a") * 64
            bodies.append(cosign_body(witness, author, "csam", 5, head, 1))
    found = split_views(bodies, lambda *_: None, "me")
    assert len(found) == (logs + 99) // 100
    return (
        f"split_views, {logs:,} logs x {witnesses} witnesses ({len(bodies):,} cosigns)",
        median_s(lambda: split_views(bodies, lambda *_: None, "me"), repeat),
    )


def node_rows(logs: int) -> list[tuple[str, float]]:
    from hashmesh.node.config import Home
    from hashmesh.node.service import NodeService, init_home
    from hashmesh.protocol.batches import build_batch

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "node"
        init_home(str(home), "bench", None, None)
        service = NodeService(Home(home))
        try:
            for n in range(logs):
                author = key(1000 + n)
                op = {"op": "add", "type": "md5", "value": "%032x" % n, "category": "csam"}
                batch = build_batch(author, "csam", 1, None, 1_700_000_000_000, [op])
                service.store.ingest(batch, source="bench")
            start = time.perf_counter()
            signed, ticks, now = 0, 0, 1_700_000_100.0
            while (n := service.witness_tick(now=now)) > 0:
                signed, ticks, now = signed + n, ticks + 1, now + 1
            first = time.perf_counter() - start
            assert signed == logs, signed
            start = time.perf_counter()
            assert service.witness_tick(now=now + 1) == 0
            idle = time.perf_counter() - start
        finally:
            service.close()
    return [
        (f"cosign all of {logs:,} logs held ({ticks} ticks of <= 500)", first),
        (f"idle cosign tick, {logs:,} logs held", idle),
    ]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def gate_rows(witnesses: int, logs: int) -> list[tuple[str, str, float]]:
    from hashmesh.node.config import Home
    from hashmesh.node.service import NodeService, init_home
    from hashmesh.protocol.batches import build_batch

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "node"
        init_home(str(home), "bench", None, None)
        service = NodeService(Home(home))
        try:
            heads = []
            with service.store.bulk("bench"):
                for n in range(logs):
                    author = key(1000 + n)
                    op = {"op": "add", "type": "md5", "value": "%032x" % n, "category": "csam"}
                    batch = build_batch(author, "csam", 1, None, 1_700_000_000_000, [op])
                    service.store.ingest(batch, source="bench")
                    heads.append((author.node_id, batch.hash.hex()))
            ws = [key(700_000 + i) for i in range(witnesses)]
            for i, w in enumerate(ws):
                service.peer_add(f"w{i}", "http://127.0.0.1:9", w.node_id, ["csam"])
            pages = []
            for w in ws:
                page = []
                for author, head in heads:
                    body = cosign_body(w.node_id, author, "csam", 1, head, 1_700_000_000)
                    page.append(sign_statement(body, [w], REGISTRY))
                    if len(page) == 200:
                        pages.append((w.node_id, page))
                        page = []
                if page:
                    pages.append((w.node_id, page))
            book = service.statements
            before = rss_mib()
            times, stored, refused = [], 0, 0
            for node_id, page in pages:
                start = time.perf_counter()
                done = book.admit(page, f"peer:{node_id}")
                times.append(time.perf_counter() - start)
                stored += len(done.changed)
                refused += len(page) - len(done.changed)
            service.witness.cosigns()  # the view a running node's first tick builds
            grown = rss_mib() - before
            strangers = [
                sign_statement(
                    cosign_body(key(600_000 + i).node_id, heads[0][0], "csam", 1, "c" * 64, 1),
                    [key(600_000 + i)],
                    REGISTRY,
                )
                for i in range(200)
            ]
            start = time.perf_counter()
            done = book.admit(strangers, f"peer:{ws[0].node_id}")
            stranger_s = time.perf_counter() - start
            held = service.store.statements.count("cosign")
        finally:
            service.close()
    n = witnesses * logs
    return [
        (
            f"admit {n:,} cosigns ({witnesses} x {logs:,}), median page of 200",
            "ms",
            statistics.median(times) * 1000,
        ),
        ("  slowest page", "ms", max(times) * 1000),
        (f"  all pages (stored {stored:,}, refused {refused:,})", "s", sum(times)),
        ("  resident memory growth: admits and the witness's view", "MiB", grown),
        (
            f"  then 200 from unknown witnesses ({len(done.changed)} stored)",
            "ms",
            stranger_s * 1000,
        ),
        ("  cosigns held at the end", "rows", float(held)),
    ]


def print_gate(rows: list[tuple[str, str, float]]) -> None:
    width = max(len(r[0]) for r in rows)
    print(f"{'cosign admission':<{width}}  {'value':>10}  unit")
    for name, unit, value in rows:
        print(f"{name:<{width}}  {value:10.2f}  {unit}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logs", default="100,1000,10000")
    parser.add_argument("--witnesses", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--node-logs", default="100,1000")
    parser.add_argument("--gate", default="", help="WxL: W witnesses cosigning L logs")
    parser.add_argument("--gate-only", action="store_true")
    args = parser.parse_args()
    if args.gate:
        w, _, n = args.gate.partition("x")
        print_gate(gate_rows(int(w), int(n)))
        if args.gate_only:
            return
    rows = [resolve_row(v, args.repeat) for v in (1, 8, 64)]
    rows += [split_row(int(n), args.witnesses, args.repeat) for n in args.logs.split(",")]
    for n in args.node_logs.split(","):
        rows += node_rows(int(n))
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  median ms")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds * 1000:9.2f}")


if __name__ == "__main__":
    main()
