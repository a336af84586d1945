"""Which key may sign which batch of a log, from the certificates, hand-overs and key
revocations held (protocol/certificates.py). Pure: verified statements in, answers out; no
clock (the caller passes the header, whose ts is the signer's claim in milliseconds;
certificate periods are in seconds).

Every answer is a function of the SET of statements added, never of their order: copies of
one statement merge (the union of their signatures), and everything else is derived from
the merged set (cached until the next add that changes it). Two nodes holding the same
statements decide the same, whatever order gossip brought them in.

Rules (docs/protocol.md, "Authority"; the reasons are in docs/design-notes.md):

- Certificates. An org vouches for key K at time t when it holds a cert of K with
  not_before <= t <= not_after. Vouching needs only the org's signature: whether a node
  trusts that org is the node's choice. Power over K (revoking it, handing its logs over
  when it is lost) needs a cert K co-signed ("accepted"): otherwise any org could
  certify anyone's key, then revoke it or take its logs.
- Revocations. In force only when its org holds an accepted cert of the key (any period).
  Per (key, collection) the lowest bound wins; "*" covers every collection. Batches signed
  by the key in the collection with seq > bound are refused, in every log it signs.
- Hand-overs. Valid when signed by `next` and by `key` (unless `key` is revoked below the
  hand-over's seq: a stolen key cannot pass a log on past its revocation point), or by the
  org the hand-over names, holding an accepted cert of `key` and a cert of `next` (the
  lost-key path). A log's
  keys form a chain from its author: author signs 1..s1, next signs s1+1..s2, and so on.
  From one key, org-signed hand-overs outrank key-signed ones (the org's word settles a
  key that was stolen). Two different valid hand-overs of equal rank from one key (the key
  handing the log to two successors, or at two points) are a conflict: nothing after the
  lower seq is accepted until an org-signed hand-over settles it; `conflicts()` lists them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise

from hashmesh.protocol.batches import Header
from hashmesh.protocol.certificates import (
    ALL_COLLECTIONS,
    CertBody,
    HandoverBody,
    KeyRevokeBody,
)
from hashmesh.protocol.errors import ProtocolUsageError
from hashmesh.protocol.statements import Statement, merge

KEY_KINDS = frozenset({"cert", "handover", "key-revoke"})

#: (key, collection, after, statement id) of a revocation in force.
Revocation = tuple[str, str, int, str]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a header may not be accepted. `code` is one of: revoked, handed-over,
    not-handed-over, conflict, not-certified, certificate-expired,
    certificate-not-yet-valid, head-mismatch. `reason` is the sentence to show."""

    code: str
    reason: str

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class Segment:
    """Seqs first..last (None: no end) of a log are signed by `signer` only; `signer` None
    means no key may sign them (revoked with no successor, or a conflict), `why` says."""

    first: int
    last: int | None
    signer: str | None
    why: str = ""
    #: why nobody signs: "revoked" or "conflict" ("" when signer is set)
    code: str = ""
    #: id of the hand-over that ends this segment (None if it does not end by one)
    handover: str | None = None

    def covers(self, seq: int) -> bool:
        return self.first <= seq and (self.last is None or seq <= self.last)


@dataclass(frozen=True, slots=True)
class DropRange:
    """Held batches of log (author, collection) at seqs first..last (None: to the head)
    must be dropped unless signed by `keep` (None: all of them)."""

    author: str
    collection: str
    first: int
    last: int | None
    keep: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class _Cert:
    org: str
    not_before: int
    not_after: int
    accepted: bool  # co-signed by the key


@dataclass(frozen=True, slots=True)
class _Hop:
    id: str
    body: HandoverBody
    signers: frozenset[str]


class _Index:
    """The merged statements by kind, kept as they arrive, and what is derived from them,
    computed when first asked and forgotten on every change: a change costs a few
    dictionary writes, and a decision computes only what its log needs (a node holding
    10,000 hand-overs does not re-derive them all for each page of statements)."""

    def __init__(self) -> None:
        self.certs: dict[str, dict[str, _Cert]] = {}  # key -> statement id -> cert
        self.revokes: dict[str, dict[str, KeyRevokeBody]] = {}  # key -> id -> body
        self.raw_hops: dict[tuple[str, str, str], dict[str, _Hop]] = {}  # (a, c, key)
        self.signed_logs: dict[str, set[tuple[str, str]]] = {}
        self._forget()

    def _forget(self) -> None:
        self.bounds: dict[tuple[str, str], tuple[int, str, str, str] | None] = {}
        self.hops: dict[tuple[str, str, str], list[tuple[int, _Hop]]] = {}
        self.chains: dict[tuple[str, str], list[Segment]] = {}
        self.conflicts: list[tuple[str, ...]] = []
        self._revoked: dict[tuple[str, str], tuple[int, str, str, str]] | None = None

    def add(self, st: Statement) -> None:
        """Learn a statement, or the merged copy of one held (same id, more signatures)."""
        body = st.body
        if isinstance(body, CertBody):
            self.certs.setdefault(body.key, {})[st.id] = _Cert(
                body.org, body.not_before, body.not_after, body.key in st.signers
            )
        elif isinstance(body, KeyRevokeBody):
            self.revokes.setdefault(body.key, {})[st.id] = body
        elif isinstance(body, HandoverBody):
            log = (body.author, body.collection)
            self.raw_hops.setdefault((*log, body.key), {})[st.id] = _Hop(st.id, body, st.signers)
            self.signed_logs.setdefault(body.key, set()).add(log)
            self.signed_logs.setdefault(body.next, set()).add(log)
        self._forget()

    @property
    def revoked(self) -> dict[tuple[str, str], tuple[int, str, str, str]]:
        """Revocations in force: the lowest bound per (key, collection), ties by id."""
        if self._revoked is None:
            out: dict[tuple[str, str], tuple[int, str, str, str]] = {}
            for key, held in self.revokes.items():
                accepted = self.accepted(key)
                for statement_id, rb in held.items():
                    if rb.org not in accepted:
                        continue
                    slot = (key, rb.collection)
                    mine = (rb.after, statement_id, rb.org, rb.reason)
                    if slot not in out or mine < out[slot]:
                        out[slot] = mine
            self._revoked = out
        return self._revoked

    def certs_of(self, key: str) -> Iterable[_Cert]:
        return self.certs.get(key, {}).values()

    def certified(self, key: str) -> frozenset[str]:
        return frozenset(c.org for c in self.certs_of(key))

    def accepted(self, key: str) -> frozenset[str]:
        return frozenset(c.org for c in self.certs_of(key) if c.accepted)

    def bound(self, key: str, collection: str) -> tuple[int, str, str, str] | None:
        """The revocation in force for key in collection: (after, id, org, reason)."""
        slot = (key, collection)
        if slot in self.bounds:
            return self.bounds[slot]
        accepted = self.accepted(key) if key in self.revokes else frozenset()
        hits = [
            (rb.after, statement_id, rb.org, rb.reason)
            for statement_id, rb in self.revokes.get(key, {}).items()
            if rb.collection in (collection, ALL_COLLECTIONS) and rb.org in accepted
        ]
        found = self.bounds[slot] = min(hits) if hits else None
        return found

    def valid_hops(self, author: str, collection: str, key: str) -> list[tuple[int, _Hop]]:
        """The valid hand-overs from `key` of the log, each with its rank (0 = by an org)."""
        slot = (author, collection, key)
        found = self.hops.get(slot)
        if found is None:
            found = []
            for hop in self.raw_hops.get(slot, {}).values():
                rank = self._rank(hop)
                if rank is not None:
                    found.append((rank, hop))
            self.hops[slot] = found
        return found

    def _rank(self, hop: _Hop) -> int | None:
        hb = hop.body
        if hb.next not in hop.signers:
            return None
        if (
            hb.org is not None
            and hb.org in hop.signers
            and hb.org in self.accepted(hb.key)
            and hb.org in self.certified(hb.next)
        ):
            return 0
        if hb.key in hop.signers:
            bound = self.bound(hb.key, hb.collection)
            if bound is None or hb.seq <= bound[0]:
                return 1
        return None

    def chain(self, author: str, collection: str) -> list[Segment]:
        """The log's key segments, hand-overs followed, before revocations are applied."""
        found = self.chains.get((author, collection))
        if found is not None:
            return found
        out: list[Segment] = []
        key, first, seen = author, 1, {author}
        while True:
            hops = [
                (rank, hop)
                for rank, hop in self.valid_hops(author, collection, key)
                if hop.body.seq >= first - 1 and hop.body.next not in seen
            ]
            if not hops:
                out.append(Segment(first, None, key))
                break
            top = min(rank for rank, _ in hops)
            best = sorted(
                (hop for rank, hop in hops if rank == top), key=lambda h: (h.body.seq, h.id)
            )
            distinct = {(h.body.next, h.body.seq, h.body.head) for h in best}
            low = best[0]
            if len(distinct) > 1:
                self.conflicts.append(tuple(h.id for h in best))
                out.append(Segment(first, low.body.seq, key))
                nexts = ", ".join(sorted({h.body.next for h in best}))
                out.append(
                    Segment(
                        low.body.seq + 1,
                        None,
                        None,
                        f"key {key} handed log {author}/{collection} over twice "
                        f"(to {nexts}); nothing after seq {low.body.seq} is accepted until "
                        "an org-signed hand-over settles it",
                        code="conflict",
                    )
                )
                break
            out.append(Segment(first, low.body.seq, key, handover=low.id))
            key, first = low.body.next, low.body.seq + 1
            seen.add(key)
        self.chains[(author, collection)] = out
        return out

    def segments(self, author: str, collection: str) -> list[Segment]:
        """The chain with each signer's revocation applied (seqs above its bound: nobody)."""
        out: list[Segment] = []
        for seg in self.chain(author, collection):
            if seg.first > (seg.last if seg.last is not None else seg.first):
                continue  # a key that handed over before signing anything
            hit = None if seg.signer is None else self.bound(seg.signer, collection)
            if hit is None or (seg.last is not None and seg.last <= hit[0]):
                out.append(seg)
                continue
            after, _, org, reason = hit
            if after >= seg.first:
                out.append(Segment(seg.first, after, seg.signer))
            out.append(
                Segment(
                    max(seg.first, after + 1),
                    seg.last,
                    None,
                    f"key {seg.signer} revoked after seq {after} by {org} ({reason})",
                    code="revoked",
                    handover=seg.handover,
                )
            )
        return out


class Authority:
    """The statements about keys a node holds, and the decisions they imply."""

    def __init__(self, statements: Iterable[Statement] = ()) -> None:
        self._by_id: dict[str, Statement] = {}
        self._index = _Index()
        self._segments: dict[tuple[str, str], tuple[list[Segment], list[int]]] = {}
        self.add_all(statements)

    # -- adding ----------------------------------------------------------------------------

    def add(self, statement: Statement) -> bool:
        """Learn a verified statement (other kinds are ignored). True if anything changed:
        a new statement, or new signatures on a held one."""
        if statement.kind.name not in KEY_KINDS:
            return False
        held = self._by_id.get(statement.id)
        merged = statement if held is None else merge(held, statement)
        if held is not None and merged.sigs == held.sigs:
            return False
        self._by_id[statement.id] = merged
        self._index.add(merged)
        self._segments = {}
        return True

    def add_all(self, statements: Iterable[Statement]) -> bool:
        changed = False
        for statement in statements:
            changed = self.add(statement) or changed
        return changed

    def statements(self) -> list[Statement]:
        return [self._by_id[k] for k in sorted(self._by_id)]

    def _ix(self) -> _Index:
        return self._index

    # -- certificates ----------------------------------------------------------------------

    def certified(self, key: str) -> frozenset[str]:
        """Every org that certified `key`, for any period."""
        return self._ix().certified(key)

    def accepted(self, key: str) -> frozenset[str]:
        """The orgs whose certificate `key` co-signed: the orgs with power over it."""
        return self._ix().accepted(key)

    def vouchers(self, key: str, ts: int) -> frozenset[str]:
        """The orgs whose certificate of `key` covers `ts` (unix seconds)."""
        return frozenset(
            c.org for c in self._ix().certs_of(key) if c.not_before <= ts <= c.not_after
        )

    # -- revocations -----------------------------------------------------------------------

    def revocations(self) -> list[Revocation]:
        """The revocations in force, the lowest bound per (key, collection)."""
        return sorted((k, c, a, i) for (k, c), (a, i, _, _) in self._ix().revoked.items())

    def revoked(self, key: str, collection: str, seq: int) -> str | None:
        """Why `key` may not sign `seq` in `collection` (revoked below it), or None."""
        hit = self._ix().bound(key, collection)
        if hit is not None and seq > hit[0]:
            return f"key {key} revoked after seq {hit[0]} by {hit[2]} ({hit[3]})"
        return None

    def logs_signed_by(self, key: str) -> list[tuple[str, str]]:
        """The logs (author, collection) that hand-overs (valid or not) name `key` in; with
        the logs `key` authored itself, those a revocation of `key` can touch."""
        return sorted(self._ix().signed_logs.get(key, ()))

    # -- hand-overs ------------------------------------------------------------------------

    def segments(self, author: str, collection: str) -> list[Segment]:
        """Who signs which seqs of the log, hand-overs and revocations applied, in order."""
        return self._cached(author, collection)[0]

    def _cached(self, author: str, collection: str) -> tuple[list[Segment], list[int]]:
        found = self._segments.get((author, collection))
        if found is None:
            segs = self._ix().segments(author, collection)
            found = self._segments[(author, collection)] = (segs, [s.first for s in segs])
        return found

    def _segment(self, author: str, collection: str, seq: int) -> Segment:
        if seq < 1:
            raise ProtocolUsageError(f"authority: seq {seq} (seqs start at 1)")
        segs, firsts = self._cached(author, collection)
        return segs[bisect_right(firsts, seq) - 1]

    def signer_for(self, author: str, collection: str, seq: int) -> str | None:
        """The key that may sign `seq` of log (author, collection); None if no key may."""
        return self._segment(author, collection, seq).signer

    def handovers(self, author: str, collection: str) -> list[tuple[str, int, str]]:
        """(key, last seq it signs, next key) of the log's chain, in order."""
        chain = self._ix().chain(author, collection)
        return [
            (seg.signer, seg.last, nxt.signer)
            for seg, nxt in pairwise(chain)
            if seg.signer is not None and seg.last is not None and nxt.signer is not None
        ]

    def conflicts(self) -> list[tuple[str, ...]]:
        """Groups of hand-over ids from one key of one log that disagree (evidence)."""
        ix = self._ix()
        for author, collection, _ in sorted(ix.raw_hops):
            ix.chain(author, collection)
        return sorted(set(ix.conflicts))

    def check_head(self, author: str, collection: str, seq: int, head: str) -> Refusal | None:
        """A held header at `seq` (hex header hash `head`) against the hand-over followed
        at that seq, if any: a different head means the hand-over links another history."""
        for seg in self._ix().chain(author, collection):
            if seg.handover is not None and seg.last == seq:
                hop = self._by_id[seg.handover].body
                assert isinstance(hop, HandoverBody)
                if hop.head != head:
                    return Refusal(
                        "head-mismatch",
                        f"hand-over {seg.handover[:16]} of {author}/{collection} at seq {seq} "
                        f"names head {hop.head[:16]}, the batch held there is {head[:16]}",
                    )
        return None

    # -- the decision ----------------------------------------------------------------------

    def decide(
        self,
        author: str,
        collection: str,
        seq: int,
        signer: str,
        ts: int,
        trusted_orgs: frozenset[str] | None = None,
    ) -> Refusal | None:
        """None if `signer` may sign `seq` of the log at `ts` (unix seconds), else why not.

        With `trusted_orgs` (the node trusts the log through orgs, not its author by name)
        the signer must also hold a certificate by one of them covering `ts`."""
        seg = self._segment(author, collection, seq)
        if seg.signer is None:
            return Refusal(seg.code, f"seq {seq} of {author}/{collection}: {seg.why}")
        if signer != seg.signer:
            return self._wrong_signer(author, collection, seq, signer)
        if trusted_orgs is not None:
            return self._certificate(signer, ts, trusted_orgs)
        return None

    def check_header(
        self, header: Header, trusted_orgs: frozenset[str] | None = None
    ) -> Refusal | None:
        """decide() for a parsed header (its ts is in milliseconds)."""
        return self.decide(
            header.author,
            header.collection,
            header.seq,
            header.signed_by,
            header.ts // 1000,
            trusted_orgs,
        )

    def check(self, author: str, collection: str, seq: int, signer: str, ts: int) -> str | None:
        """decide() without certificates, as a sentence (the node's first API)."""
        refusal = self.decide(author, collection, seq, signer, ts)
        return None if refusal is None else refusal.reason

    def _wrong_signer(self, author: str, collection: str, seq: int, signer: str) -> Refusal:
        log = f"{author}/{collection}"
        for seg in self._ix().chain(author, collection):
            if seg.signer != signer:
                continue
            if seg.last is not None and seq > seg.last:
                return Refusal(
                    "handed-over", f"key {signer} handed log {log} over at seq {seg.last}"
                )
            if seq < seg.first:
                return Refusal(
                    "not-handed-over",
                    f"key {signer} signs log {log} only after seq {seg.first - 1}",
                )
        return Refusal(
            "not-handed-over",
            f"key {signer} does not sign seq {seq} of {log} (not handed over to it)",
        )

    def _certificate(self, signer: str, ts: int, orgs: frozenset[str]) -> Refusal | None:
        certs = [c for c in self._ix().certs_of(signer) if c.org in orgs]
        if any(c.not_before <= ts <= c.not_after for c in certs):
            return None
        if not certs:
            return Refusal(
                "not-certified", f"key {signer} has no certificate by an org trusted here"
            )
        if all(ts > c.not_after for c in certs):
            last = max(c.not_after for c in certs)
            return Refusal(
                "certificate-expired",
                f"key {signer}: certificate expired at {last}, header ts {ts}",
            )
        if all(ts < c.not_before for c in certs):
            first = min(c.not_before for c in certs)
            return Refusal(
                "certificate-not-yet-valid",
                f"key {signer}: certificate valid from {first}, header ts {ts}",
            )
        return Refusal(
            "not-certified", f"key {signer}: no certificate by a trusted org covers ts {ts}"
        )

    # -- what held data must go ------------------------------------------------------------

    def drop_ranges(self, heads: Mapping[tuple[str, str], int]) -> list[DropRange]:
        """For the held logs (author, collection) -> head seq: the seq ranges whose held
        batches must be dropped unless signed by the range's `keep` key. A log signed by
        its author alone, with no revocation touching it, gives none."""
        out: list[DropRange] = []
        for (author, collection), head in sorted(heads.items()):
            segs = self.segments(author, collection)
            if segs == [Segment(1, None, author)]:
                continue
            for seg in segs:
                if seg.first > head:
                    break
                last = head if seg.last is None else min(seg.last, head)
                reason = seg.why or f"seqs {seg.first}-{last} are signed by {seg.signer}"
                out.append(DropRange(author, collection, seg.first, last, seg.signer, reason))
        return out
