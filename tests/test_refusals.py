"""Missing trust made visible, and peer health in text `status` (issue 16, items 2 and 4).

A platform that does not trust an author sees "no match" for that author's hashes; the
node now records each (sender, author, collection, reason) it refused, logs it once, and
shows it in `status` with the command that would accept it.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from netnodes import NodeProc, NodeSet, wait_for

from hashmesh.node.net.peers import Refusals

MD5 = "%032x"


def refusals(node: NodeProc) -> list[dict[str, object]]:
    result: list[dict[str, object]] = node.status()["refusals"]
    return result


def test_untrusted_author_is_shown_with_its_fix_and_logged_once(
    nodes: NodeSet, tmp_path: Path
) -> None:
    ncmec, platform = nodes.make("ncmec", "platform")
    ncmec.peer(platform, "csam")
    platform.peer(ncmec)  # the platform forgot `trust add`
    ncmec.start()
    platform.start()
    for n in range(3):
        ncmec.cli("add", "md5", MD5 % (0x300 + n), "-c", "csam")
    wait_for(lambda: any(r["batches"] >= 3 for r in refusals(platform)))
    assert not platform.matches("md5", MD5 % 0x300)

    (row,) = refusals(platform)
    assert row["author"] == ncmec.node_id and row["collection"] == "csam"
    assert row["sender"] == ncmec.node_id and row["sender_name"] == "ncmec"
    assert row["reason"] == "untrusted"
    fix = f"hashmesh trust add {ncmec.node_id} csam"
    assert row["fix"] == fix

    text = platform.cli("status").stdout
    batches = row["batches"]
    line = (
        f"  author {ncmec.node_id} offered {batches} batches in csam via peer ncmec;"
        f" not trusted here: {fix}"
    )
    assert line in text.splitlines(), text
    assert "refused   1 (batches this node would not store)" in text

    logged = [
        entry
        for entry in (platform.home / "run.log").read_text().splitlines()
        if f"author {ncmec.node_id} offered" in entry
    ]
    assert len(logged) == 1, logged  # once per (sender, author, collection), not per batch
    assert logged[0].endswith(f"in csam via peer ncmec; not trusted here: {fix}")

    # The printed command is the fix: run as printed, the hashes match and the row goes.
    platform.cli(*fix.split()[1:])
    ncmec.cli("add", "md5", MD5 % 0x310, "-c", "csam")
    wait_for(lambda: platform.matches("md5", MD5 % 0x310))
    wait_for(lambda: platform.matches("md5", MD5 % 0x300))
    assert refusals(platform) == []
    assert "not trusted here" not in platform.cli("status").stdout


def test_refusals_of_a_collection_stay_from_tokens_that_may_not_read_it(
    nodes: NodeSet, tmp_path: Path
) -> None:
    """Status names authors and collections; a token restricted to other collections gets
    either no status or one without those refusals."""
    ncmec, platform = nodes.make("ncmec", "platform")
    ncmec.peer(platform, "csam")
    platform.peer(ncmec)
    ncmec.start()
    platform.start()
    ncmec.cli("add", "md5", MD5 % 0x320, "-c", "csam")
    wait_for(lambda: bool(refusals(platform)))
    for scope in ("read", "match", "publish"):
        token = platform.cli(
            "token", "create", f"only-ncii-{scope}", "--scope", scope, "--collection", "ncii"
        ).stdout.strip()
        request = urllib.request.Request(
            platform.url + "/v1/status", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            assert exc.code == 403
            continue
        assert all(r["collection"] == "ncii" for r in body["refusals"])
        assert ncmec.node_id not in json.dumps(body["refusals"])


def test_refusal_table_is_bounded_and_keeps_the_newest() -> None:
    table = Refusals(limit=3)
    assert table.record("peer", "a1", "csam", "untrusted", 2) is True
    assert table.record("peer", "a1", "csam", "untrusted", 1) is False  # counted, not new
    for author in ("a2", "a3", "a4"):
        assert table.record("peer", author, "csam", "untrusted", 1) is True
    rows = table.rows()
    assert [r.author for r in rows] == ["a4", "a3", "a2"] and table.dropped == 1
    table.record("peer", "a2", "csam", "untrusted", 5)  # refused again: now the newest
    table.record("peer", "a5", "csam", "untrusted", 1)
    assert [r.author for r in table.rows()] == ["a5", "a2", "a4"]
    assert table.rows()[1].batches == 6


def test_text_status_shows_peer_health_trust_and_current_lag(
    nodes: NodeSet, tmp_path: Path
) -> None:
    """Anti-entropy rounds an hour apart: the lag shown must come from what the peer told
    us since (its answers to our pushes and its own sync requests), not the last round."""
    ncmec, platform = nodes.make("ncmec", "platform", interval=3600.0)
    ncmec.peer(platform, "csam")
    platform.peer(ncmec)
    platform.trust(ncmec, "csam")
    ncmec.cli("peer", "add", "gone", "http://127.0.0.1:9", nodes.make("gone")[0].node_id)
    offline = ncmec.cli("status").stdout
    assert "    health   unknown (the node is not running)" in offline
    assert f"  {ncmec.node_id} (ncmec)  in csam" in platform.cli("status").stdout

    platform.start()
    ncmec.start()  # its one round (the next is in an hour) finds the platform up
    wait_for(lambda: ncmec.status()["peers"][0].get("last_sync_ms"))
    for n in range(2):
        ncmec.cli("add", "md5", MD5 % (0x330 + n), "-c", "csam")
    wait_for(lambda: platform.matches("md5", MD5 % 0x331))

    def lag_of(peer: str) -> list[dict[str, object]]:
        (entry,) = [p for p in ncmec.status()["peers"] if p["name"] == peer]
        lag: list[dict[str, object]] = entry["lag"]
        return lag

    wait_for(lambda: [entry["behind"] for entry in lag_of("platform")] == [0])
    text = ncmec.cli("status").stdout
    lines = text.splitlines()
    at = lines.index(f"  platform         {platform.url}  reads: csam")
    assert lines[at + 1].startswith("    health   reachable; last sync ")
    assert lines[at + 2] == "    lag      none: holds all 1 shared logs"

    wait_for(lambda: any(p["failures"] for p in ncmec.status()["peers"] if p["name"] == "gone"))
    text = ncmec.cli("status").stdout
    lines = text.splitlines()
    at = lines.index("  gone             http://127.0.0.1:9  reads: -")
    assert lines[at + 1].startswith("    health   UNREACHABLE, ")
    assert lines[at + 2].startswith("    error    ")
    assert "trust     0 authors" in lines
