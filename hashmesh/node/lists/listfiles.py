"""Hash lists in and out: `import-list` (pytx, CSV, StopNCII, NCMEC files) and `export-list`.

An import is planned completely before anything is published: the whole file is parsed
and checked first, so a broken row late in a file of millions can still abort the import
with nothing published. The plan is then applied in one store transaction: its
revocations (of this node's own live adds, by signal or by the source's reference) and
its adds, all or nothing.

Exports write the live signals of one collection as of one snapshot cursor.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TextIO

from hashmesh.node.errors import NodeError
from hashmesh.node.lists.importers import ImportFormatError, ImportIssue, ImportRecord, parse_file
from hashmesh.protocol.batches import MAX_OPS_BYTES, MAX_OPS_PER_BATCH, AnyOp
from hashmesh.protocol.ops import OpId, op_size, pack_revokes, validate_collection

# hashmesh type -> python-threatexchange SignalType name (what HMA and the pytx file API read)
PYTX_TYPE_NAMES = {"pdq": "pdq", "md5": "video_md5", "sha256": "video_sha256"}
EXPORT_FORMATS = ("csv", "hma")
CSV_COLUMNS = ("type", "value", "category", "classification", "op_id", "author")
IMPORT_REASON = "withdrawn by the source list"


@dataclass
class ImportPlan:
    """The net effect of a list, in file order: the last record about a signal wins."""

    adds: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    revoke_signals: set[tuple[str, str]] = field(default_factory=set)
    revoke_refs: set[str] = field(default_factory=set)
    issues: list[ImportIssue] = field(default_factory=list)
    records: int = 0

    def take(self, record: ImportRecord, min_pdq_quality: int) -> None:
        self.records += 1
        if record.action == "add":
            assert record.signal_type is not None and record.value is not None
            if (
                record.signal_type == "pdq"
                and record.quality is not None
                and record.quality < min_pdq_quality
            ):
                self.issues.append(
                    ImportIssue(
                        record.location,
                        f"pdq quality {record.quality} is below the publishing minimum"
                        f" {min_pdq_quality}",
                    )
                )
                return
            key = (record.signal_type, record.value)
            item: dict[str, Any] = {
                "type": record.signal_type,
                "value": record.value,
                "category": record.category,
            }
            if record.quality is not None:
                item["quality"] = record.quality
            if record.classification is not None:
                item["classification"] = record.classification
            if record.ref is not None:
                item["ref"] = record.ref
            self.adds.pop(key, None)
            self.adds[key] = item
            self.revoke_signals.discard(key)
        elif record.signal_type is not None and record.value is not None:
            key = (record.signal_type, record.value)
            self.adds.pop(key, None)
            self.revoke_signals.add(key)
        elif record.ref is not None:
            self.revoke_refs.add(record.ref)
            for key in [k for k, v in self.adds.items() if v.get("ref") == record.ref]:
                del self.adds[key]

    def request(self, collection: str) -> dict[str, Any]:
        """The plan as the JSON body of POST /v1/lists/import."""
        return {
            "collection": collection,
            "adds": list(self.adds.values()),
            "revoke_signals": sorted([t, v] for t, v in self.revoke_signals),
            "revoke_refs": sorted(self.revoke_refs),
        }


def plan_import(
    format: str,
    stream: BinaryIO,
    category: str | None = None,
    min_pdq_quality: int = 50,
    progress: Callable[[int], None] | None = None,
) -> ImportPlan:
    """Parse and check a whole list; raises NodeError when the file cannot be read at all."""
    options: dict[str, Any] = {}
    if category:
        options["category"] = category
    plan = ImportPlan()
    try:
        for item in parse_file(format, stream, **options):
            if isinstance(item, ImportIssue):
                plan.issues.append(item)
            else:
                plan.take(item, min_pdq_quality)
            if progress is not None:
                progress(stream.tell())
    except ImportFormatError as exc:
        raise NodeError(f"nothing imported: {exc}") from None
    except ValueError as exc:
        raise NodeError(str(exc)) from None
    return plan


def is_note(issue: ImportIssue) -> bool:
    """A dropped column is worth telling but is no reason to abort an import."""
    return issue.message.startswith("column ") and issue.message.endswith(" is not imported")


def import_file(
    service: Any,
    collection: str,
    format: str,
    stream: BinaryIO,
    category: str | None = None,
    on_error: str = "abort",
    max_issues: int = 100,
) -> dict[str, Any]:
    """Plan and apply a list the node has spooled to disk (`POST /v1/lists/import?format=`).

    Parsed straight from the file with the streaming parsers: memory follows the plan
    (the distinct signals that survive), not the file's size as a JSON body did.
    """
    if on_error not in ("abort", "skip"):
        raise NodeError("on_error: expected abort or skip")
    try:
        validate_collection(collection)
    except Exception as exc:
        raise NodeError(str(exc)) from None
    plan = plan_import(format, stream, category, service.config.min_pdq_quality)
    notes = [i for i in plan.issues if is_note(i)]
    invalid = [i for i in plan.issues if not is_note(i)]
    if invalid and on_error == "abort":
        shown = "; ".join(str(i) for i in invalid[:5])
        raise NodeError(f"nothing imported: {len(invalid)} invalid entries ({shown})")
    if plan.adds or plan.revoke_signals or plan.revoke_refs:
        adds = list(plan.adds.values())
        plan.adds.clear()
        result = apply_import(
            service,
            collection,
            adds,
            [[t, v] for t, v in sorted(plan.revoke_signals)],
            sorted(plan.revoke_refs),
        )
    else:
        result = {
            "collection": collection,
            "published": 0,
            "already_live": 0,
            "revoked": 0,
            "revoked_op_ids": [],
        }
    result.update(
        {
            "format": format,
            "records": plan.records,
            "invalid": len(invalid),
            "issues": [str(i) for i in invalid[:max_issues]],
            "notes": [str(i) for i in notes[:max_issues]],
        }
    )
    return result


def _str_pairs(value: Any, what: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in value
    ):
        raise NodeError(f"{what}: expected a list of [type, value] pairs")
    return [(p[0], p[1]) for p in value]


def apply_import(
    service: Any,
    collection: str,
    adds: list[dict[str, Any]],
    revoke_signals: Iterable[Any] = (),
    revoke_refs: Iterable[Any] = (),
) -> dict[str, Any]:
    """Carry out a plan in one transaction (`service` is a NodeService, on its own thread).

    Revocations run first, against what the node held before this list: an add later in
    the same list stays live even when an earlier entry withdrew the same signal.
    """
    try:
        validate_collection(collection)
    except Exception as exc:
        raise NodeError(str(exc)) from None
    if not isinstance(adds, list) or not all(isinstance(a, dict) for a in adds):
        raise NodeError("adds: expected a list of signal objects")
    pairs = _str_pairs(list(revoke_signals), "revoke_signals")
    refs = list(revoke_refs)
    if not all(isinstance(r, str) for r in refs):
        raise NodeError("revoke_refs: expected a list of strings")
    with service.store.bulk():
        op_ids = own_live_targets(service, collection, pairs, refs)
        for group in batch_groups(pack_revokes(op_ids, IMPORT_REASON)):
            service.publish(collection, group)
        added: dict[str, Any] = {"published": 0, "signals": []}
        if adds:
            added = service.add_many(collection, adds)
    return {
        "collection": collection,
        "published": added["published"],
        "already_live": len(adds) - added["published"],
        "revoked": len(op_ids),
        "revoked_op_ids": op_ids,
    }


def own_live_targets(
    service: Any, collection: str, pairs: list[tuple[str, str]], refs: list[str]
) -> list[str]:
    """Op ids of this node's live adds in `collection` of these signals or references.

    One statement per signal type (and one for all references) over the whole list, not a
    lookup per entry: a withdrawal of a million-entry list costs a few index scans.
    """
    node_id = service.node_id
    found = service.store.own_live_places(node_id, collection, pairs, refs)
    return [str(OpId(node_id, collection, seq, idx)) for seq, idx in sorted(found)]


def batch_groups(ops: Sequence[AnyOp]) -> Iterator[list[AnyOp]]:
    """Ops cut into runs that each fit one batch by bytes as well as by count: 5,000 full
    revocations are 10 MB, over the 4 MiB a batch may carry, whatever `batch_size` says."""
    group: list[AnyOp] = []
    size = 0
    for op in ops:
        cost = op_size(op) + 1
        if group and (size + cost > MAX_OPS_BYTES + 1 or len(group) >= MAX_OPS_PER_BATCH):
            yield group
            group, size = [], 0
        group.append(op)
        size += cost
    if group:
        yield group


# -- export --------------------------------------------------------------------------------


def write_export(format: str, rows: Iterable[dict[str, Any]], out: TextIO) -> dict[str, Any]:
    """Write live signals as `csv` or `hma` (pytx `TYPE VALUE` lines); counts what was skipped."""
    written = 0
    skipped: dict[str, int] = {}
    if format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([row.get(c, "") for c in CSV_COLUMNS])
            written += 1
    elif format == "hma":
        for row in rows:
            name = PYTX_TYPE_NAMES.get(row["type"])
            if name is None:
                skipped[row["type"]] = skipped.get(row["type"], 0) + 1
                continue
            out.write(f"{name} {row['value']}\n")
            written += 1
    else:
        raise NodeError(f"export format {format!r}: expected one of {', '.join(EXPORT_FORMATS)}")
    return {"format": format, "written": written, "skipped_types": skipped}


def snapshot_rows(reader_snapshot: Any) -> Iterator[dict[str, Any]]:
    """Every row of a feed.Snapshot, chunk by chunk."""
    while rows := reader_snapshot.rows():
        yield from rows
