"""The platform feed: pages of changes after a cursor, a live wake-up, consistent snapshots.

Feed and snapshot reads run on connections and threads of their own, never on the store
thread: a platform paging through ten million changes, or a snapshot held open for
minutes, must not stall ingest or matching. WAL mode gives each reader a stable view, and
one writer means cursors become visible in order, so a reader never sees a gap that is
filled later.

Every answer is filtered by the caller's collections here, at the one place rows become
JSON, so no later layer can leak a hash of a collection the caller may not read. The SQL
is hashmesh/node/store/feed.py's, the rendering of a signal hashmesh/node/store/render.py's.
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

from hashmesh.node.store.feed import (
    ENTRY_LABELS_AT,
    SnapshotRead,
    connect_reader,
    feed_rows,
    held_targets,
    opinion_state,
)
from hashmesh.node.store.render import labels, signal_json
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.ops import OpId

T = TypeVar("T")

MAX_PAGE = 10_000
DEFAULT_PAGE = 1_000
SNAPSHOT_CHUNK = 5_000

AuthorName = Callable[[str], str]
#: Marks a page's entries in place with this node's match policy (web/platform.py
#: FeedMarks), given the caller's collections; runs on the feed's thread.
Marker = Callable[[list[dict[str, Any]], frozenset[str] | None], None]


def _named(state: dict[str, Any], name: AuthorName) -> dict[str, Any]:
    if state["verdicts"]:
        state["verdict_names"] = {a: name(a) for a in state["verdicts"]}
    return state


class FeedReader:
    """Feed pages and snapshots from the node's SQLite file, on a small thread pool."""

    def __init__(
        self,
        db_path: str | Path,
        author_name: AuthorName,
        threads: int = 2,
        mark: Marker | None = None,
    ) -> None:
        self.db_path = Path(db_path)
        self.author_name = author_name
        self.mark = mark
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="feed")
        self._local = threading.local()

    def connect(self) -> sqlite3.Connection:
        return connect_reader(self.db_path)

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
        rows = feed_rows(conn, after, limit, allowed)
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
        held = held_targets(conn, (target for _, target in parsed.values()))
        adds = [f"{r[15]}/{r[2]}/{r[7]}/{r[8]}" for r in rows if r[1] == "add"]
        state = opinion_state(conn, adds + [str(t) for _, t in parsed.values()], allowed)

        out: list[dict[str, Any]] = []
        for row in rows:
            kind = row[1]
            collection = row[2]
            entry: dict[str, Any] = {"cursor": row[0], "kind": kind, "collection": collection}
            if kind == "add":
                author = row[15]
                entry.update(
                    signal_json(
                        author, collection, row[7], row[8], row, ENTRY_LABELS_AT, name(author)
                    )
                )
                entry.update(_named(state[entry["op_id"]], name))
            elif kind == "revoke":
                author = row[15]
                entry["op_id"] = row[3]
                entry["author"] = author
                entry["author_name"] = name(author)
                entry["target"] = row[4]
                entry["reason"] = row[5] or ""
                labels(entry, row, ENTRY_LABELS_AT)
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
                    labels(entry, signal, 0)
                entry.update(_named(state[str(target)], name))
            entry["at"] = row[6]
            out.append(entry)
        return out

    def page(self, after: int, limit: int, collections: Iterable[str] | None) -> bytes:
        """One page as the JSON body of GET /v1/feed (encoded here, off the event loop),
        each add this node's policy holds back marked (`policy`), never left out."""
        entries = self.entries(after, limit, collections)
        if self.mark is not None and entries:
            self.mark(entries, None if collections is None else frozenset(collections))
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
        self.read = SnapshotRead(reader.db_path)
        self.cursor = self.read.cursor
        self.logs = [
            (log_id, author, collection)
            for log_id, author, collection in self.read.logs()
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
            for rows in self.read.live(log_id, SNAPSHOT_CHUNK):
                out = [signal_json(author, collection, r[0], r[1], r, 2, name) for r in rows]
                state = self.read.opinion_state([o["op_id"] for o in out], self.opinion_scope)
                for row in out:
                    row.update(_named(state[row["op_id"]], author_name))
                    yield row

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
        self.read.close()


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
