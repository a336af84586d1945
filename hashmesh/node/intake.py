"""The own logs' sequencer: every batch this node signs takes its seq here, and a running
node's adds are made durable in the intake journal (store/journal.py) before the store
applies them.

Why: an operator add used to wait for whatever peer transaction the store thread was
running (publish p99 1.0-1.9 s under a match flood, docs/benchmarks.md). The journal has
its own writer, so a publish signs against the tip held here, commits its frames there and
answers; the store thread applies journalled frames before its next call, which makes
every store-thread operation (a revoke, a status, a backup) see them. Consistency rests on
one rule: a seq is taken only under `lock`, and a tip moves only past a frame that is
journalled or a batch that is stored. Store-thread publishes hold the lock across their
ingest after applying the journal, so no frame can be signed between their head read and
their commit.

A start applies whatever frames the journal still holds (a second delivery of a batch the
store already has is a duplicate, so the replay is idempotent) before anything signs.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hashmesh.node.errors import NodeError
from hashmesh.node.store.core import Store
from hashmesh.node.store.journal import JournalFile
from hashmesh.protocol.batches import AnyOp, Batch, LogKey, build_batch, verify_batch
from hashmesh.protocol.errors import BatchOverflow, ProtocolError
from hashmesh.protocol.ops import AddOp, OpId
from hashmesh.protocol.signing import SigningKey

log = logging.getLogger("hashmesh.intake")
JOURNAL_FILE = "intake.db"
_STORED = ("applied", "duplicate")
MAX_FAILED = 1000  # refusals kept for callers still waiting


class NotPrimed(Exception):
    """The intake holds no tip for this collection yet: the store thread must set it
    (NodeService.prime_intake) before the journal path can sign for it."""


@dataclass(frozen=True, slots=True)
class Tip:
    """The last seq signed in a log and its header's hash (None before the first)."""

    log: LogKey
    seq: int
    hash: bytes | None


@dataclass(slots=True)
class _Frame:
    id: int
    collection: str
    batch: Batch
    adds: list[tuple[str, str]] = field(default_factory=list)


def sign_batches(
    key: SigningKey,
    tip: Tip,
    ops: list[AnyOp],
    when: int,
    size: int,
) -> Iterator[Batch]:
    """`ops` signed into batches of at most `size` ops continuing `tip`, one at a time (a
    million-add import holds one batch, not all); ops long enough to pass the byte limit
    are split in halves. Not the caller's input: the ops were checked, the rest is this
    node's own."""
    seq, prev = tip.seq, tip.hash
    chunks = deque(ops[start : start + size] for start in range(0, len(ops), size))
    while chunks:
        chunk = chunks.popleft()
        try:
            batch = build_batch(
                key, tip.log.collection, seq + 1, prev, when, chunk, author=tip.log.author
            )
        except BatchOverflow:
            half = len(chunk) // 2
            chunks.extendleft((chunk[half:], chunk[:half]))
            continue
        yield batch
        seq, prev = batch.seq, batch.hash


def op_ids_of(batches: list[Batch]) -> Iterator[OpId]:
    for batch in batches:
        yield from (batch.op_id(i) for i in range(len(batch.ops)))


class Intake:
    """Tips of the own logs, the frames journalled and not yet applied, and their adds
    (so a second add of the same signal is answered with the first op id)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.lock = threading.RLock()
        self.journal: JournalFile | None = None
        self.restored = False  # set by the service from the store's restore mark
        self._tips: dict[str, Tip] = {}
        self._pending: deque[_Frame] = deque()
        self._held: dict[tuple[str, str, str], str] = {}
        self._failed: dict[int, str] = {}
        self._applied_through = 0

    # -- start -----------------------------------------------------------------------------

    def replay(self, path: Path) -> int:
        """Apply every frame the journal at `path` holds that the store lacks (a node
        stopped before applying them), then empty it. Runs before anything signs."""
        if not path.exists():
            return 0
        journal = JournalFile(path)
        try:
            frames = journal.frames()
            applied = 0
            for frame_id, frame in frames:
                try:
                    batch = verify_batch(frame)
                except ProtocolError as exc:
                    log.error("intake journal frame %d dropped: %s", frame_id, exc)
                    continue
                result = self.store.ingest(batch, source="local")
                if result.outcome == "applied":
                    applied += 1
                elif result.outcome != "duplicate":
                    log.error(
                        "intake journal frame %d (%s seq %d) was %s on replay",
                        frame_id,
                        batch.log,
                        batch.seq,
                        result.outcome,
                    )
            if frames:
                journal.drop_through(frames[-1][0])
                log.info("intake journal: %d of %d frames applied at start", applied, len(frames))
            return applied
        finally:
            journal.close()

    def open(self, path: Path) -> None:
        """Journal adds from now on (a running node); the offline CLI stores directly."""
        self.journal = JournalFile(path)
        self._applied_through = self.journal.last_id()

    def close(self) -> None:
        """A clean stop leaves only the frames not applied, for the next start."""
        if self.journal is not None:
            if self._applied_through:
                self.journal.drop_through(self._applied_through)
            self.journal.close()
            self.journal = None

    # -- tips ------------------------------------------------------------------------------

    def tip(self, collection: str) -> Tip | None:
        return self._tips.get(collection)

    def set_tip(self, collection: str, tip: Tip) -> None:
        self._tips[collection] = tip

    def primed(self) -> list[str]:
        return list(self._tips)

    # -- the journal path (intake thread) ----------------------------------------------------

    def journal_batches(self, collection: str, batches: list[Batch]) -> list[int]:
        """Make `batches` durable and queue them for the store; the caller holds `lock`
        and signed them from this collection's tip, which moves past them."""
        assert self.journal is not None, "the journal path runs only in a running node"
        ids = self.journal.append([b.to_bytes() for b in batches], self._applied_through)
        for frame_id, batch in zip(ids, batches, strict=True):
            frame = _Frame(frame_id, collection, batch)
            for index, op in enumerate(batch.ops):
                if isinstance(op, AddOp):
                    frame.adds.append((op.type, op.value))
                    self._held[(collection, op.type, op.value)] = str(batch.op_id(index))
            self._pending.append(frame)
        last = batches[-1]
        self._tips[collection] = Tip(last.log, last.seq, last.hash)
        return ids

    def held(self, collection: str, signal_type: str, value: str) -> str | None:
        """The op id of a journalled, not yet applied add of this signal, if any. Asked
        before the store: a frame leaves this map only after its commit is visible."""
        with self.lock:
            return self._held.get((collection, signal_type, value))

    # -- applying (store thread) -------------------------------------------------------------

    def apply(self) -> int:
        """Store every journalled frame, oldest first; the number stored. A frame the
        store refuses (our own bug: its seq was taken here) ends its log's queue: the
        later frames of that log are dropped with it, the tip is forgotten (the next
        publish takes it from the store) and the callers still waiting are told."""
        if not self._pending:  # the store thread's prelude: most calls find none
            return 0
        with self.lock:
            frames = list(self._pending)
        stored = 0
        for frame in frames:
            if frame.id not in self._failed:
                outcome = self.store.ingest(frame.batch, source="local").outcome
                if outcome in _STORED:
                    stored += 1
                else:
                    self._refused(frame, outcome)
            self._done(frame)
        return stored

    def _refused(self, frame: _Frame, outcome: str) -> None:
        why = f"publishing to {frame.collection} failed: batch was {outcome}"
        log.error(
            "intake frame %d (%s seq %d): %s", frame.id, frame.batch.log, frame.batch.seq, why
        )
        with self.lock:
            for later in self._pending:
                if later.batch.log == frame.batch.log and later.id >= frame.id:
                    self._failed[later.id] = why
            while len(self._failed) > MAX_FAILED:  # callers that stopped waiting
                del self._failed[next(iter(self._failed))]
            self._tips.pop(frame.collection, None)

    def _done(self, frame: _Frame) -> None:
        with self.lock:
            head = self._pending.popleft()
            assert head is frame, "only the store thread applies, oldest first"
            for signal_type, value in frame.adds:
                key = (frame.collection, signal_type, value)
                if self._held.get(key, "").startswith(f"{frame.batch.log}/{frame.batch.seq}/"):
                    del self._held[key]
            self._applied_through = frame.id

    def outcome(self, frame_ids: list[int]) -> bool:
        """True once every frame is stored, False while one waits; raises the refusal of
        a frame the store refused."""
        with self.lock:
            for frame_id in frame_ids:
                if frame_id in self._failed:
                    raise NodeError(self._failed.pop(frame_id))
            return all(frame_id <= self._applied_through for frame_id in frame_ids)

    def pending(self) -> int:
        return len(self._pending)
