"""Cost of the statement caps on a peer's page (node/statements.py), printed as a table.

    .venv/bin/python bench/statement_caps.py [--tree PATH] [--statements 20000] [--page 200]

A real store in a temporary home: N certificates of throw-away keys (signed and verified
before timing) admitted in pages of 200 as a peer's (source peer:x), the way a push or a
fetched page arrives; then the same number again from a second peer into the fuller table.
Prints the median and slowest milliseconds per page. `--tree` runs the code of another
checkout (a git worktree of the commit before the per-peer budget) so old and new are
compared side by side in one run on the same machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--statements", type=int, default=20_000)
    parser.add_argument("--page", type=int, default=200)
    args = parser.parse_args()
    sys.path.insert(0, args.tree)

    from hashmesh.node.config import Home
    from hashmesh.node.service import NodeService, init_home
    from hashmesh.protocol.certificates import CertBody
    from hashmesh.protocol.kinds import REGISTRY
    from hashmesh.protocol.signing import SigningKey
    from hashmesh.protocol.statements import sign_statement

    org = SigningKey(b"\x07" * 32)

    def junk(n: int, start: int) -> list[Any]:
        out = []
        for i in range(start, start + n):
            key = SigningKey(i.to_bytes(32, "big")).node_id
            body = CertBody(ts=1, org=org.node_id, key=key, not_before=0, not_after=2**40)
            out.append(sign_statement(body, [org], REGISTRY).to_json())
        return out

    with tempfile.TemporaryDirectory() as tmp:
        init_home(Path(tmp) / "n", "bench", "127.0.0.1:0", None)
        service = NodeService(Home(Path(tmp) / "n"))
        rows = []
        try:
            for n, source in enumerate(("peer:x", "peer:y")):
                statements = service.statements.verify_objects(
                    junk(args.statements, n * args.statements)
                )
                times = []
                stored = 0
                for at in range(0, len(statements), args.page):
                    page = statements[at : at + args.page]
                    t = time.perf_counter()
                    done = service.statements.admit(page, source)
                    times.append((time.perf_counter() - t) * 1000)
                    stored += done.outcomes.get("new", 0)
                rows.append((source, len(times), statistics.median(times), max(times), stored))
        finally:
            service.close()
    import hashmesh

    where = Path(hashmesh.__file__).parents[1]
    print(f"code {where}: {args.statements} statements per peer, pages of {args.page}")
    print(f"{'source':<8} {'pages':>6} {'median ms':>10} {'max ms':>8} {'stored':>7}")
    for source, pages, median, slowest, stored in rows:
        print(f"{source:<8} {pages:>6} {median:>10.1f} {slowest:>8.1f} {stored:>7}")


if __name__ == "__main__":
    main()
