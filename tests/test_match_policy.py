"""Per-collection match policy (issue 19): `hashmesh policy show|set`, and every match
answer judged by it, on real node processes, real SQLite and real PDQ hashes.

The seeded network: an author's PDQ of a black picture is refused, the MD5 of a popular
meme listed in a negative collection never matches (and the answer says which list
suppressed it, or only that one did to a caller who may not read that list), quorum 2
matches only once a second author lists the signal, and each other knob (threshold,
minimum quality, suspension after disputes, review) holds a hit back with its reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import author_key, chain, set_config, write_bundle
from netnodes import NodeProc, NodeSet, link, wait_for
from PIL import Image
from platform_util import ok_json, request
from testdata import IMAGES

from hashmesh.node.hashing.degenerate import degenerate_reason
from hashmesh.node.hashing.hasher import hash_bytes, hash_file


def _black_pdq() -> str:
    picture = io.BytesIO()
    Image.new("RGB", (640, 480), (0, 0, 0)).save(picture, "PNG")
    pdq = hash_bytes(picture.getvalue()).pdq
    assert pdq is not None and degenerate_reason("pdq", pdq) is not None
    return pdq


BLACK_PDQ = _black_pdq()
LISTS = Path(__file__).resolve().parents[1] / "lists"
STARTER = LISTS / "negative-starter.csv"
MEME_MD5 = hashlib.md5(b"the popular meme, as everyone forwards it").hexdigest()
BRIDGE = hash_file(IMAGES / "bridge-1-original.jpg")
assert BRIDGE.pdq is not None and degenerate_reason("pdq", BRIDGE.pdq) is None


def flip(value: str, bits: int) -> str:
    """`value` with its lowest `bits` bits flipped: another hotline's hash of a re-encoded
    copy, at PDQ distance `bits`."""
    return f"{int(value, 16) ^ ((1 << bits) - 1):064x}"


def match(node: NodeProc, signal_type: str, value: str, *extra: str) -> tuple[int, Any]:
    result = node.cli("match", signal_type, value, *extra, "--json", check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def hits(answer: Any) -> dict[str, dict[str, Any]]:
    """The first query's hits by collection."""
    return {m["collection"]: m for m in answer["results"][0]["matches"]}


def policies(node: NodeProc, *collection: str) -> list[dict[str, Any]]:
    return list(node.json("policy", "show", *collection)["policies"])


# -- the commands -----------------------------------------------------------------------------


def test_policy_commands_offline_and_through_the_running_node(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "platform")
    assert node.cli("policy", "show").stdout.strip() == (
        "no collection has a policy: every hit matches"
    )
    default = policies(node, "csam")[0]
    assert default == {
        "collection": "csam",
        "default": True,
        "negative": False,
        "threshold": None,
        "min_quality": None,
        "quorum": 1,
        "suspend_after_disputes": None,
        "require_review": False,
        "spike_cap": None,
        "spike_factor": None,
        "quorum_by": "node",
        "dispute_on_spike": False,
    }
    out = node.json("policy", "set", "csam", "--quorum", "2", "--threshold", "20")
    assert out["change"] == "set" and out["previous"]["quorum"] == 1
    assert out["policy"]["quorum"] == 2 and out["policy"]["threshold"] == 20

    refusals = [
        (["csam", "--threshold", "32"], "--threshold: must be an integer 0-31"),
        (["csam", "--quorum", "0"], "--quorum: must be an integer 1-16"),
        (["csam", "--min-quality", "101"], "--min-quality: must be an integer 0-100"),
        (["csam", "--suspend-after-disputes", "0"], "--suspend-after-disputes: must be"),
        (["benign", "--negative", "--quorum", "2"], "--quorum: a negative collection"),
        (["benign", "--negative", "--require-review"], "--require-review: a negative"),
        (["benign", "--negative", "--spike-cap", "5"], "--spike-cap: a negative collection"),
        (["csam", "--spike-factor", "1"], "--spike-factor: must be an integer 2-1000"),
        (["csam", "--quorum-by", "org"], "--quorum-by: counts a quorum, so it needs a quorum"),
        (["csam", "--quorum-by", "city", "--quorum", "2"], "'city' is not one of"),
        (["csam", "--dispute-on-spike"], "--dispute-on-spike: needs a spike_cap or spike_factor"),
        (["Bad Name"], "collection: 'Bad Name' is not a collection name"),
    ]
    for args, message in refusals:
        refused = node.cli("policy", "set", *args, check=False)
        assert refused.returncode == 2, refused
        assert message in refused.stderr, refused.stderr
    assert [p["collection"] for p in policies(node)] == ["csam"]
    assert policies(node, "csam")[0]["quorum"] == 2  # refusals changed nothing

    node.start()
    try:
        out = node.json("policy", "set", "benign", "--negative", "--threshold", "8")
        assert out["change"] == "set" and out["policy"]["negative"] is True
        text = node.cli("policy", "show").stdout
        assert "benign" in text and "negative (suppresses others within PDQ distance 8)" in text
        assert "csam" in text and "threshold 20; quorum 2 authors" in text
        assert node.json("policy", "set", "csam")["change"] == "reset"
        assert [p["collection"] for p in policies(node)] == ["benign"]
        assert node.json("policy", "set", "csam")["change"] == "unchanged"
        # The status (and its page) shows the policy that explains held-back hits.
        assert [p["collection"] for p in node.json("status")["policies"]] == ["benign"]

        url = node.url + "/v1/admin/policy/csam"
        for body, field in [
            ({"quorum": "2"}, "quorum"),
            ({"quorum": True}, "quorum"),
            ({"colour": "red"}, "colour"),
            ({"negative": "yes"}, "negative"),
        ]:
            status, data = request(url, "PUT", node.admin_token(), body)
            assert status == 400 and json.loads(data)["error"].startswith(f"{field}: "), data
        listed = ok_json(node.url + "/v1/admin/policy", token=node.admin_token())
        assert [p["collection"] for p in listed["policies"]] == ["benign"]
    finally:
        assert node.stop() == 0
    # Kept in the database, read again offline.
    assert [p["collection"] for p in policies(node)] == ["benign"]


# -- the seeded network -----------------------------------------------------------------------


@pytest.mark.slow
def test_seeded_network_negative_list_quorum_and_every_suppression_explained(
    nodes: NodeSet,
) -> None:
    ncmec, childfocus, platform = nodes.make("ncmec", "childfocus", "platform")
    link(platform, ncmec, "csam", "benign")
    link(platform, childfocus, "csam")
    platform.trust(ncmec, "csam")
    platform.trust(ncmec, "benign")
    platform.trust(childfocus, "csam")
    for node in (ncmec, childfocus, platform):
        node.start()

    # A black picture's PDQ never enters the network: the author's node refuses it.
    refused = childfocus.cli("add", "pdq", BLACK_PDQ, "-c", "csam", check=False)
    assert refused.returncode == 2 and "value: refused" in refused.stderr, refused

    # A popular meme's MD5, wrongly listed as csam, and listed benign by a curator.
    listed = childfocus.json("add", "md5", MEME_MD5, "-c", "csam")["op_id"]
    benign = ncmec.json("add", "md5", MEME_MD5, "-c", "benign")["op_id"]
    wait_for(lambda: len(hits(match(platform, "md5", MEME_MD5)[1])) == 2, timeout=30)
    code, answer = match(platform, "md5", MEME_MD5)
    assert code == 0 and hits(answer)["csam"]["verdict"] == "match"  # no policy yet

    platform.cli("policy", "set", "benign", "--negative")
    code, answer = match(platform, "md5", MEME_MD5)
    assert code == 1 and answer["matched"] is False
    by = hits(answer)
    assert by["csam"]["op_id"] == listed and by["csam"]["verdict"] == "suppressed"
    assert by["csam"]["reasons"] == [
        f"matched, but suppressed by negative collection benign ({benign})"
    ]
    assert by["benign"]["verdict"] == "negative"
    text = platform.cli("match", "md5", MEME_MD5, check=False).stdout
    assert "NOT A MATCH (suppressed)" in text and "suppressed by negative collection benign" in text
    assert "\nMATCH" not in text and not text.startswith("MATCH")

    # POST /v1/match with a token that may not read the negative list: still suppressed,
    # and told nothing about the list.
    csam_only = platform.cli(
        "token", "create", "csam-matcher", "--scope", "match", "--collection", "csam"
    ).stdout.strip()
    body = {"queries": [{"type": "md5", "value": MEME_MD5}]}
    restricted = ok_json(platform.url + "/v1/match", "POST", csam_only, body)
    [only] = restricted["results"][0]["matches"]
    assert restricted["matched"] is False and only["verdict"] == "suppressed"
    assert only["reasons"] == ["matched, but suppressed by a negative collection of this node"]
    assert "benign" not in json.dumps(restricted)

    # Quorum 2: one author's PDQ is below quorum until a second author lists it.
    assert BRIDGE.pdq is not None
    platform.cli("policy", "set", "csam", "--quorum", "2")
    first = ncmec.json("add", "pdq", BRIDGE.pdq, "-c", "csam", "--quality", "100")["op_id"]
    wait_for(lambda: hits(match(platform, "pdq", BRIDGE.pdq)[1]), timeout=30)
    code, answer = match(platform, "pdq", BRIDGE.pdq)
    assert code == 1 and answer["matched"] is False
    hit = hits(answer)["csam"]
    assert hit["op_id"] == first and hit["verdict"] == "below_quorum"
    assert hit["reasons"] == ["below quorum: 1 of 2 authors"]

    second_copy = flip(BRIDGE.pdq, 5)
    childfocus.cli("add", "pdq", second_copy, "-c", "csam", "--quality", "100")
    wait_for(lambda: len(match(platform, "pdq", BRIDGE.pdq)[1]["results"][0]["matches"]) == 2)
    code, answer = match(platform, "pdq", BRIDGE.pdq)
    assert code == 0 and answer["matched"] is True
    assert {m["verdict"] for m in answer["results"][0]["matches"]} == {"match"}
    assert all("reasons" not in m for m in answer["results"][0]["matches"])
    # The same answer through the API.
    api = ok_json(
        platform.url + "/v1/match",
        "POST",
        platform.admin_token(),
        {"queries": [{"type": "pdq", "value": BRIDGE.pdq}]},
    )
    assert api["matched"] is True


@pytest.mark.slow
def test_a_platform_subscribed_to_the_starter_list_never_matches_a_black_picture_or_a_meme(
    nodes: NodeSet, tmp_path: Path
) -> None:
    """The issue's seeded network with the shipped starter list: a curator publishes
    lists/negative-starter.csv (and a popular meme's MD5) in `benign`, the platform
    subscribes and marks it negative; an author lists the black picture's PDQ (refused by
    its own node, so signed by another implementation and relayed), the black file's MD5
    and the meme's MD5 in csam. None of them matches on the platform, each held-back hit
    says why, and the status (behind the status page) shows what held each back."""
    if str(LISTS) not in sys.path:
        sys.path.insert(0, str(LISTS))
    import make_negative_starter as starter

    curator, author, platform = nodes.make("curator", "author", "platform")
    link(platform, curator, "benign")
    link(platform, author, "csam")
    platform.trust(curator, "benign")
    platform.trust(author, "csam")
    elsewhere = author_key(11)
    for node in (author, platform):
        node.cli("trust", "add", elsewhere.node_id, "csam", "--name", "elsewhere")
    listed = curator.json("import-list", "csv", str(STARTER), "-c", "benign")
    assert listed["published"] == len(STARTER.read_text().splitlines()) - 1
    meme_benign = curator.json("add", "md5", MEME_MD5, "-c", "benign")["op_id"]
    platform.cli("policy", "set", "benign", "--negative", "--threshold", "8")
    for node in (curator, author, platform):
        node.start()

    [image] = [i for name, i in starter.flat() if name == "flat-black-640x480"]
    black = tmp_path / "flat-black-640x480.png"
    black.write_bytes(starter.png(image))
    black_md5 = author.json("hash", str(black))[0]["md5"]
    refused = author.cli("add", "pdq", BLACK_PDQ, "-c", "csam", check=False)
    assert refused.returncode == 2 and "value: refused" in refused.stderr, refused
    ops = [{"op": "add", "type": "pdq", "value": BLACK_PDQ, "quality": 100, "category": "csam"}]
    author.cli(
        "import", str(write_bundle(tmp_path / "e.hmb", chain(elsewhere, "csam", [ops]), "csam"))
    )
    author.json("add", "md5", black_md5, "-c", "csam")
    author.json("add", "md5", MEME_MD5, "-c", "csam")

    def arrived() -> bool:
        md5s = [match(platform, "md5", v)[1] for v in (black_md5, MEME_MD5)]
        pdq = match(platform, "pdq", BLACK_PDQ)[1]
        return all(set(hits(a)) == {"csam", "benign"} for a in md5s) and "csam" in hits(pdq)

    wait_for(arrived, timeout=60)

    code, answer = match(platform, "md5", MEME_MD5)
    assert code == 1 and answer["matched"] is False
    assert hits(answer)["csam"]["verdict"] == "suppressed"
    assert hits(answer)["csam"]["reasons"] == [
        f"matched, but suppressed by negative collection benign ({meme_benign})"
    ]
    assert hits(answer)["benign"]["verdict"] == "negative"

    result = platform.cli("match", "--file", str(black), "--json", check=False)
    assert result.returncode == 1, result.stdout
    answer = json.loads(result.stdout)
    assert answer["matched"] is False
    held = {
        (r["query"]["type"], m["collection"]): m for r in answer["results"] for m in r["matches"]
    }
    md5_hit = held[("md5", "csam")]
    assert md5_hit["verdict"] == "suppressed"
    assert md5_hit["reasons"][0].startswith("matched, but suppressed by negative collection benign")
    pdq_hit = held[("pdq", "csam")]
    assert pdq_hit["verdict"] == "suppressed" and pdq_hit["value"] == BLACK_PDQ
    assert pdq_hit["reasons"] == [
        f"matched, but the query is not a usable PDQ: {degenerate_reason('pdq', BLACK_PDQ)}",
        f"quarantined: degenerate hash from another node: {degenerate_reason('pdq', BLACK_PDQ)}",
    ]
    assert all(m["verdict"] != "match" for m in held.values())

    # The status behind the status page names what held each hit back.
    status = platform.status()
    [benign] = status["policies"]
    assert benign["collection"] == "benign" and benign["negative"] is True
    quarantined = {q["op_id"]: q for q in status["quarantine"]}
    assert quarantined[pdq_hit["op_id"]]["reason"].startswith("degenerate hash from another node: ")
    assert status["degenerate_by_author"] == [
        {"author": elsewhere.node_id, "name": "elsewhere", "held_back": 1}
    ]


# -- each knob, on one node -------------------------------------------------------------------


def test_threshold_quality_disputes_and_review_each_hold_a_hit_back(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "hotline")
    assert BRIDGE.pdq is not None
    op = node.json("add", "pdq", BRIDGE.pdq, "-c", "ncii", "--quality", "60")["op_id"]
    query = flip(BRIDGE.pdq, 6)
    assert match(node, "pdq", query)[0] == 0

    def verdict(*policy: str) -> tuple[int, str, list[str]]:
        node.cli("policy", "set", "ncii", *policy)
        code, answer = match(node, "pdq", query)
        hit = hits(answer)["ncii"]
        assert hit["op_id"] == op
        return code, hit["verdict"], hit.get("reasons", [])

    assert verdict("--threshold", "4") == (
        1,
        "beyond_threshold",
        ["distance 6 is past ncii's threshold 4"],
    )
    assert verdict("--threshold", "6") == (0, "match", [])
    assert verdict("--min-quality", "80") == (
        1,
        "low_quality",
        ["quality 60 is below ncii's minimum 80"],
    )
    code, answer = match(node, "pdq", query, "--threshold", "3")  # the request narrows too
    assert code == 1 and not answer["results"][0]["matches"]

    node.cli("policy", "set", "ncii", "--require-review")
    code, answer = match(node, "pdq", query)
    assert code == 1 and answer["review_required"] is True and answer["matched"] is False
    assert hits(answer)["ncii"]["reasons"] == ["ncii requires review before action"]

    node.cli("opinion", op, "dispute")
    assert verdict("--suspend-after-disputes", "2") == (0, "match", [])
    code, kind, reasons = verdict("--suspend-after-disputes", "1", "--min-quality", "80")
    assert (code, kind) == (1, "low_quality")  # the first reason decides, all are listed
    assert reasons == [
        "quality 60 is below ncii's minimum 80",
        "suspended: disputed by 1 authors (ncii suspends at 1)",
    ]


def test_a_flat_picture_query_never_matches_even_a_hash_from_a_peer(tmp_path: Path) -> None:
    """Publishing refuses a degenerate PDQ, but another implementation's author can sign
    one: the match answer holds back every hit of a query that describes no picture."""
    node = NodeProc(tmp_path, "platform")
    key = author_key(7)
    node.cli("trust", "add", key.node_id, "csam", "--name", "elsewhere")
    ops = [{"op": "add", "type": "pdq", "value": BLACK_PDQ, "category": "csam"}]
    bundle = write_bundle(tmp_path / "b.hmb", chain(key, "csam", [ops]), "csam")
    node.cli("import", str(bundle))
    for query in (BLACK_PDQ, flip(BLACK_PDQ, 3)):
        code, answer = match(node, "pdq", query)
        hit = hits(answer)["csam"]
        assert code == 1 and hit["verdict"] == "suppressed"
        why = degenerate_reason("pdq", query)
        # Held back twice over: the query describes no picture, and ingest quarantined the
        # peer's degenerate hash itself (store/core.py).
        stored = degenerate_reason("pdq", BLACK_PDQ)
        assert hit["reasons"] == [
            f"matched, but the query is not a usable PDQ: {why}",
            f"quarantined: degenerate hash from another node: {stored}",
        ]


def test_a_refused_policy_request_changes_nothing(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "platform")
    node.cli("policy", "set", "csam", "--quorum", "3")
    refused = node.cli("policy", "set", "csam", "--negative", "--min-quality", "50", check=False)
    assert refused.returncode == 2 and "--min-quality: a negative collection" in refused.stderr
    assert policies(node, "csam")[0]["quorum"] == 3
    assert policies(node, "csam")[0]["negative"] is False


# -- matcher workers and replicas judge as the node does --------------------------------------


@pytest.mark.slow
def test_workers_and_replicas_apply_the_node_policy(tmp_path: Path) -> None:
    """The node's matcher workers read match_policy with the rows they match; a replica
    learns it from /v1/replica/state (only for collections its token reads), so a policy
    change holds back the same hit everywhere within a poll."""
    from test_replica import MatcherProc

    assert BRIDGE.pdq is not None
    node = NodeProc(tmp_path, "platform")
    node.cli("add", "md5", MEME_MD5, "-c", "csam")
    node.cli("add", "md5", MEME_MD5, "-c", "benign")
    node.cli("add", "pdq", BRIDGE.pdq, "-c", "csam", "--quality", "100")
    set_config(node.home, match_workers=1)
    node.start()
    replica = None
    try:
        runtime = json.loads((node.home / "node.json").read_text())
        worker_url = runtime["match"]
        follow = node.cli(
            "token", "create", "replica", "--scope", "read", "--scope", "replicate"
        ).stdout.strip()
        matcher = node.cli("token", "create", "platform", "--scope", "match").stdout.strip()
        replica = MatcherProc(tmp_path, node, follow)
        replica.start()
        body = {
            "queries": [{"type": "md5", "value": MEME_MD5}, {"type": "pdq", "value": BRIDGE.pdq}]
        }

        def answers() -> list[Any]:
            out = []
            for url in (node.url, worker_url, replica.url):
                status, data = request(url + "/v1/match", "POST", matcher, body)
                assert status == 200, data
                out.append(json.loads(data))
            return out

        wait_for(lambda: all(a["matched"] for a in answers()), timeout=30)
        node.cli("policy", "set", "benign", "--negative")
        node.cli("policy", "set", "csam", "--quorum", "2")

        def verdicts(answer: Any) -> list[list[tuple[str, str]]]:
            return [
                [(m["collection"], m["verdict"]) for m in r["matches"]] for r in answer["results"]
            ]

        expected = [
            [("benign", "negative"), ("csam", "suppressed")],
            [("csam", "below_quorum")],
        ]
        wait_for(lambda: all(verdicts(a) == expected for a in answers()), timeout=30)
        node_answer, worker_answer, replica_answer = answers()
        assert node_answer == worker_answer == replica_answer
        assert replica_answer["matched"] is False
        suppressed = replica_answer["results"][0]["matches"][1]
        assert suppressed["reasons"][0].startswith("matched, but suppressed by negative collection")
        assert "below quorum: 1 of 2 authors" in suppressed["reasons"]

        # A quarantine (the node counts the matches it answers, forwarded to its worker)
        # holds the hit back on the worker and the replica too.
        node.cli("policy", "set", "csam", "--spike-cap", "3")
        pdq_only = {"queries": [{"type": "pdq", "value": BRIDGE.pdq}]}
        for _ in range(3):
            status, data = request(node.url + "/v1/match", "POST", matcher, pdq_only)
            assert status == 200 and json.loads(data)["matched"] is True, data
        wait_for(lambda: all(verdicts(a)[1] == [("csam", "quarantined")] for a in answers()))
    finally:
        if replica is not None:
            replica.kill()
        assert node.stop() == 0


def test_a_wide_negative_radius_does_not_mark_a_narrow_answer_truncated(tmp_path: Path) -> None:
    """The lookup reaches a negative collection's radius past the request's threshold;
    the rows it finds out there only judge, and never make the answer look cut short."""
    from itertools import combinations

    assert BRIDGE.pdq is not None
    node = NodeProc(tmp_path, "platform")
    base = int(BRIDGE.pdq, 16)
    masks = [sum(1 << (40 + b) for b in bits) for bits in combinations(range(12), 8)][:150]
    rows = ["type,value,quality"] + [f"pdq,{base ^ m:064x},100" for m in masks]
    listing = tmp_path / "near.csv"
    listing.write_text("\n".join(rows) + "\n")
    assert node.json("import-list", "csv", str(listing), "-c", "csam")["published"] == 150
    node.cli("policy", "set", "benign", "--negative", "--threshold", "20")
    code, answer = match(node, "pdq", BRIDGE.pdq, "--threshold", "5")
    assert code == 1 and answer["results"][0]["matches"] == []
    assert answer["truncated"] is False and "truncated" not in answer["results"][0]
    code, answer = match(node, "pdq", BRIDGE.pdq, "--threshold", "8")
    assert code == 0 and len(answer["results"][0]["matches"]) == 100
    assert answer["truncated"] is True
