"""The platform feed: pages of changes after a cursor, a live wake-up, consistent snapshots.

Feed and snapshot reads run on connections and threads of their own, never on the store
thread: a platform paging through ten million changes, or a snapshot held open for
minutes, must not stall ingest or matching. WAL mode gives each reader a stable view, and
one writer means cursors become visible in order, so a reader never sees a gap that is
filled later.

Every answer is filtered by the caller's collections here, at the one place rows become
JSON, so no later layer can leak a hash of a collection the caller may not read.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from hashmesh.node.store.core import signal_labels
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.ops import OpId
from hashmesh.protocol.state import Stance, count_opinions

T = TypeVar("T")

MAX_PAGE = 10_000
DEFAULT_PAGE = 1_000
SNAPSHOT_CHUNK = 5_000

_ENTRY_COLUMNS = (
    "f.cursor, f.kind, f.collection, f.op_id, f.target, f.detail, f.at,"
    " s.seq, s.idx, s.type, s.value, s.quality, s.category, s.classification, s.ref, l.author"
)
_SIGNAL_COLUMNS = "s.seq, s.idx, s.type, s.value, s.quality, s.category, s.classification, s.ref"

AuthorName = Callable[[str], str]


def opinion_state(
    conn: sqlite3.Connection, targets: Iterable[str], collections: Iterable[str] | None
) -> dict[str, dict[str, Any]]:
    """Each target's opinions as they stand now, from the logs of `collections` (None: all):
    {"opinions": counts of distinct authors, "verdicts": {author: confirm|dispute},
    "stances": [{"author", "collection", "verdict", "seen"}] one per opinion log}. An
    author whose logs disagree is a dispute in `verdicts` (it counts in both totals).

    Feed and snapshot carry the whole state rather than only the change, so a subscriber
    that keeps one complete record per add (HMA replaces a record, it never merges one)
    stays right whichever page or fetch an opinion arrives in."""
    wanted = sorted(set(targets))
    if not wanted:
        return {}
    sql = (
        "SELECT target, author, collection, verdict, seen FROM opinions"
        " WHERE target IN (SELECT value FROM json_each(?))"
    )
    args = [json.dumps(wanted)]
    if collections is not None:
        sql += " AND collection IN (SELECT value FROM json_each(?))"
        args.append(json.dumps(sorted(set(collections))))
    rows: dict[str, list[tuple[str, str, Stance]]] = {}
    for target, author, collection, verdict, seen in conn.execute(
        sql + " ORDER BY target, author, collection", args
    ):
        rows.setdefault(target, []).append((author, collection, Stance(verdict, bool(seen))))
    out: dict[str, dict[str, Any]] = {}
    for target in wanted:
        held = rows.get(target)
        if held is None:  # most adds: no opinion at all
            out[target] = {
                "opinions": {"confirm": 0, "dispute": 0, "seen": 0},
                "verdicts": {},
                "stances": [],
            }
            continue
        counts = count_opinions((a, s) for a, _, s in held)
        verdicts: dict[str, str] = {}
        for author, _, stance in held:
            if stance.verdict is not None and verdicts.get(author) != "dispute":
                verdicts[author] = stance.verdict
        out[target] = {
            "opinions": {"confirm": counts.confirm, "dispute": counts.dispute, "seen": counts.seen},
            "verdicts": verdicts,
            "stances": [
                {"author": a, "collection": c, "verdict": s.verdict, "seen": s.seen}
                for a, c, s in held
                if s.verdict is not None or s.seen
            ],
        }
    return out


def _named(state: dict[str, Any], name: AuthorName) -> dict[str, Any]:
    if state["verdicts"]:
        state["verdict_names"] = {a: name(a) for a in state["verdicts"]}
    return state


def _targets(conn: sqlite3.Connection, targets: Iterable[OpId]) -> dict[str, tuple[Any, ...]]:
    """The signal rows (type, value, quality, category, class, ref, revoked_by) of the adds
    some opinions name, by op id; adds this node does not hold are absent."""
    keys = sorted({(t.author, t.collection, t.seq, t.index) for t in targets})
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT l.author, l.collection, s.seq, s.idx, s.type, s.value, s.quality, s.category,"
        " s.classification, s.ref, s.revoked_by FROM json_each(?) j"
        " JOIN logs l ON l.author = json_extract(j.value, '$[0]')"
        " AND l.collection = json_extract(j.value, '$[1]')"
        " JOIN signals s ON s.log_id = l.id AND s.seq = json_extract(j.value, '$[2]')"
        " AND s.idx = json_extract(j.value, '$[3]')",
        (json.dumps(keys),),
    )
    return {f"{r[0]}/{r[1]}/{r[2]}/{r[3]}": r[4:] for r in rows}


class FeedReader:
    """Feed pages and snapshots from the node's SQLite file, on a small thread pool."""

    def __init__(self, db_path: str | Path, author_name: AuthorName, threads: int = 2) -> None:
        self.db_path = Path(db_path)
        self.author_name = author_name
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="feed")
        self._local = threading.local()

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA query_only=1")
        conn.execute("PRAGMA cache_size=-65536")
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.connect()
        return conn

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args))

    def close(self) -> None:
        self.executor.shutdown(wait=True)

    # -- feed ----------------------------------------------------------------------------

    def entries(
        self, after: int, limit: int, collections: Iterable[str] | None
    ) -> list[dict[str, Any]]:
        """Changes with cursor > after, in cursor order; `collections` None means all."""
        conn = self._conn()
        allowed = None if collections is None else sorted(set(collections))
        if allowed is None:
            selection = "SELECT * FROM feed WHERE cursor > ? ORDER BY cursor LIMIT ?"
            params: list[Any] = [after, limit]
        elif not allowed:
            return []
        else:
            parts = []
            params = []
            for collection in allowed:
                parts.append(
                    "SELECT * FROM (SELECT * FROM feed WHERE collection = ? AND cursor > ?"
                    " ORDER BY cursor LIMIT ?)"
                )
                params += [collection, after, limit]
            selection = " UNION ALL ".join(parts) + " ORDER BY cursor LIMIT ?"
            params.append(limit)
        rows = conn.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM ({selection}) f"
            " LEFT JOIN signals s ON s.id = f.signal_id LEFT JOIN logs l ON l.id = s.log_id"
            " ORDER BY f.cursor",
            params,
        ).fetchall()
        allowed_set = None if allowed is None else set(allowed)
        names: dict[str, str] = {}

        def name(author: str) -> str:
            known = names.get(author)
            if known is None:
                known = names[author] = self.author_name(author)
            return known

        parsed: dict[int, tuple[OpId, OpId]] = {}
        for row in rows:
            if row[1] not in ("add", "revoke"):
                try:
                    parsed[row[0]] = (OpId.parse(row[3]), OpId.parse(row[4]))
                except ProtocolError:
                    continue
        held = _targets(conn, (target for _, target in parsed.values()))
        adds = [f"{r[15]}/{r[2]}/{r[7]}/{r[8]}" for r in rows if r[1] == "add"]
        state = opinion_state(conn, adds + [str(t) for _, t in parsed.values()], allowed)

        out: list[dict[str, Any]] = []
        for row in rows:
            kind = row[1]
            collection = row[2]
            entry: dict[str, Any] = {"cursor": row[0], "kind": kind, "collection": collection}
            if kind == "add":
                author = row[15]
                entry["op_id"] = f"{author}/{collection}/{row[7]}/{row[8]}"
                entry["author"] = author
                entry["author_name"] = name(author)
                signal_labels(entry, row, 9)
                entry.update(_named(state[entry["op_id"]], name))
            elif kind == "revoke":
                author = row[15]
                entry["op_id"] = row[3]
                entry["author"] = author
                entry["author_name"] = name(author)
                entry["target"] = row[4]
                entry["reason"] = row[5] or ""
                signal_labels(entry, row, 9)
            else:
                if row[0] not in parsed:
                    continue
                op, target = parsed[row[0]]
                if allowed_set is not None and target.collection not in allowed_set:
                    continue
                entry["op_id"] = row[3]
                entry["author"] = op.author
                entry["author_name"] = name(op.author)
                entry["target"] = row[4]
                entry["opinion"] = row[5]
                signal = held.get(str(target))
                if signal is not None:
                    entry["target_author"] = target.author
                    entry["target_author_name"] = name(target.author)
                    entry["target_live"] = signal[6] is None
                    signal_labels(entry, signal, 0)
                entry.update(_named(state[str(target)], name))
            entry["at"] = row[6]
            out.append(entry)
        return out

    def page(self, after: int, limit: int, collections: Iterable[str] | None) -> bytes:
        """One page as the JSON body of GET /v1/feed (encoded here, off the event loop)."""
        entries = self.entries(after, limit, collections)
        last = entries[-1]["cursor"] if entries else after
        body = {"entries": entries, "next": last, "more": len(entries) == limit}
        return json.dumps(body, separators=(",", ":")).encode()

    def events(
        self, after: int, limit: int, collections: Iterable[str] | None
    ) -> tuple[bytes, int]:
        """Server-sent events of the changes after `after`, and the last cursor sent."""
        entries = self.entries(after, limit, collections)
        if not entries:
            return b"", after
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        text = "".join(f"id: {e['cursor']}\ndata: {dumps(e)}\n\n" for e in entries)
        return text.encode(), entries[-1]["cursor"]

    # -- snapshot ------------------------------------------------------------------------

    def snapshot(self, collections: Iterable[str] | None) -> Snapshot:
        return Snapshot(self, None if collections is None else sorted(set(collections)))


class Snapshot:
    """All live signals of some collections as of one cursor, read in one read transaction.

    The transaction stays open while the caller streams the chunks, so a change committed
    meanwhile is neither in the snapshot nor lost: it comes after `cursor` in the feed.
    """

    def __init__(self, reader: FeedReader, collections: list[str] | None) -> None:
        self.reader = reader
        self.conn = reader.connect()
        self.conn.execute("BEGIN")
        self.cursor = int(
            self.conn.execute("SELECT coalesce(max(cursor), 0) FROM feed").fetchone()[0]
        )
        logs = self.conn.execute("SELECT id, author, collection FROM logs ORDER BY collection, id")
        self.logs = [
            (log_id, author, collection)
            for log_id, author, collection in logs
            if collections is None or collection in collections
        ]
        self.collections = (
            sorted({c for _, _, c in self.logs}) if collections is None else collections
        )
        self.opinion_scope = collections
        self._rows = self._iter_rows()

    def _iter_rows(self) -> Iterator[dict[str, Any]]:
        author_name = self.reader.author_name
        for log_id, author, collection in self.logs:
            name = author_name(author)
            query = self.conn.execute(
                f"SELECT {_SIGNAL_COLUMNS} FROM signals s WHERE s.log_id = ?"
                " AND s.revoked_by IS NULL ORDER BY s.seq, s.idx",
                (log_id,),
            )
            while rows := query.fetchmany(SNAPSHOT_CHUNK):
                op_ids = [f"{author}/{collection}/{row[0]}/{row[1]}" for row in rows]
                state = opinion_state(self.conn, op_ids, self.opinion_scope)
                for op_id, row in zip(op_ids, rows, strict=True):
                    out: dict[str, Any] = {
                        "op_id": op_id,
                        "author": author,
                        "author_name": name,
                        "collection": collection,
                    }
                    signal_labels(out, row, 2)
                    out.update(_named(state[op_id], author_name))
                    yield out

    def rows(self, count: int = SNAPSHOT_CHUNK) -> list[dict[str, Any]]:
        """The next live signals (empty at the end)."""
        out = []
        for row in self._rows:
            out.append(row)
            if len(out) >= count:
                break
        return out

    def lines(self, count: int = SNAPSHOT_CHUNK) -> bytes:
        dumps = json.JSONEncoder(separators=(",", ":")).encode
        return "".join(dumps(r) + "\n" for r in self.rows(count)).encode()

    def close(self) -> None:
        try:
            self.conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        self.conn.close()


class FeedHub:
    """Wakes live streams when the store commits changes.

    The store calls `notify` on its own thread after each commit; the wake-up hops to the
    event loop. Waiters take `current` before reading, so a change committed between
    their read and their wait still wakes them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.current = asyncio.Event()
        self.closed = False

    def notify(self, *_: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:
            pass  # the loop is closing; nobody is listening any more

    def _wake(self) -> None:
        event, self.current = self.current, asyncio.Event()
        event.set()

    def wake(self) -> None:
        """Wake every stream without a change, so each re-checks its token's grant now
        (after a token is revoked) rather than at its next poll."""
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()
