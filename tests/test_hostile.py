"""Hostile peers: a configured peer that lies (tests/hostile_peer.py) against a real node.

Every attack is refused with its status, counted in /metrics
(`hashmesh_peer_refused_total{peer,reason}`, `hashmesh_http_requests_total{route,status}`),
scored down and cut off when the misbehaviour is provably the peer's own, and all the
while an honest node keeps publishing to the victim, whose adds arrive within seconds.
test_federation.py covers the basics (one forged batch, one fork, one replay); this goes
further. What each behaviour gets is listed in docs/robustness.md.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hostile_peer import HostilePeer, LiarServer
from netnodes import NodeProc, both_ways, wait_for
from prometheus_client.parser import text_string_to_metric_families

from hashmesh.node.config import Home, Peer, Trust
from hashmesh.protocol.encoding import b64url, canonical
from hashmesh.protocol.evidence import SignedHeader
from hashmesh.protocol.sync import encode_sync_request

MD5 = "%032x"
DEAD = "http://127.0.0.1:9"


def api(node: NodeProc, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        node.url + path,
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {node.admin_token()}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if path != "/metrics" else raw.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def metrics(node: NodeProc) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = api(node, "GET", "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def refused(node: NodeProc, peer: str, reason: str) -> float:
    key = ("hashmesh_peer_refused_total", (("peer", peer), ("reason", reason)))
    return metrics(node).get(key, 0.0)


def requests(node: NodeProc, route: str, status: int) -> float:
    key = ("hashmesh_http_requests_total", (("route", route), ("status", str(status))))
    return metrics(node).get(key, 0.0)


def score(node: NodeProc, peer: str) -> float:
    return metrics(node)[("hashmesh_peer_score", (("peer", peer),))]


def peer_state(node: NodeProc, name: str) -> dict[str, Any]:
    status, body = api(node, "GET", "/v1/status")
    assert status == 200
    return next(p for p in body["peers"] if p["name"] == name)


def batch_count(node: NodeProc) -> int:
    return int(api(node, "GET", "/v1/status")[1]["batches"])


def matches(node: NodeProc, value: str) -> bool:
    status, body = api(node, "POST", "/v1/match", {"queries": [{"type": "md5", "value": value}]})
    assert status == 200, body
    return bool(body["matched"])


@dataclass
class Arena:
    victim: NodeProc
    honest: NodeProc
    evil: dict[str, HostilePeer]
    sent: int = 0

    def honest_add_arrives(self, within: float = 5.0) -> float:
        """The honest node publishes one add; seconds until the victim matches it."""
        self.sent += 1
        value = MD5 % (0x600D << 64 | self.sent)
        status, _ = api(
            self.honest,
            "POST",
            "/v1/signals",
            {"type": "md5", "value": value, "collection": "csam"},
        )
        assert status == 200
        start = time.monotonic()
        wait_for(lambda: matches(self.victim, value), timeout=within, step=0.05)
        return time.monotonic() - start


@pytest.fixture
def arena(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Arena]:
    names = getattr(request, "param", ["evil"])
    victim = NodeProc(tmp_path, "victim")
    honest = NodeProc(tmp_path, "honest")
    evil = {n: HostilePeer(n, victim, victim.node_id) for n in names}
    home = Home(victim.home)
    config = home.load_config()
    config.add_trust(Trust(node_id=honest.node_id, collection="csam"))
    for peer in evil.values():
        config.add_peer(Peer(name=peer.name, url=DEAD, node_id=peer.node_id, share=[]))
        config.add_trust(Trust(node_id=peer.node_id, collection="csam"))
    config.selfreport_enabled = True  # its public endpoints face the slowloris test too
    home.save_config(config)
    victim.peer(honest, "csam")
    honest.peer(victim, "csam")
    honest.start()
    victim.start()
    arena = Arena(victim, honest, evil)
    arena.honest_add_arrives(within=15)  # linked and syncing before the attack
    yield arena
    for peer in evil.values():
        peer.close()
    victim.kill()
    honest.kill()


def test_forged_batches_and_evidence_get_the_peer_cut_off(arena: Arena) -> None:
    victim, evil = arena.victim, arena.evil["evil"]
    good, other = evil.chain("csam", [1, 2])
    statuses = []
    for frame in (
        evil.forge_signature(good),  # its own batch, signature forged
        evil.swap_ops(good, other),  # valid header, ops that are not the signed ones
        # a batch that claims the honest node as author, signed by the attacker
        evil.forge_signature(evil.chain("csam", [3], key=evil.key)[0]).replace(
            evil.node_id.encode(), arena.honest.node_id.encode()
        ),
    ):
        reply = evil.send("/v1/peer/batches", frame)
        statuses.append(reply.status)
        assert reply.status == 400 and reply.error.startswith("batch 0: "), reply
        arena.honest_add_arrives()
    assert score(victim, "evil") == 75
    # Fake fork evidence (two validly signed headers that do not conflict) is invalid too.
    part = SignedHeader(good.header_bytes, good.signature).to_wire()
    fake = b64url(canonical({"v": 1, "kind": "fork", "a": part, "b": part}))
    reply = evil.send("/v1/peer/evidence", canonical({"evidence": [fake]}))
    assert reply.status == 400 and "do not conflict" in reply.error, reply
    # 4 x 25 points: cut off. Everything it sends now is refused before it is read.
    reply = evil.send("/v1/peer/batches", good.to_bytes())
    assert reply.status == 403 and "cut off" in reply.error
    assert batch_count(victim) == arena.sent  # only the honest node's batches
    assert not matches(victim, MD5 % 1)
    state = peer_state(victim, "evil")
    assert state["cut_off"] is True and state["score"] >= 100
    assert refused(victim, "evil", "invalid_batch") == 3
    assert refused(victim, "evil", "bad_evidence") == 1
    assert refused(victim, "evil", "cut_off") == 1
    assert requests(victim, "/v1/peer/batches", 400) == 3
    assert requests(victim, "/v1/peer/batches", 403) == 1
    assert score(victim, "evil") >= 100
    assert peer_state(victim, "honest")["score"] == 0
    arena.honest_add_arrives()


def test_forks_and_broken_chains_freeze_only_the_liars_log(arena: Arena) -> None:
    victim, evil = arena.victim, arena.evil["evil"]
    one, two = evil.chain("csam", [10, 11])
    rival = evil.chain("csam", [12], first_seq=2, prev=one.hash)[0]  # same seq, other batch
    reply = evil.send("/v1/peer/batches", one.to_bytes() + two.to_bytes() + rival.to_bytes())
    assert reply.status == 200
    assert [r["outcome"] for r in reply.json()["results"]] == ["applied", "applied", "fork"]
    # A broken link at seq 3 (prev is not seq 2's hash) on a frozen log: refused as frozen.
    broken = evil.chain("csam", [13], first_seq=3, prev=bytes(32))[0]
    reply = evil.send("/v1/peer/batches", broken.to_bytes())
    assert [r["outcome"] for r in reply.json()["results"]] == ["frozen"]
    forks = api(victim, "GET", "/v1/status")[1]["forks"]
    assert [(f["author"], f["seq"]) for f in forks] == [(evil.node_id, 2)]
    assert not matches(victim, MD5 % 12) and not matches(victim, MD5 % 13)
    m = metrics(victim)
    assert m[("hashmesh_batches_ingested_total", (("outcome", "fork"), ("source", "peer")))] == 1
    # The honest node's log is untouched and keeps flowing.
    arena.honest_add_arrives()
    assert not any(f["author"] == arena.honest.node_id for f in forks)


def test_replays_and_stale_timestamps_are_refused_but_not_scored(arena: Arena) -> None:
    victim, evil = arena.victim, arena.evil["evil"]
    body = encode_sync_request({}, ["csam"], [])
    headers = evil.headers("/v1/peer/sync", body)
    assert evil.send("/v1/peer/sync", body, headers).status == 200
    for _ in range(3):  # the same signed request again: a replay
        reply = evil.send("/v1/peer/sync", body, headers)
        assert reply.status == 401 and "replayed" in reply.error
    stale = int(time.time() * 1000) - 10 * 60_000
    reply = evil.send("/v1/peer/sync", body, ts=stale)
    assert reply.status == 401 and "timestamp is 600 s off" in reply.error
    future = int(time.time() * 1000) + 5 * 60_000
    assert evil.send("/v1/peer/sync", body, ts=future).status == 401
    # Re-sent old valid batches are harmless duplicates: no change, nothing refused.
    batches = evil.chain("csam", [20, 21])
    frames = b"".join(b.to_bytes() for b in batches)
    assert evil.send("/v1/peer/batches", frames).status == 200
    cursor = api(victim, "GET", "/v1/status")[1]["feed_cursor"]
    for _ in range(3):
        reply = evil.send("/v1/peer/batches", frames)
        assert [r["outcome"] for r in reply.json()["results"]] == ["duplicate", "duplicate"]
    assert api(victim, "GET", "/v1/status")[1]["feed_cursor"] == cursor
    # Counted per reason; the score is untouched, because a captured request can be
    # replayed by anyone on the path: scoring it would let them cut honest peers off.
    assert refused(victim, "evil", "replayed_nonce") == 3
    assert refused(victim, "evil", "stale_timestamp") == 2
    assert score(victim, "evil") == 0
    assert requests(victim, "/v1/peer/sync", 401) == 5
    # A request in the honest node's name that the honest node did not sign counts
    # against nobody: the signature is checked before anything is attributed.
    forged = evil.headers("/v1/peer/sync", body, ts=stale)
    forged["X-Hashmesh-From"] = arena.honest.node_id
    reply = evil.send("/v1/peer/sync", body, forged)
    assert reply.status == 401 and "does not verify" in reply.error
    assert refused(victim, "honest", "stale_timestamp") == 0
    arena.honest_add_arrives()


def test_batches_for_collections_it_may_not_write(arena: Arena) -> None:
    victim, evil = arena.victim, arena.evil["evil"]
    before = batch_count(victim)
    stranger = HostilePeer("stranger", victim.url, victim.node_id)  # an author nobody trusts
    frames = (
        evil.chain("le-only", [30])[0].to_bytes()  # trusted author, untrusted collection
        + evil.chain("csam", [31], key=stranger.key)[0].to_bytes()  # untrusted author
    )
    for _ in range(3):
        reply = evil.send("/v1/peer/batches", frames)
        assert reply.status == 200
        assert [r["outcome"] for r in reply.json()["results"]] == ["untrusted", "untrusted"]
    assert batch_count(victim) == before  # neither stored ...
    assert not matches(victim, MD5 % 30) and not matches(victim, MD5 % 31)
    assert refused(victim, "evil", "untrusted") == 6
    # ... nor scored: honest relays forward authors their own policy accepts.
    assert score(victim, "evil") == 0
    arena.honest_add_arrives()
    both_ways(victim, arena.honest)  # rounds begun after the refusal: nothing of it reaches
    # the honest node either
    status, body = api(
        arena.honest, "POST", "/v1/match", {"queries": [{"type": "md5", "value": MD5 % 31}]}
    )
    assert status == 200 and body["matched"] is False


def test_oversized_and_deeply_nested_bodies(arena: Arena) -> None:
    victim, evil = arena.victim, arena.evil["evil"]
    nested = evil.nested_json(100_000)
    reply = evil.send("/v1/peer/sync", nested)
    assert reply.status == 400 and reply.error.startswith("sync request: ")
    reply = evil.send("/v1/peer/evidence", b'{"evidence": ' + nested + b"}")
    assert reply.status == 400 and reply.error.startswith("evidence: ")
    deep = b'{"queries": ' + nested + b"}"
    request = urllib.request.Request(
        victim.url + "/v1/match",
        data=deep,
        method="POST",
        headers={"Authorization": f"Bearer {victim.admin_token()}"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 400
    assert refused(victim, "evil", "bad_sync_request") == 1
    assert refused(victim, "evil", "bad_evidence") == 1
    assert score(victim, "evil") == 50
    # Oversized: refused from the Content-Length before a byte is read, and (chunked,
    # no length) as soon as the body passes the limit.
    big = b"\0" * (33 * 1024 * 1024)
    reply = evil.send("/v1/peer/batches", big)
    assert reply.status == 413
    evil.close()

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"\0" * (1024 * 1024)

    conn = http.client.HTTPConnection(evil.host, evil.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/v1/peer/batches",
            body=chunks(),
            headers=evil.headers("/v1/peer/batches", b""),
            encode_chunked=True,
        )
        assert conn.getresponse().status == 413
    except (ConnectionError, BrokenPipeError):
        pass  # refused and closed mid-upload: equally fine
    finally:
        conn.close()
    assert requests(victim, "/v1/peer/batches", 413) >= 1
    assert requests(victim, "/v1/peer/sync", 400) == 1
    arena.honest_add_arrives()


def test_slowloris_connections_are_dropped_and_others_served(arena: Arena) -> None:
    victim, evil = arena.victim, arena.evil["evil"]
    stop = threading.Event()
    heads, _ = evil.slowloris(60, stop)
    # Peer routes check the sender's headers before reading a byte of the body: unsigned
    # slow bodies are refused at once.
    unsigned, _ = evil.slowloris(5, stop, body=True)
    bodies: list[socket.socket] = []
    # The operator API and the list import read their bodies at the same pace rule.
    auth = f"Authorization: Bearer {victim.admin_token()}\r\n"
    for path in ("/v1/signals", "/v1/lists/import", "/v1/import"):
        bodies += evil.slowloris(1, stop, body=True, path=path, headers=auth)[0]
    multipart = auth + "Content-Type: multipart/form-data; boundary=xx\r\n"
    bodies += evil.slowloris(1, stop, body=True, path="/v1/match/file", headers=multipart)[0]
    json_head = "Content-Type: application/json\r\n"  # the public self-report page
    page = "/takeitdown/api/submit"
    bodies += evil.slowloris(1, stop, body=True, path=page, headers=json_head, length=1000)[0]
    try:
        started = time.monotonic()
        delays = []
        while time.monotonic() - started < 12:  # attack under way: others are served
            t = time.monotonic()
            with urllib.request.urlopen(victim.url + "/v1/healthz", timeout=2) as r:
                assert r.status == 200
            delays.append(time.monotonic() - t)
            delays.append(arena.honest_add_arrives())
        assert max(delays) < 5
        for s in unsigned:
            s.settimeout(10)
            data = s.recv(4096)
            assert data.startswith(b"HTTP/1.1 401"), data[:100]
        # Slow bodies: answered 408 after the body timeout (15 s).
        for s in bodies:
            s.settimeout(10)
            data = s.recv(4096)
            assert data.startswith(b"HTTP/1.1 408"), data[:100]
        # Slow heads: closed by the keep-alive timeout (15 s from connect).
        for s in heads:
            s.settimeout(10)
            try:
                rest = s.recv(4096)
                while rest and b"HTTP/1.1 4" in rest[:12]:
                    rest = s.recv(4096)  # an error answer before closing is fine
            except ConnectionResetError:
                rest = b""
            assert rest == b"", rest[:100]
        assert time.monotonic() - started < 30
    finally:
        stop.set()
        for s in heads + bodies:
            s.close()
    arena.honest_add_arrives()


def test_request_flood_is_rate_limited_then_cut_off(arena: Arena) -> None:
    victim, evil = arena.victim, arena.evil["evil"]
    body = canonical({"evidence": []})
    statuses: list[int] = []
    flooding = threading.Thread(
        target=lambda: statuses.extend(evil.flood("/v1/peer/evidence", body, 450))
    )
    flooding.start()
    while flooding.is_alive():
        arena.honest_add_arrives()
    flooding.join()
    assert statuses[0] == 200 and 429 in statuses and statuses[-1] == 403
    first_429, first_403 = statuses.index(429), statuses.index(403)
    assert first_429 >= 150 and first_403 > first_429  # the burst, then limited, then cut
    assert set(statuses[first_403:]) == {403}
    limited = statuses.count(429)
    assert refused(victim, "evil", "rate_limited") == limited >= 100
    assert requests(victim, "/v1/peer/evidence", 429) == limited
    assert requests(victim, "/v1/peer/evidence", 403) == statuses.count(403)
    state = peer_state(victim, "evil")
    assert state["cut_off"] is True and score(victim, "evil") >= 100
    assert peer_state(victim, "honest")["cut_off"] is False
    arena.honest_add_arrives()


def test_lying_sync_pages(tmp_path: Path) -> None:
    """The victim pulls from the liar: a page that says 'more' for ever stops the round at
    once, a page with a forged batch scores the liar down, and honest sync goes on."""
    victim = NodeProc(tmp_path, "victim")
    honest = NodeProc(tmp_path, "honest")
    liar_more = HostilePeer("more", victim, victim.node_id)
    liar_forged = HostilePeer("forged", victim, victim.node_id)
    good = liar_more.chain("csam", [40, 41])
    servers = [
        LiarServer(liar_more, [b.to_bytes() for b in good], "more"),
        LiarServer(
            liar_forged, [liar_forged.forge_signature(liar_forged.chain("csam", [42])[0])], "forged"
        ),
    ]
    try:
        home = Home(victim.home)
        config = home.load_config()
        for liar, server in zip((liar_more, liar_forged), servers, strict=True):
            config.add_peer(Peer(name=liar.name, url=server.url, node_id=liar.node_id))
            config.add_trust(Trust(node_id=liar.node_id, collection="csam"))
        config.add_trust(Trust(node_id=honest.node_id, collection="csam"))
        home.save_config(config)
        victim.peer(honest)
        honest.peer(victim, "csam")
        honest.start()
        victim.start()
        arena = Arena(victim, honest, {})
        arena.honest_add_arrives(within=15)
        wait_for(lambda: matches(victim, MD5 % 41))  # the liar's valid batches are fine
        wait_for(lambda: refused(victim, "more", "empty_page") >= 2, timeout=10)
        rounds = refused(victim, "more", "empty_page")
        # Two requests a round (the page that applied, the one that brought nothing),
        # where the round used to go on for 1,000 pages.
        assert servers[0].requests <= 2 * rounds + 2
        wait_for(lambda: refused(victim, "forged", "invalid_batch") >= 1)
        assert not matches(victim, MD5 % 42)
        assert score(victim, "forged") >= 25 and score(victim, "more") == 0
        assert "invalid" in peer_state(victim, "forged")["last_error"]
        arena.honest_add_arrives()
    finally:
        for server in servers:
            server.close()
        victim.kill()
        honest.kill()
