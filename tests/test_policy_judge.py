"""The match policy's judge against a straightforward reference (issue 19).

`policy.judge` shares rules and verdicts between hits and answers (a plan per policy set
and threshold) and lets a hit with no reason of its own through after a few lookups, so a
policy-on match costs little more than a policy-off one. The reference below reads the
rules off the module docstring, hit by hit, with nothing shared: on random policies, hits,
disputes, quarantines and trust labels the two must give the same verdict and the same
reasons, in the same order, whatever was judged before with the same policy set.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashmesh.node.matching import policy as P
from hashmesh.node.matching.policy import CollectionPolicy, PolicySet, Verdict, judge, policy_set

COLLECTIONS = ("csam", "ncii", "terror", "benign", "memes")
AUTHORS = ("ed25519:a", "ed25519:b", "ed25519:c", "ed25519:d")
UNITS = {"node": "authors", "org": "organisations", "country": "countries"}


def reference(
    policies: dict[str, CollectionPolicy],
    exact: bool,
    hits: Sequence[tuple[dict[str, Any], int]],
    threshold: int,
    readable: Callable[[str], bool],
    disputes: dict[str, int],
    unusable: str | None,
    quarantined: Callable[[str], str | None],
    labels: dict[tuple[str, str], tuple[str, str]],
) -> list[tuple[str, tuple[str, ...]]]:
    """Each hit's verdict and reasons, every rule checked in the documented order."""

    def policy(collection: str) -> CollectionPolicy:
        return policies.get(collection, CollectionPolicy(collection))

    def limit(p: CollectionPolicy) -> int:
        return threshold if p.threshold is None else min(threshold, p.threshold)

    def radius(p: CollectionPolicy) -> int:
        return threshold if p.threshold is None else p.threshold

    def group(author: str, collection: str, by: str) -> tuple[str, str]:
        if by == "node":
            return ("node", author)
        label = labels.get((author, collection), ("", ""))[0 if by == "org" else 1]
        return (by, label) if label else ("node", author)

    out = []
    for row, distance in hits:
        collection = row["collection"]
        p = policy(collection)
        if p.negative:
            out.append(("negative", (f"listed in negative collection {collection}",)))
            continue
        reasons: list[tuple[str, str]] = []
        if unusable is not None:
            reasons.append(
                ("suppressed", f"matched, but the query is not a usable PDQ: {unusable}")
            )
        for other, to_query in hits:
            n = policy(other["collection"])
            if not n.negative or other["type"] != row["type"]:
                continue
            r = radius(n)
            near = int(other["value"], 16) ^ int(row["value"], 16)
            if exact or to_query <= r or near.bit_count() <= r:
                name = other["collection"]
                where = (
                    f"negative collection {name} ({other['op_id']})"
                    if readable(name)
                    else "a negative collection of this node"
                )
                reasons.append(("suppressed", f"matched, but suppressed by {where}"))
                break
        held = quarantined(row["op_id"])
        if held is not None:
            reasons.append(("quarantined", f"quarantined: {held}"))
        if distance > limit(p):
            reasons.append(
                (
                    "beyond_threshold",
                    f"distance {distance} is past {collection}'s threshold {limit(p)}",
                )
            )
        quality = row.get("quality")
        if p.min_quality is not None and quality is not None and quality < p.min_quality:
            reasons.append(
                (
                    "low_quality",
                    f"quality {quality} is below {collection}'s minimum {p.min_quality}",
                )
            )
        count = disputes.get(row["op_id"], 0)
        if p.suspend_after_disputes is not None and count >= p.suspend_after_disputes:
            reasons.append(
                (
                    "suspended",
                    f"suspended: disputed by {count} authors ({collection} suspends at"
                    f" {p.suspend_after_disputes})",
                )
            )
        if p.quorum > 1:
            listing = {
                group(other["author"], collection, p.quorum_by)
                for other, d in hits
                if other["collection"] == collection and d <= limit(p)
            }
            if len(listing) < p.quorum:
                reasons.append(
                    (
                        "below_quorum",
                        f"below quorum: {len(listing)} of {p.quorum} {UNITS[p.quorum_by]}",
                    )
                )
        if p.require_review:
            reasons.append(("review_required", f"{collection} requires review before action"))
        verdict = reasons[0][0] if reasons else "match"
        out.append((verdict, tuple(text for _, text in reasons)))
    return out


def _policy(rng: random.Random, collection: str) -> CollectionPolicy:
    """A random policy `parse_policy` accepts (the node never holds any other)."""
    if rng.random() < 0.25:
        fields: dict[str, Any] = {"negative": True}
        if rng.random() < 0.7:
            fields["threshold"] = rng.randint(0, 31)
        return P.parse_policy(collection, fields)
    fields = {}
    if rng.random() < 0.5:
        fields["threshold"] = rng.randint(0, 31)
    if rng.random() < 0.5:
        fields["min_quality"] = rng.randint(0, 100)
    if rng.random() < 0.5:
        fields["quorum"] = rng.randint(1, 4)
        if fields["quorum"] > 1 and rng.random() < 0.5:
            fields["quorum_by"] = rng.choice(("org", "country"))
    if rng.random() < 0.4:
        fields["suspend_after_disputes"] = rng.randint(1, 3)
    if rng.random() < 0.3:
        fields["require_review"] = True
    if rng.random() < 0.3:
        fields["spike_factor"] = rng.randint(2, 50)
    return P.parse_policy(collection, fields)


def _pdq(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def _near(rng: random.Random, value: str, bits: int) -> str:
    flipped = 0
    for position in rng.sample(range(256), bits):
        flipped |= 1 << position
    return f"{int(value, 16) ^ flipped:064x}"


def _case(seed: int) -> dict[str, Any]:
    """A query's hits and everything judging reads, drawn from `seed`."""
    rng = random.Random(seed)
    chosen = rng.sample(COLLECTIONS, rng.randint(0, len(COLLECTIONS)))
    policies = {c: _policy(rng, c) for c in chosen}
    threshold = rng.randint(0, 31)
    exact = rng.random() < 0.4
    query = _pdq(rng) if not exact else f"{rng.getrandbits(128):032x}"
    hits: list[tuple[dict[str, Any], int]] = []
    for n in range(rng.choice((1, 1, rng.randint(0, 12)))):  # a lone hit takes a path of its own
        collection = rng.choice(COLLECTIONS)
        if exact:
            kind, value, distance = "md5", query, 0
        else:
            distance = rng.randint(0, 31)
            kind, value = "pdq", _near(rng, query, distance)
        if rng.random() < 0.05:  # a row of another type: never suppresses this one
            kind = "sha1" if exact else "md5"
        row = {
            "collection": collection,
            "author": rng.choice(AUTHORS),
            "op_id": f"{rng.choice(AUTHORS)}/{collection}/{rng.randint(1, 3)}/{n}",
            "type": kind,
            "value": value,
            "quality": None if exact or rng.random() < 0.2 else rng.randint(0, 100),
        }
        hits.append((row, distance))
    ops = {row["op_id"] for row, _ in hits}
    labels = {
        (a, c): (rng.choice(("", "org-1", "org-2")), rng.choice(("", "BE", "NL")))
        for a in AUTHORS
        for c in COLLECTIONS
        if rng.random() < 0.6
    }
    visible = {c for c in COLLECTIONS if rng.random() < 0.6}
    return {
        "policies": policies,
        "exact": exact,
        "hits": hits,
        "threshold": threshold,
        "readable": visible.__contains__,
        "disputes": {o: rng.randint(0, 3) for o in ops if rng.random() < 0.5},
        "unusable": "a flat picture" if not exact and rng.random() < 0.1 else None,
        "quarantined": {o: "12 matches in 60 s" for o in ops if rng.random() < 0.15},
        "labels": labels,
    }


def _both(case: dict[str, Any], policies: PolicySet) -> tuple[list[Verdict], list[Any]]:
    """Both judges' verdicts for the hits an answer shows: those within the request's
    threshold (a wider negative radius finds more, which only judge: matcher.assemble)."""
    args = (
        case["exact"],
        case["hits"],
        case["threshold"],
        case["readable"],
        case["disputes"],
        case["unusable"],
        case["quarantined"].get,
        case["labels"],
    )
    shown = [n for n, (_, d) in enumerate(case["hits"]) if d <= case["threshold"]]
    fast = judge(policies, *args)
    slow = reference(case["policies"], *args)
    return [fast[n] for n in shown], [slow[n] for n in shown]


def _same(fast: list[Verdict], slow: list[tuple[str, tuple[str, ...]]]) -> None:
    assert [(v.verdict, v.reasons) for v in fast] == slow
    for verdict, (name, reasons) in zip(fast, slow, strict=True):
        expected: dict[str, Any] = {"verdict": name}
        if reasons:
            expected["reasons"] = list(reasons)
        assert verdict.json() == expected


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32), st.integers(0, 2**32))
def test_the_judge_agrees_with_the_reference_on_random_policies_and_hits(
    seed: int, other: int
) -> None:
    case = _case(seed)
    rows = [p.row(0) for p in case["policies"].values()]
    # policy_set shares one PolicySet (and its cached plans and verdicts) between every
    # case with the same policy rows, as a node shares it between answers.
    policies = policy_set(rows)
    _same(*_both(case, policies))
    # Another query judged by the same set, then the first again: nothing carried over.
    second = _case(other)
    second["policies"] = case["policies"]
    _same(*_both(second, policies))
    _same(*_both(case, policies))


def test_every_verdict_of_the_module_is_reached_by_the_cases() -> None:
    """The random cases reach every verdict, so the agreement above covers each rule."""
    seen: set[str] = set()
    for seed in range(3000):
        case = _case(seed)
        fast, _ = _both(case, PolicySet(case["policies"].values()))
        seen.update(v.verdict for v in fast)
    assert seen == set(P.VERDICTS)


def test_the_shared_verdicts_stay_bounded() -> None:
    """Reasons naming distances, qualities and op ids are many: the plan keeps at most
    MAX_VERDICTS of them, and still answers right after starting again."""
    policies = PolicySet([P.parse_policy("csam", {"min_quality": 100})])
    plan = policies.plan(31)
    for n in range(plan.MAX_VERDICTS * 2 + 5):
        row = {
            "collection": "csam",
            "author": AUTHORS[0],
            "op_id": f"{AUTHORS[0]}/csam/1/{n}",
            "type": "md5",
            "value": f"{n:032x}",
            "quality": None,
        }
        held = {row["op_id"]: f"{n} matches in 60 s"}
        (verdict,) = judge(policies, True, [(row, 0)], 31, bool, {}, None, held.get)
        assert verdict.reasons == (f"quarantined: {n} matches in 60 s",)
        assert len(plan.verdicts) <= plan.MAX_VERDICTS
