"""Matcher replicas (`hashmesh matcher --follow`), as real processes following a real node
on 127.0.0.1: the node's answers for the node's tokens, adds and revocations reaching the
replica within a bound, a SIGKILL that loses no revocation, a token revoked on the node
refused on the replica, 503 once the node stops answering or when too far behind, and a
hostile "node" whose malformed stream cannot crash it."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from netnodes import HASHMESH, NodeProc, wait_for
from platform_util import match_file, ok_json, request
from testdata import IMAGES, PDQ

from hashmesh.protocol import SigningKey
from hashmesh.testing import MatcherRun

NEEDLES = PDQ / "needles.txt"
FRESH_S = 10.0  # the bound every "reaches the replica" wait below allows


def pdq_values(count: int) -> list[str]:
    if NEEDLES.exists():
        values = NEEDLES.read_text().split()[:count]
        if len(values) == count:
            return values
    return [os.urandom(32).hex() for _ in range(count)]


def near(value: str, bits: int = 3) -> str:
    """`value` with its lowest `bits` bits flipped: a PDQ query at distance `bits`."""
    n = int(value, 16) ^ ((1 << bits) - 1)
    return f"{n:064x}"


def md5(n: int, salt: int = 0) -> str:
    return f"{salt:08x}{n:024x}"


class MatcherProc(MatcherRun):
    """A `hashmesh matcher` of `node` (or of a relay in front of it, `via`)."""

    def __init__(
        self,
        root: Path,
        node: NodeProc,
        token: str,
        *extra: str,
        data: str = "m",
        via: str | None = None,
    ) -> None:
        super().__init__(root, data, via or node.url, token, extra, command=(HASHMESH,))

    def start(self, healthy: bool = True) -> None:
        super().start()
        self.url = wait_for(self.poll_url, timeout=20)
        if healthy:
            wait_for(lambda: self.health()[0] == 200, timeout=20)

    def health(self) -> tuple[int, Any]:
        status, body = request(self.url + "/healthz")
        return status, json.loads(body)

    def metrics(self, token: str) -> dict[str, float]:
        status, body = request(self.url + "/metrics", token=token)
        assert status == 200, body
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out


@pytest.fixture
def matchers() -> Iterator[list[MatcherProc]]:
    made: list[MatcherProc] = []
    yield made
    for m in made:
        m.kill()


def match(url: str, token: str, queries: list[dict[str, str]]) -> tuple[int, Any]:
    status, body = request(url + "/v1/match", "POST", token, {"queries": queries})
    return status, json.loads(body)


def token(
    node: NodeProc, name: str, scopes: list[str], collections: list[str] | None = None
) -> str:
    body: dict[str, Any] = {"name": name, "scopes": scopes}
    if collections is not None:
        body["collections"] = collections
    return str(ok_json(node.url + "/v1/admin/tokens", "POST", node.admin_token(), body)["token"])


def publish(node: NodeProc, signal_type: str, value: str, collection: str) -> str:
    body = {"type": signal_type, "value": value, "collection": collection, "category": "csam"}
    if signal_type == "pdq":
        body["quality"] = 100
    return str(ok_json(node.url + "/v1/signals", "POST", node.admin_token(), body)["op_id"])


def matched_ops(answer: Any) -> list[list[str]]:
    return [[m["op_id"] for m in r["matches"]] for r in answer["results"]]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProc]:
    n = NodeProc(tmp_path, "hotline")
    n.start()
    yield n
    n.stop()


def test_replica_answers_as_the_node_and_follows_it(
    tmp_path: Path, node: NodeProc, matchers: list[MatcherProc]
) -> None:
    pdqs = pdq_values(6)
    ops = {}
    for i, value in enumerate(pdqs):
        ops[value] = publish(node, "pdq", value, "csam" if i % 2 else "ncii")
    for i in range(20):
        publish(node, "md5", md5(i), "csam" if i % 2 else "ncii")
    ok_json(
        node.url + "/v1/opinions",
        "POST",
        node.admin_token(),
        {"op_id": ops[pdqs[1]], "opinion": "confirm"},
    )
    follow = token(node, "replica", ["read", "replicate"])
    platform = token(node, "platform", ["match"])
    ncii_only = token(node, "ncii-platform", ["match"], ["ncii"])
    scraper = token(node, "scraper", ["metrics"])
    replica = MatcherProc(tmp_path, node, follow)
    matchers.append(replica)
    replica.start()

    queries = [{"type": "md5", "value": md5(i)} for i in range(0, 20, 3)]
    queries += [{"type": "pdq", "value": near(v)} for v in pdqs]
    queries.append({"type": "md5", "value": md5(99, 7)})  # no match
    for who in (platform, ncii_only):
        status, there = match(replica.url, who, queries)
        assert status == 200, there
        _, here = match(node.url, who, queries)
        assert there == here
    _, restricted = match(replica.url, ncii_only, queries)
    assert {m["collection"] for r in restricted["results"] for m in r["matches"]} == {"ncii"}
    _, full = match(replica.url, platform, queries)
    confirmed = next(r for r in full["results"] if r["query"]["value"] == near(pdqs[1]))
    assert confirmed["matches"][0]["opinions"]["confirm"] == 1
    assert confirmed["matches"][0]["author_name"] == "hotline"

    # An uploaded picture: the same answer too (hashes, variant, matches).
    picture = IMAGES / "bridge-1-original.jpg"
    if picture.exists():
        hashed = json.loads(node.cli("hash", str(picture), "--json").stdout)[0]
        publish(node, "pdq", hashed["pdq"], "csam")
        later_add = md5(0, salt=11)
        publish(node, "md5", later_add, "csam")  # a witness: the pdq add came before it
        wait_for(
            lambda: match(replica.url, platform, [{"type": "md5", "value": later_add}])[1][
                "matched"
            ],
            timeout=FRESH_S,
        )
        there = match_file(replica.url, platform, {"file": picture.read_bytes()})
        assert there[0] == 200 and there[1]["matched"], there
        assert there == match_file(node.url, platform, {"file": picture.read_bytes()})

    # The follow token itself may not match, nor may the admin token: neither is a grant.
    assert match(replica.url, follow, queries)[0] == 401
    assert match(replica.url, node.admin_token(), queries)[0] == 401

    # An add reaches the replica, then its revocation does.
    fresh_value = md5(1, salt=5)
    began = time.monotonic()
    op = publish(node, "md5", fresh_value, "csam")
    wait_for(
        lambda: match(replica.url, platform, [{"type": "md5", "value": fresh_value}])[1]["matched"],
        timeout=FRESH_S,
        step=0.02,
    )
    add_s = time.monotonic() - began
    began = time.monotonic()
    ok_json(node.url + "/v1/revoke", "POST", node.admin_token(), {"op_id": op, "reason": "fp"})
    wait_for(
        lambda: (
            not match(replica.url, platform, [{"type": "md5", "value": fresh_value}])[1]["matched"]
        ),
        timeout=FRESH_S,
        step=0.02,
    )
    revoke_s = time.monotonic() - began
    print(f"add visible on the replica after {add_s:.3f} s, revocation after {revoke_s:.3f} s")

    # A PDQ revocation stops matching there too.
    ok_json(node.url + "/v1/revoke", "POST", node.admin_token(), {"op_id": ops[pdqs[0]]})
    wait_for(
        lambda: (
            not match(replica.url, platform, [{"type": "pdq", "value": near(pdqs[0])}])[1][
                "matched"
            ]
        ),
        timeout=FRESH_S,
    )

    metrics = replica.metrics(scraper)
    assert metrics["hashmesh_replica_lag"] == 0
    assert metrics["hashmesh_replica_bootstraps_total"] == 1

    # A token revoked on the node is refused by the replica (within the poll).
    request(node.url + "/v1/admin/tokens/platform", "DELETE", node.admin_token())
    wait_for(lambda: match(replica.url, platform, queries)[0] == 401, timeout=FRESH_S)
    assert match(replica.url, ncii_only, queries)[0] == 200
    assert replica.stop() == 0
    assert not (replica.data / "matcher.json").exists()
    assert (replica.data / "index").is_dir()


def test_sigkill_then_restart_misses_no_revocation(
    tmp_path: Path, node: NodeProc, matchers: list[MatcherProc]
) -> None:
    pdqs = pdq_values(3)
    ops = [publish(node, "pdq", v, "csam") for v in pdqs]
    md5_op = publish(node, "md5", md5(1), "csam")
    follow = token(node, "replica", ["read", "replicate"])
    platform = token(node, "platform", ["match", "metrics"])
    replica = MatcherProc(tmp_path, node, follow)
    matchers.append(replica)
    replica.start()
    queries = [{"type": "pdq", "value": near(v)} for v in pdqs] + [{"type": "md5", "value": md5(1)}]
    assert all(r["matches"] for r in match(replica.url, platform, queries)[1]["results"])
    replica.kill()

    # While it is down: two revocations and an add.
    ok_json(node.url + "/v1/revoke", "POST", node.admin_token(), {"op_id": ops[1]})
    ok_json(node.url + "/v1/revoke", "POST", node.admin_token(), {"op_id": md5_op})
    later = publish(node, "md5", md5(2), "csam")
    head = ok_json(node.url + "/v1/replica/state", token=follow)["cursor"]

    replica.start()
    wait_for(lambda: replica.health()[1]["cursor"] >= head, timeout=FRESH_S)
    _, answer = match(replica.url, platform, [*queries, {"type": "md5", "value": md5(2)}])
    assert matched_ops(answer) == [[ops[0]], [], [ops[2]], [], [later]]
    _, here = match(node.url, platform, [*queries, {"type": "md5", "value": md5(2)}])
    assert answer == here
    # It resumed from its cursor: no second snapshot.
    assert replica.metrics(platform)["hashmesh_replica_bootstraps_total"] == 0
    assert replica.stop() == 0
    # After a clean stop the index comes from the checkpoint written at stop, not the rows.
    replica.start()
    assert "replica index: checkpoint at cursor" in replica.log().rsplit("following", 1)[0]
    assert match(replica.url, platform, queries)[1] == match(node.url, platform, queries)[1]
    assert replica.stop() == 0


def test_replica_refuses_once_the_node_is_gone(
    tmp_path: Path, node: NodeProc, matchers: list[MatcherProc]
) -> None:
    publish(node, "md5", md5(1), "csam")
    follow = token(node, "replica", ["read", "replicate"])
    platform = token(node, "platform", ["match"])
    replica = MatcherProc(tmp_path, node, follow, "--max-stale", "1")
    matchers.append(replica)
    replica.start()
    query = [{"type": "md5", "value": md5(1)}]
    assert match(replica.url, platform, query)[0] == 200
    node.stop()
    wait_for(lambda: replica.health()[0] == 503, timeout=FRESH_S)
    status, body = match(replica.url, platform, query)
    assert status == 503
    assert "has not been read for" in body["error"] and body["stale_s"] > 1
    node.start()
    wait_for(lambda: replica.health()[0] == 200, timeout=FRESH_S * 2)
    assert match(replica.url, platform, query)[0] == 200


class _StreamHold:
    """A TCP relay in front of the node that, while `hold` is set, stops passing the node's
    bytes on connections whose last request was the feed stream: the replica still reads
    the node's state (and so its head) every poll, but no change reaches it."""

    def __init__(self, upstream_port: int) -> None:
        import socket

        self.upstream = ("127.0.0.1", upstream_port)
        self.hold = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket

        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            streaming = [False]
            threading.Thread(target=self._up, args=(client, server, streaming), daemon=True).start()
            threading.Thread(
                target=self._down, args=(server, client, streaming), daemon=True
            ).start()

    def _up(self, src: Any, dst: Any, streaming: list[bool]) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if data[:4] == b"GET " or data[:5] == b"POST ":
                    streaming[0] = data.startswith(b"GET /v1/feed/stream")
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(2)

    def _down(self, src: Any, dst: Any, streaming: list[bool]) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                while streaming[0] and self.hold.is_set() and not self.closed:
                    time.sleep(0.01)
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(2)

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def test_replica_refuses_past_its_lag_bound_in_seconds(
    tmp_path: Path, node: NodeProc, matchers: list[MatcherProc]
) -> None:
    """Issue 18: replicas were bounded in changes only, so one whose stream stalled behind
    a quiet node (a change or two behind, the node answering every poll) answered from old
    rows for as long as the stall lasted. With --max-lag-s it reports how old its answers
    are (/healthz lag_s, hashmesh_replica_lag_seconds) and refuses past the bound, and
    answers again, with the change, once the stream delivers."""
    publish(node, "md5", md5(1), "csam")
    follow = token(node, "replica", ["read", "replicate"])
    platform = token(node, "platform", ["match"])
    metrics = token(node, "metrics", ["metrics"])
    relay = _StreamHold(node.port)
    try:
        replica = MatcherProc(
            tmp_path, node, follow, "--max-lag", "1000000", "--max-lag-s", "1", via=relay.url
        )
        matchers.append(replica)
        replica.start()
        assert match(replica.url, platform, [{"type": "md5", "value": md5(1)}])[0] == 200
        assert replica.health()[1]["lag_s"] == 0
        relay.hold.set()
        publish(node, "md5", md5(2), "csam")  # the head moves; the change is held back
        status, body = wait_for(lambda: (h := replica.health())[0] == 503 and h, timeout=FRESH_S)
        assert "s behind its source (limit 1 s)" in body["reason"], body
        assert body["lag_s"] > 1 and body["behind"] >= 1 and body["stale_s"] < 1, body
        assert replica.metrics(metrics)["hashmesh_replica_lag_seconds"] > 1
        status, answer = match(replica.url, platform, [{"type": "md5", "value": md5(1)}])
        assert status == 503 and "s behind its source" in answer["error"], answer
        relay.hold.clear()
        wait_for(lambda: replica.health()[0] == 200, timeout=FRESH_S)
        status, answer = match(replica.url, platform, [{"type": "md5", "value": md5(2)}])
        assert status == 200 and answer["matched"], answer
        assert replica.health()[1]["lag_s"] < 1
    finally:
        relay.close()


# -- a hostile node ----------------------------------------------------------------------


class _Hostile(BaseHTTPRequestHandler):
    """Valid state and snapshot; a stream that sends, in turn, garbage of every kind."""

    author = SigningKey(bytes([9]) * 32).node_id
    streams = 0
    attacks = [
        b"id: 2\ndata: {not json\n\n",
        b"id: 1\ndata: "
        + json.dumps({"cursor": 1, "kind": "add", "collection": "csam"}).encode()
        + b"\n\n",
        b"data: " + b"x" * (2 << 20) + b"\n\n",
        b"id: 3\ndata: [1, 2, 3]\n\n",
        b"id: 4\ndata: " + b"[" * 100_000 + b"\n\n",
        b"id: 99999999999999999999999\ndata: {}\n\n",
        b"\xff\xfe\n\n",
    ]

    def log_message(self, *args: Any) -> None:
        pass

    def _send(
        self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path.startswith("/v1/replica/state"):
            # A head far past what it ever sends: the replica is behind, so it refuses.
            body = {"cursor": 20_001, "grants": [], "authors": {self.author: "hostile"}}
            self._send(200, json.dumps(body).encode(), "application/json")
        elif self.path.startswith("/v1/snapshot"):
            row = {
                "op_id": f"{self.author}/csam/1/0",
                "author": self.author,
                "collection": "csam",
                "type": "md5",
                "value": md5(1),
                "category": "csam",
                "stances": [],
            }
            lines = [{"cursor": 1, "collections": ["csam"]}, row, {"end": True, "count": 1}]
            data = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
            self._send(200, data, "application/x-ndjson", {"X-Hashmesh-Cursor": "1"})
        elif self.path.startswith("/v1/feed/stream"):
            attack = self.attacks[type(self).streams % len(self.attacks)]
            type(self).streams += 1
            self._send(200, attack, "text/event-stream")
        else:
            self._send(404, b"{}", "application/json")


def test_a_hostile_node_cannot_crash_the_replica(
    tmp_path: Path, matchers: list[MatcherProc]
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        fake = NodeProc.__new__(NodeProc)
        fake._api = f"http://127.0.0.1:{server.server_address[1]}"
        replica = MatcherProc(tmp_path, fake, "hm_hostile_token")
        matchers.append(replica)
        replica.start(healthy=False)
        # Every attack delivered at least once, the replica alive and answering throughout.
        wait_for(lambda: _Hostile.streams > len(_Hostile.attacks), timeout=60)
        status, health = replica.health()
        assert replica.proc is not None and replica.proc.poll() is None
        assert health["cursor"] == 1  # the snapshot's; no bad event moved it
        assert status == 503 and health["behind"] == 20_000
        assert "20000 changes behind its source (limit 10000)" in health["reason"]
        log = replica.log()
        for words in ("not JSON", "not after the cursor", "longer than", "expected a JSON object"):
            assert words in log, words
        assert replica.stop() == 0
    finally:
        server.shutdown()
        server.server_close()


def test_replica_state_route_tells_a_follower_only_its_collections(node: NodeProc) -> None:
    publish(node, "md5", md5(1), "csam")
    publish(node, "md5", md5(2), "ncii")
    everything = token(node, "replica-all", ["read", "replicate"])
    csam_follow = token(node, "replica-csam", ["read", "replicate"], ["csam"])
    token(node, "platform", ["match"])
    token(node, "ncii-platform", ["match"], ["ncii"])
    token(node, "both", ["match", "metrics", "publish"], ["csam", "ncii"])
    token(node, "operator", ["admin"])
    reader_only = token(node, "reader", ["read"])

    full = ok_json(node.url + "/v1/replica/state", token=everything)
    head = ok_json(node.url + "/v1/feed?limit=10", token=node.admin_token())["entries"][-1]
    assert full["cursor"] == head["cursor"]
    grants = {g["name"]: g for g in full["grants"]}
    assert sorted(grants) == ["both", "ncii-platform", "platform"]  # no admin, no read-only
    assert grants["both"]["scopes"] == ["match", "metrics"]  # publish never leaves the node
    assert grants["platform"]["collections"] is None
    assert full["authors"] == {node.node_id: "hotline"}

    csam = ok_json(node.url + "/v1/replica/state", token=csam_follow)
    assert csam["cursor"] < full["cursor"]  # the ncii add came last: not told
    grants = {g["name"]: g for g in csam["grants"]}
    assert sorted(grants) == ["both", "platform"]  # ncii-platform has nothing in csam
    assert grants["both"]["collections"] == grants["platform"]["collections"] == ["csam"]

    # The admin token may read it; a token without the replicate scope may not.
    assert request(node.url + "/v1/replica/state", token=node.admin_token())[0] == 200
    assert request(node.url + "/v1/replica/state", token=reader_only)[0] == 403

    # Unchanged: 304 and no body; a new token changes the ETag.
    def get(etag: str) -> tuple[int, str]:
        req = urllib.request.Request(
            node.url + "/v1/replica/state",
            headers={"Authorization": f"Bearer {everything}", "If-None-Match": etag},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers["ETag"]
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["ETag"]

    status, etag = get("")
    assert status == 200
    assert get(etag) == (304, etag)
    token(node, "another", ["match"])
    status, changed = get(etag)
    assert status == 200 and changed != etag


def test_a_node_restored_from_a_backup_is_snapshotted_again(
    tmp_path: Path, node: NodeProc, matchers: list[MatcherProc]
) -> None:
    follow = token(node, "replica", ["read", "replicate"])
    platform = token(node, "platform", ["match", "metrics"])
    kept = publish(node, "md5", md5(1), "csam")
    node.cli("backup", str(tmp_path / "backup.db"))
    lost = [publish(node, "md5", md5(n), "csam") for n in range(2, 6)]
    replica = MatcherProc(tmp_path, node, follow)
    matchers.append(replica)
    replica.start()
    queries = [{"type": "md5", "value": md5(n)} for n in range(1, 6)]
    assert matched_ops(match(replica.url, platform, queries)[1]) == [[kept], *([op] for op in lost)]

    # The node goes back to its backup: the adds made since are gone from it. The replica
    # sees the head fall below what it applied and takes the node's snapshot again.
    node.stop()
    node.cli("restore", str(tmp_path / "backup.db"))
    node.start()
    wait_for(
        lambda: replica.metrics(platform)["hashmesh_replica_bootstraps_total"] == 2, timeout=FRESH_S
    )
    wait_for(lambda: replica.health()[0] == 200, timeout=FRESH_S)
    answer = match(replica.url, platform, queries)[1]
    assert matched_ops(answer) == [[kept], [], [], [], []]
    assert answer == match(node.url, platform, queries)[1]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--follow", "ftp://node"], "--follow 'ftp://node': must start with http"),
        (["--token-file", "/nonexistent/token"], "--token-file /nonexistent/token:"),
        (["--listen", "nonsense"], "listen address 'nonsense': expected HOST:PORT"),
    ],
)
def test_matcher_command_refuses_bad_arguments(tmp_path: Path, args: list[str], words: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("hm_token\n")
    given = {"--follow": "http://127.0.0.1:1", "--token-file": str(token_file)}
    given.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = [HASHMESH, "matcher", "--data", str(tmp_path / "m")]
    for key, value in given.items():
        argv += [key, value]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr
    assert not (tmp_path / "m" / "matcher.json").exists()
