"""What a node does, as plain methods: publish, revoke, opine, match, export, import, status.

The CLI calls these directly when the node is not running, and the HTTP API calls the same
methods when it is, so a command gives the same result either way. Every method takes and
returns JSON-able values and raises NodeError (one sentence) for anything it refuses,
before changing anything.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from hashmesh.node.authority import NodeAuthority
from hashmesh.node.config import (
    Config,
    Follow,
    Home,
    Peer,
    Trust,
    check_url,
    parse_listen,
    validate_name,
)
from hashmesh.node.errors import Conflict, HomeError, NodeError, NotFound, caller_input
from hashmesh.node.hashing.degenerate import degenerate_reason
from hashmesh.node.identity import NodeIdentities, OwnIdentity
from hashmesh.node.intake import JOURNAL_FILE, Intake, NotPrimed, Tip, op_ids_of, sign_batches
from hashmesh.node.keys import create_key, load_key, new_token, write_key, write_secret
from hashmesh.node.membership import NodeMemberships
from hashmesh.node.progress import Counter
from hashmesh.node.statements import StatementBook
from hashmesh.node.store.backup import (
    NODE_ID_KEY,
    backup_database,
    checkpoint,
    database_node_id,
    open_backup,
)
from hashmesh.node.store.core import IngestResult, Store, StoreReader, now_ms
from hashmesh.node.store.quarantine import DEGENERATE_REASON
from hashmesh.node.witness import NodeWitness
from hashmesh.protocol.batches import AnyOp, LogKey, header_hash, parse_header
from hashmesh.protocol.bundles import (
    MAX_MEMBERSHIP_BYTES,
    BundleCheck,
    BundleDecoder,
    encode_bundle_header,
    membership_of,
)
from hashmesh.protocol.certificates import (
    ALL_COLLECTIONS,
    CertBody,
    HandoverBody,
    KeyRevokeBody,
)
from hashmesh.protocol.errors import BundleError, ProtocolError
from hashmesh.protocol.identity import MAX_CHAIN
from hashmesh.protocol.kinds import REGISTRY
from hashmesh.protocol.membership import Document, carried
from hashmesh.protocol.membership import describe as describe_membership
from hashmesh.protocol.ops import AddOp, OpId, OpinionOp, RevokeOp, validate_collection
from hashmesh.protocol.signing import SigningKey, validate_node_id
from hashmesh.protocol.statements import (
    Statement,
    add_signatures,
    parse_statement_json,
    sign_statement,
)

if TYPE_CHECKING:
    from hashmesh.node.matching.matcher import Matcher

log = logging.getLogger("hashmesh.service")
DEFAULT_CATEGORY = "unspecified"
RESTORED_KEY = "restored_from_backup"
#: The node whose database this is (store meta): a restore of another node's is refused.
BUNDLE_CHUNK = 1 << 20
SIGNING_KEY_FILE = "signing.key"  # after a key rotation (node.key stays the identity)
PREVIOUS_KEYS = "previous_signing_keys"  # store meta: JSON list of node ids
IDENTITY_CHAIN = "identity_chain"  # store meta: JSON list, config node_id .. node.key's id
IDENTITY_INTRODUCED = "identity_introduced"  # store meta: {"key", "peers"} that accepted it
PREPARED_KEY_FILE = "signing.key.next"  # made by `key rotate --prepare`
BUNDLE_STATEMENT_BYTES = 512 * 1024  # of a manifest's 1 MiB
MAX_BUNDLE_STATEMENTS = 4096
# Logs and trust entries a status lists: with thousands of participants the whole lists
# made /v1/status 2.7 MB and a second of work; the rest is paged (/v1/status/logs).
STATUS_LOGS = 100
MAX_STATUS_LOGS = 1000
STATUS_TRUST = 100


def init_home(path: str | Path, name: str, listen: str | None, url: str | None) -> Config:
    """Create a node home: key (0600), admin token (0600), config and an empty database."""
    home = Home(path)
    validate_name(name, "name")
    listen = listen or Config.listen
    parse_listen(listen)
    if url:
        check_url(url)
    if home.exists():
        raise HomeError(f"{home.path} already holds a hashmesh node; refusing to overwrite it")
    home.path.mkdir(parents=True, exist_ok=True)
    os.chmod(home.path, 0o700)
    key = create_key(home.key_path)
    write_secret(home.admin_token_path, new_token() + "\n")
    config = Config(name=name, node_id=key.node_id, listen=listen, url=url or f"http://{listen}")
    home.save_config(config)
    os.close(os.open(home.db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    store = Store(home.db_path)  # its -wal and -shm files take the database's 0600
    store.set_meta(NODE_ID_KEY, key.node_id)
    store.close()
    return config


def _protocol(call: Any, *args: Any, **kwargs: Any) -> Any:
    """A protocol parser given the caller's values: its ProtocolError is the caller's."""
    with caller_input():
        return call(*args, **kwargs)


class NodeService:
    """One node's operations over its home. Not thread-safe: one caller at a time."""

    def __init__(self, home: Home, store: Store | None = None) -> None:
        self.home = home
        self.config = home.load_config()
        self._config_mtime = home.config_mtime()
        # node.key: the peer identity. The node's id (config node_id, the author of its
        # logs, the id its peers configured) stays; after `key rotate --identity` node.key
        # holds the successor the identity statements lead to (IDENTITY_CHAIN).
        self.store = store or Store(home.db_path)
        try:
            staged = home.key_path.with_name(f"{home.key_path.name}.new")
            if staged.exists():  # a `key rotate --identity` that stopped half-way
                self._finish_identity_files(staged)
            self.key = load_key(home.key_path)
        except HomeError:
            self.store.close()
            raise
        chain = self._identity_chain()
        if self.key.node_id != (chain[-1] if chain else self.config.node_id):
            self.store.close()
            raise HomeError(f"{home.key_path} does not hold the key of node {self.config.node_id}")
        recorded = self.store.meta(NODE_ID_KEY)
        if recorded is None:  # a database made before node ids were recorded in it
            self.store.set_meta(NODE_ID_KEY, self.config.node_id)
        elif recorded != self.config.node_id:
            self.store.close()
            raise HomeError(
                f"database {home.db_path} belongs to node {recorded}, not to this home's "
                f"node {self.config.node_id}; restore your own backup (hashmesh restore)"
            )
        self._matcher: Matcher | None = None
        self.statements = StatementBook(self.store, REGISTRY)
        self.authority = NodeAuthority(self.statements)
        self.authority.change_listeners.append(self._withdraw)
        self.identities = NodeIdentities(self.statements)
        if (
            len(chain) > 1
            and self.identities.link(chain[-2], chain[-1]) is None
            and self._old_key_path(chain[-2]).exists()
        ):
            self._sign_identity_link(chain[-2])  # stopped before the statement was stored
        self.own_identity = self._own_identity()
        self.signing_key = self._load_signing_key()
        # followed collections' membership (node/membership.py) and this node as a
        # witness of the logs it holds (node/witness.py)
        self.memberships = NodeMemberships(
            self.statements, lambda: self.config, self.authority.vouchers
        )
        self.authority.writers = self.memberships
        # a revocation of a key we trust goes in even past the statement caps
        self.statements.always.append(lambda s: self.authority.admits_always(self.config, s))
        self.memberships.apply(self.config)
        self.witness = NodeWitness(
            self.store,
            self.statements,
            self.key,
            self.authority.vouchers,
            config=lambda: self.config,
            authority=self.authority,
        )
        # the own logs' sequencer: a start first stores what the journal still holds
        self.intake = Intake(self.store)
        self.intake.restored = bool(self.store.meta(RESTORED_KEY))
        self._intake_reader: StoreReader | None = None
        self.intake.replay(home.path / JOURNAL_FILE)

    @property
    def node_id(self) -> str:
        return self.config.node_id

    def close(self) -> None:
        self.intake.close()
        if self._intake_reader is not None:
            self._intake_reader.close()
        self.store.close()

    def reload_config_if_changed(self) -> bool:
        """Pick up hand edits of config.toml without a restart."""
        mtime = self.home.config_mtime()
        if mtime == self._config_mtime:
            return False
        self.config = self.home.load_config()
        self.memberships.apply(self.config)
        self._config_mtime = mtime
        return True

    def _save_config(self) -> None:
        self.home.save_config(self.config)
        self._config_mtime = self.home.config_mtime()

    # -- publishing ----------------------------------------------------------------------

    def publish(
        self, collection: str, ops: list[AnyOp], ts: int | None = None
    ) -> tuple[list[OpId], IngestResult]:
        """Sign ops into batches of at most batch_size and store them in order (`ts`: a
        coarser signed time, for publishers that promise not to keep the exact one). The
        store thread's (and the offline CLI's) path: journalled frames go in first, and
        the intake's lock is held to the commit, so no add is signed at the same seq."""
        _protocol(validate_collection, collection)
        self._refuse_if_restored()
        op_ids: list[OpId] = []
        total = IngestResult()
        with self.intake.lock:
            self.intake.apply()
            try:
                when = now_ms() if ts is None else ts
                tip = self._store_tip(collection)
                for batch in sign_batches(self.signing_key, tip, ops, when, self.config.batch_size):
                    result = self.store.ingest(batch, source="local")
                    if result.outcome != "applied":
                        raise NodeError(
                            f"publishing to {collection} failed: batch was {result.outcome}"
                        )
                    op_ids.extend(op_ids_of([batch]))
                    total.decisions.extend(result.decisions)
                    total.added.extend(result.added)
                    total.removed.extend(result.removed)
            finally:
                if self.intake.tip(collection) is not None:
                    self.intake.set_tip(collection, self._store_tip(collection))
        return op_ids, total

    def _refuse_if_restored(self) -> None:
        if self.intake.restored and self.config.peers:
            raise Conflict(
                "this database was restored from a backup: start the node and let it sync "
                "with its peers before publishing (they hold your later batches; publishing "
                "now would fork your log)"
            )

    def clear_restored(self) -> None:
        """A sync round succeeded after a restore: the peers' copies of our logs are in."""
        if self.intake.restored:
            self.store.set_meta(RESTORED_KEY, None)
            self.intake.restored = False

    def _store_tip(self, collection: str) -> Tip:
        key = self._log_key(collection)
        seq = self.store.head(key)
        held = self.store.signed_header(key, seq) if seq else None
        return Tip(key, seq, header_hash(held.header_bytes) if held else None)

    # -- the journal path: a running node's adds (node/intake.py) --------------------------

    def open_intake(self) -> None:
        """Journal this running node's adds in intake.db from now on, and take every own
        log's tip at once so that no add waits for the store thread to learn one. Store
        thread, at start."""
        self.intake.open(self.home.path / JOURNAL_FILE)
        if self.intake.restored:
            return  # the first publish after the sync primes (and is refused before)
        own = {self.node_id, *self._previous_keys(), self.signing_key.node_id}
        for collection in sorted({k.collection for k in self.store.vector() if k.author in own}):
            self.prime_intake(collection)

    def prime_intake(self, collection: str) -> None:
        """Take `collection`'s tip from the store (store thread), so the intake thread can
        sign for it."""
        _protocol(validate_collection, collection)
        self._refuse_if_restored()
        with self.intake.lock:
            self.intake.apply()
            self.intake.set_tip(collection, self._store_tip(collection))

    def apply_intake(self) -> int:
        """Store the journalled frames (store thread); the number of batches stored."""
        return self.intake.apply()

    def journal_publish(
        self, collection: str, ops: list[AnyOp], ts: int | None = None
    ) -> tuple[list[OpId], list[int]]:
        """Sign `ops` from the collection's tip and journal them (intake thread): the op
        ids and the frames to wait for. Raises NotPrimed before signing anything when no
        tip is held yet."""
        _protocol(validate_collection, collection)
        with self.intake.lock:
            tip = self.intake.tip(collection)
            if tip is None:
                raise NotPrimed(collection)
            self._refuse_if_restored()
            when = now_ms() if ts is None else ts
            batches = list(sign_batches(self.signing_key, tip, ops, when, self.config.batch_size))
            frames = self.intake.journal_batches(collection, batches)
        return list(op_ids_of(batches)), frames

    def journal_held(self, collection: str, op: AddOp) -> str | None:
        """`held_add` for the intake thread: a journalled add first, then the store's last
        commit (through a reader of its own, never the store thread's caches)."""
        held = self.intake.held(collection, op.type, op.value)
        if held is not None:
            return held
        if self._intake_reader is None:
            self._intake_reader = StoreReader(self.store.path)
        return self._intake_reader.own_live_op(self.node_id, collection, op.type, op.value)

    def journal_add_many(
        self, collection: str, items: list[dict[str, Any]], ts: int | None = None
    ) -> tuple[dict[str, Any], list[int]]:
        """`add_many` through the journal (intake thread): the answer, and its frames."""
        ops, results = self._prepare_many(collection, items, self.journal_held)
        op_ids, frames = self.journal_publish(collection, list(ops), ts) if ops else ([], [])
        return _published(collection, results, op_ids), frames

    def prepare_add(
        self,
        type: str,
        value: str,
        collection: str,
        category: str | None = None,
        classification: str | None = None,
        ref: str | None = None,
        quality: int | None = None,
        allow_low_quality: bool = False,
    ) -> AddOp:
        _protocol(validate_collection, collection)
        op: AddOp = _protocol(
            AddOp.create,
            type,
            value,
            category=category or DEFAULT_CATEGORY,
            quality=quality,
            classification=classification,
            ref=ref,
        )
        degenerate = degenerate_reason(op.type, op.value)
        if degenerate is not None:
            raise NodeError(f"value: refused, {degenerate}")
        minimum = self.config.min_pdq_quality
        if op.type == "pdq" and quality is not None and quality < minimum and not allow_low_quality:
            raise NodeError(
                f"pdq quality {quality} is below the publishing minimum {minimum}: such hashes "
                "match unrelated pictures (use --allow-low-quality to publish anyway)"
            )
        return op

    def held_add(self, collection: str, op: AddOp) -> str | None:
        """The op id of this node's live add of `op`'s signal in `collection`, if any: the
        one de-duplication rule of every publishing path (publishing it again would only
        add a second op for the same signal). A journalled add counts before it is stored."""
        journalled = self.intake.held(collection, op.type, op.value)
        if journalled is not None:
            return journalled
        existing = self.store.find_own_live(self.node_id, collection, op.type, op.value)
        if existing is None:
            return None
        signal = self.store.signal(existing)
        assert signal is not None
        return str(signal["op_id"])

    def add(self, type: str, value: str, collection: str, **labels: Any) -> dict[str, Any]:
        op = self.prepare_add(type, value, collection, **labels)
        held = self.held_add(collection, op)
        if held is not None:
            return {"op_id": held, "type": op.type, "value": op.value, "new": False}
        op_ids, _ = self.publish(collection, [op])
        return {"op_id": str(op_ids[0]), "type": op.type, "value": op.value, "new": True}

    def add_many(
        self, collection: str, items: list[dict[str, Any]], ts: int | None = None
    ) -> dict[str, Any]:
        """Publish many adds at once (submit, imports); already-live signals are skipped."""
        ops, results = self._prepare_many(collection, items, self.held_add)
        op_ids = self.publish(collection, list(ops), ts)[0] if ops else []
        return _published(collection, results, op_ids)

    def _prepare_many(
        self,
        collection: str,
        items: list[dict[str, Any]],
        held_add: Callable[[str, AddOp], str | None],
    ) -> tuple[list[AddOp], list[dict[str, Any]]]:
        """The adds of `items` to publish, and one answer per item (the new ones without
        their op id yet); refuses the whole list on the first bad item."""
        ops: list[AddOp] = []
        results: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for n, item in enumerate(items):
            if not isinstance(item, dict):
                raise NodeError(f"signals[{n}]: expected an object")
            try:
                op = self.prepare_add(collection=collection, **item)
            except TypeError:
                raise NodeError(f"signals[{n}]: unexpected fields {sorted(item)}") from None
            except NodeError as exc:
                raise NodeError(f"signals[{n}]: {exc}") from None
            held = None if (op.type, op.value) in seen else held_add(collection, op)
            if held is not None or (op.type, op.value) in seen:
                results.append({"type": op.type, "value": op.value, "new": False, "op_id": held})
                continue
            seen.add((op.type, op.value))
            ops.append(op)
            results.append({"type": op.type, "value": op.value, "new": True})
        return ops, results

    def _known_add(self, op_id: str) -> tuple[OpId, dict[str, Any]]:
        target: OpId = _protocol(OpId.parse, op_id)
        signal_id = self.store.signal_id(target)
        if signal_id is None:
            raise NotFound(f"op id {op_id}: no add with this id is known to this node")
        signal = self.store.signal(signal_id)
        assert signal is not None
        return target, signal

    def revoke(self, op_id: str, reason: str = "") -> dict[str, Any]:
        target, signal = self._known_add(op_id)
        if target.author != self.node_id:
            raise NodeError(
                f"op id {op_id}: published by {target.author}, not by this node; only its "
                "author can revoke it (record a dispute opinion instead)"
            )
        if not signal["live"]:
            raise Conflict(f"op id {op_id}: already revoked by {signal['revoked_by']}")
        revoke = _protocol(RevokeOp, targets=[str(target)], reason=reason or "")
        op_ids, _ = self.publish(target.collection, [revoke])
        return {"op_id": str(op_ids[0]), "revoked": str(target), **_what(signal)}

    def opinion(
        self,
        op_id: str,
        opinion: str,
        collection: str | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        target, signal = self._known_add(op_id)
        fields = {} if reason is None else {"reason": reason}
        op = _protocol(OpinionOp.create, str(target), opinion, reason)
        op_ids, _ = self.publish(collection or target.collection, [op])
        out = {"op_id": str(op_ids[0]), "target": str(target), "opinion": opinion, **fields}
        return {**out, **_what(signal), "author": target.author}

    # -- reading -------------------------------------------------------------------------

    @property
    def matcher(self) -> Matcher:
        if self._matcher is None:
            from hashmesh.node.matching.matcher import (
                Matcher,  # numpy: loaded only by commands that match
            )

            self._matcher = Matcher(self.store)
        return self._matcher

    def install_index(self, index: Any, cursor: int, videos: Any = None) -> int:
        """Make `index` (loaded off the store thread at feed cursor `cursor`, see
        matching/loading.py) the running node's, on the store thread: the changes committed
        during the load are applied first, then the change listener takes over, so no commit
        is missed or applied twice (to the vPDQ index `videos` too, loaded beside it).
        Returns the number of changes caught up."""
        from hashmesh.node.matching.loading import catch_up
        from hashmesh.node.store import feed

        head, added, removed = catch_up(index, self.store.conn, cursor, videos)
        self.matcher.load(index, max(head, feed.feed_head(self.store.conn)), videos)
        self.matcher.apply_in_background()
        self.matcher.follow(self.store)
        return added + removed

    def index_snapshot(self) -> Any:
        """The PDQ index as a checkpoint snapshot at the feed's head (matching/checkpoint.py
        CheckpointSnapshot), or None before it is loaded. Store thread: no change can
        arrive between the head read and the capture; `.write(dir)` then runs anywhere."""
        from hashmesh.node.matching.checkpoint import snapshot
        from hashmesh.node.store import feed

        if self._matcher is None:
            return None
        held = self._matcher.snapshot_for_checkpoint()
        if held is None:
            return None
        return snapshot(held[0], feed.feed_head(self.store.conn))

    def match(self, queries: Any, threshold: int = 31) -> dict[str, Any]:
        """Match many (type, value) queries; each hit carries its provenance and opinions.
        The answer the API gives an unrestricted token, bounds included."""
        return self.matcher.answer(
            queries, threshold, None, self.config.author_name, labels=self.config.trust_labels()
        )

    def logs_page(self, after: str = "", limit: int = STATUS_LOGS) -> dict[str, Any]:
        """One page of the logs, in (collection, author) order after the cursor `after`
        (a page's `next`; "" for the first page)."""
        if not 1 <= limit <= MAX_STATUS_LOGS:
            raise NodeError(f"limit: must be 1-{MAX_STATUS_LOGS}")
        logs = self.store.logs(parse_log_cursor(after) if after else None, limit + 1)
        more = len(logs) > limit
        logs = logs[:limit]
        for log in logs:
            log["author_name"] = self.config.author_name(log["author"])
        last = logs[-1] if logs and more else None
        return {
            "logs": logs,
            "next": None if last is None else f"{last['collection']}/{last['author']}",
            "total": self.store.log_count(),
        }

    def status(self) -> dict[str, Any]:
        counts = self.store.counts()
        page = self.logs_page()
        trust = self.config.trust
        return {
            "node_id": self.node_id,
            "signing_key": self.signing_key.node_id,
            "name": self.config.name,
            "listen": self.config.listen,
            "url": self.config.url,
            "home": str(self.home.path),
            "min_pdq_quality": self.config.min_pdq_quality,
            "live_signals": counts["live"],
            "live_by_collection": counts["live_by_collection"],
            "batches": counts["batches"],
            "pending_batches": counts["pending"],
            "feed_cursor": counts["feed_cursor"],
            # The first page of logs; the others from /v1/status/logs?after=<logs_next>.
            "logs": page["logs"],
            "logs_next": page["next"],
            "logs_total": page["total"],
            "collections_held": self.store.held_collections(),
            "forks": [{k: v for k, v in f.items() if k != "evidence"} for f in self.store.forks()],
            "peer_identity": self.key.node_id,
            "peers": [
                {
                    "name": p.name,
                    "url": p.url,
                    "node_id": p.node_id,
                    "share": p.share,
                    **self._peer_identity(p.node_id),
                }
                for p in self.config.peers
            ],
            # The first trust entries; all of them: GET /v1/admin/trust.
            "trust": [_trust_json(t) for t in trust[:STATUS_TRUST]],
            "trust_total": len(trust),
            # This node's match policy, so the status page can say why hits are held back.
            "policies": self.policy_show()["policies"],
            # Signals held back on a match spike (the newest 100), for `status` and its page.
            "quarantine": self.quarantine_list(limit=100)["quarantine"],
            # Degenerate hashes other nodes sent, held back at ingest, per author.
            "degenerate_by_author": [
                {"author": a, "name": self.config.author_name(a), "held_back": n}
                for a, n in self.store.quarantine.degenerate_by_author().items()
            ],
            # Certificates, revoked keys and hand-overs this node holds (issue 22).
            **self.statements_status(),
            # Followed collections' membership in force, and split views (issue 22).
            "memberships": self.memberships.status(self.config),
            "witness": self.witness.status(),
            # This node's own adds that others disputed (the author's review queue).
            "disputed": [e for e in self.disputes(200)["disputes"] if e["disputes"]][:50],
        }

    # -- policy --------------------------------------------------------------------------

    def peer_list(self) -> dict[str, Any]:
        self.reload_config_if_changed()
        return {"peers": [_peer_json(p) for p in self.config.peers]}

    def peer_show(self, name: str) -> dict[str, Any]:
        self.reload_config_if_changed()
        return _peer_json(self.config.peer_named(name))

    def peer_add(self, name: str, url: str, node_id: str, share: list[str]) -> dict[str, Any]:
        self.reload_config_if_changed()
        peer = Peer(name=name, url=check_url(url, "peer url"), node_id=node_id)
        peer.share = sorted(set(share))
        self.config.add_peer(peer)
        self._save_config()
        return _peer_json(peer, "added")

    def peer_update(
        self,
        name: str,
        url: str | None = None,
        node_id: str | None = None,
        share: list[str] | None = None,
    ) -> dict[str, Any]:
        self.reload_config_if_changed()
        before = self.config.peer_named(name)
        peer = self.config.update_peer(name, url, node_id, share)
        changed = (before.url, before.node_id, before.share) != (peer.url, peer.node_id, peer.share)
        if changed:
            self._save_config()
        return _peer_json(peer, "updated" if changed else "unchanged")

    def peer_remove(self, name: str) -> dict[str, Any]:
        self.reload_config_if_changed()
        peer = self.config.remove_peer(name)
        self._save_config()
        return _peer_json(peer, "removed")

    def peer_share(self, name: str, collection: str, share: bool = True) -> dict[str, Any]:
        """Add or drop one collection of a peer's share list, leaving the others as they are."""
        self.reload_config_if_changed()
        _protocol(validate_collection, collection)
        before = self.config.peer_named(name).share
        after = sorted(set(before) | {collection} if share else set(before) - {collection})
        if after == before:
            return _peer_json(self.config.peer_named(name), "unchanged")
        peer = self.config.update_peer(name, share=after)
        self._save_config()
        return _peer_json(peer, "shared" if share else "unshared")

    def trust_list(self, node_id: str | None = None) -> dict[str, Any]:
        self.reload_config_if_changed()
        entries = [t for t in self.config.trust if node_id is None or t.node_id == node_id]
        return {
            "trust": [
                _trust_json(t) for t in sorted(entries, key=lambda t: (t.node_id, t.collection))
            ]
        }

    def _author_trust(
        self, node_id: str, collection: str, change: str, entry: Trust | None = None
    ) -> dict[str, Any]:
        held = sorted(t.collection for t in self.config.trust if t.node_id == node_id)
        out = {
            "node_id": node_id,
            "collection": collection,
            "name": self.config.author_name(node_id),
            "collections": held,
            "change": change,
        }
        if entry is not None:
            out.update(org=entry.org, country=entry.country)
            if entry.kind != "node":
                out["kind"] = entry.kind
        return out

    def trust_add(
        self,
        node_id: str,
        collection: str,
        name: str = "",
        org: str = "",
        country: str = "",
        kind: str = "node",
    ) -> dict[str, Any]:
        """Trust an author in a collection; `org` and `country` label it for quorums
        counted by organisation or country (matching/policy.py). `kind` "org": node_id
        is an organisation key, trusted for every node key it certified (issue 22)."""
        self.reload_config_if_changed()
        entry = Trust(
            node_id=node_id, collection=collection, name=name, org=org, country=country, kind=kind
        )
        self.config.add_trust(entry)
        self._save_config()
        return self._author_trust(node_id, collection, "trusted", entry)

    def trust_remove(self, node_id: str, collection: str) -> dict[str, Any]:
        self.reload_config_if_changed()
        self.config.remove_trust(node_id, collection)
        self._save_config()
        return self._author_trust(node_id, collection, "untrusted")

    # -- statements: certificates, hand-overs, key revocations (issue 22) ----------------

    def statement_add(self, wire: bytes, kind: str) -> dict[str, Any]:
        """Install one statement the operator was given (a certificate, a revocation):
        verified whole first; a refused one changes nothing."""
        if kind not in REGISTRY.names():
            raise NodeError(f"kind: {kind!r} is not a statement kind")
        statement = _protocol(self.statements.verify_wire, wire)
        if statement.kind.name != kind:
            raise NodeError(f"FILE: a {statement.kind.name} statement, not a {kind}")
        own = {k.node_id: k for k in (self.key, self.signing_key)}
        if isinstance(statement.body, CertBody) and statement.body.key in own:
            # our own key's certificate: co-signed, which gives the org power over the key
            # (to revoke it, or hand its logs over should it be lost)
            statement = add_signatures(statement, [own[statement.body.key]])
        before = self.store.counts()["live"]
        done = self.statements.admit([statement], "local")
        outcome = next(iter(done.outcomes), "same")
        out: dict[str, Any] = {"id": statement.id, "kind": kind, "outcome": outcome}
        if kind == "key-revoke":
            out["effective"] = any(r[3] == statement.id for r in self.authority.revocations())
            out["withdrawn"] = max(0, before - self.store.counts()["live"])
        return out

    def _withdraw(self, touched: set[tuple[str, str]]) -> None:
        """New key statements (a revocation, a hand-over) may mean held batches are no
        longer their log's: those the authority's drop ranges name stop matching (each
        add a revoke entry in the feed). Later such batches are refused on every ingest
        path. `touched`: (author, collection) of the logs concerned, "*" for all of an
        author's logs."""
        heads: dict[tuple[str, str], int] = {}
        for author, collection in touched:
            for log_key, head in self.store.vector().items():
                if log_key.author == author and collection in (ALL_COLLECTIONS, log_key.collection):
                    heads[(author, log_key.collection)] = head
        for drop in self.authority.drop_ranges(heads):
            log_key = LogKey(drop.author, drop.collection)
            held = self.store.batches_not_signed_by(
                log_key, drop.first, drop.last, drop.keep, _header_signer
            )
            if not held:
                continue
            by = f"key-revoke:{drop.author}/{drop.collection}/{drop.first}"
            withdrawn = self.store.withdraw_batches(held, by, drop.reason)
            log.warning(
                "%s: %d held batches of %s no longer accepted, %d signals withdrawn",
                drop.reason,
                len(held),
                log_key,
                len(withdrawn),
            )

    def statements_status(self, limit: int = 100) -> dict[str, Any]:
        """Certificates, revoked keys and hand-overs held, at most `limit` of each."""
        out: dict[str, list[dict[str, Any]]] = {
            "certificates": [],
            "revoked_keys": [],
            "handovers": [],
        }
        effective = {r[3] for r in self.authority.revocations()}
        names = {"cert": "certificates", "key-revoke": "revoked_keys", "handover": "handovers"}
        for row in self.store.statements.visible(None, kinds=list(names)):
            rows = out[names[row.kind]]
            if len(rows) >= limit:
                continue
            statement = self.statements.verify_wire(row.wire)
            entry = {"id": row.id, **statement.body.model_dump(exclude={"kind", "v"})}
            entry["signers"] = sorted(statement.signers)
            if row.kind == "key-revoke":
                entry["effective"] = row.id in effective
            rows.append(entry)
        return out

    # -- membership and witnesses (issue 22: node/membership.py, node/witness.py) --------

    def membership_follow(
        self, collection: str, stewards: list[str], threshold: int
    ) -> dict[str, Any]:
        """Follow a collection's membership document, anchored by the stewards and
        threshold pinned here (re-pinning replaces the anchor; documents held stay)."""
        self.reload_config_if_changed()
        entry = Follow(collection, sorted(set(stewards)), threshold)
        self.config.follow(entry)
        self._save_config()
        self.memberships.apply(self.config)
        return {"collection": collection, "stewards": entry.stewards, "threshold": threshold}

    def membership_unfollow(self, collection: str) -> dict[str, Any]:
        self.reload_config_if_changed()
        entry = self.config.unfollow(collection)
        self._save_config()
        self.memberships.apply(self.config)
        return {"collection": entry.collection, "unfollowed": True}

    def membership_add(self, wire: bytes) -> dict[str, Any]:
        """Install a membership document (signed by the stewards, `membership sign`): kept
        only when valid from this node's anchor; a refused one changes nothing and says
        why (too few stewards' signatures, an old version, not followed)."""
        self.reload_config_if_changed()
        statement = _protocol(self.statements.verify_wire, wire)
        if statement.kind.name != "membership":
            raise NodeError(f"FILE: a {statement.kind.name} statement, not a membership")
        done = self.statements.admit([statement], "local")
        if statement.id in done.refused:
            raise NodeError(f"FILE: {done.refused[statement.id]}; nothing changed")
        body = statement.body
        collection = getattr(body, "collection", "")
        follow = self.config.follows(collection)
        result = self.memberships.in_force(follow) if follow else None
        return {
            "id": statement.id,
            "kind": "membership",
            "collection": collection,
            "version": getattr(body, "version", 0),
            "outcome": next(iter(done.outcomes), "same"),
            "in_force": result.version if result else 0,
        }

    def membership_show(self) -> dict[str, Any]:
        self.reload_config_if_changed()
        return {"memberships": self.memberships.status(self.config)}

    def witness_tick(self, now: float | None = None) -> int:
        """The running node's periodic step: cosign the heads due (node/witness.py)."""
        return self.witness.tick(time.time() if now is None else now)

    def log_witnesses(self, author: str, collection: str) -> dict[str, Any]:
        """Who saw which head of one log: each witness's latest cosign against our header
        there, with the orgs that certify the witness's key now."""
        try:
            validate_node_id(author, "AUTHOR")
            validate_collection(collection, "COLLECTION")
        except ProtocolError as exc:
            raise NodeError(str(exc)) from None
        log_key = LogKey(author, collection)
        lines = self.witness.report(author, collection, int(time.time()))
        seq = self.store.head(log_key)
        views = [
            self.witness.view_json(v)
            for v in self.witness.split_views()
            if v.author == author and v.collection == collection
        ]
        return {
            "author": author,
            "collection": collection,
            "seq": seq,
            "head": self.witness.head_hash(log_key, seq) if seq else None,
            "witnesses": [line.to_json() for line in lines],
            "split_views": views,
            "equivocating_witnesses": sorted({line.witness for line in lines if line.equivocating}),
        }

    # -- key rotation (issue 22) ---------------------------------------------------------

    def _load_signing_key(self) -> SigningKey:
        """The key this node signs batches with: node.key until the first rotation, then
        signing.key. node.key stays the node's identity to its peers (they authenticate
        it, and follow the logs to the new key by the hand-overs)."""
        path = self.home.path / SIGNING_KEY_FILE
        return load_key(path) if path.exists() else self.key

    def _log_key(self, collection: str) -> LogKey:
        """The log this node continues in `collection`: the one its signing key signs next
        (its own, or one handed over to it), else a new log of the signing key."""
        for author in dict.fromkeys([self.node_id, *self._previous_keys()]):
            log_key = LogKey(author, collection)
            head = self.store.head(log_key)
            if head and self.authority.signer_of_next(log_key, head) == self.signing_key.node_id:
                return log_key
        return LogKey(self.signing_key.node_id, collection)

    def _previous_keys(self) -> list[str]:
        return [str(k) for k in json.loads(self.store.meta(PREVIOUS_KEYS) or "[]")]

    def key_rotate(
        self,
        identity: bool = False,
        prepare: bool = False,
        certificate: bytes | None = None,
    ) -> dict[str, Any]:
        """`key rotate`: the signing key (default), the peer identity (`identity`), a
        prepared signing key made (`prepare`), or the prepared key switched to with its
        org's certificate installed in the same step (`certificate`)."""
        if sum((identity, prepare, certificate is not None)) > 1:
            raise NodeError("key rotate: --identity, --prepare and --certificate go alone")
        if identity:
            return self._rotate_identity()
        if prepare:
            return self._prepare_signing_key()
        if certificate is not None:
            return self._rotate_certified(certificate)
        return self._rotate_signing(self._new_key(), [])

    @staticmethod
    def _new_key() -> SigningKey:
        return SigningKey(os.urandom(32))

    def _rotate_signing(self, new: SigningKey, extra: list[Any]) -> dict[str, Any]:
        """A new signing key; every log the current key signs is handed over to it at its
        head (a hand-over signed by both keys, gossiped at once), so peers accept the
        next batches with no change of their config. The old key is kept (0600) as
        signing.key.old-<id>; node.key stays the node's identity. `extra` statements
        (the new key's certificate) are installed in the same transaction. Under the
        intake's lock, after its frames: no batch is signed by the old key past the
        hand-over, and the tips are taken again from the store."""
        with self.intake.lock:
            self.intake.apply()
            try:
                return self._rotate_signing_now(new, extra)
            finally:
                for collection in self.intake.primed():
                    self.intake.set_tip(collection, self._store_tip(collection))

    def _rotate_signing_now(self, new: SigningKey, extra: list[Any]) -> dict[str, Any]:
        current = self.signing_key
        now = int(time.time())
        handovers = []
        for log_key, head in sorted(self.store.vector().items(), key=lambda i: str(i[0])):
            if log_key.author not in (self.node_id, *self._previous_keys(), current.node_id):
                continue
            if self.authority.signer_of_next(log_key, head) != current.node_id:
                continue
            held = self.store.signed_header(log_key, head)
            assert held is not None
            body = HandoverBody(
                ts=now,
                author=log_key.author,
                collection=log_key.collection,
                key=current.node_id,
                next=new.node_id,
                seq=head,
                head=header_hash(held.header_bytes).hex(),
            )
            handovers.append(sign_statement(body, [current, new], REGISTRY))
        path = self.home.path / SIGNING_KEY_FILE
        if path.exists():
            os.replace(path, path.with_name(f"{SIGNING_KEY_FILE}.old-{current.node_id[8:20]}"))
        write_key(path, new)
        previous = [*self._previous_keys(), current.node_id]
        self.store.set_meta(PREVIOUS_KEYS, json.dumps(sorted(set(previous))))
        self.signing_key = new
        self.statements.admit([*extra, *handovers], "local")
        return {
            "signing_key": new.node_id,
            "previous": current.node_id,
            "handovers": [
                {"log": f"{s.body.author}/{s.body.collection}", "seq": s.body.seq, "id": s.id}  # type: ignore[attr-defined]
                for s in handovers
            ],
        }

    def _prepare_signing_key(self) -> dict[str, Any]:
        """signing.key.next: the key the next rotation switches to, made now so that its
        org can certify it before the node signs anything with it."""
        path = self.home.path / PREPARED_KEY_FILE
        if path.exists():
            prepared = load_key(path)
            return {"prepared_key": prepared.node_id, "file": str(path), "new": False}
        prepared = create_key(path)
        return {"prepared_key": prepared.node_id, "file": str(path), "new": True}

    def _rotate_certified(self, wire: bytes) -> dict[str, Any]:
        """Switch to the prepared key with its certificate in one step: the certificate,
        co-signed by the prepared key, is installed with the hand-overs, so no peer that
        trusts this node through its org ever sees a batch by an uncertified key."""
        path = self.home.path / PREPARED_KEY_FILE
        if not path.exists():
            raise NodeError(
                "--certificate: no key is prepared; run `hashmesh key rotate --prepare` "
                "and have your org certify the key it prints"
            )
        prepared = load_key(path)
        statement = _protocol(self.statements.verify_wire, wire)
        body = statement.body
        if not isinstance(body, CertBody):
            raise NodeError(f"--certificate: a {statement.kind.name} statement, not a cert")
        if body.key != prepared.node_id:
            raise NodeError(
                f"--certificate: body.key is {body.key}, not the prepared key {prepared.node_id}"
            )
        now = int(time.time())
        if body.not_after < now:
            raise NodeError(f"--certificate: body.not_after {body.not_after} is in the past")
        if body.not_before > now:
            raise NodeError(f"--certificate: body.not_before {body.not_before} is in the future")
        cosigned = add_signatures(statement, [prepared])
        out = self._rotate_signing(prepared, [cosigned])
        path.unlink()
        out["certificate"] = cosigned.id
        return out

    # -- peer identity (protocol/identity.py, node/identity.py) ---------------------------

    def _identity_chain(self) -> list[str]:
        """Every identity key this node has had, its config node_id first ([] before the
        first `key rotate --identity`)."""
        return [str(k) for k in json.loads(self.store.meta(IDENTITY_CHAIN) or "[]")]

    def _own_identity(self) -> OwnIdentity:
        chain = self._identity_chain()
        previous = []
        for node_id in reversed(chain[:-1]):
            path = self._old_key_path(node_id)
            if path.exists():
                old = load_key(path)
                if old.node_id == node_id:
                    previous.append(old)
        links = [self.identities.link(a, b) for a, b in pairwise(chain)]
        known = json.loads(self.store.meta(IDENTITY_INTRODUCED) or "{}")
        introduced = known.get("peers", []) if known.get("key") == self.key.node_id else []
        return OwnIdentity(
            self.key,
            tuple(previous),
            tuple(s for s in links if s is not None),
            tuple(chain),
            frozenset(str(p) for p in introduced),
        )

    def identity_introduced(self, peer: str, key: str) -> None:
        """Peer `peer` (its configured id) accepted our introduction of identity key `key`:
        the next start signs for it with `key` at once. Bounded by the configured peers."""
        if key != self.key.node_id:
            return
        known = json.loads(self.store.meta(IDENTITY_INTRODUCED) or "{}")
        peers = set(known.get("peers", [])) if known.get("key") == key else set()
        configured = {p.node_id for p in self.config.peers}
        peers = (peers | {peer}) & configured
        self.store.set_meta(IDENTITY_INTRODUCED, json.dumps({"key": key, "peers": sorted(peers)}))

    def _peer_identity(self, node_id: str) -> dict[str, Any]:
        """A configured peer's identity now: the id that answers for it, or why none does."""
        found = self.identities.current.resolve(node_id)
        out: dict[str, Any] = {"current_id": found.current}
        if found.current is None:
            out["identity_refused"] = found.why
        return out

    def _rotate_identity(self) -> dict[str, Any]:
        """A new node.key: the peer identity continues under it by an identity statement
        signed by the old and the new key. Peers that configured this node by an old id
        accept the new one once they hold the statement: the node introduces itself to
        each (node/net/peers.py: pushed signed by the old key first), and it gossips. The
        old key stays (0600) as node.key.old-<id> to answer those still addressing it.
        Batches are not signed by node.key after this: if they were, its key becomes
        signing.key, unchanged (rotate it with `key rotate`).

        The chain in the store is the commit point: the new key is staged in node.key.new
        first, and a node stopped after the chain names it finishes the files and the
        statement at its next start (__init__)."""
        old = self.key
        chain = self._identity_chain() or [old.node_id]
        if len(chain) > MAX_CHAIN:  # refused before any file is written
            raise NodeError(
                f"key rotate --identity: this node's identity has been rotated {MAX_CHAIN} "
                "times, the most its peers follow; start a new node (or have your org "
                "certify a replacement: org certify NEW --replaces OLD)"
            )
        key_path = self.home.key_path
        signing = self.home.path / SIGNING_KEY_FILE
        if self.signing_key.node_id == old.node_id and not signing.exists():
            write_key(signing, old)
        staged = key_path.with_name(f"{key_path.name}.new")
        staged.unlink(missing_ok=True)
        new = create_key(staged)
        self.store.set_meta(IDENTITY_CHAIN, json.dumps([*chain, new.node_id]))
        self._finish_identity_files(staged)
        self.key = self.witness.key = new  # the witness cosigns as the node's identity
        statement = self._sign_identity_link(old.node_id)
        self.own_identity = self._own_identity()
        return {"peer_identity": new.node_id, "previous": old.node_id, "statement": statement.id}

    def _old_key_path(self, node_id: str) -> Path:
        return self.home.key_path.with_name(f"{self.home.key_path.name}.old-{node_id[8:20]}")

    def _finish_identity_files(self, staged: Path) -> None:
        """node.key.new becomes node.key (the previous one kept as node.key.old-<id>) when
        the chain names it; otherwise the rotation never committed and it goes."""
        chain = self._identity_chain()
        new = load_key(staged)
        if not chain or chain[-1] != new.node_id:
            staged.unlink()
            return
        key_path = self.home.key_path
        if key_path.exists():
            current = load_key(key_path)
            if current.node_id == new.node_id:
                staged.unlink()
                return
            os.replace(key_path, self._old_key_path(current.node_id))
        os.replace(staged, key_path)

    def _sign_identity_link(self, previous: str) -> Any:
        """The identity statement from `previous` (kept as node.key.old-<id>) to node.key,
        stored and so gossiped."""
        from hashmesh.protocol.identity import IdentityBody

        old = load_key(self._old_key_path(previous))
        statement = sign_statement(
            IdentityBody(ts=int(time.time()), key=old.node_id, next=self.key.node_id),
            [old, self.key],
            REGISTRY,
        )
        self.statements.admit([statement], "local")
        return statement

    # -- match policy (matching/policy.py; rows in store/policies.py) ---------------------

    def policy_show(self, collection: str | None = None) -> dict[str, Any]:
        """Every collection with a policy, or one collection's (its default when unset)."""
        from hashmesh.node.matching.policy import CollectionPolicy, policy_set

        policies = policy_set(self.store.policies.rows())
        if collection is None:
            return {"policies": [p.json() for p in policies.visible(lambda _c: True)]}
        _protocol(validate_collection, collection)
        policy = policies.by_collection.get(collection)
        shown = (policy or CollectionPolicy(collection)).json()
        return {"policies": [{**shown, "default": policy is None}]}

    def policy_set(self, collection: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Replace a collection's policy with exactly `fields` (absent: the default), so
        the same command always leaves the same policy whatever was set before; it
        applies to the next match (every matcher reads the table, replicas within a
        poll)."""
        from hashmesh.node.matching.policy import parse_policy, policy_set

        _protocol(validate_collection, collection)
        policy = parse_policy(collection, fields)
        before = policy_set(self.store.policies.rows()).of(collection)
        if policy == before:
            change = "unchanged"
        elif policy.is_default:
            self.store.policies.delete(collection)
            change = "reset"
        else:
            self.store.policies.put(policy.row(now_ms()))
            change = "set"
        return {
            "collection": collection,
            "policy": policy.json(),
            "previous": before.json(),
            "change": change,
        }

    # -- quarantine on a match spike (matching/quarantine.py; rows in store/quarantine.py) --

    def quarantine_add(self, spikes: list[Any]) -> int:
        """Record `spikes` (matching.quarantine.Spike) as quarantined, each once ever: a
        signal an operator lifted is not quarantined again by the same node. Where the
        collection's policy says `dispute_on_spike`, a new quarantine of another author's
        add also publishes this node's signed dispute of it, reason `match-spike`: the
        author learns that its hash matched far more than it should, never how much (the
        counts are this platform's traffic, and stay here)."""
        from hashmesh.node.matching.policy import policy_set

        policies = policy_set(self.store.policies.rows())
        disputes: dict[str, list[AnyOp]] = {}
        added = 0
        for spike in spikes:
            hit = spike.hit
            row = (
                hit.op_id,
                hit.collection,
                hit.type,
                hit.value,
                hit.author,
                spike.reason,
                spike.matches,
                now_ms(),
            )
            if self.store.quarantine.add(row):
                added += 1
                log.warning("quarantined %s (%s): %s", hit.op_id, hit.collection, spike.reason)
                if policies.of(hit.collection).dispute_on_spike and hit.author != self.node_id:
                    op = OpinionOp(target=hit.op_id, opinion="dispute", reason="match-spike")
                    disputes.setdefault(hit.collection, []).append(op)
        for collection, ops in disputes.items():
            try:
                self.publish(collection, ops)
            except NodeError as exc:  # the quarantine stands; only the dispute is lost
                log.warning("match-spike disputes in %s not published: %s", collection, exc)
        return added

    def quarantine_list(self, include_lifted: bool = False, limit: int = 10_000) -> dict[str, Any]:
        return {
            "quarantine": [
                _quarantine_json(r, self.config.author_name)
                for r in self.store.quarantine.rows(include_lifted, limit)
            ]
        }

    def quarantine_lift(self, target: str) -> dict[str, Any]:
        """Lift the quarantine of one add (its op id) or of every add of a signal value."""
        if not isinstance(target, str) or not 1 <= len(target) <= 300 or not target.isascii():
            raise NodeError("target: expected an op id or a signal value")
        if "/" in target:
            _protocol(OpId.parse, target)
        else:
            target = target.strip().lower()  # a hex value, as signals are stored
        rows = self.store.quarantine.active_matching(target)
        if not rows:
            raise NotFound(
                f"target {target[:100]}: no signal under quarantine here has this op id or value"
            )
        if any(str(r[5]).startswith(DEGENERATE_REASON) for r in rows):
            raise NodeError(
                f"target {target[:100]}: a degenerate hash held back at ingest is never lifted"
                " (it describes no picture and would match innocent ones)"
            )
        self.store.quarantine.lift([r[0] for r in rows], now_ms())
        return {"lifted": [_quarantine_json(r, self.config.author_name) for r in rows]}

    # -- the author's review queue ---------------------------------------------------------

    def disputes(self, limit: int = 1000) -> dict[str, Any]:
        """This node's own adds that other authors confirmed, disputed or marked seen, by
        whom, most disputed first: what the author reviews, with the one command that
        revokes an add (a dispute was right) or confirms it (it was not)."""
        if type(limit) is not int or not 1 <= limit <= 10_000:
            raise NodeError("limit: must be an integer 1-10000")
        by_target: dict[str, dict[str, Any]] = {}
        rows = self.store.opinions_on_author(self.node_id, limit)
        for target, author, collection, verdict, seen, op_id, reason in rows:
            entry = by_target.get(target)
            if entry is None:
                entry = by_target[target] = {
                    "op_id": target,
                    "disputes": [],
                    "confirms": [],
                    "seen": 0,
                }
            who = {
                "author": author,
                "author_name": self.config.author_name(author),
                "collection": collection,
                "op_id": op_id,
            }
            if reason is not None and verdict is not None:
                who["reason"] = reason
            if verdict == "dispute":
                entry["disputes"].append(who)
            elif verdict == "confirm":
                entry["confirms"].append(who)
            if seen:
                entry["seen"] += 1
        queue = []
        for target, entry in by_target.items():
            if not entry["disputes"] and not entry["confirms"] and not entry["seen"]:
                continue  # every opinion on it was retracted
            signal_id = self.store.signal_id(OpId.parse(target))
            signal = self.store.signal(signal_id) if signal_id is not None else None
            if signal is not None:
                entry.update(_what(signal), live=signal["live"])
            entry["revoke"] = f"hashmesh revoke {target}"
            entry["confirm"] = f"hashmesh opinion {target} confirm"
            queue.append(entry)
        queue.sort(key=lambda e: (-len(e["disputes"]), -len(e["confirms"]), e["op_id"]))
        return {"disputes": queue}

    # -- bundles -------------------------------------------------------------------------

    def export_chunks(self, collection: str) -> Iterator[bytes]:
        """A bundle of every log of the collection this node holds, as byte chunks."""
        _protocol(validate_collection, collection)
        logs = sorted(
            (k for k in self.store.vector({collection})), key=lambda k: (k.collection, k.author)
        )
        manifest = {
            "v": 1,
            "collection": collection,
            "exporter": self.node_id,
            "created": now_ms(),
            "logs": [
                {"author": k.author, "collection": k.collection, "head": self.store.head(k)}
                for k in logs
            ],
        }
        statements = self._bundle_statements(collection, logs)
        if statements:  # a bundle of logs signed by their authors alone is as before
            manifest["statements"] = statements
        documents = self._bundle_membership(collection)
        if documents:  # and so is one of a collection without membership documents
            manifest["membership"] = documents
        yield encode_bundle_header(manifest)
        for log in logs:
            yield from self.store.batch_frames(log)

    def _bundle_statements(self, collection: str, logs: list[LogKey]) -> list[Any]:
        """The certificates, hand-overs and revocations of the keys that sign the bundle's
        logs (wire objects), so that an importer, or `hashmesh verify`, decides as a peer
        would; at most BUNDLE_STATEMENT_BYTES of them."""
        authors = {log.author for log in logs}
        keys = set(authors)
        chosen: list[Any] = []
        rows = self.store.statements.visible({collection}, kinds=["handover"])
        for row in rows:
            body = self.statements.verify_wire(row.wire).body
            if isinstance(body, HandoverBody) and body.author in authors:
                keys |= {body.key, body.next}
                chosen.append(row)
        for row in self.store.statements.visible({collection}, kinds=["cert", "key-revoke"]):
            body = self.statements.verify_wire(row.wire).body
            if isinstance(body, (CertBody, KeyRevokeBody)) and body.key in keys:
                chosen.append(row)
        out: list[Any] = []
        size = 0
        for row in chosen:
            size += len(row.wire)
            if size > BUNDLE_STATEMENT_BYTES:
                break
            out.append(json.loads(row.wire))
        return out

    def _bundle_membership(self, collection: str) -> list[Any]:
        """The membership documents a reader pinning only the anchor needs (version 1 to the
        version in force: protocol/membership.py `carried`), wire objects by version. Over
        MAX_MEMBERSHIP_BYTES the oldest go first: a reader holding them still takes the
        rest, one that does not is told which previous version it lacks."""
        follow = self.config.follows(collection)
        if follow is None:
            return []
        wires = []
        for doc in carried(self.memberships.in_force(follow)):
            row = self.store.statements.get(doc.id)
            if row is not None:
                wires.append(row.wire)
        size = 0
        start = len(wires)
        while start > 0 and size + len(wires[start - 1]) <= MAX_MEMBERSHIP_BYTES:
            start -= 1
            size += len(wires[start])
        return [json.loads(w) for w in wires[start:]]

    def backup(self, out: str, overwrite: bool = False) -> dict[str, Any]:
        """A consistent copy of the database made with SQLite's online backup API, so a
        running node keeps serving while it is taken; checked before it is kept.

        The caller names any path the node's user can write, so the node's own files are
        refused outright (a backup over node.key or the live WAL destroys the node), an
        existing file only goes with `overwrite`, and the copy is 0600 from its first byte
        (mkstemp, never chmod-ed afterwards): it holds every collection."""
        import tempfile

        path = Path(out).resolve()
        home = self.home.path.resolve()
        db = self.store.path.resolve()
        own = ""
        if path == home:
            own = "the node's home folder"
        elif path.parent == home or path.parent == db.parent:
            # The node's files and their companions: -wal, -shm, -journal, .tmp, ...
            kept = [
                self.home.key_path,
                self.home.config_path,
                self.home.admin_token_path,
                self.home.lock_path,
                self.home.runtime_path,
                self.home.db_path,
                self.home.path / JOURNAL_FILE,
                db,
            ]
            for name in sorted({k.name for k in kept if k.parent.resolve() == path.parent}):
                if path.name.startswith(name):
                    own = f"the node's own {name} (or a companion of it)"
        for tls in (self.config.tls_cert, self.config.tls_key, self.config.tls_ca):
            if tls and path == Path(tls).resolve():
                own = f"the node's TLS file {tls}"
        if own:
            raise NodeError(f"file: {path} is {own}; write the backup outside the node's files")
        exists = f'file: {path} already exists; pass "overwrite": true (--force) to replace it'
        if not overwrite and (path.exists() or path.is_symlink()):
            raise NodeError(exists)
        try:
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        except OSError as exc:
            raise NodeError(f"file: backup to {out}: {exc.strerror}") from None
        os.close(fd)
        tmp = Path(name)
        try:
            self.store.backup_to(tmp)
            if overwrite:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)  # atomic no-clobber, should the file appear meanwhile
                except FileExistsError:
                    raise NodeError(exists) from None
                except OSError:  # a file system without hard links
                    if path.exists() or path.is_symlink():
                        raise NodeError(exists) from None
                    os.replace(tmp, path)
        except (OSError, sqlite3.Error) as exc:
            raise NodeError(f"file: backup to {out}: {exc}") from None
        finally:
            tmp.unlink(missing_ok=True)
        return {"file": str(path), "bytes": path.stat().st_size, "integrity": "ok"}

    def export(self, collection: str, out: str) -> dict[str, Any]:
        path = Path(out)
        tmp = path.with_name(path.name + ".partial")
        batches = 0
        total = sum(self.store.vector({collection}).values())
        bar = Counter(total, "exporting")
        try:
            with open(tmp, "wb") as fh:
                for n, chunk in enumerate(self.export_chunks(collection)):
                    fh.write(chunk)
                    batches = n
                    if n:
                        bar.advance()
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise NodeError(f"export to {out}: {exc.strerror}") from None
        finally:
            bar.close()
        return {"collection": collection, "file": str(path), "batches": batches}

    def import_bundle(self, stream: BinaryIO, source: str = "bundle") -> dict[str, Any]:
        """Verify and ingest a bundle in one transaction: if any byte of it is wrong, nothing
        changes; batches of authors not trusted for their collection are skipped, exactly as
        they would be from a peer."""
        self.reload_config_if_changed()
        check = BundleCheck()
        decoder = BundleDecoder()
        counts = {"applied": 0, "duplicate": 0, "deferred": 0, "fork": 0, "frozen": 0}
        refused = 0
        refused_logs: set[str] = set()
        refused_keys: dict[str, str] = {}
        admitted: dict[str, int] = {}
        membership: dict[str, Any] = {}
        try:
            # The manifest first: its statements (certificates, hand-overs, revocations of
            # the bundle's keys) decide which of its batches are accepted. All verified
            # before any is stored; a batch refused later leaves them (each stands alone).
            first = stream.read(BUNDLE_CHUNK)
            frames = decoder.feed(first)
            while decoder.manifest is None and (more := stream.read(BUNDLE_CHUNK)):
                frames += decoder.feed(more)
            if decoder.manifest is not None:
                statements = bundle_statements(decoder.manifest)
                documents, membership = self._bundle_documents(decoder.manifest, source)
                admitted = self.statements.admit([*statements, *documents], source).outcomes
            with self.store.bulk():
                for chunk in iter(lambda: stream.read(BUNDLE_CHUNK), None):
                    for header, sig, ops in frames:
                        batch = check.check(header, sig, ops)
                        refusal = self.authority.refuses(self.config, batch.header)
                        if refusal is not None:
                            refused += 1
                            refused_logs.add(str(batch.log))
                            if refusal.code != "untrusted":
                                refused_keys[str(batch.log)] = refusal.reason
                            continue
                        outcome = self.store.ingest(batch, source=source).outcome
                        counts[outcome] = counts.get(outcome, 0) + 1
                    if not chunk:
                        break
                    frames = decoder.feed(chunk)
                decoder.close()
        except ProtocolError as exc:
            raise NodeError(f"bundle refused, nothing imported: {exc}") from None
        return {
            "batches": check.batches,
            **counts,
            "refused_untrusted": refused,
            "untrusted_logs": sorted(refused_logs),
            **({"refused_keys": dict(sorted(refused_keys.items()))} if refused_keys else {}),
            **({"statements": admitted} if admitted else {}),
            **({"membership": membership} if membership else {}),
        }

    def _bundle_documents(
        self, manifest: dict[str, Any], source: str
    ) -> tuple[list[Statement], dict[str, Any]]:
        """The bundle's membership documents to admit with its key statements, before its
        batches are judged, and what the import reports of them. In a collection this node
        follows, each must be valid from the anchor pinned here, as from a peer (threshold,
        prev; a copy of a held version changes nothing); one that is not refuses the bundle
        (BundleError: nothing imported) rather than importing batches under a membership
        the carrier may have altered. A collection not followed: carried, not used."""
        documents = membership_of(manifest, REGISTRY)
        if not documents:
            return [], {}
        collection = str(manifest.get("collection"))
        follow = self.config.follows(collection)
        if follow is None:
            return [], {"carried": len(documents), "used": False, "reason": "not followed here"}
        kept, refused = self.memberships.gate(documents, source)
        if refused:
            n, why = next((n, refused[d.id]) for n, d in enumerate(documents) if d.id in refused)
            raise BundleError(f"bundle manifest.membership[{n}]: {why}")
        return kept, {"carried": len(documents), "used": True}


def _header_signer(header: bytes) -> str:
    return parse_header(header).signed_by


def parse_log_cursor(text: str) -> tuple[str, str]:
    """A logs page cursor, `collection/author`, as a page's `next` gives it."""
    collection, _, author = text.partition("/")
    try:
        validate_collection(collection, "after")
        validate_node_id(author, "after")
    except ProtocolError:
        raise NodeError("after: expected the cursor a page gave as next") from None
    return collection, author


def _trust_json(t: Trust) -> dict[str, Any]:
    out = {"node_id": t.node_id, "collection": t.collection, "name": t.name}
    out.update({k: v for k, v in (("org", t.org), ("country", t.country)) if v})
    if t.kind != "node":
        out["kind"] = t.kind
    return out


def _quarantine_json(row: tuple[Any, ...], author_name: Any) -> dict[str, Any]:
    op_id, collection, kind, value, author, reason, matches, at, lifted_at = row
    out = {
        "op_id": op_id,
        "collection": collection,
        "type": kind,
        "value": value,
        "author": author,
        "author_name": author_name(author),
        "reason": reason,
        "matches": matches,
        "at": at,
    }
    if lifted_at is not None:
        out["lifted_at"] = lifted_at
    return out


def _peer_json(peer: Peer, change: str = "") -> dict[str, Any]:
    """A peer as every policy answer shows it: what now holds (`peer`: the name, as the
    first `peer add` answer called it)."""
    out: dict[str, Any] = {
        "peer": peer.name,
        "name": peer.name,
        "url": peer.url,
        "node_id": peer.node_id,
        "share": sorted(peer.share),
    }
    if change:
        out["change"] = change
    return out


def restore_home(home: Home, backup: str, other_node: bool = False) -> dict[str, Any]:
    """Put a backup in place of the node's database (the node must be stopped; the caller
    holds the home's lock). The current database is kept beside it as hashmesh.db.before-restore
    (and intake.db, the adds it had not stored yet, as intake.db.before-restore).

    A backup of another node's database is refused unless `other_node`: restored by
    mistake it would make this node sign a second history of a log its peers already hold
    (or drop its own), and carry the other node's tokens. Every file written on the way
    (the staged copy and its journal) is 0600 from creation: the copy holds every
    collection."""
    import tempfile

    source_path = Path(backup)
    node_id = home.load_config().node_id
    source = open_backup(source_path, backup)
    db = home.db_path
    try:
        owner = database_node_id(source)
        if owner is not None and owner != node_id and not other_node:
            raise NodeError(
                f"backup {backup} is the database of node {owner}, not of this node "
                f"{node_id}; nothing was changed (to seed this node from another node's "
                "database on purpose, pass --other-node)"
            )
        fd, name = tempfile.mkstemp(dir=db.parent, prefix=db.name + ".restoring-")
        os.close(fd)
        staged = Path(name)
        try:
            backup_database(source, staged)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
    finally:
        source.close()
    previous = db.with_name(db.name + ".before-restore")
    # the intake journal continues the replaced database's logs: it goes aside with it
    for current in (db, home.path / JOURNAL_FILE):
        if current.exists():
            checkpoint(current)
            os.replace(current, current.with_name(current.name + ".before-restore"))
        for suffix in ("-wal", "-shm"):
            current.with_name(current.name + suffix).unlink(missing_ok=True)
    os.replace(staged, db)
    restored = Store(db)
    restored.set_meta(RESTORED_KEY, str(now_ms()))
    restored.set_meta(NODE_ID_KEY, node_id)
    restored.close()
    return {
        "restored": str(source_path),
        "database": str(db),
        "previous": str(previous),
        "node_id": node_id,
        "backup_node_id": owner,
    }


def verify_bundle_file(path: str) -> dict[str, Any]:
    """Check every signature, chain link and Merkle root of a bundle, offline."""
    check = BundleCheck()
    decoder = BundleDecoder()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(BUNDLE_CHUNK):
                for header, sig, ops in decoder.feed(chunk):
                    check.check(header, sig, ops)
            decoder.close()
            assert decoder.manifest is not None
            statements = bundle_statements(decoder.manifest)
            documents = membership_of(decoder.manifest, REGISTRY)
    except OSError as exc:
        raise NodeError(f"bundle {path}: {exc.strerror}") from None
    except ProtocolError as exc:
        raise NodeError(f"bundle {path} is not valid: {exc}") from None
    manifest = {k: v for k, v in decoder.manifest.items() if k not in ("statements", "membership")}
    kinds: dict[str, int] = {}
    for statement in statements:
        kinds[statement.kind.name] = kinds.get(statement.kind.name, 0) + 1
    summary = check.summary()
    if kinds:
        summary["statements"] = dict(sorted(kinds.items()))
    if documents:
        summary["membership"] = describe_membership(Document.of(s) for s in documents)
    return {"file": path, "valid": True, "manifest": manifest, **summary}


def bundle_statements(manifest: dict[str, Any]) -> list[Any]:
    """The statements a bundle's manifest carries, each verified (BundleError if not)."""
    items = manifest.get("statements", [])
    if not isinstance(items, list) or len(items) > MAX_BUNDLE_STATEMENTS:
        raise BundleError(f"bundle manifest.statements: a list of at most {MAX_BUNDLE_STATEMENTS}")
    out = []
    for n, item in enumerate(items):
        try:
            out.append(parse_statement_json(item, REGISTRY))
        except ProtocolError as exc:
            raise BundleError(f"bundle manifest.statements[{n}]: {exc}") from None
    return out


def _published(
    collection: str, results: list[dict[str, Any]], op_ids: list[OpId]
) -> dict[str, Any]:
    fresh = iter(op_ids)
    for r in results:
        if r["new"]:
            r["op_id"] = str(next(fresh))
    return {"collection": collection, "published": len(op_ids), "signals": results}


def _what(signal: dict[str, Any]) -> dict[str, Any]:
    """The hash an op is about, so a CLI can say what it revoked or opined on."""
    return {k: signal[k] for k in ("type", "value", "collection") if k in signal}
