"""The replicated state machine: verified batches in, decisions and effects out.

`decide` holds every rule for applying a batch to a log: duplicates, gaps, chain links,
forks, revocations and opinions. It reads what it needs through the small `StateView`
protocol, so the same rules drive the in-memory `State` here (tests, offline bundle checks)
and the node's SQLite store, which implements the view with queries and applies the
effects in one transaction.

Convergence: within a log, batches apply strictly in seq order (later ones wait), a revoke
may only name earlier adds of its own log, and opinions are kept per (author, collection)
log in log order. So any delivery order, with any duplicates, ends in the same state.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from operator import itemgetter
from typing import Literal, Protocol

from hashmesh.protocol.batches import Batch, LogKey, header_hash
from hashmesh.protocol.evidence import ForkEvidence, SignedHeader, build_evidence
from hashmesh.protocol.ops import AddOp, OpId, OpinionOp, RevokeOp

MAX_PENDING_PER_LOG = 1024

_make_op_id = partial(tuple.__new__, OpId)
_first = itemgetter(0)
_second = itemgetter(1)

OpinionKind = Literal["confirm", "dispute", "seen", "retract"]


class StateView(Protocol):
    def head(self, log: LogKey) -> int:
        """Highest contiguous seq applied for the log (0 when none)."""

    def signed_header(self, log: LogKey, seq: int) -> SignedHeader | None:
        """The applied header at seq, if any."""

    def is_forked(self, log: LogKey) -> bool:
        """True once fork evidence for the log is held: the log accepts nothing more."""

    def is_add(self, op_id: OpId) -> bool:
        """True when op_id is an applied add op."""


@dataclass(frozen=True, slots=True)
class Revoked:
    target: OpId
    by: OpId
    reason: str


@dataclass(frozen=True, slots=True)
class Opined:
    op_id: OpId
    target: OpId
    opinion: OpinionKind
    reason: str | None = None  # informational: it changes no stance


Effect = Revoked | Opined


@dataclass(frozen=True, slots=True)
class Apply:
    """Apply the batch: its adds (by index; most batches are nothing else), then `effects`
    (revocations and opinions) in op order. `ignored` explains revoke targets that name no add.
    """

    batch: Batch
    adds: list[tuple[int, AddOp]]
    effects: list[Effect]
    ignored: list[str] = field(default_factory=list)

    def added(self) -> list[tuple[OpId, AddOp]]:
        return list(zip(self.added_ids(), map(_second, self.adds), strict=True))

    def added_ids(self) -> Iterator[OpId]:
        """The op ids of `adds`, made without a Python call per op (ingest makes millions)."""
        header = self.batch.header
        keys = zip(
            repeat(header.author),
            repeat(header.collection),
            repeat(header.seq),
            map(_first, self.adds),
        )
        return map(_make_op_id, keys)


@dataclass(frozen=True, slots=True)
class Duplicate:
    batch: Batch


@dataclass(frozen=True, slots=True)
class Defer:
    batch: Batch
    head: int


@dataclass(frozen=True, slots=True)
class Fork:
    batch: Batch
    evidence: ForkEvidence


@dataclass(frozen=True, slots=True)
class Frozen:
    batch: Batch


Decision = Apply | Duplicate | Defer | Fork | Frozen


def _signed(batch: Batch) -> SignedHeader:
    return SignedHeader(batch.header_bytes, batch.signature)


def decide(view: StateView, batch: Batch) -> Decision:
    """What applying `batch` to the state behind `view` means. Pure: changes nothing."""
    log, seq = batch.log, batch.seq
    if view.is_forked(log):
        return Frozen(batch)
    head = view.head(log)
    if seq <= head:
        held = view.signed_header(log, seq)
        if held is None or held.header_bytes == batch.header_bytes:
            return Duplicate(batch)
        return Fork(batch, build_evidence(held, _signed(batch)))
    if seq > head + 1:
        return Defer(batch, head)
    if seq > 1:
        previous = view.signed_header(log, seq - 1)
        if previous is not None and header_hash(previous.header_bytes).hex() != batch.header.prev:
            return Fork(batch, build_evidence(previous, _signed(batch)))
    return Apply(batch, *_effects(view, batch))


def _effects(
    view: StateView, batch: Batch
) -> tuple[list[tuple[int, AddOp]], list[Effect], list[str]]:
    if set(map(type, batch.ops)) == {AddOp}:
        return list(enumerate(batch.ops)), [], []  # type: ignore[arg-type]
    adds: list[tuple[int, AddOp]] = []
    effects: list[Effect] = []
    ignored: list[str] = []
    batch_adds: set[int] = set()
    for index, op in enumerate(batch.ops):
        if type(op) is AddOp:
            adds.append((index, op))
            batch_adds.add(index)
            continue
        op_id = batch.op_id(index)
        if isinstance(op, RevokeOp):
            targets = batch.revoke_targets.get(index)
            for target in op.target_ids() if targets is None else targets:
                in_batch = target.seq == batch.seq and target.index in batch_adds
                if in_batch or (target.seq < batch.seq and view.is_add(target)):
                    effects.append(Revoked(target, op_id, op.reason))
                else:
                    ignored.append(f"{op_id}: revoke target {target} is not an add")
        elif isinstance(op, OpinionOp):
            effects.append(Opined(op_id, op.target_id(), op.opinion, op.reason))
    return adds, effects, ignored


@dataclass(slots=True)
class Stance:
    """One (author, collection) log's current opinion of one add."""

    verdict: Literal["confirm", "dispute"] | None = None
    seen: bool = False


@dataclass(frozen=True, slots=True)
class OpinionCounts:
    """Distinct authors per opinion; an author counts once however many logs it writes."""

    confirm: int = 0
    dispute: int = 0
    seen: int = 0


def apply_opinion(stance: Stance, opinion: OpinionKind) -> None:
    if opinion == "seen":
        stance.seen = True
    elif opinion == "retract":
        stance.verdict, stance.seen = None, False
    else:
        stance.verdict = opinion


def count_opinions(stances: Iterable[tuple[str, Stance]]) -> OpinionCounts:
    confirm: set[str] = set()
    dispute: set[str] = set()
    seen: set[str] = set()
    for author, stance in stances:
        if stance.verdict == "confirm":
            confirm.add(author)
        elif stance.verdict == "dispute":
            dispute.add(author)
        if stance.seen:
            seen.add(author)
    return OpinionCounts(len(confirm), len(dispute), len(seen))


class Ledger(StateView, Protocol):
    """What `receive` needs from a replica besides `StateView`: carry out decisions and keep
    the batches that wait for a predecessor. The in-memory `State` and the node's SQLite
    store both implement it, so the queueing and fork rules exist once, here."""

    def prepare(self, batch: Batch) -> None:
        """Called before `decide(batch)`: a store may prefetch what `is_add` will ask."""

    def apply(self, decision: Apply) -> None:
        """Persist an applied batch and its effects (atomically)."""

    def defer(self, batch: Batch) -> None:
        """Keep a batch until its predecessor arrives (at most MAX_PENDING_PER_LOG per log;
        the first one kept at a seq stays)."""

    def waiting_conflict(self, batch: Batch) -> SignedHeader | None:
        """A validly signed waiting batch at `batch`'s place with different bytes, if any."""

    def take_waiting(self, log: LogKey, seq: int) -> Batch | None:
        """Remove and return the batch waiting at (log, seq), if any."""

    def record_fork(self, log: LogKey, evidence: ForkEvidence) -> None:
        """Keep the evidence, freeze the log, drop its waiting batches."""


def receive(ledger: Ledger, batch: Batch) -> list[Decision]:
    """Decide and carry out one verified batch, then every waiting batch it unblocks.

    Two different batches waiting at one seq are a fork whatever order they came in, so the
    result is the same for any delivery order (the property tests check this against the
    SQLite store)."""
    decisions: list[Decision] = []
    queue = [batch]
    while queue:
        current = queue.pop()
        ledger.prepare(current)
        decision = decide(ledger, current)
        if isinstance(decision, Apply):
            ledger.apply(decision)
            successor = ledger.take_waiting(current.log, current.seq + 1)
            if successor is not None:
                queue.append(successor)
        elif isinstance(decision, Defer):
            held = ledger.waiting_conflict(current)
            if held is None:
                ledger.defer(current)
            else:
                decision = Fork(current, build_evidence(held, _signed(current)))
                ledger.record_fork(current.log, decision.evidence)
        elif isinstance(decision, Fork):
            ledger.record_fork(current.log, decision.evidence)
        decisions.append(decision)
    return decisions


class State:
    """An in-memory replica: the reference implementation of the rules in `decide`.

    The node keeps the same state in SQLite; this class is what the property tests and the
    offline `verify` of a bundle run.
    """

    def __init__(self) -> None:
        self.heads: dict[LogKey, int] = {}
        self.headers: dict[LogKey, dict[int, SignedHeader]] = {}
        self.forks: dict[LogKey, ForkEvidence] = {}
        self.adds: dict[OpId, AddOp] = {}
        self.revoked: dict[OpId, OpId] = {}
        self.opinions: dict[OpId, dict[tuple[str, str], Stance]] = {}
        self.pending: dict[LogKey, dict[int, Batch]] = {}

    def head(self, log: LogKey) -> int:
        return self.heads.get(log, 0)

    def signed_header(self, log: LogKey, seq: int) -> SignedHeader | None:
        return self.headers.get(log, {}).get(seq)

    def is_forked(self, log: LogKey) -> bool:
        return log in self.forks

    def is_add(self, op_id: OpId) -> bool:
        return op_id in self.adds

    def receive(self, batch: Batch) -> list[Decision]:
        return receive(self, batch)

    # -- Ledger --------------------------------------------------------------------------

    def prepare(self, batch: Batch) -> None:
        pass

    def defer(self, batch: Batch) -> None:
        waiting = self.pending.setdefault(batch.log, {})
        if len(waiting) < MAX_PENDING_PER_LOG:
            waiting.setdefault(batch.seq, batch)

    def waiting_conflict(self, batch: Batch) -> SignedHeader | None:
        held = self.pending.get(batch.log, {}).get(batch.seq)
        if held is None or held.header_bytes == batch.header_bytes:
            return None
        return _signed(held)

    def take_waiting(self, log: LogKey, seq: int) -> Batch | None:
        return self.pending.get(log, {}).pop(seq, None)

    def record_fork(self, log: LogKey, evidence: ForkEvidence) -> None:
        self.forks.setdefault(log, evidence)
        self.pending.pop(log, None)

    def apply(self, decision: Apply) -> None:
        batch = decision.batch
        self.heads[batch.log] = batch.seq
        self.headers.setdefault(batch.log, {})[batch.seq] = _signed(batch)
        self.adds.update(zip(decision.added_ids(), map(_second, decision.adds), strict=True))
        for effect in decision.effects:
            if isinstance(effect, Revoked):
                self.revoked.setdefault(effect.target, effect.by)
            else:
                stances = self.opinions.setdefault(effect.target, {})
                key = (effect.op_id.author, effect.op_id.collection)
                apply_opinion(stances.setdefault(key, Stance()), effect.opinion)

    def live(self) -> dict[OpId, AddOp]:
        return {op_id: op for op_id, op in self.adds.items() if op_id not in self.revoked}

    def opinion_counts(self, target: OpId) -> OpinionCounts:
        stances = self.opinions.get(target, {})
        return count_opinions((author, stance) for (author, _), stance in stances.items())

    def summary(self) -> tuple[object, ...]:
        """Everything that must converge, in a comparable form."""
        return (
            sorted((str(k), v) for k, v in self.heads.items()),
            sorted(str(k) for k in self.live()),
            sorted((str(k), str(v)) for k, v in self.revoked.items()),
            sorted(
                (str(t), a, c, s.verdict or "", s.seen)
                for t, stances in self.opinions.items()
                for (a, c), s in stances.items()
            ),
        )
