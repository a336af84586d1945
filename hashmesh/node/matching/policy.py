"""Per-collection match policy: what this node lets through as a match, and why not.

Policy is local: each node decides for itself how to read the lists it holds (signed logs
and opinions travel; thresholds, quorum, suspensions and review flags never do). It is
judged after the lookup, over the hits the lookup found, so the same answer code serves
the node, its matcher workers and replicas: whoever answers passes the rows of its store's
match_policy table (store/policies.py), and this module turns them into a verdict per hit.

Verdicts, in the order they are decided (the first that applies; `reasons` lists every
one that applies, so a reviewer sees all of them):

- ``negative``: the hit is in a negative (allowlist) collection; it never matches.
- ``suppressed``: a negative collection lists the query's signal (PDQ: within that
  collection's distance of the query or of the hit), or the query is a PDQ that
  describes no picture (a flat colour: hashing/degenerate.py). The last holds with no
  policy set: publishing refuses such hashes, and this stops one that another
  implementation signed and a peer relayed from matching every blank upload.
- ``quarantined``: this node suspended the signal on a match spike (matching/
  quarantine.py) until an operator lifts it.
- ``beyond_threshold``: PDQ distance past the hit collection's own threshold.
- ``low_quality``: the hit's stated PDQ quality is under the collection's minimum.
- ``suspended``: disputed by at least N authors (suspend-after-disputes).
- ``below_quorum``: fewer independent authors list the signal in the collection than it
  requires ("below quorum: 1 of 2 authors"); with `quorum_by` org or country, authors
  are grouped by the label their trust entry gives them ("1 of 2 organisations"), and an
  author without one counts as an organisation (a country) of its own.
- ``review_required``: the collection requires review: shown, never a match.
- ``match``: policy lets it through.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any

from hashmesh.node.errors import NodeError

MAX_POLICY_THRESHOLD = 31  # PDQ's recommended distance; matcher.MAX_THRESHOLD is the same
MAX_QUALITY = 100
MAX_QUORUM = 16
MAX_DISPUTES = 1000
MAX_POLICIES = 10_000  # rows a replica accepts from a node's state
MAX_SPIKE_CAP = 1_000_000
MAX_SPIKE_FACTOR = 1000
QUORUM_BY = ("node", "org", "country")
_QUORUM_UNITS = {"node": "authors", "org": "organisations", "country": "countries"}

MATCH = "match"
NEGATIVE = "negative"
SUPPRESSED = "suppressed"
QUARANTINED = "quarantined"
BEYOND_THRESHOLD = "beyond_threshold"
LOW_QUALITY = "low_quality"
SUSPENDED = "suspended"
BELOW_QUORUM = "below_quorum"
REVIEW_REQUIRED = "review_required"
VERDICTS = (
    NEGATIVE,
    SUPPRESSED,
    QUARANTINED,
    BEYOND_THRESHOLD,
    LOW_QUALITY,
    SUSPENDED,
    BELOW_QUORUM,
    REVIEW_REQUIRED,
    MATCH,
)


@dataclass(frozen=True)
class CollectionPolicy:
    """One collection's policy; the defaults let every hit through, as before policy."""

    collection: str
    negative: bool = False
    threshold: int | None = None
    min_quality: int | None = None
    quorum: int = 1
    suspend_after_disputes: int | None = None
    require_review: bool = False
    spike_cap: int | None = None
    spike_factor: int | None = None
    quorum_by: str = "node"
    dispute_on_spike: bool = False

    @property
    def is_default(self) -> bool:
        return self == CollectionPolicy(self.collection)

    @cached_property
    def is_plain(self) -> bool:
        """No knob that can hold one of its hits back (spike knobs act by quarantine)."""
        return (
            not self.negative
            and self.threshold is None
            and self.min_quality is None
            and self.quorum == 1
            and self.suspend_after_disputes is None
            and not self.require_review
        )

    def json(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "negative": self.negative,
            "threshold": self.threshold,
            "min_quality": self.min_quality,
            "quorum": self.quorum,
            "suspend_after_disputes": self.suspend_after_disputes,
            "require_review": self.require_review,
            "spike_cap": self.spike_cap,
            "spike_factor": self.spike_factor,
            "quorum_by": self.quorum_by,
            "dispute_on_spike": self.dispute_on_spike,
        }

    def row(self, at: int) -> tuple[Any, ...]:
        """As store/policies.py keeps it (its column order), changed at `at` (ms)."""
        return (
            self.collection,
            int(self.negative),
            self.threshold,
            self.min_quality,
            self.quorum,
            self.suspend_after_disputes,
            int(self.require_review),
            at,
            self.spike_cap,
            self.spike_factor,
            None if self.quorum_by == "node" else self.quorum_by,
            int(self.dispute_on_spike),
        )


def from_row(row: Sequence[Any]) -> CollectionPolicy:
    return CollectionPolicy(
        collection=str(row[0]),
        negative=bool(row[1]),
        threshold=row[2],
        min_quality=row[3],
        quorum=int(row[4]),
        suspend_after_disputes=row[5],
        require_review=bool(row[6]),
        spike_cap=row[8] if len(row) > 8 else None,
        spike_factor=row[9] if len(row) > 9 else None,
        quorum_by=str(row[10] or "node") if len(row) > 10 else "node",
        dispute_on_spike=bool(row[11]) if len(row) > 11 else False,
    )


def _bounded(fields: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if type(value) is not int or not low <= value <= high:
        raise NodeError(f"{name}: must be an integer {low}-{high}, got {str(value)[:20]!r}")
    return value


def _flag(fields: dict[str, Any], name: str) -> bool:
    value = fields.get(name, False)
    if not isinstance(value, bool):
        raise NodeError(f"{name}: must be true or false")
    return value


FIELDS = (
    "negative",
    "threshold",
    "min_quality",
    "quorum",
    "suspend_after_disputes",
    "require_review",
    "spike_cap",
    "spike_factor",
    "quorum_by",
    "dispute_on_spike",
)


def parse_policy(collection: str, fields: dict[str, Any]) -> CollectionPolicy:
    """A policy from caller (or node) values, each bounded, naming the field it refuses.

    A negative collection never matches, so only its distance (`threshold`: how near a
    query or a hit must be to one of its PDQs to be suppressed) means anything; the
    other knobs are refused for it rather than kept and silently ignored."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise NodeError(f"{sorted(unknown)[0]}: unknown policy field")
    quorum = _bounded(fields, "quorum", 1, MAX_QUORUM)
    quorum_by = fields.get("quorum_by", "node")
    if quorum_by not in QUORUM_BY:
        raise NodeError(
            f"quorum_by: must be one of {', '.join(QUORUM_BY)}, got {str(quorum_by)[:20]!r}"
        )
    policy = CollectionPolicy(
        collection=collection,
        negative=_flag(fields, "negative"),
        threshold=_bounded(fields, "threshold", 0, MAX_POLICY_THRESHOLD),
        min_quality=_bounded(fields, "min_quality", 0, MAX_QUALITY),
        quorum=1 if quorum is None else quorum,
        suspend_after_disputes=_bounded(fields, "suspend_after_disputes", 1, MAX_DISPUTES),
        require_review=_flag(fields, "require_review"),
        spike_cap=_bounded(fields, "spike_cap", 1, MAX_SPIKE_CAP),
        spike_factor=_bounded(fields, "spike_factor", 2, MAX_SPIKE_FACTOR),
        quorum_by=quorum_by,
        dispute_on_spike=_flag(fields, "dispute_on_spike"),
    )
    if policy.quorum_by != "node" and policy.quorum < 2:
        raise NodeError("quorum_by: counts a quorum, so it needs a quorum of 2 or more")
    if policy.dispute_on_spike and policy.spike_cap is None and policy.spike_factor is None:
        raise NodeError("dispute_on_spike: needs a spike_cap or spike_factor to quarantine by")
    if policy.negative:
        for name in ("min_quality", "suspend_after_disputes", "spike_cap", "spike_factor"):
            if getattr(policy, name) is not None:
                raise NodeError(f"{name}: a negative collection never matches, so it has no {name}")
        if policy.quorum != 1:
            raise NodeError("quorum: a negative collection never matches, so it has no quorum")
        if policy.require_review:
            raise NodeError("require_review: a negative collection never matches")
    return policy


def pdq_distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reasons: tuple[str, ...] = ()

    def json(self) -> dict[str, Any]:
        """The answer's fields, built once per verdict (a crowded answer shares a few)."""
        return self._json

    @cached_property
    def _json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict": self.verdict}
        if self.reasons:
            out["reasons"] = list(self.reasons)
        return out


LET_THROUGH = Verdict(MATCH)

#: (author, collection): (org, country) from that author's trust entry ("" when unset).
TrustLabels = Mapping[tuple[str, str], tuple[str, str]]
NO_LABELS: TrustLabels = {}


def quorum_members(
    authors: Iterable[str], collection: str, by: str, labels: TrustLabels
) -> set[tuple[str, str]]:
    """What a quorum counts: node ids, or the org or country of each author's trust entry
    in `collection`; an author without that label is a group of its own, so leaving a
    label out never lets two authors pass as one, nor one as two."""
    if by == "node":
        return {("node", a) for a in authors}
    at = 0 if by == "org" else 1
    out = set()
    for author in authors:
        label = labels.get((author, collection), ("", ""))[at]
        out.add((by, label) if label else ("node", author))
    return out


class PolicySet:
    """Every collection's policy, as one answer judges by.

    A set is built once per distinct policy table (`policy_set`) and keeps what judging
    needs worked out ahead (`plan`: each collection's rule at a request's threshold, the
    verdicts it gives), so a match pays for lookups, not for formatting and allocating the
    same verdicts again: with the judging done per hit, that was a quarter of a policy-on
    match (docs/benchmarks.md). Matching threads share a set: what its caches hold is the
    same whoever builds it first, so a race only builds it twice."""

    def __init__(self, policies: Iterable[CollectionPolicy]) -> None:
        self.by_collection = {p.collection: p for p in policies if not p.is_default}
        self.negatives = {c: p for c, p in self.by_collection.items() if p.negative}
        self.active = bool(self.by_collection)
        #: The collections whose policy can quarantine: only their hits are worth counting.
        self.spiky = frozenset(
            c for c, p in self.by_collection.items() if p.spike_cap or p.spike_factor
        )
        self._defaults: dict[str, CollectionPolicy] = {}
        self._plans: dict[int, _Plan] = {}

    def of(self, collection: str) -> CollectionPolicy:
        policy = self.by_collection.get(collection)
        if policy is None:
            policy = self._defaults.get(collection)
            if policy is None:
                policy = self._defaults[collection] = CollectionPolicy(collection)
        return policy

    def lookup_threshold(self, threshold: int) -> int:
        """How far the PDQ lookup must reach: the request's distance, or a negative
        collection's when that is wider (a benign picture suppresses from its own radius)."""
        radii = [p.threshold for p in self.negatives.values() if p.threshold is not None]
        return max([threshold, *radii])

    def visible(self, readable: Callable[[str], bool]) -> list[CollectionPolicy]:
        return [p for c, p in sorted(self.by_collection.items()) if readable(c)]

    def plan(self, threshold: int) -> _Plan:
        """The rules for a request at `threshold` (0-31, so at most 32 plans a set)."""
        plan = self._plans.get(threshold)
        if plan is None:
            plan = self._plans[threshold] = _Plan(self, threshold)
        return plan


class _Rule:
    """One collection's policy at one request threshold, and the verdicts that depend on
    the collection alone (quorum, review), each built once and then shared."""

    __slots__ = (
        "alone",
        "collection",
        "disputes",
        "fixed",
        "limit",
        "listed",
        "min_quality",
        "negative",
        "plain",
        "quorum",
        "quorum_by",
        "radius",
        "review",
    )

    def __init__(self, policy: CollectionPolicy, threshold: int) -> None:
        self.collection = policy.collection
        self.negative = policy.negative
        self.plain = policy.is_plain
        self.limit = _limit(policy, threshold)
        self.radius = threshold if policy.threshold is None else policy.threshold
        self.min_quality = policy.min_quality
        self.disputes = policy.suspend_after_disputes
        self.quorum = policy.quorum
        self.quorum_by = policy.quorum_by
        self.listed = Verdict(NEGATIVE, (f"listed in negative collection {policy.collection}",))
        self.review = (
            ((REVIEW_REQUIRED, f"{policy.collection} requires review before action"),)
            if policy.require_review
            else ()
        )
        #: quorum members counted (capped at the quorum): the fixed reasons and verdict
        self.fixed: dict[int, tuple[tuple[tuple[str, str], ...], Verdict]] = {}
        #: the verdict of a query's only hit, within the limit: one author, one group
        self.alone = self.verdict_for({""}, NO_LABELS)[1]

    def verdict_for(
        self, members: set[str] | None, labels: TrustLabels
    ) -> tuple[tuple[tuple[str, str], ...], Verdict]:
        """The reasons and verdict of a hit with no reason of its own, given the authors
        listing the signal within this collection's limit."""
        have = 0
        if self.quorum > 1 and members:
            by = self.quorum_by
            have = (
                len(members)
                if by == "node"
                else len(quorum_members(members, self.collection, by, labels))
            )
        have = min(have, self.quorum)
        fixed = self.fixed.get(have)
        if fixed is None:
            reasons: tuple[tuple[str, str], ...] = ()
            if self.quorum > 1 and have < self.quorum:
                units = _QUORUM_UNITS[self.quorum_by]
                reasons = ((BELOW_QUORUM, f"below quorum: {have} of {self.quorum} {units}"),)
            reasons += self.review
            verdict = LET_THROUGH
            if reasons:
                verdict = Verdict(reasons[0][0], tuple(t for _, t in reasons))
            fixed = self.fixed[have] = (reasons, verdict)
        return fixed


class _Plan:
    """Each collection's `_Rule` at one threshold, and the verdicts of hits with reasons of
    their own (distance, quality, disputes, suppression), shared while the set lives."""

    MAX_VERDICTS = 4096  # distinct reason lists kept; past it the cache starts again

    def __init__(self, policies: PolicySet, threshold: int) -> None:
        self.rules = {c: _Rule(p, threshold) for c, p in policies.by_collection.items()}
        self.plain = _Rule(CollectionPolicy(""), threshold)  # every other collection
        self.verdicts: dict[tuple[str, ...], Verdict] = {}

    def verdict(self, reasons: list[tuple[str, str]]) -> Verdict:
        key = tuple(text for _, text in reasons)
        verdict = self.verdicts.get(key)
        if verdict is None:
            if len(self.verdicts) >= self.MAX_VERDICTS:
                self.verdicts = {}
            verdict = self.verdicts[key] = Verdict(reasons[0][0], key)
        return verdict


EMPTY = PolicySet(())


@lru_cache(maxsize=16)
def _from_rows(rows: tuple[tuple[Any, ...], ...]) -> PolicySet:
    return PolicySet(from_row(r) for r in rows)


def policy_set(rows: Iterable[Sequence[Any]]) -> PolicySet:
    """The set for a table's rows, parsed once per distinct content (read every match)."""
    key = tuple(tuple(r) for r in rows)
    return _from_rows(key) if key else EMPTY


def _never(_op_id: str) -> str | None:
    return None


def judge(
    policies: PolicySet,
    exact: bool,
    hits: Sequence[tuple[dict[str, Any], int]],
    threshold: int,
    readable: Callable[[str], bool],
    disputes: Mapping[str, int],
    unusable: str | None = None,
    quarantined: Callable[[str], str | None] = _never,
    labels: TrustLabels = NO_LABELS,
) -> list[Verdict]:
    """A verdict for each (row, distance) hit of one query, in order.

    `hits` are the query's live hits in every collection, readable or not: a negative
    collection suppresses for every caller, but only one who may read it is told its name.
    Quorum counts the distinct authors (node ids) among the query's hits in the hit's
    collection within its threshold: for an exact type the same value, for PDQ the same
    neighbourhood of the query. `disputes[op_id]` counts the distinct authors disputing
    it that the caller may see (absent: none; worked out once an answer, not per hit).
    `unusable` says why the query itself cannot match (a PDQ that describes no picture,
    hashing/degenerate.py): then no hit of it is a match.
    `quarantined(op_id)` is the reason a signal is under quarantine here, or None.
    `labels` groups authors for a quorum counted by org or country (`quorum_members`).

    Verdicts come from the set's plan (`PolicySet.plan`), shared between hits and
    answers: a hit with no reason of its own costs a few lookups."""
    plan = policies._plans.get(threshold) or policies.plan(threshold)
    rule_of = plan.rules.get
    everyone = plan.plain
    if len(hits) == 1 and unusable is None:  # most queries: the hit is its own quorum
        row, distance = hits[0]
        rule = rule_of(row["collection"], everyone)
        if rule.negative:
            return [rule.listed]
        op_id = row["op_id"]
        if quarantined(op_id) is None:
            if rule.plain:
                return [LET_THROUGH]
            least = rule.min_quality
            suspend_at = rule.disputes
            if (
                distance <= rule.limit
                and (least is None or (quality := row.get("quality")) is None or quality >= least)
                and (suspend_at is None or disputes.get(op_id, 0) < suspend_at)
            ):
                return [rule.alone]
    negatives: list[tuple[dict[str, Any], int, int]] = []  # row, radius, distance to query
    members: dict[_Rule, set[str]] = {}
    rules = []
    for row, distance in hits:
        rule = rule_of(row["collection"], everyone)
        rules.append(rule)
        if rule.negative:
            negatives.append((row, rule.radius, distance))
        elif rule.quorum > 1 and distance <= rule.limit:
            group = members.get(rule)
            if group is None:
                members[rule] = {row["author"]}
            else:
                group.add(row["author"])
    clean = unusable is None and not negatives  # nothing held back for the query itself
    out: list[Verdict] = []
    last: _Rule | None = None  # hits of one collection come in runs: its verdict at hand
    known = LET_THROUGH
    for (row, distance), rule in zip(hits, rules, strict=True):
        if rule.negative:
            out.append(rule.listed)
            continue
        op_id = row["op_id"]
        held = quarantined(op_id)
        if clean and held is None:
            if rule.plain:
                out.append(LET_THROUGH)
                continue
            least = rule.min_quality
            suspend_at = rule.disputes
            if (
                distance <= rule.limit
                and (least is None or (quality := row.get("quality")) is None or quality >= least)
                and (suspend_at is None or disputes.get(op_id, 0) < suspend_at)
            ):
                if rule is not last:
                    last, known = rule, rule.verdict_for(members.get(rule), labels)[1]
                out.append(known)
                continue
        out.append(
            _held_back(
                plan,
                rule,
                row,
                distance,
                exact,
                negatives,
                unusable,
                held,
                readable,
                disputes,
                members.get(rule),
                labels,
            )
        )
    return out


def _held_back(
    plan: _Plan,
    rule: _Rule,
    row: dict[str, Any],
    distance: int,
    exact: bool,
    negatives: list[tuple[dict[str, Any], int, int]],
    unusable: str | None,
    held: str | None,
    readable: Callable[[str], bool],
    disputes: Mapping[str, int],
    members: set[str] | None,
    labels: TrustLabels,
) -> Verdict:
    """The verdict of a hit with a reason of its own (`judge` let the others through)."""
    reasons: list[tuple[str, str]] = []
    hold = reasons.append
    collection = row["collection"]
    if unusable is not None:
        hold((SUPPRESSED, f"matched, but the query is not a usable PDQ: {unusable}"))
    for benign, radius, to_query in negatives:
        if benign["type"] != row["type"]:
            continue
        if exact or to_query <= radius or pdq_distance(benign["value"], row["value"]) <= radius:
            named = benign["collection"]
            where = (
                f"negative collection {named} ({benign['op_id']})"
                if readable(named)
                else "a negative collection of this node"
            )
            hold((SUPPRESSED, f"matched, but suppressed by {where}"))
            break
    if held is not None:
        hold((QUARANTINED, f"quarantined: {held}"))
    limit = rule.limit
    if distance > limit:
        hold((BEYOND_THRESHOLD, f"distance {distance} is past {collection}'s threshold {limit}"))
    least = rule.min_quality
    if least is not None:
        quality = row.get("quality")
        if quality is not None and quality < least:
            hold((LOW_QUALITY, f"quality {quality} is below {collection}'s minimum {least}"))
    suspend_at = rule.disputes
    if suspend_at is not None:
        count = disputes.get(row["op_id"], 0)
        if count >= suspend_at:
            why = f"suspended: disputed by {count} authors ({collection} suspends at {suspend_at})"
            hold((SUSPENDED, why))
    fixed, verdict = rule.verdict_for(members, labels)
    if not reasons:
        return verdict
    reasons += fixed
    return plan.verdict(reasons)


def _limit(policy: CollectionPolicy, threshold: int) -> int:
    """A collection's distance never widens the request's, only narrows it."""
    return threshold if policy.threshold is None else min(threshold, policy.threshold)
