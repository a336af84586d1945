"""The node's parts built from their narrow collaborators, in this process, without a Daemon.

Each part receives only what it uses (docs/design-notes.md, "Wiring"), so a real Store, a
real NodeService and a store thread are enough to serve the operator API, match through
the platform routes, or replicate between two nodes, over real HTTP on 127.0.0.1
(aiohttp's test server), with no node subprocess. These tests cannot even be written
against a part that takes the whole Daemon.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from hashmesh.node.batching import BatchingPublisher
from hashmesh.node.config import Home
from hashmesh.node.keys import hash_token, read_secret
from hashmesh.node.net.sync import Replicator, SyncObserver
from hashmesh.node.service import NodeService, init_home
from hashmesh.node.store.executor import StoreThread
from hashmesh.node.web import platform
from hashmesh.node.web.access import TokenCache
from hashmesh.node.web.api import ApiDeps, build_app
from hashmesh.protocol.signing import SigningKey

PDQ = "d8f8f0cce0f4a84f0e370a22028f67f0b36e2ed596623e1d33e6b39c4e9c9b22"
# The same hash with its first 8 bits flipped: a near duplicate, distance 8.
NEAR = f"{int(PDQ[:2], 16) ^ 0xFF:02x}{PDQ[2:]}"
MD5 = "5d41402abc4b2a76b9719d911017c592"


@dataclass
class Node:
    service: NodeService
    store_thread: StoreThread
    replicator: Replicator
    client: TestClient[Any, Any]
    headers: dict[str, str]
    policy_changes: list[str]

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        response = await self.client.post(path, json=body, headers=self.headers)
        return response.status, await response.json()

    @property
    def url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")


@asynccontextmanager
async def node(tmp_path: Path, name: str) -> AsyncIterator[Node]:
    """One node's API, platform and peer routes, wired as the daemon wires them."""
    init_home(tmp_path / name, name, "127.0.0.1:0", None)
    home = Home(tmp_path / name)
    store_thread = StoreThread()
    service = await store_thread.call(NodeService, home)
    await store_thread.call(service.open_intake)
    store_thread.prelude = service.intake.apply
    await store_thread.call(lambda: service.matcher.pdq)
    replicator = Replicator(service, store_thread, SyncObserver())
    token = read_secret(home.admin_token_path, "admin token")
    changes: list[str] = []

    async def status() -> dict[str, Any]:
        return await store_thread.call(service.status)

    publisher = BatchingPublisher(service, store_thread)
    app = build_app(
        ApiDeps(
            service=service,
            store_thread=store_thread,
            publisher=publisher,
            tokens=TokenCache(hash_token(token)),
            spool_dir=home.path,
            status=status,
            policy_changed=lambda: changes.append("changed"),
        )
    )
    platform.register(app, platform.PlatformDeps(service, store_thread, home.path))
    replicator.register(app)
    client = TestClient(TestServer(app, host="127.0.0.1", port=0))
    await client.start_server()
    headers = {"Authorization": f"Bearer {token}"}
    try:
        yield Node(service, store_thread, replicator, client, headers, changes)
    finally:
        await replicator.stop()
        await client.close()
        await publisher.close()
        await store_thread.call(service.close)
        store_thread.shutdown()


async def test_publish_match_and_revoke_through_the_api_in_process(tmp_path: Path) -> None:
    async with node(tmp_path, "hotline") as hotline:
        status, added = await hotline.post(
            "/v1/signals", {"type": "pdq", "value": PDQ, "collection": "csam"}
        )
        assert status == 200 and added["new"] is True, added
        status, again = await hotline.post(
            "/v1/signals", {"type": "pdq", "value": PDQ, "collection": "csam"}
        )
        assert (status, again["new"], again["op_id"]) == (200, False, added["op_id"])

        query = {"queries": [{"type": "pdq", "value": NEAR}]}
        status, result = await hotline.post("/v1/match", query)
        assert status == 200 and result["matched"] is True, result
        hit = result["results"][0]["matches"][0]
        assert (hit["op_id"], hit["distance"]) == (added["op_id"], 8)

        status, _ = await hotline.post("/v1/revoke", {"op_id": added["op_id"]})
        assert status == 200
        status, result = await hotline.post("/v1/match", query)
        assert status == 200 and result["matched"] is False, result


async def test_a_refused_add_names_its_field_and_publishes_nothing(tmp_path: Path) -> None:
    async with node(tmp_path, "hotline") as hotline:
        before = await hotline.store_thread.call(hotline.service.store.counts)
        status, body = await hotline.post(
            "/v1/signals", {"type": "md5", "value": MD5, "collection": "csam", "colour": "red"}
        )
        assert (status, body) == (400, {"error": "colour: unknown field"})
        assert await hotline.store_thread.call(hotline.service.store.counts) == before


async def test_a_policy_change_through_the_api_is_applied_at_once(tmp_path: Path) -> None:
    async with node(tmp_path, "hotline") as hotline:
        other = SigningKey(bytes([7]) * 32).node_id
        peer = {"name": "platform", "url": "http://127.0.0.1:9", "node_id": other}
        status, body = await hotline.post("/v1/admin/peers", peer)
        assert status == 200, body
        assert hotline.policy_changes == ["changed"]  # the replicator is woken, no restart


async def test_two_replicators_sync_in_process(tmp_path: Path) -> None:
    """The replicator needs the service, the store thread and somewhere to report: two of
    them, each behind its own test server, exchange a batch over real signed HTTP."""
    async with node(tmp_path, "hotline") as hotline, node(tmp_path, "platform") as receiver:
        status, added = await hotline.post(
            "/v1/signals", {"type": "md5", "value": MD5, "collection": "csam"}
        )
        assert status == 200, added
        a, b = hotline.service, receiver.service
        await hotline.store_thread.call(a.peer_add, "platform", receiver.url, b.node_id, ["csam"])
        await receiver.store_thread.call(b.peer_add, "hotline", hotline.url, a.node_id, [])
        await receiver.store_thread.call(b.trust_add, a.node_id, "csam", "hotline")
        receiver.replicator.start()
        peer = b.config.peer(a.node_id)
        assert peer is not None
        assert await receiver.replicator.sync_with(peer) is True
        query = {"queries": [{"type": "md5", "value": MD5}]}
        status, result = await receiver.post("/v1/match", query)
        assert status == 200 and result["matched"] is True, result
        assert result["results"][0]["matches"][0]["op_id"] == added["op_id"]
