"""A pulled or pushed page is ingested in slices, each verified off the store thread first.

Real parts throughout: an author's NodeService signs the batches, the receiving node's
Replicator, NodeService and store thread ingest them (net/sync.py, `_ingest_sliced`), with
the slice size made small so that a page of a few batches spans several slices.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hashmesh.node.config import Home, Peer, Trust
from hashmesh.node.net import sync
from hashmesh.node.net.peers import PeerTally
from hashmesh.node.net.sync import Replicator, SyncObserver
from hashmesh.node.service import NodeService, init_home
from hashmesh.node.store.executor import StoreThread
from hashmesh.protocol.batches import LogKey, iter_frames
from hashmesh.protocol.ops import AddOp

COLLECTION = "csam"


def author_frames(tmp_path: Path, batches: int) -> tuple[str, list[tuple[bytes, bytes, bytes]]]:
    """`batches` batches of 20 md5 adds each, signed by a fresh author node."""
    init_home(tmp_path / "author", "author", "127.0.0.1:0", None)
    author = NodeService(Home(tmp_path / "author"))
    try:
        for b in range(batches):
            ops = [AddOp.create("md5", f"{b:04x}{i:028x}", category="csam") for i in range(20)]
            author.publish(COLLECTION, ops)
        key = LogKey(author.node_id, COLLECTION)
        frames = [f for frame in author.store.batch_frames(key) for f in iter_frames(frame)]
        return author.node_id, frames
    finally:
        author.close()


def receiver(tmp_path: Path, author_id: str) -> tuple[Home, Peer]:
    init_home(tmp_path / "target", "target", "127.0.0.1:0", None)
    home = Home(tmp_path / "target")
    config = home.load_config()
    config.add_trust(Trust(node_id=author_id, collection=COLLECTION, name="author"))
    peer = Peer(name="author", url="http://127.0.0.1:1", node_id=author_id)
    config.add_peer(peer)
    home.save_config(config)
    return home, peer


async def ingest(home: Home, peer: Peer, frames: list[tuple[bytes, bytes, bytes]]) -> Any:
    """Ingest `frames` twice as one page; the two replies, errors and the log's head."""
    store_thread = StoreThread()
    service = await store_thread.call(NodeService, home)
    replicator = Replicator(service, store_thread, SyncObserver())
    try:
        first, tally = await replicator._ingest_sliced(peer, frames, PeerTally())
        again, _ = await replicator._ingest_sliced(peer, frames, PeerTally())
        head = await store_thread.call(service.store.head, LogKey(peer.node_id, COLLECTION))
        return first, again, head, tally
    finally:
        await replicator.stop()
        await store_thread.call(service.close)
        store_thread.shutdown()


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sync, "INGEST_SLICE_BYTES", 1)  # one batch a slice


def test_every_slice_is_applied_and_a_second_delivery_is_all_duplicates(
    tmp_path: Path, small_slices: None
) -> None:
    author_id, frames = author_frames(tmp_path, 5)
    home, peer = receiver(tmp_path, author_id)
    (reply, error), (again, again_error), head, tally = asyncio.run(ingest(home, peer, frames))
    assert error == "" and again_error == ""
    assert [r.outcome for r in reply.results] == ["applied"] * 5
    assert [r.outcome for r in again.results] == ["duplicate"] * 5
    assert head == 5 and tally.received == 5


def test_an_invalid_batch_in_a_later_slice_keeps_the_earlier_ones_and_stops(
    tmp_path: Path, small_slices: None
) -> None:
    author_id, frames = author_frames(tmp_path, 5)
    header, sig, ops = frames[2]
    frames[2] = (header, bytes([sig[0] ^ 1]) + sig[1:], ops)  # batch 3's signature broken
    home, peer = receiver(tmp_path, author_id)
    (reply, error), (again, _), head, tally = asyncio.run(ingest(home, peer, frames))
    assert error.startswith("batch 2: "), error
    assert [r.outcome for r in reply.results] == ["applied", "applied"]
    assert head == 2  # batches 4 and 5 were not read: their predecessor was refused
    assert [reason for _, reason in tally.penalties] == ["invalid_batch"]
    assert [r.outcome for r in again.results] == ["duplicate", "duplicate"]
