"""Cost of membership resolution and split-view detection (issue 22), printed as a table.

    .venv/bin/python bench/witness.py [--logs 100,1000,10000] [--witnesses 3] [--repeat 5]

Pure parts (protocol/membership.py, protocol/witness.py): resolving the membership in force
from a chain of documents, and finding split views among witnesses x logs cosigns (one log
in a hundred shown two ways). Node part (node/witness.py, a real store in a temporary
home): the first cosigning tick over N logs held (sign + store every cosign) and an idle
tick after it. Medians of --repeat runs; the machine is shared, so compare within a run.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--logs", default="100,1000,10000")
    parser.add_argument("--witnesses", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--node-logs", default="100,1000")
    args = parser.parse_args()
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
