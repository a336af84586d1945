"""Loading a node's PDQ index off the store thread, for the node and its matcher workers.

Both start from the checkpoint in Home.index_dir when it verifies against the rows, else
from the rows, reading through a read-only connection of their own inside one read
transaction: in WAL mode that is a consistent snapshot at one feed cursor, however long the
load takes, and the node's store thread goes on publishing and ingesting meanwhile. The
node then catches up on the store thread from that cursor (`catch_up`: only what was
committed during the load) before its change listener takes over.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from hashmesh.node.matching.checkpoint import read_checkpoint
from hashmesh.node.matching.matcher import video_index
from hashmesh.node.matching.pdq_index import PDQIndex
from hashmesh.node.matching.vpdq_index import VideoFrames, VPDQIndex
from hashmesh.node.store import feed

log = logging.getLogger("hashmesh.matching")


@dataclass(frozen=True)
class Loaded:
    index: PDQIndex
    cursor: int
    how: str
    checkpoint: int | None = None  # the cursor of the checkpoint it was mapped from
    # The vPDQ index at `cursor`, always built from rows (checkpoints hold PDQ only);
    # None from `from_checkpoint`, whose caller keeps the one it has.
    videos: VPDQIndex | None = None


def changes(
    page: list[tuple[int, str, int, str, str]],
) -> tuple[list[tuple[int, str]], list[int]]:
    """The PDQ adds (key, value) and removed keys of one `feed.index_changes` page."""
    added = [(key, value) for _, kind, key, t, value in page if kind == "add" and t == "pdq"]
    removed = [key for _, kind, key, t, _ in page if kind == "revoke" and t == "pdq"]
    return added, removed


def video_changes(
    page: list[tuple[int, str, int, str, str]],
) -> tuple[list[tuple[int, str]], list[int]]:
    """The vPDQ adds (key, value) and removed keys of one `feed.index_changes` page."""
    added = [(key, value) for _, kind, key, t, value in page if kind == "add" and t == "vpdq"]
    removed = [key for _, kind, key, t, _ in page if kind == "revoke" and t == "vpdq"]
    return added, removed


def catch_up(
    index: PDQIndex, conn: sqlite3.Connection, after: int, videos: VPDQIndex | None = None
) -> tuple[int, int, int]:
    """Apply every index change after cursor `after` to `index` (and `videos`), page by
    page; returns (last cursor applied, adds, removals). Run it where no commit can
    interleave (the store thread, or inside a read transaction) to end exactly at the head."""
    added_n = removed_n = 0
    while page := feed.index_changes(conn, after):
        added, removed = changes(page)
        if added:
            index.add_many([k for k, _ in added], [v for _, v in added])
        if removed:
            index.remove_many(removed)
        if videos is not None:
            v_added, v_removed = video_changes(page)
            videos.add_many((k, VideoFrames.from_value(v)) for k, v in v_added)
            videos.remove_many(v_removed)
        added_n, removed_n, after = added_n + len(added), removed_n + len(removed), page[-1][0]
    return after, added_n, removed_n


def load(conn: sqlite3.Connection, index_dir: Path) -> Loaded:
    """The index at the feed's head as of this call, and how it was made, in one read
    transaction on `conn` (a `feed.connect_reader` connection)."""
    conn.execute("BEGIN")
    try:
        videos = video_index(feed.live_vpdq(conn))
        loaded = _verified_checkpoint(conn, index_dir)
        if loaded is not None:
            return replace(loaded, videos=videos)
        head = feed.feed_head(conn)
        keys, values = feed.live_pdq(conn)
        index = PDQIndex()
        if keys:
            index.add_many(keys, values)
        return Loaded(index, head, "rows", videos=videos)
    finally:
        conn.execute("COMMIT")


def from_checkpoint(conn: sqlite3.Connection, index_dir: Path) -> Loaded | None:
    """Like `load`, but None instead of a build from rows when the checkpoint is missing or
    does not verify: a worker remapping a newer checkpoint keeps the index it has."""
    conn.execute("BEGIN")
    try:
        return _verified_checkpoint(conn, index_dir)
    finally:
        conn.execute("COMMIT")


def _verified_checkpoint(conn: sqlite3.Connection, index_dir: Path) -> Loaded | None:
    """Inside a read transaction: the checkpoint brought up to the head and verified."""
    return verified_checkpoint(
        index_dir,
        feed.feed_head(conn),
        lambda index, at: catch_up(index, conn, at)[1:],
        lambda: feed.pdq_digest(conn),
    )


def verified_checkpoint(
    index_dir: Path,
    head: int,
    catch_up_from: Callable[[PDQIndex, int], tuple[int, int]],
    rows_digest: Callable[[], tuple[int, int]],
) -> Loaded | None:
    """The checkpoint in `index_dir` brought from its cursor up to `head` by
    `catch_up_from(index, cursor)` (which returns the adds and removals it applied) and
    checked against the rows it should reflect (`rows_digest`: live count and key sum), or
    None with a warning saying why not. The node's, its workers' and a replica's stores
    each say how to catch up and what the rows hold; the rule is this one."""
    loaded = read_checkpoint(index_dir)
    if loaded is None:
        return None
    index, at = loaded
    if at > head:
        log.warning("PDQ index checkpoint is ahead of this database: not used")
        return None
    added, removed = catch_up_from(index, at)
    if index.digest() != rows_digest():
        log.warning("PDQ index checkpoint does not match the rows: not used")
        return None
    how = f"checkpoint at cursor {at}, {added} adds and {removed} removals since"
    return Loaded(index, head, how, at)
