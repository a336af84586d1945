"""This node as a witness: it cosigns the latest head it verified of each log it holds, and
compares the cosigns it hears with its own headers to find split views (issue 22).

A cosign is a statement (protocol/witness.py) gossiped like every other, scoped to the
log's collection, so only callers who may read the collection ever see one. The rate is
bounded twice: a log is cosigned again only once its head moved and at least
`WITNESS_INTERVAL_S` after its last cosign, and at most `COSIGNS_PER_TICK` per tick; a
newer cosign supersedes the older one in its slot, so a node holds at most one per
witness per log. Store thread only.

A split view is a witness's word until proven: `to_prove` lists the views whose other
heads the net layer (node/net/proof.py) fetches from their witnesses, and `settle` turns
a fetched header that verifies as the author's into fork evidence (the log frozen as a
fork found in sync freezes it), or marks the view "unproven", its witnesses suspects.

Cosigns pass a gate before they are stored (`gate`): a witness that signs two heads for
one (log, seq) is convicted (both signed cosigns kept, store/witness.py) and its cosigns
count for nothing from then on; and cosigns are bounded apart from other statements, one
slot per (witness, log) for the witnesses this node knows, a small budget for the rest.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

from hashmesh.node.authority import NodeAuthority
from hashmesh.node.config import Config
from hashmesh.node.statements import StatementBook
from hashmesh.node.store.core import Store
from hashmesh.node.store.witness import EquivocationRow
from hashmesh.protocol.batches import LogKey
from hashmesh.protocol.encoding import from_b64url, parse_canonical
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.evidence import ForkEvidence, SignedHeader, build_evidence
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.statements import Statement, sign_statement
from hashmesh.protocol.witness import (
    KIND,
    Claim,
    Cosign,
    CosignBody,
    SplitView,
    WitnessLine,
    cosign_body,
    equivocates,
    equivocation_evidence,
    prove_head,
    split_views,
    witnesses,
)

log = logging.getLogger("hashmesh.witness")

WITNESS_INTERVAL_S = 30.0
COSIGNS_PER_TICK = 500
MAX_SPLIT_VIEWS_SHOWN = 100
STATEMENT_PAGE = 1000
MAX_HEADS_REMEMBERED = 200_000
#: Cosign slots a known witness (this node, a peer, a key certified by an org trusted in
#: the collection) may hold beyond one per log this node holds: logs it holds that we
#: have not fetched yet.
COSIGN_LOG_SLACK = 1_000
#: Cosign slots all unknown witnesses together may hold: enough to hear a few strangers,
#: too few for a throw-away key to matter (32 known witnesses x 10,000 logs is 320,000).
UNKNOWN_WITNESS_COSIGNS = 2_000
#: Split views proven (or found unprovable) per tick, and witnesses asked per head.
PROOFS_PER_TICK = 16
ASKED_PER_HEAD = 4
#: An unreachable witness is asked again after this long.
PROOF_RETRY_S = 60.0
MAX_EQUIVOCATORS = 10_000

Vouchers = Callable[[str, int], frozenset[str]]


@dataclass
class Proof:
    """Where proving one split view stands: "pending" (not asked yet, or a witness was
    unreachable: `retry_at`), "fork" (fork evidence recorded, the log frozen), "unproven"
    (a head's witnesses could not produce a header that verifies as the author's: they
    are the suspects), or "unfollowed" (a log this node does not accept: nothing to
    freeze)."""

    state: str = "pending"
    suspects: set[str] = field(default_factory=set)
    retry_at: float = 0.0
    why: str = ""


@dataclass(frozen=True)
class ProofTask:
    """One split view to prove: the header we hold there (if any) and, per other head,
    the cosigns claiming it and the peers to ask for it (its witnesses first, then the
    peers those cosigns came from)."""

    author: str
    collection: str
    seq: int
    ours: SignedHeader | None
    claims: dict[str, tuple[Claim, tuple[str, ...], tuple[str, ...]]]


Answer = SignedHeader | str  # a header, or why the peer could not give one


class NodeWitness:
    def __init__(
        self,
        store: Store,
        book: StatementBook,
        key: SigningKey,
        vouchers: Vouchers,
        interval_s: float = WITNESS_INTERVAL_S,
        config: Callable[[], Config] | None = None,
        authority: NodeAuthority | None = None,
    ) -> None:
        self.store = store
        self.book = book
        self.key = key
        self.vouchers = vouchers
        self.interval_s = interval_s
        self.config = config
        self.authority = authority
        self._last: dict[LogKey, tuple[int, float]] = {}
        self._cosigns: tuple[int, list[Cosign]] = (-1, [])
        self._splits: tuple[tuple[int, int], list[SplitView]] = ((-1, -1), [])
        self._reported: set[tuple[str, str, int]] = set()
        self._heads_seen = -1
        # (witness, author, collection) -> (its cosign there, statement id): one per slot
        self._bodies: dict[tuple[str, str, str], tuple[Cosign, str]] = {}
        self._per_witness: Counter[str] = Counter()
        self._proofs: dict[tuple[str, str, int], Proof] = {}
        self._convicted = {row.witness for row in store.equivocations.rows()}
        self._logs_held: tuple[int, int] = (-1, 0)
        self._cursor = 0
        self._reported_at = -1
        self._heads: dict[tuple[LogKey, int], str] = {}
        self._waiting = False
        book.gates.append(self.gate)
        book.counted_apart.add(KIND)  # bounded by the gate, apart from MAX_STATEMENTS
        for body in self.cosigns():
            if body.witness == key.node_id:
                self._last[LogKey(body.author, body.collection)] = (body.seq, 0.0)

    def head_hash(self, log_key: LogKey, seq: int) -> str | None:
        """The hash of the header held at (log, seq); remembered once held (a held header
        is never replaced, and split detection asks for every cosigned seq)."""
        known = self._heads.get((log_key, seq))
        if known is not None:
            return known
        held = self.store.signed_header(log_key, seq)
        if held is None:
            return None
        if len(self._heads) >= MAX_HEADS_REMEMBERED:
            self._heads.clear()
        head = self._heads[(log_key, seq)] = sha256(held.header_bytes).hexdigest()
        return head

    def due(self, now: float) -> list[Statement]:
        """Cosigns of the logs whose head moved since their last cosign, at most one per
        log per interval and COSIGNS_PER_TICK in all. Our own logs are not cosigned: the
        author's claim is its header."""
        out: list[Statement] = []
        me = self.key.node_id
        if self.store.heads_version == self._heads_seen and not self._waiting:
            return out  # nothing moved, nothing held back: an idle tick reads no vector
        self._heads_seen = self.store.heads_version
        self._waiting = False
        for log_key, seq in sorted(self.store.vector().items(), key=lambda kv: str(kv[0])):
            if log_key.author == me or seq <= 0:
                continue
            last = self._last.get(log_key)
            if last is not None and last[0] >= seq:
                continue
            if last is not None and now - last[1] < self.interval_s:
                self._waiting = True
                continue
            head = self.head_hash(log_key, seq)
            if head is None:
                continue
            body = cosign_body(me, log_key.author, log_key.collection, seq, head, int(now))
            out.append(sign_statement(body, [self.key], self.book.registry))
            self._last[log_key] = (seq, now)
            if len(out) >= COSIGNS_PER_TICK:
                self._waiting = True
                break
        return out

    def tick(self, now: float) -> int:
        """Cosign what is due and hand it to the statement book (stored and gossiped)."""
        statements = self.due(now)
        if statements:
            self.book.admit(statements, "local")
        if self._reported_at != self.store.statements.version:
            self._reported_at = self.store.statements.version
            self._report_new_splits()
        return len(statements)

    def cosigns(self) -> list[Cosign]:
        """Every cosign held (ours and our peers'): read incrementally, the rows stored or
        replaced since the last call (store cursor order), one per slot. Re-reading all
        of them on each change cost a parse per cosign, witnesses x logs of them."""
        version = self.store.statements.version
        if self._cosigns[0] != version:
            while True:
                rows = self.store.statements.since(self._cursor, STATEMENT_PAGE)
                for row in rows:
                    self._cursor = max(self._cursor, row.cursor)
                    if row.kind in ("handover", "key-revoke"):
                        self._heads.clear()  # held batches may be dropped and signed anew
                    if row.kind != KIND:
                        continue
                    # our own rows, verified when they came in: the body is parsed again,
                    # the signature is not
                    wire = parse_canonical(row.wire, "statement")
                    _, body = self.book.registry.parse_body(from_b64url(wire["body"], "body"))
                    if not isinstance(body, CosignBody):
                        continue
                    cosign = Cosign.of(body)
                    key = (cosign.witness, cosign.author, cosign.collection)
                    held = self._bodies.get(key)
                    if held is None:
                        self._per_witness[cosign.witness] += 1
                    if held is None or cosign.seq >= held[0].seq:
                        self._bodies[key] = (cosign, row.id)
                if len(rows) < STATEMENT_PAGE:
                    break
            self._cosigns = (version, [b for b, _ in self._bodies.values()])
        return self._cosigns[1]

    # -- the gate: equivocation and the cosign bound ---------------------------------------

    def _logs(self) -> int:
        if self._logs_held[0] != self.store.heads_version:
            self._logs_held = (self.store.heads_version, len(self.store.vector()))
        return self._logs_held[1]

    def known(self, witness: str, collection: str, now: int) -> bool:
        """A witness this node knows: itself, a configured peer, or a key certified now by
        an org trusted in the collection."""
        if witness == self.key.node_id:
            return True
        if self.config is None:
            return False
        config = self.config()
        if config.peer(witness) is not None:
            return True
        orgs = config.trusted_orgs(collection)
        return bool(orgs) and bool(self.vouchers(witness, now) & orgs)

    def gate(
        self, statements: list[Statement], source: str
    ) -> tuple[list[Statement], dict[str, str]]:
        """Before cosigns are stored: a second head signed for one (log, seq) convicts its
        witness (both cosigns kept as evidence, the second not stored over the first); a
        convicted witness's cosigns are refused; a new slot beyond the witness's bound is
        refused. Other statements pass untouched."""
        if not any(s.kind.name == KIND for s in statements):
            return statements, {}
        self.cosigns()
        keep: list[Statement] = []
        refused: dict[str, str] = {}
        page: dict[tuple[str, str, str], tuple[Claim, Statement | None]] = {}
        added: Counter[str] = Counter()
        unknown = None
        for statement in statements:
            body = statement.body
            if statement.kind.name != KIND or not isinstance(body, CosignBody):
                keep.append(statement)
                continue
            if body.witness in self._convicted:
                refused[statement.id] = f"witness {body.witness} signed two heads at one seq"
                continue
            slot = (body.witness, body.author, body.collection)
            held_body: Claim | None = None
            held_wire: Any = None
            if slot in page:
                held_body, held_statement = page[slot]
                held_wire = held_statement.to_json() if held_statement else None
            elif slot in self._bodies:
                held_body, held_id = self._bodies[slot]
                row = self.store.statements.get(held_id)
                held_wire = None if row is None else parse_canonical(row.wire, "statement")
            if held_body is not None and held_wire is not None and equivocates(held_body, body):
                self._convict(body, held_wire, statement.to_json(), source)
                refused[statement.id] = f"witness {body.witness} signed two heads at one seq"
                continue
            if held_body is None and source != "local":
                ts = int(body.ts)
                if self.known(body.witness, body.collection, ts):
                    count = self._per_witness[body.witness] + added[body.witness]
                    if count >= self._logs() + COSIGN_LOG_SLACK:
                        refused[statement.id] = (
                            f"witness {body.witness} holds {count} cosign slots, one per log"
                            " held and the slack: the most kept"
                        )
                        continue
                else:
                    if unknown is None:
                        unknown = sum(
                            n
                            for w, n in self._per_witness.items()
                            if not self.known(w, body.collection, ts)
                        )
                    if unknown >= UNKNOWN_WITNESS_COSIGNS:
                        refused[statement.id] = (
                            f"witness {body.witness} is no peer nor certified by a trusted org,"
                            f" and unknown witnesses hold {UNKNOWN_WITNESS_COSIGNS} cosigns"
                        )
                        continue
                    unknown += 1
                added[body.witness] += 1
            page[slot] = (body, statement)
            keep.append(statement)
        return keep, refused

    def _convict(self, body: CosignBody, first: Any, second: Any, source: str) -> None:
        if len(self._convicted) >= MAX_EQUIVOCATORS:
            return
        evidence = equivocation_evidence(first, second)
        row = EquivocationRow(
            body.witness, body.author, body.collection, body.seq, evidence, int(body.ts), source
        )
        if self.store.put_equivocation(row):
            log.warning(
                "witness %s signed two heads for %s/%s at seq %d: its cosigns are ignored",
                body.witness,
                body.author,
                body.collection,
                body.seq,
            )
        self._convicted.add(body.witness)
        self._splits = ((-1, -1), [])

    @property
    def convicted(self) -> frozenset[str]:
        return frozenset(self._convicted)

    def equivocations(self) -> list[dict[str, Any]]:
        return [
            {
                "witness": r.witness,
                "author": r.author,
                "collection": r.collection,
                "seq": r.seq,
                "found_at": r.found_at,
                "source": r.source,
                "evidence": r.evidence.decode("ascii"),
            }
            for r in self.store.equivocations.rows()
        ]

    def split_views(self) -> list[SplitView]:
        key = (self.store.statements.version, self.store.heads_version)
        if self._splits[0] != key:

            def held(author: str, collection: str, seq: int) -> str | None:
                return self.head_hash(LogKey(author, collection), seq)

            views = split_views(self.cosigns(), held, self.key.node_id, self._convicted)
            self._splits = (key, views)
        return self._splits[1]

    # -- proving split views (the fetching is node/net/proof.py's) --------------------------

    def proof(self, view: SplitView) -> Proof:
        key = (view.author, view.collection, view.seq)
        proof = self._proofs.get(key)
        if proof is None:
            proof = self._proofs[key] = Proof()
        if proof.state in ("pending", "unfollowed") and self.store.is_forked(
            LogKey(view.author, view.collection)
        ):
            proof.state = "fork"  # found in sync meanwhile, or evidence from a peer
        return proof

    def to_prove(self, now: float) -> list[ProofTask]:
        """Split views due a proof attempt, at most PROOFS_PER_TICK: per head that is not
        ours, the cosigns claiming it and whom to ask (peers that witnessed it, then the
        peers its cosigns came from, ASKED_PER_HEAD at most)."""
        if self.config is None or self.authority is None:
            return []
        config = self.config()
        views = self.split_views()
        live = {(v.author, v.collection, v.seq) for v in views}
        for key in [k for k in self._proofs if k not in live]:
            del self._proofs[key]  # a superseded cosign ended it
        # "unfollowed" is asked again: trusting the author later makes the log provable
        due = [
            v
            for v in views
            if (p := self.proof(v)).state in ("pending", "unfollowed") and p.retry_at <= now
        ]
        if not due:
            return []  # the common case: no index of every cosign held is built
        wanted = {(v.author, v.collection, v.seq) for v in due}
        by_slot = {
            (b.witness, b.author, b.collection, b.seq): (b, i)
            for b, i in self._bodies.values()
            if (b.author, b.collection, b.seq) in wanted
        }
        out: list[ProofTask] = []
        for view in due:
            proof = self.proof(view)
            log_key = LogKey(view.author, view.collection)
            if not self.authority.accepts_log(config, view.author, view.collection):
                proof.state = "unfollowed"
                continue
            proof.state = "pending"
            ours_signed = self.store.signed_header(log_key, view.seq)
            ours = None if ours_signed is None else self.head_hash(log_key, view.seq)
            claims: dict[str, tuple[Claim, tuple[str, ...], tuple[str, ...]]] = {}
            for head, seen_by in sorted(view.heads.items()):
                if head == ours:
                    continue
                bodies = [
                    by_slot[(w, view.author, view.collection, view.seq)]
                    for w in seen_by
                    if (w, view.author, view.collection, view.seq) in by_slot
                ]
                if not bodies:
                    continue
                ask: list[str] = [b.witness for b, _ in bodies if config.peer(b.witness)]
                for _, statement_id in bodies:
                    row = self.store.statements.get(statement_id)
                    relay = row.source.removeprefix("peer:") if row else ""
                    if row and row.source.startswith("peer:") and relay not in ask:
                        ask.append(relay)
                claims[head] = (bodies[0][0], tuple(seen_by), tuple(ask[:ASKED_PER_HEAD]))
            if not claims:
                continue
            out.append(ProofTask(view.author, view.collection, view.seq, ours_signed, claims))
            if len(out) >= PROOFS_PER_TICK:
                break
        return out

    def settle(
        self, task: ProofTask, answers: dict[str, dict[str, Answer]], now: float
    ) -> ForkEvidence | None:
        """Judge what the peers answered for each head (`answers[head][peer]`: a header,
        or why none came). A header that verifies as the author's (the cosigned hash, a
        key the authority lets sign the log there) and differs from another such header
        is fork evidence: stored and the log frozen as a fork found in sync is, returned
        for gossip. A head no asked peer could back makes the view "unproven", its
        witnesses suspects; a peer that was unreachable leaves it pending, retried."""
        view_key = (task.author, task.collection, task.seq)
        proof = self._proofs.setdefault(view_key, Proof())
        proven: list[SignedHeader] = [] if task.ours is None else [task.ours]
        unbacked: set[str] = set()
        unreachable = False
        backers: list[str] = []
        whys: list[str] = []
        assert self.config is not None and self.authority is not None
        config = self.config()
        for head, (claim, seen_by, asked) in sorted(task.claims.items()):
            got: SignedHeader | None = None
            for peer in asked:
                answer = answers.get(head, {}).get(peer, "not asked")
                if isinstance(answer, str):
                    if answer.startswith("unreachable"):
                        unreachable = True
                    whys.append(f"{peer[:20]}: {answer}")
                    continue
                try:
                    header = prove_head(answer, claim)
                except ProtocolError as exc:
                    whys.append(f"{peer[:20]}: {exc}")
                    continue
                refusal = self.authority.refuses(config, header)
                if refusal is not None:
                    whys.append(f"{peer[:20]}: {refusal.reason}")
                    continue
                got = answer
                backers.append(peer)
                break
            if got is None:
                unbacked.update(seen_by)
            else:
                proven.append(got)
        for n, first in enumerate(proven):
            for second in proven[n + 1 :]:
                if first.header_bytes == second.header_bytes:
                    continue
                try:
                    evidence = build_evidence(first, second)
                except ProtocolError:
                    continue
                # the peer that produced the conflicting header: the fork's source
                self.store.add_evidence(evidence, source=f"witness:{backers[0]}")
                proof.state, proof.suspects, proof.why = "fork", set(), ""
                log.warning(
                    "split view of %s/%s at seq %d proven: two headers signed for it; the log"
                    " is frozen",
                    task.author,
                    task.collection,
                    task.seq,
                )
                return evidence
        if unreachable:
            proof.retry_at = now + PROOF_RETRY_S
            proof.why = "; ".join(whys)[:500]
            return None
        if unbacked:
            proof.state = "unproven"
            proof.suspects = unbacked
            proof.why = "; ".join(whys)[:500]
            log.warning(
                "split view of %s/%s at seq %d unproven: no header backs the cosign of %s",
                task.author,
                task.collection,
                task.seq,
                ", ".join(sorted(unbacked)),
            )
        return None

    def view_json(self, view: SplitView) -> dict[str, Any]:
        proof = self.proof(view)
        return {
            **view.to_json(),
            "proof": proof.state,
            "suspects": sorted(proof.suspects),
            "why": proof.why,
        }

    def _report_new_splits(self) -> None:
        for view in self.split_views():
            key = (view.author, view.collection, view.seq)
            if key not in self._reported:
                self._reported.add(key)
                log.warning(
                    "split view: log %s/%s at seq %d has %d different heads (%s)",
                    view.author,
                    view.collection,
                    view.seq,
                    len(view.heads),
                    "; ".join(f"{h[:12]}: {', '.join(w)}" for h, w in sorted(view.heads.items())),
                )

    def report(self, author: str, collection: str, now: int) -> list[WitnessLine]:
        """Which witnesses (and the orgs certifying them now) saw which head of one log."""
        log_key = LogKey(author, collection)
        our_seq = self.store.head(log_key)
        return witnesses(
            author,
            collection,
            self.cosigns(),
            lambda seq: self.head_hash(log_key, seq),
            our_seq,
            lambda w: self.vouchers(w, now),
            self._convicted,
        )

    def status(self, readable: set[str] | None = None) -> dict[str, Any]:
        views = [v for v in self.split_views() if readable is None or v.collection in readable]
        caught = [
            e for e in self.equivocations() if readable is None or e["collection"] in readable
        ]
        # no count of cosigns held: a running node cosigns what an offline look at the same
        # home would not, and status must say the same either way (only more when running)
        return {
            "split_views": [self.view_json(v) for v in views[:MAX_SPLIT_VIEWS_SHOWN]],
            "split_views_total": len(views),
            "equivocating_witnesses": [
                {k: v for k, v in e.items() if k != "evidence"}
                for e in caught[:MAX_SPLIT_VIEWS_SHOWN]
            ],
        }
