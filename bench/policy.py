"""Match throughput with match policy on against off, side by side in one run (issue 19).

One node home (real SQLite, real PDQ index) holds `--signals` PDQ adds and as many MD5 adds
in csam, plus a negative collection of 1,000 of each. The same requests (100 queries each:
half PDQ near stored hashes, half MD5 of stored signals) are answered by Matcher.answer
through the read-only StoreReader the node matches with (queries per CPU second of this
process, so other work on a shared machine disturbs it less), alternating rounds with no
policy and with policy on (benign negative with a radius, csam quorum 2, minimum quality,
suspend after disputes, spike knobs), so both see the same cache and machine state.

    .venv/bin/python bench/policy.py                      # 100k + 100k signals
    .venv/bin/python bench/policy.py --signals 20000 --rounds 5
    .venv/bin/python bench/policy.py --quorum-by org   # the quorum counts organisations

Each answer is also counted for the quarantine as a matcher worker or replica counts it
(matching/quarantine.py MatchCounter, both modes: with no spike rule it costs a lookup),
and the counts are drained into one report a round, as a worker reports once a second.
The last line pairs each policy-on round with the policy-off round before it: the median
of those ratios moves less with the machine's load than the ratio of the medians.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchenv import machine  # noqa: E402

from hashmesh.node.config import Home  # noqa: E402
from hashmesh.node.matching.matcher import Matcher  # noqa: E402
from hashmesh.node.matching.policy import parse_policy, policy_set  # noqa: E402
from hashmesh.node.matching.quarantine import MatchCounter, spiky  # noqa: E402
from hashmesh.node.service import NodeService, init_home  # noqa: E402
from hashmesh.node.store.core import StoreReader, now_ms  # noqa: E402
from hashmesh.protocol.ops import AddOp  # noqa: E402


def pdq_values(rng: random.Random, count: int) -> list[str]:
    out = []
    while len(out) < count:
        bits = rng.getrandbits(256)
        if 112 <= bits.bit_count() <= 144:
            out.append(f"{bits:064x}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=40, help="requests per round")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per mode, alternated")
    parser.add_argument(
        "--crowd", type=int, default=1, help="near-identical copies of each PDQ (hits a query)"
    )
    parser.add_argument(
        "--quorum-by",
        choices=("node", "org", "country"),
        default="node",
        help="what csam's quorum counts (org, country: every author labelled)",
    )
    args = parser.parse_args()
    rng = random.Random(19)
    with tempfile.TemporaryDirectory() as tmp:
        init_home(Path(tmp) / "h", "bench", None, None)
        home = Home(Path(tmp) / "h")
        service = NodeService(home)
        centres = pdq_values(rng, args.signals // args.crowd)
        pdqs = [f"{int(c, 16) ^ (n << 3):064x}" for c in centres for n in range(args.crowd)]
        md5s = [f"{rng.getrandbits(128):032x}" for _ in range(args.signals)]
        started = time.monotonic()
        for name, values, kind in (("csam", pdqs, "pdq"), ("csam", md5s, "md5")):
            ops = [
                AddOp.create(kind, v, category="csam", quality=90 if kind == "pdq" else None)
                for v in values
            ]
            service.publish(name, ops)
        benign = [AddOp.create("pdq", v, category="benign", quality=90) for v in pdqs[:1000]]
        benign += [AddOp.create("md5", v, category="benign") for v in md5s[:1000]]
        service.publish("benign", benign)
        print(f"published {2 * args.signals + 2000} signals in {time.monotonic() - started:.1f} s")
        matcher = Matcher(service.store)
        matcher.attach(service.store)
        reader = StoreReader(home.db_path)

        def near(value: str) -> str:
            return f"{int(value, 16) ^ rng.getrandbits(6):064x}"

        requests = []
        for _ in range(args.requests):
            queries = [{"type": "pdq", "value": near(rng.choice(pdqs))} for _ in range(50)]
            queries += [{"type": "md5", "value": rng.choice(md5s)} for _ in range(50)]
            requests.append(queries)
        policies = [
            parse_policy("benign", {"negative": True, "threshold": 8}),
            parse_policy(
                "csam",
                {
                    "quorum": 2,
                    "min_quality": 50,
                    "suspend_after_disputes": 2,
                    "spike_factor": 10,
                    "quorum_by": args.quorum_by,
                },
            ),
        ]
        labels = {(service.node_id, "csam"): ("bench-org", "BE")}
        counter = MatchCounter()

        def set_policy(on: bool) -> None:
            for policy in policies:
                if on:
                    service.store.policies.put(policy.row(now_ms()))
                else:
                    service.store.policies.delete(policy.collection)

        def round_qps() -> float:
            t0 = time.process_time()  # CPU time: other work on the machine counts less
            for queries in requests:
                answer = matcher.answer(queries, 31, None, lambda a: "", reader, labels)
                assert len(answer["results"]) == 100
                counter.count(answer, spiky(policy_set(reader.policy_rows())))
            counter.drain()  # one report a round (0.3-1.5 s), as workers send one a second
            return len(requests) * 100 / (time.process_time() - t0)

        results: dict[bool, list[float]] = {False: [], True: []}
        set_policy(False)
        round_qps()  # warm the caches once
        for n in range(args.rounds * 2):
            on = n % 2 == 1
            set_policy(on)
            results[on].append(round_qps())
        off, on_ = statistics.median(results[False]), statistics.median(results[True])
        best_off, best_on = max(results[False]), max(results[True])
        print(machine(sqlite=True))
        print(
            f"signals: {len(pdqs)} pdq ({args.crowd} near-identical copies each) +"
            f" {args.signals} md5 in csam, 2,000 in benign"
        )
        print(f"policy off: {off:,.0f} queries/s (median of {args.rounds} rounds)")
        print(f"policy on:  {on_:,.0f} queries/s ({(on_ / off - 1) * 100:+.1f} %)")
        print(
            f"best round: off {best_off:,.0f}, on {best_on:,.0f} queries/s"
            f" ({(best_on / best_off - 1) * 100:+.1f} %; the least disturbed by other load)"
        )
        # Each on round against the off round just before it: load that shifts during a
        # run moves both of a pair alike, so their ratio varies less than the medians do.
        paired = sorted(b / a for a, b in zip(results[False], results[True], strict=True))
        print(
            f"paired rounds: on/off {(statistics.median(paired) - 1) * 100:+.1f} % median"
            f" ({(paired[0] - 1) * 100:+.1f} to {(paired[-1] - 1) * 100:+.1f} %)"
        )
        service.close()


if __name__ == "__main__":
    main()
