"""Quarantine on a match spike (issue 19): real node processes counting real matches.

A flood of 1,000 near-identical PDQs from one author is quarantined within a minute of
matching traffic once the collection's policy asks for it (spike factor), every held-back
hit says why, the status and `hashmesh quarantine list` show it, and an operator's
`quarantine lift` makes the signal match again for good; an absolute cap works on exact
signals through `hashmesh match`; a collection without a spike rule is never quarantined.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import author_key, chain, write_bundle
from netnodes import NodeProc
from platform_util import ok_json, request
from testdata import IMAGES

from hashmesh.node.hashing.degenerate import degenerate_reason
from hashmesh.node.hashing.hasher import hash_file

BASE = hash_file(IMAGES / "bridge-1-original.jpg").pdq
assert BASE is not None
FLOOD = [f"{int(BASE, 16) ^ i:064x}" for i in range(1, 1001)]  # within 10 bits of BASE
assert all(degenerate_reason("pdq", v) is None for v in FLOOD)


def verdicts(answer: Any) -> list[str]:
    return [m["verdict"] for r in answer["results"] for m in r["matches"]]


@pytest.fixture
def platform(tmp_path: Path) -> Any:
    node = NodeProc(tmp_path, "platform")
    key = author_key(9)
    node.cli("trust", "add", key.node_id, "csam", "--name", "flooder")
    ops = [{"op": "add", "type": "pdq", "value": v, "category": "csam"} for v in FLOOD]
    node.cli("import", str(write_bundle(tmp_path / "flood.hmb", chain(key, "csam", [ops]), "csam")))
    yield node
    node.kill()


@pytest.mark.slow
def test_a_flood_of_near_identical_pdqs_is_quarantined_within_a_minute(platform: NodeProc) -> None:
    node = platform
    node.cli("policy", "set", "csam", "--spike-factor", "10")
    real = node.json("add", "pdq", f"{int(BASE, 16) ^ (0xFFFF << 200):064x}", "-c", "ncii")
    node.start()
    body = {"queries": [{"type": "pdq", "value": BASE}]}
    token = node.admin_token()
    started = time.monotonic()
    requests = 0
    while True:
        answer = ok_json(node.url + "/v1/match", "POST", token, body)
        requests += 1
        if set(verdicts(answer)) == {"quarantined"}:
            break
        assert time.monotonic() - started < 60, (requests, verdicts(answer)[:5])
    took = time.monotonic() - started
    print(f"quarantined after {requests} match requests, {took:.2f} s")
    assert answer["matched"] is False
    held = answer["results"][0]["matches"]
    assert len(held) == 100 and held[0]["reasons"][0].startswith("quarantined: ")
    assert "its baseline" in held[0]["reasons"][0]

    listed = node.json("quarantine", "list")["quarantine"]
    assert {q["op_id"] for q in listed} == {m["op_id"] for m in held}
    assert all(q["author_name"] == "flooder" and q["collection"] == "csam" for q in listed)
    assert len(node.json("status")["quarantine"]) == 100
    text = node.cli("quarantine", "list").stdout
    assert text.startswith("QUARANTINED pdq ") and "its baseline" in text

    # The ncii signal matched as often, but ncii has no spike rule: never quarantined.
    other = {"queries": [{"type": "pdq", "value": f"{int(BASE, 16) ^ (0xFFFF << 200):064x}"}]}
    for _ in range(30):
        assert ok_json(node.url + "/v1/match", "POST", token, other)["matched"] is True
    assert real["op_id"] not in {q["op_id"] for q in node.json("quarantine", "list")["quarantine"]}

    # Lifting one (by op id): it matches again, and keeps matching under the same traffic.
    lifted = held[0]["op_id"]
    out = node.json("quarantine", "lift", lifted)
    assert [q["op_id"] for q in out["lifted"]] == [lifted]
    for _ in range(40):
        answer = ok_json(node.url + "/v1/match", "POST", token, body)
    by_op = {m["op_id"]: m["verdict"] for m in answer["results"][0]["matches"]}
    assert by_op[lifted] == "match" and answer["matched"] is True
    assert list(by_op.values()).count("quarantined") == 99
    # Lifting by value; a second lift of it, or of nothing held, is refused (exit 2).
    value = held[1]["value"]
    assert [q["value"] for q in node.json("quarantine", "lift", value)["lifted"]] == [value]
    again = node.cli("quarantine", "lift", value, check=False)
    assert again.returncode == 2 and "no signal under quarantine" in again.stderr
    bad = node.cli("quarantine", "lift", "ed25519:x/csam/1/0", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    with_lifted = node.json("quarantine", "list", "--lifted")["quarantine"]
    assert sum("lifted_at" in q for q in with_lifted) == 2
    assert node.stop() == 0


def test_an_absolute_cap_quarantines_an_exact_signal_matched_through_the_cli(
    tmp_path: Path,
) -> None:
    node = NodeProc(tmp_path, "platform")
    meme = "9e107d9d372bb6826bd81d3542a419d6"
    node.cli("add", "md5", meme, "-c", "memes")
    node.cli("policy", "set", "memes", "--spike-cap", "5")
    assert node.json("policy", "show", "memes")["policies"][0]["spike_cap"] == 5
    refused = node.cli("policy", "set", "memes", "--spike-cap", "0", check=False)
    assert refused.returncode == 2 and "--spike-cap: must be an integer 1-1000000" in refused.stderr
    node.start()
    try:
        codes = [node.cli("match", "md5", meme, check=False).returncode for _ in range(5)]
        assert codes == [0] * 5  # the fifth reached the cap; its answer was already out
        result = node.cli("match", "md5", meme, "--json", check=False)
        assert result.returncode == 1, result.stdout
        [hit] = json.loads(result.stdout)["results"][0]["matches"]
        assert hit["verdict"] == "quarantined"
        assert hit["reasons"] == ["quarantined: 5 matches in 60 s, at memes's cap of 5"]
        status, data = request(
            node.url + "/v1/admin/quarantine/lift", "POST", node.admin_token(), {"target": 5}
        )
        assert status == 400 and json.loads(data)["error"].startswith("target: "), data
        node.cli("quarantine", "lift", meme.upper())
        assert node.cli("match", "md5", meme, check=False).returncode == 0
    finally:
        assert node.stop() == 0


def test_quarantine_and_dispute_routes_refuse_hostile_callers_and_input(tmp_path: Path) -> None:
    """The three admin routes issue 19 added: a caller without the admin token is refused
    before its body is read (a 17 MiB body is answered 401 by the auth check, and 413 past
    the JSON bound once authenticated), each bad field gets one 400 naming it, and a
    refused lift changes nothing."""
    node = NodeProc(tmp_path, "platform")
    meme = "9e107d9d372bb6826bd81d3542a419d6"
    node.cli("add", "md5", meme, "-c", "memes")
    node.cli("policy", "set", "memes", "--spike-cap", "1")
    node.start()
    try:
        node.cli("match", "md5", meme, check=False)
        before = node.json("quarantine", "list")["quarantine"]
        assert [q["value"] for q in before] == [meme]
        lift = node.url + "/v1/admin/quarantine/lift"
        huge = b'{"target": "' + b"a" * (17 << 20) + b'"}'
        assert request(lift, "POST", None, raw=huge)[0] == 401
        assert request(lift, "POST", "not-a-token", raw=huge)[0] == 401
        assert request(lift, "POST", node.admin_token(), raw=huge)[0] == 413
        bad: list[tuple[str, str, Any, str]] = [
            ("/v1/admin/quarantine?lifted=maybe", "GET", None, "lifted: "),
            ("/v1/admin/disputes?limit=0", "GET", None, "limit: "),
            ("/v1/admin/disputes?limit=10001", "GET", None, "limit: "),
            ("/v1/admin/disputes?limit=-5", "GET", None, "limit: "),
            ("/v1/admin/disputes?limit=%D9%A3", "GET", None, "limit: "),  # Arabic-Indic 3
            ("/v1/admin/quarantine/lift", "POST", {"target": "a" * 301}, "target: "),
            ("/v1/admin/quarantine/lift", "POST", {"target": "\u00e9" * 10}, "target: "),
            ("/v1/admin/quarantine/lift", "POST", {"target": meme, "x": 1}, "x: "),
            ("/v1/admin/quarantine/lift", "POST", {"target": "a/b/c/d"}, ""),
        ]
        for path, method, body, field in bad:
            status, data = request(node.url + path, method, node.admin_token(), body)
            assert status == 400, (path, body, data)
            assert json.loads(data)["error"].startswith(field), (path, data)
        assert node.json("quarantine", "list")["quarantine"] == before
    finally:
        assert node.stop() == 0


def test_the_match_counter_counts_what_the_node_would_and_stays_bounded() -> None:
    """What a matcher worker or replica reports: one per matched signal per query in a
    collection with a spike rule, nothing policy held back already, at most MAX_REPORTED
    of one signal and MAX_REPORT signals a report (the others counted as dropped)."""
    from hashmesh.node.matching.quarantine import MAX_REPORT, MAX_REPORTED, MatchCounter

    def answer(*hits: tuple[str, str, str]) -> dict[str, Any]:
        matches = [{"op_id": o, "collection": c, "verdict": v} for o, c, v in hits]
        return {"results": [{"matches": matches}]}

    counter = MatchCounter()
    spiky = frozenset({"csam"})
    counter.count(answer(("a", "csam", "match"), ("a", "csam", "below_quorum")), spiky)
    for held in ("negative", "suppressed", "quarantined"):
        counter.count(answer(("b", "csam", held)), spiky)
    counter.count(answer(("c", "ncii", "match")), spiky)
    counter.count(answer(("d", "csam", "match")), frozenset())
    assert counter.drain() == [("a", 2)]
    for _ in range(MAX_REPORTED + 5):
        counter.count(answer(("a", "csam", "match")), spiky)
    assert counter.drain() == [("a", MAX_REPORTED)]
    counter.count(answer(*((f"s{n}", "csam", "match") for n in range(MAX_REPORT + 3))), spiky)
    assert len(counter) == MAX_REPORT and counter.dropped == 3
    counter.count(answer(("s0", "csam", "match")), spiky)  # known signals still count
    assert dict(counter.drain())["s0"] == 2
