"""List hygiene, the rest of issue 19: real node processes, real signatures, real HTTP.

- A quorum counted by organisation or country, from the org and country labels of trust
  entries (`hashmesh trust add --org --country`, `policy set --quorum-by`): two nodes of
  one organisation are one organisation; an author without the label is one of its own.
- A quarantine on a match spike sends, when the collection's policy asks for it, this
  node's signed dispute with reason `match-spike` to the author, who sees the reason in
  `hashmesh disputes` and its status; an opinion's reason is bounded and refused by field.
- Matches answered by the node's matcher workers at their own address, and by a replica,
  count towards the node's quarantine windows (a pipe from each worker; the replica's
  follow token), and every report is bounded and checked.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import author_key, chain, set_config, write_bundle
from netnodes import NodeProc, NodeSet, link, wait_for
from platform_util import ok_json, request

from hashmesh.node.matching.quarantine import MAX_REPORT, MAX_REPORTED
from hashmesh.node.net.follow import NodeDataError, parse_state

X = "5a5a0000111122223333444455556666"  # listed by two nodes of one organisation
Y = "5a5a0000777788889999aaaabbbbcccc"  # listed by one of them and an unlabelled hotline
MEME = "9e107d9d372bb6826bd81d3542a419d6"
VIRAL = "e4d909c290d0fb1ca068ffaddf22cbd0"


def match(node: NodeProc, signal_type: str, value: str) -> tuple[int, Any]:
    result = node.cli("match", signal_type, value, "--json", check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def reasons(answer: Any) -> list[str]:
    return [
        r for result in answer["results"] for m in result["matches"] for r in m.get("reasons", [])
    ]


def import_adds(node: NodeProc, tmp: Path, seed: int, collection: str, values: list[str]) -> None:
    ops = [{"op": "add", "type": "md5", "value": v, "category": "csam"} for v in values]
    bundle = write_bundle(
        tmp / f"{seed}.hmb", chain(author_key(seed), collection, [ops]), collection
    )
    node.cli("import", str(bundle))


@pytest.mark.slow
def test_quorum_by_organisation_and_country_from_trust_labels(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "platform")
    us1, us2, hotline = (author_key(n).node_id for n in (11, 12, 13))
    node.cli("trust", "add", us1, "csam", "--name", "ncmec-a", "--org", "NCMEC", "--country", "US")
    node.cli("trust", "add", us2, "csam", "--name", "ncmec-b", "--org", "NCMEC", "--country", "US")
    node.cli("trust", "add", hotline, "csam", "--name", "hotline", "--country", "US")
    import_adds(node, tmp_path, 11, "csam", [X, Y])
    import_adds(node, tmp_path, 12, "csam", [X])
    import_adds(node, tmp_path, 13, "csam", [Y])

    listed = {t["node_id"]: t for t in node.json("trust", "list")["trust"]}
    assert listed[us1]["org"] == "NCMEC" and listed[us1]["country"] == "US"
    assert "org" not in listed[hotline] and listed[hotline]["country"] == "US"
    assert 'org = "NCMEC"' in (node.home / "config.toml").read_text()
    for args, words in [
        (["--country", "usa"], "country 'usa': must be an ISO 3166-1 alpha-2 code"),
        (["--country", "b1"], "country 'b1': must be an ISO 3166-1 alpha-2 code"),
        (["--org", "x" * 65], "must be 1-64 printable characters"),
    ]:
        refused = node.cli("trust", "add", us1, "csam", *args, check=False)
        assert refused.returncode == 2 and words in refused.stderr, refused.stderr
    assert node.json("trust", "list", us1)["trust"][0]["country"] == "US"  # nothing changed

    node.cli("policy", "set", "csam", "--quorum", "2")  # node ids: X has two authors
    assert match(node, "md5", X)[0] == 0

    node.cli("policy", "set", "csam", "--quorum", "2", "--quorum-by", "org")
    assert "quorum 2 organisations" in node.cli("policy", "show").stdout
    code, answer = match(node, "md5", X)
    assert code == 1 and answer["matched"] is False
    assert {m["verdict"] for m in answer["results"][0]["matches"]} == {"below_quorum"}
    assert set(reasons(answer)) == {"below quorum: 1 of 2 organisations"}
    text = node.cli("match", "md5", X, check=False).stdout
    assert "NOT A MATCH (below quorum)" in text and "below quorum: 1 of 2 organisations" in text
    assert match(node, "md5", Y)[0] == 0  # NCMEC and a hotline without an org: two

    node.cli("policy", "set", "csam", "--quorum", "2", "--quorum-by", "country")
    code, answer = match(node, "md5", Y)
    assert code == 1 and set(reasons(answer)) == {"below quorum: 1 of 2 countries"}

    # Labels set through the running node apply at once, on the node and on a replica's
    # state (what a replica judges by), where each label is checked again.
    node.start()
    try:
        node.cli("trust", "add", hotline, "csam", "--name", "hotline", "--country", "BE")
        assert node.json("trust", "list", hotline)["trust"][0]["country"] == "BE"
        assert match(node, "md5", Y)[0] == 0
        follow = node.cli(
            "token", "create", "replica", "--scope", "read", "--scope", "replicate"
        ).stdout.strip()
        body = ok_json(node.url + "/v1/replica/state", token=follow)
        assert sorted(body["labels"]) == sorted(
            [
                [us1, "csam", "NCMEC", "US"],
                [us2, "csam", "NCMEC", "US"],
                [hotline, "csam", "", "BE"],
            ]
        )
        assert parse_state(body).labels[(hotline, "csam")] == ("", "BE")
        body["labels"][0][3] = "b1"
        with pytest.raises(NodeDataError, match=r"replica state.labels\[0\]: country 'b1'"):
            parse_state(body)
    finally:
        assert node.stop() == 0


@pytest.mark.slow
def test_a_spike_quarantine_disputes_the_add_to_its_author_with_reason_match_spike(
    nodes: NodeSet,
) -> None:
    hotline, platform = nodes.make("hotline", "platform")
    link(platform, hotline, "memes", "viral")
    for collection in ("memes", "viral"):
        platform.trust(hotline, collection)
        hotline.trust(platform, collection)
    hotline.start()
    platform.start()
    meme = hotline.json("add", "md5", MEME, "-c", "memes")["op_id"]
    viral = hotline.json("add", "md5", VIRAL, "-c", "viral")["op_id"]
    wait_for(lambda: platform.matches("md5", MEME) and platform.matches("md5", VIRAL), timeout=30)

    refused = platform.cli("policy", "set", "memes", "--dispute-on-spike", check=False)
    assert refused.returncode == 2 and "needs a spike_cap or spike_factor" in refused.stderr
    platform.cli("policy", "set", "memes", "--spike-cap", "5", "--dispute-on-spike")
    platform.cli("policy", "set", "viral", "--spike-cap", "5")
    assert "sends the author a dispute (match-spike)" in platform.cli("policy", "show").stdout

    def held() -> set[str]:
        return {q["op_id"] for q in platform.json("quarantine", "list")["quarantine"]}

    # Matched until both are held (the node reads policy again at most once a second, so
    # a match in that second after `policy set` may still be judged by the old policy).
    for _ in range(20):
        if held() == {meme, viral}:
            break
        platform.matches("md5", MEME)
        platform.matches("md5", VIRAL)
    wait_for(lambda: held() == {meme, viral})
    # The dispute was published in the same store call that recorded the quarantine:
    # the platform's own log holds it in memes, and nothing in viral (no dispute asked).
    own = {
        log["collection"]: log["head"]
        for log in platform.json("status")["logs"]
        if log["author"] == platform.node_id
    }
    assert own == {"memes": 1}

    def queue() -> list[Any]:
        return list(hotline.json("disputes")["disputes"])

    [entry] = wait_for(queue, timeout=30)
    assert entry["op_id"] == meme and entry["value"] == MEME
    [who] = entry["disputes"]
    assert who["author"] == platform.node_id and who["reason"] == "match-spike"
    assert "disputed by   platform (match-spike)" in hotline.cli("disputes").stdout
    [shown] = hotline.json("status")["disputed"]
    assert shown["disputes"][0]["reason"] == "match-spike"
    # The reason travels, the counts do not: the author learns no traffic figure.
    assert "5 matches" not in json.dumps(entry)

    # An operator's own dispute carries a reason of its choosing, bounded.
    bad = platform.cli("opinion", viral, "dispute", "--reason", "x" * 257, check=False)
    assert bad.returncode == 2, bad
    assert "opinion.reason: must be 1-256 characters" in bad.stderr
    out = platform.json("opinion", viral, "dispute", "--reason", "false-positive")
    assert out["reason"] == "false-positive"

    def viral_reason() -> str:
        by_op = {e["op_id"]: e for e in queue()}
        return str(by_op.get(viral, {"disputes": [{}]})["disputes"][0].get("reason", ""))

    assert wait_for(viral_reason, timeout=30) == "false-positive"
    # A retraction clears the reason with the verdict.
    platform.cli("opinion", viral, "retract")
    wait_for(lambda: viral not in {e["op_id"] for e in queue()}, timeout=30)


def _worker_url(node: NodeProc) -> str:
    return str(json.loads((node.home / "node.json").read_text())["match"])


@pytest.mark.slow
def test_matches_on_workers_and_replicas_count_towards_quarantine(tmp_path: Path) -> None:
    from test_replica import MatcherProc

    node = NodeProc(tmp_path, "platform")
    meme = node.json("add", "md5", MEME, "-c", "memes")["op_id"]
    viral = node.json("add", "md5", VIRAL, "-c", "viral")["op_id"]
    node.cli("policy", "set", "memes", "--spike-cap", "6")
    node.cli("policy", "set", "viral", "--spike-cap", "6")
    set_config(node.home, match_workers=1)
    node.start()
    replica = None
    try:
        matcher = node.cli("token", "create", "platform", "--scope", "match").stdout.strip()
        follow = node.cli(
            "token", "create", "replica", "--scope", "read", "--scope", "replicate"
        ).stdout.strip()
        replica = MatcherProc(tmp_path, node, follow)
        replica.start()

        def ask(url: str, value: str) -> str:
            status, data = request(
                url + "/v1/match", "POST", matcher, {"queries": [{"type": "md5", "value": value}]}
            )
            assert status == 200, data
            return str(json.loads(data)["results"][0]["matches"][0]["verdict"])

        def held() -> set[str]:
            return {q["op_id"] for q in node.json("quarantine", "list")["quarantine"]}

        # memes: three matches straight at the worker's address, three on the replica.
        # Neither alone reaches the cap of 6; the node counts both into one window.
        worker = _worker_url(node)
        assert [ask(worker, MEME) for _ in range(3)] == ["match"] * 3
        assert [ask(replica.url, MEME) for _ in range(3)] == ["match"] * 3
        wait_for(lambda: meme in held(), timeout=20)
        # viral: forwarded by the node to its worker (counted once, by the worker).
        assert [ask(node.url, VIRAL) for _ in range(5)] == ["match"] * 5
        assert viral not in held()
        ask(node.url, VIRAL)
        wait_for(lambda: viral in held(), timeout=20)
        # And held back everywhere once the replica's poll and the worker read it.
        for url in (node.url, worker, replica.url):
            wait_for(lambda url=url: ask(url, MEME) == "quarantined", timeout=20)  # type: ignore[misc]
    finally:
        if replica is not None:
            replica.kill()
        assert node.stop() == 0


def test_a_replica_match_report_is_bounded_and_checked(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "platform")
    meme = node.json("add", "md5", MEME, "-c", "memes")["op_id"]
    secret = node.json("add", "md5", VIRAL, "-c", "le-only")["op_id"]
    node.cli("policy", "set", "memes", "--spike-cap", "10")
    node.cli("policy", "set", "le-only", "--spike-cap", "1")
    node.start()
    try:
        url = node.url + "/v1/replica/matches"
        follow = node.cli(
            "token",
            "create",
            "r",
            "--scope",
            "read",
            "--scope",
            "replicate",
            "--collection",
            "memes",
        ).stdout.strip()
        matcher = node.cli("token", "create", "m", "--scope", "match").stdout.strip()
        assert request(url, "POST", matcher, {"matches": [[meme, 1]]})[0] == 403
        assert request(url, "POST", None, {"matches": [[meme, 1]]})[0] == 401
        bad = [
            ({"matches": [[meme, 0]]}, f"matches[0]: count must be an integer 1-{MAX_REPORTED}"),
            ({"matches": [[meme, MAX_REPORTED + 1]]}, "matches[0]: count must be an integer"),
            ({"matches": [[meme, True]]}, "matches[0]: count must be an integer"),
            ({"matches": [["not/an/op", 1]]}, "matches[0] op id"),
            ({"matches": [[meme, 1], [meme, 2]]}, f"matches[1]: op id {meme} is listed twice"),
            ({"matches": [[meme]]}, "matches[0]: expected [op id, count]"),
            ({"matches": [[meme, 1]] * (MAX_REPORT + 1)}, f"at most {MAX_REPORT}"),
            ({"matches": [], "extra": 1}, "expected an object with only a matches list"),
        ]
        for body, words in bad:
            status, data = request(url, "POST", follow, body)
            assert status == 400 and words in json.loads(data)["error"], (body, data)
        status, data = request(url, "POST", follow, raw=b"[" * (2 << 20))
        assert status == 413, data
        assert node.json("quarantine", "list")["quarantine"] == []  # refusals changed nothing
        # A signal outside the follower's collections, or not an add here, counts for nothing.
        unknown = meme.rsplit("/", 1)[0] + "/7"
        counted = ok_json(url, "POST", follow, {"matches": [[secret, 5], [unknown, 5]]})
        assert counted == {"counted": 0, "reported": 2}
        assert ok_json(url, "POST", follow, {"matches": [[meme, 9]]})["counted"] == 1
        assert node.json("quarantine", "list")["quarantine"] == []
        ok_json(url, "POST", follow, {"matches": [[meme, 1]]})  # the tenth: at the cap
        [q] = wait_for(lambda: node.json("quarantine", "list")["quarantine"])
        assert q["op_id"] == meme and q["value"] == MEME and "at memes's cap of 10" in q["reason"]
    finally:
        assert node.stop() == 0


def test_the_pytx_extension_gets_held_back_signals_marked_not_hidden(tmp_path: Path) -> None:
    """The real `threatexchange` CLI fetching a node's feed: an add that a negative list
    suppresses on the node still arrives, marked `policy:suppressed` (pytx: DISPUTED);
    `drop_held_back` leaves it out instead."""
    pytest.importorskip("threatexchange")
    from test_threatexchange import PDQ, matched, tx
    from threatexchange.signal_type.pdq.signal import PdqSignal

    from hashmesh.integrations.threatexchange import (
        HashmeshCollabConfig,
        HashmeshCredentials,
        HashmeshSignalExchangeAPI,
    )

    node = NodeProc(tmp_path, "platform")
    for value in PDQ:
        node.cli("add", "pdq", value, "-c", "csam", "--category", "csam", "--quality", "90")
    benign = node.json("add", "pdq", PDQ[1], "-c", "benign", "--quality", "90")["op_id"]
    node.cli("policy", "set", "benign", "--negative", "--threshold", "4")
    node.start()
    try:
        token = node.cli("token", "create", "pytx", "--scope", "read").stdout.strip()
        page = ok_json(node.url + "/v1/feed?limit=100", token=token)
        policy = {e["op_id"]: e.get("policy") for e in page["entries"] if e["kind"] == "add"}
        held = {op: p for op, p in policy.items() if p is not None}
        assert {p["verdict"] for p in held.values()} == {"suppressed", "negative"}
        [(suppressed, why)] = [(op, p) for op, p in held.items() if p["verdict"] == "suppressed"]
        assert why["reasons"] == [
            f"matched, but suppressed by negative collection benign ({benign})"
        ]
        assert len(policy) == 5 and len(held) == 2  # marked, none left out

        home = tmp_path / "txhome"
        home.mkdir()
        (home / ".tx_hashmesh_token").write_text(token + "\n")
        tx(home, "config", "extensions", "add", "hashmesh.integrations.threatexchange")
        tx(home, "config", "collab", "edit", "hashmesh", "mesh", "--create", "--url", node.url)
        tx(home, "fetch")
        assert all(matched(home, value) for value in PDQ)  # still there
        lines = tx(home, "match", "-S", "pdq", "-H", "photo", "--", PDQ[1]).stdout
        assert "DISPUTED" in lines and "policy:suppressed" in lines, lines
        plain = tx(home, "match", "-S", "pdq", "-H", "photo", "--", PDQ[0]).stdout
        assert "policy:" not in plain and "DISPUTED" not in plain, plain

        api = HashmeshSignalExchangeAPI.for_collab(
            HashmeshCollabConfig(name="mesh", url=node.url), HashmeshCredentials(token)
        )
        state: dict[str, Any] = {}
        for delta in api.fetch_iter([PdqSignal], None):
            HashmeshSignalExchangeAPI.naive_fetch_merge(state, delta.updates)  # type: ignore[arg-type]
        assert state[suppressed].held_back[0][1] == "suppressed"
        for drop, expected in ((False, set(PDQ)), (True, set(PDQ) - {PDQ[1]})):
            collab = HashmeshCollabConfig(name="mesh", url=node.url, drop_held_back=drop)
            by_type = HashmeshSignalExchangeAPI.naive_convert_to_signal_type(
                [PdqSignal], collab, state
            )
            assert set(by_type[PdqSignal]) == expected
    finally:
        assert node.stop() == 0
