"""Self-report abuse bounds: address blocks, what is charged when, and no membership oracle.

Real hotline nodes behind a (pretend) proxy: [selfreport] client_ip_header lets each
request name its client address, so rotating IPv6 addresses, address blocks and attackers
spread over many networks can be exercised from 127.0.0.1.
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

from hashmesh.node.web.selfreport import (
    BLOCK_SHARE,
    POW_EXTRA_BITS,
    STATUS_PER_SUBMIT,
    WITHDRAW_PER_SUBMIT,
    Budget,
    RateLimiter,
    client_block,
    share_block,
    wide_block,
)

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


def start_hotline(root: Path) -> NodeProc:
    node = NodeProc(root, "hotline")
    configure(node, enabled=True, pow_bits=POW_BITS, submits_per_hour=PER_CLIENT)
    configure(node, checks_per_hour=1000, total_submits_per_hour=TOTAL, client_ip_header=HEADER)
    node.start()
    return node


@pytest.fixture(scope="module")
def hotline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    node = start_hotline(tmp_path_factory.mktemp("selfreport-limits"))
    yield node
    node.kill()


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[NodeProc]:
    """A hotline of its own, for tests that spend its node-wide budgets."""
    node = start_hotline(tmp_path)
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
    assert share_block("2001:db8:1:2::1") == share_block("2001:db8:1:ff::1")  # one /48
    assert share_block("2001:db8:1::1") != share_block("2001:db8:2::1")
    assert wide_block("192.0.2.1") == wide_block("192.0.200.1") != wide_block("192.1.2.1")
    assert wide_block("2001:db8:1::1") == wide_block("2001:db8:ffff::1")  # one /32
    assert wide_block("2001:db8::1") != wide_block("2001:db9::1")


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
    now = [0.0]
    limiter: RateLimiter[bytes] = RateLimiter(1, 3600.0, clock=lambda: now[0])
    assert limiter.allows(b"k") and limiter.allows(b"k")
    assert limiter.hit(b"k")
    now[0] = 1
    assert not limiter.allows(b"k")
    now[0] = 3601
    assert limiter.allows(b"k")


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


# -- 4. attackers spread over many networks -------------------------------------------------


def test_budget_keeps_its_reserve_for_blocks_not_seen_this_hour() -> None:
    # general 10, reserve 10; a /24 2, a /16 5, a /16's reserve 1
    budget = Budget(20, clock=lambda: 0.0)
    for n in range(10):
        budget_charge(budget, f"b{n}", f"w{n // 2}")
    with pytest.raises(Exception, match="too many requests reach this hotline"):
        budget.plan(b"b0", b"w0")  # seen this hour: no reserve
    budget_charge(budget, "fresh", "w-fresh")  # not seen: draws from the reserve
    with pytest.raises(Exception, match="too many requests reach this hotline"):
        budget.plan(b"fresh-2", b"w-fresh")  # that /16's share of the reserve is used
    assert budget.load() == 1.0


def budget_charge(budget: Budget, block: str, wide: str) -> None:
    for limiter, key in budget.plan(block.encode(), wide.encode()):
        limiter.hit(key)


def test_an_attacker_over_many_networks_cannot_lock_out_a_fresh_address(
    fresh: NodeProc,
) -> None:
    codes = []
    for wide in range(5):  # five /16s
        for block in range(4):  # four /24s in each
            for host in range(1, PER_CLIENT + 1):
                address = f"100.{64 + wide}.{block}.{host}"
                status, answer = submit(fresh, address, md5s(md5_of(1000 + len(codes))))
                assert status in (200, 429), answer
                if status == 429:
                    assert "too many requests" in answer["error"], answer
                codes.append(status)
    # The general half (10) goes to the first two /16s (5 each, 2 per /24), then each
    # further /16 gets one draw from the reserve: 13 of the 20.
    assert codes.count(200) == TOTAL // 2 + 3, codes
    assert submit(fresh, "100.66.200.1", md5s(md5_of(2000)))[0] == 429  # its /16 drew once
    for victim in ("198.51.100.9", "2a00:1450:4001::5"):
        status, answer = submit(fresh, victim, md5s(md5_of(3000)))
        assert status == 200, (victim, answer)


def test_proof_of_work_rises_as_the_submit_budget_is_spent(fresh: NodeProc) -> None:
    def bits(address: str) -> int:
        status, got = call(fresh, "GET", "challenge", address)
        assert status == 200, got
        return int(got["bits"])

    early = proof(fresh, "203.0.113.1")  # solved at the base difficulty, kept for later
    seen = [bits("203.0.113.2")]
    for n in range(TOTAL // 2):  # the general pool, one submit per /16
        assert submit(fresh, f"{11 + n}.0.0.1", md5s(md5_of(4000 + n)))[0] == 200
        seen.append(bits(f"{11 + n}.0.0.2"))
    assert seen == [POW_BITS] * 5 + [POW_BITS + 1] * 3 + [POW_BITS + 2] * 2 + [
        POW_BITS + POW_EXTRA_BITS
    ], seen
    body = {**early, "category": "ncii", "signals": md5s(md5_of(4100))}
    status, answer = call(fresh, "POST", "submit", "198.51.100.20", body)
    assert status == 400 and "easier than required" in answer["error"], answer
    status, answer = submit(fresh, "198.51.100.20", md5s(md5_of(4101)))  # solved at base+3
    assert status == 200, answer


WRONG = {"case": "AAAA-AAAA", "secret": "A" * 20}


def flood(node: NodeProc, route: str, wides: int, blocks: int, per_block: int) -> list[int]:
    codes = []
    for wide in range(wides):
        for block in range(blocks):
            for host in range(1, per_block + 1):
                address = f"100.{64 + wide}.{block}.{host}"
                status, answer = call(node, "POST", route, address, WRONG)
                assert status in (403, 429), answer
                codes.append(status)
    return codes


def test_status_checks_have_a_node_wide_budget_a_victim_still_gets_through(
    fresh: NodeProc,
) -> None:
    victim = "198.51.100.9"
    status, case = submit(fresh, victim, md5s(md5_of(5000)))
    assert status == 200, case
    creds = {"case": case["case"], "secret": case["secret"]}
    total = TOTAL * STATUS_PER_SUBMIT  # 80: general 40, a /24 8, a /16 20, reserve 40
    codes = flood(fresh, "status", wides=4, blocks=6, per_block=total // BLOCK_SHARE + 1)
    # Every answer that reached scrypt: the general half, then one reserve draw per
    # further /16; the rest were refused before any work.
    assert codes.count(403) == total // 2 + 2 and codes[-1] == 429, codes
    status, answer = call(fresh, "POST", "status", victim, creds)
    assert status == 200 and answer["live"] == 1, answer
    status, answer = call(fresh, "POST", "withdraw", victim, creds)  # a budget of its own
    assert status == 200 and answer["revoked"] == 1, answer


def test_withdrawals_have_a_node_wide_budget_of_their_own(fresh: NodeProc) -> None:
    victim = "2a00:1450:4001::5"
    status, case = submit(fresh, victim, md5s(md5_of(6000)))
    assert status == 200, case
    creds = {"case": case["case"], "secret": case["secret"]}
    total = TOTAL * WITHDRAW_PER_SUBMIT  # 40: general 20, a /24 4, a /16 10, reserve 20
    codes = flood(fresh, "withdraw", wides=3, blocks=4, per_block=total // BLOCK_SHARE + 1)
    assert codes.count(403) == total // 2 + 1 and codes[-1] == 429, codes
    assert call(fresh, "POST", "status", "100.64.0.1", WRONG)[0] == 403  # status unaffected
    status, answer = call(fresh, "POST", "withdraw", victim, creds)
    assert status == 200 and answer["revoked"] == 1, answer
