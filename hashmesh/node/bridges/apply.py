"""One fetched page into this node's ops, the bridge's items and its checkpoint, all in
one SQLite transaction (Store.bulk): a crash at any instant leaves either the page wholly
published with the checkpoint after it, or nothing of it with the checkpoint before it,
so a restart fetches the page again and publishes it exactly once.

Each upstream entry is a full replacement of its previous state. Per fingerprint: the
same value and labels as the live add is skipped (`unchanged`); a new or changed one is
added, and the add it replaces is revoked by op id (observed-remove: exactly that add,
never another entry's add of the same hash); a fingerprint the entry no longer carries,
or a deleted entry, revokes its adds. Each entry gets its own add even when another
entry has the same hash: each has its own provenance and is deleted on its own. An
entry the upstream holds but the kind withholds (ThreatExchange: every opinion on it says
not malicious) is counted as skipped for its reason and revokes what it had.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from hashmesh.node.bridges.upstream import Entry, Page, Upstream
from hashmesh.node.config import Bridge
from hashmesh.node.lists.importers import ImportIssue, checked_add
from hashmesh.node.service import NodeService
from hashmesh.node.store.bridges import Item
from hashmesh.protocol.batches import AnyOp
from hashmesh.protocol.ops import pack_revokes


@dataclass
class Applied:
    """What one page did, for the running node's status and the logs."""

    entries: int = 0
    added: int = 0
    revoked: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def skip_reason(issue: ImportIssue, fingerprint: str) -> str:
    """An importer's sentence as a short count key."""
    text = issue.message
    if "not supported" in text or "unknown signal type" in text:
        return f"unsupported type {fingerprint[:32]}"
    if "degenerate" in text:
        return "degenerate hash"
    if "truncated" in text:
        return "truncated value"
    return f"invalid {fingerprint[:32]} value"


def merge_counts(counts: dict[str, Any], applied: Applied) -> dict[str, Any]:
    skipped = dict(counts.get("skipped", {}))
    for reason, n in applied.skipped.items():
        skipped[reason] = skipped.get(reason, 0) + n
    return {
        "entries": counts.get("entries", 0) + applied.entries,
        "pages": counts.get("pages", 0) + 1,
        "added": counts.get("added", 0) + applied.added,
        "revoked": counts.get("revoked", 0) + applied.revoked,
        "skipped": skipped,
    }


@dataclass
class _Plan:
    """What one page will write: adds (each with its item, op id still to come), revokes
    (op id, reason), items dropped, and items kept whose provenance changed."""

    adds: list[tuple[Any, Item]] = field(default_factory=list)
    revokes: list[tuple[str, str]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    refreshed: list[Item] = field(default_factory=list)


def apply_page(service: NodeService, bridge: Bridge, upstream: Upstream, page: Page) -> Applied:
    """Publish `page` and commit its checkpoint, in one transaction (store thread)."""
    store = service.store
    table = store.bridges
    category = bridge.category or upstream.default_category
    applied = Applied(entries=len(page.entries))
    for reason, n in page.skipped.items():
        applied.skipped[reason] = applied.skipped.get(reason, 0) + n
    with store.bulk(source="local"):
        table.ensure(bridge.name, bridge.kind)
        counts = table.progress(bridge.name)[1]
        current = table.items_of(bridge.name, (e.key for e in page.entries))
        plan = _Plan()
        for entry in page.entries:
            _replace(entry, current, upstream, category, applied, plan)
        ops: list[AnyOp] = [op for op, _ in plan.adds]
        by_reason: dict[str, list[str]] = {}
        for target, reason in plan.revokes:  # one reason an entry: its provenance
            by_reason.setdefault(reason, []).append(target)
        for reason, targets in by_reason.items():
            ops.extend(pack_revokes(targets, reason))
        op_ids = service.publish(bridge.collection, ops)[0] if ops else []
        table.drop_items(bridge.name, plan.dropped)
        table.put_items(
            bridge.name,
            (
                Item(i.entry, i.fingerprint, i.type, i.value, str(op_id), i.detail)
                for (_, i), op_id in zip(plan.adds, op_ids, strict=False)
            ),
        )
        table.put_items(bridge.name, plan.refreshed)
        applied.added, applied.revoked = len(plan.adds), len(plan.revokes)
        counts = merge_counts(counts, applied)
        table.save_checkpoint(bridge.name, page.checkpoint, counts, int(time.time() * 1000))
    return applied


def _replace(
    entry: Entry,
    current: dict[str, list[Item]],
    upstream: Upstream,
    category: str,
    applied: Applied,
    plan: _Plan,
) -> None:
    """Plan one entry's replacement of its previous state. An item with no op id yet is
    an add planned for an earlier entry of this same page: replacing it just drops it.
    An unchanged fingerprint keeps its add; its provenance on this node (detail: what
    feedback is sent to, the upstream's tags) follows the entry's latest state."""
    old = {i.fingerprint: i for i in current.get(entry.key, [])}
    if entry.deleted and not old:
        applied.skip("deletion of an entry never received")
        return
    if entry.withheld:
        applied.skip(entry.withheld)
    kept: list[Item] = []
    new_items: list[Item] = []
    for fingerprint, raw in sorted(entry.fingerprints.items()):
        op = checked_add(
            f"{entry.key} {fingerprint}",
            upstream.our_type(fingerprint),
            raw,
            category=category,
            classification=entry.classification,
            ref=entry.ref,
        )
        if isinstance(op, ImportIssue):
            applied.skip(skip_reason(op, fingerprint))
            continue
        was = old.get(fingerprint)
        detail = {**entry.detail, "fingerprint": fingerprint, "labels": _labels(op)}
        if (
            was is not None
            and (was.type, was.value) == (op.type, op.value)
            and (was.detail.get("labels") == _labels(op))
        ):
            applied.skip("unchanged")
            if was.detail != detail:
                was = _refresh(plan, was, detail)
            kept.append(was)
            continue
        item = Item(entry.key, fingerprint, op.type, op.value, "", detail)
        new_items.append(item)
        plan.adds.append((op, item))
    why = "deleted upstream" if entry.deleted else (entry.withheld or "replaced upstream")
    reason = f"{upstream.bridge.name}: {upstream.kind} entry {entry.key[:150]} {why[:60]}"
    kept_prints = {k.fingerprint for k in kept}
    for fingerprint, was in old.items():
        if fingerprint in kept_prints:
            continue
        if was.op_id:
            plan.revokes.append((was.op_id, reason))
            plan.dropped.append((entry.key, fingerprint))
            plan.refreshed = [
                i for i in plan.refreshed if (i.entry, i.fingerprint) != (entry.key, fingerprint)
            ]
        else:
            plan.adds[:] = [a for a in plan.adds if a[1] is not was]
    current[entry.key] = kept + new_items


def _refresh(plan: _Plan, was: Item, detail: dict[str, Any]) -> Item:
    """`was` with the entry's latest provenance: rewritten with its add (published
    earlier) or in the add planned for it on this page."""
    new = Item(was.entry, was.fingerprint, was.type, was.value, was.op_id, detail)
    if was.op_id:
        key = (was.entry, was.fingerprint)
        plan.refreshed = [i for i in plan.refreshed if (i.entry, i.fingerprint) != key]
        plan.refreshed.append(new)
    else:
        plan.adds[:] = [(op, new if item is was else item) for op, item in plan.adds]
    return new


def _labels(op: Any) -> list[Any]:
    return [op.category, op.classification, op.ref]
