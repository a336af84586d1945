"""Proving split views over the network: a witness backs its cosign with the author's
signed header, and a header that differs from another one the author signed at that seq
is fork evidence (node/witness.py judges; this module asks and answers).

Server side (signed by a configured peer, as every /v1/peer/ route):

    POST /v1/peer/header  {v, author, collection, seq} -> {v, header, sig}: the signed
                          header held there (protocol/witness.py); {v, held: false} when
                          none is held, and the same for a collection the caller may not
                          read: the answer must not tell that we hold the log, nor how
                          far. Not a 404, which is what an older version answers.

Client side: every PROOF_TICK_S the split views due a proof are taken from the witness on
the store thread, their other heads asked of the peers named (each request bounded in
bytes and seconds), and the answers judged there; new fork evidence is gossiped as a fork
found in sync is (Replicator's queue).
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
from aiohttp import web

from hashmesh.node.errors import NodeError, PeerError
from hashmesh.node.net.peers import RouteMissing, clip, peer_route
from hashmesh.node.net.sync import Replicator
from hashmesh.node.witness import Answer, ProofTask
from hashmesh.protocol.batches import LogKey
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.witness import (
    MAX_HEADER_REQUEST_BYTES,
    HeaderRequest,
    decode_header_answer,
    encode_header_answer,
    parse_header_request,
    prove_head,
)

log = logging.getLogger("hashmesh.proof")

PROOF_TICK_S = 2.0
HEADER_TIMEOUT_S = 10.0


class SplitProver:
    def __init__(self, replicator: Replicator) -> None:
        self.replicator = replicator
        self.service = replicator.service
        self.store_thread = replicator.store_thread

    def register(self, app: web.Application) -> None:
        app.router.add_post("/v1/peer/header", peer_route(self.handle_header))

    async def handle_header(self, request: web.Request) -> web.Response:
        config = self.service.config
        peers = self.replicator.peers
        peer, auth, body = await peers.authenticate(request, config, MAX_HEADER_REQUEST_BYTES)
        with self.replicator.from_peer(peer, "bad_header_request"):
            ask = parse_header_request(body)
        held = None
        if config.peer_may_read(peer.node_id, ask.collection):
            held = await self.store_thread.call(
                self.service.store.signed_header, LogKey(ask.author, ask.collection), ask.seq
            )
        return peers.respond(auth, encode_header_answer(held), "application/json")

    async def run(self) -> None:
        """Prove what is due every PROOF_TICK_S; a failure is logged, the next tick tries."""
        while True:
            await asyncio.sleep(PROOF_TICK_S)
            try:
                await self.tick()
            except Exception:
                log.exception("split view proof failed")

    async def tick(self) -> int:
        witness = self.service.witness
        tasks = await self.store_thread.call(witness.to_prove, time.time())
        proven = 0
        for task in tasks:
            answers = await self._ask(task)
            evidence = await self.store_thread.call(witness.settle, task, answers, time.time())
            if evidence is not None:
                proven += 1
                # as a fork found here: to every peer that may read the collection
                self.replicator.queue.put_nowait(([], [evidence], "proof"))
        return proven

    async def _ask(self, task: ProofTask) -> dict[str, dict[str, Answer]]:
        """Each head's peers, one after another until one produces the header its cosign
        names (signature and hash checked here, the key's right to sign by the judge); a
        header that does not prove the cosign counts as none, and the next is asked."""
        out: dict[str, dict[str, Answer]] = {}
        body = HeaderRequest(task.author, task.collection, task.seq).to_bytes()
        for head, (claim, _, asked) in task.claims.items():
            got = out.setdefault(head, {})
            for node_id in asked:
                answer = await self._fetch(node_id, body)
                if not isinstance(answer, str):
                    try:
                        prove_head(answer, claim)
                    except ProtocolError as exc:
                        answer = f"answered a header that does not prove its cosign: {exc}"
                got[node_id] = answer
                if not isinstance(answer, str):
                    break
        return out

    async def _fetch(self, node_id: str, body: bytes) -> Answer:
        client = self.replicator.client
        peer = self.service.config.peer(node_id)
        if client is None or peer is None:
            return "unreachable: not a configured peer"
        try:
            data = await asyncio.wait_for(
                client.post(peer, "/v1/peer/header", body, "application/json"),
                HEADER_TIMEOUT_S,
            )
        except RouteMissing:  # an older version: it cannot back a cosign, nor is it lying
            return "unreachable: runs a version without /v1/peer/header"
        except (TimeoutError, aiohttp.ClientError, OSError, NodeError, PeerError) as exc:
            return f"unreachable: {clip(str(exc))}"
        try:
            answer = decode_header_answer(data)
        except ProtocolError as exc:
            return f"answered no header: {exc}"
        return "holds no such header" if answer is None else answer
