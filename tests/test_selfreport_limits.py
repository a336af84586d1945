"""Self-report abuse bounds: address blocks, what is charged when, and no membership oracle.

One real hotline node behind a (pretend) proxy: [selfreport] client_ip_header lets each
request name its client address, so rotating IPv6 addresses and address blocks can be
exercised from 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc
from test_selfreport import COLLECTION, POW_BITS, configure, md5_of, solve

from node.selfreport import BLOCK_SHARE, RateLimiter, client_block, share_block

HEADER = "X-Forwarded-For"
PER_CLIENT = 3
TOTAL = 20
PER_BLOCK = TOTAL // BLOCK_SHARE


def call(node: NodeProc, method: str, path: str, address: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    headers = {HEADER: address}
    if data is not None:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        node.url + "/takeitdown/api/" + path, data=data, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def proof(node: NodeProc, address: str, valid: bool = True) -> dict[str, str]:
    status, got = call(node, "GET", "challenge", address)
    assert status == 200, got
    challenge = got["challenge"]
    if valid:
        return {"challenge": challenge, "solution": solve(challenge, got["bits"])}
    wrong = next(
        str(n)
        for n in range(1000)
        if int.from_bytes(hashlib.sha256(f"{challenge}:{n}".encode()).digest(), "big") >> 250
    )
    return {"challenge": challenge, "solution": wrong}


def submit(
    node: NodeProc, address: str, signals: list[dict[str, Any]], **extra: Any
) -> tuple[int, Any]:
    body = {**proof(node, address), "category": "ncii", "signals": signals, **extra}
    result: tuple[int, Any] = call(node, "POST", "submit", address, body)
    return result


def md5s(*values: str) -> list[dict[str, Any]]:
    return [{"type": "md5", "value": v} for v in values]


@pytest.fixture(scope="module")
def hotline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    root: Path = tmp_path_factory.mktemp("selfreport-limits")
    node = NodeProc(root, "hotline")
    configure(node, enabled=True, pow_bits=POW_BITS, submits_per_hour=PER_CLIENT)
    configure(node, checks_per_hour=1000, total_submits_per_hour=TOTAL, client_ip_header=HEADER)
    node.start()
    yield node
    node.kill()


# -- 1. rotating addresses ------------------------------------------------------------------


def test_limiter_keys_aggregate_ipv6_by_64_and_keep_ipv4_whole() -> None:
    one = client_block("2001:db8:1:2::1")
    assert one == client_block("2001:db8:1:2:ffff:ffff:ffff:fffe")
    assert one == client_block("[2001:db8:1:2:abcd::9]")
    assert one == client_block("2001:db8:1:2::7%eth0")
    assert one != client_block("2001:db8:1:3::1")
    assert client_block("192.0.2.1") != client_block("192.0.2.2")
    assert client_block("::ffff:192.0.2.1") == client_block("192.0.2.1")
    assert share_block("192.0.2.1") == share_block("192.0.2.254") != share_block("192.0.3.1")
    assert share_block("2001:db8:1:2::1") == share_block("2001:db8:1:2:9::1")


def test_rotating_ipv6_addresses_share_one_limit(hotline: NodeProc) -> None:
    allowance = PER_CLIENT * 4  # challenges
    codes = [
        call(hotline, "GET", "challenge", f"2001:db8:77:1::{n:x}")[0]
        for n in range(1, allowance + 2)
    ]
    assert codes == [200] * allowance + [429]
    assert call(hotline, "GET", "challenge", "2001:db8:77:2::1")[0] == 200


# -- 2. what a request is charged, and when -------------------------------------------------


def test_limiter_peek_records_nothing() -> None:
    limiter = RateLimiter(1)
    assert limiter.allows(b"k", now=0) and limiter.allows(b"k", now=0)
    assert limiter.hit(b"k", now=0)
    assert not limiter.allows(b"k", now=1) and limiter.allows(b"k", now=3601)


def test_invalid_proofs_and_refused_bodies_cost_no_budget(hotline: NodeProc) -> None:
    address = "198.51.100.7"
    for _ in range(PER_CLIENT + 2):
        body = {**proof(hotline, address, valid=False), "category": "ncii"}
        body["signals"] = md5s(md5_of(1))
        status, answer = call(hotline, "POST", "submit", address, body)
        assert status == 400 and "solution is wrong" in answer["error"], answer
    # a valid proof with a refused body, from more blocks than the node-wide budget covers
    for n in range(TOTAL + 2):
        status, answer = submit(hotline, f"203.0.{n}.1", md5s(md5_of(2)), category="terror")
        assert status == 400 and "category" in answer["error"], answer
    assert submit(hotline, address, md5s(md5_of(3)))[0] == 200


def test_one_address_block_cannot_exhaust_the_node_wide_budget(hotline: NodeProc) -> None:
    v4 = [submit(hotline, f"192.0.2.{n}", md5s(md5_of(10 + n)))[0] for n in range(1, 6)]
    assert v4 == [200] * PER_BLOCK + [429] * (5 - PER_BLOCK)
    v6 = [submit(hotline, f"2001:db8:99:9::{n}", md5s(md5_of(20 + n)))[0] for n in range(1, 5)]
    assert v6 == [200] * PER_BLOCK + [429] * (4 - PER_BLOCK)
    assert submit(hotline, "100.64.0.1", md5s(md5_of(30)))[0] == 200


# -- 3. no membership oracle ----------------------------------------------------------------


def comparable(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k not in ("case", "secret")}


def test_answers_do_not_tell_whether_someone_else_reported_the_hash(hotline: NodeProc) -> None:
    held = md5_of(40)  # published by the hotline's analysts
    hotline.cli("add", "md5", held, "-c", COLLECTION, "--classification", "self-reported")
    shared = md5_of(41)  # reported by another person first
    assert submit(hotline, "10.1.0.1", md5s(shared))[0] == 200

    answers = []
    for n, value in enumerate((held, shared, md5_of(42))):
        address = f"10.2.{n}.1"
        status, case = submit(hotline, address, md5s(value, md5_of(50 + n)))
        assert status == 200, case
        creds = {"case": case["case"], "secret": case["secret"]}
        state = call(hotline, "POST", "status", address, creds)
        done = call(hotline, "POST", "withdraw", address, creds)
        after = call(hotline, "POST", "status", address, creds)
        answers.append(
            (
                sorted(case),
                comparable(case),
                (state[0], comparable(state[1])),
                (done[0], comparable(done[1])),
                (after[0], comparable(after[1])),
            )
        )
    assert answers[0] == answers[1] == answers[2], answers
    assert answers[0][1]["hashes"] == 2 and answers[0][3][1]["revoked"] == 2
    assert answers[0][2][1]["live"] == 2 and answers[0][4][1]["live"] == 0
    assert hotline.matches("md5", held) and hotline.matches("md5", shared)
