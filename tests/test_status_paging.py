"""/v1/status with many logs (issue 22): bounded lists and the rest paged. With 5,000
logs it answered 2.7 MB after a second of work; now it carries the first page of logs,
the first trust entries and each peer's most lagging logs with a summary of all, and the
logs page on through /v1/status/logs."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from netnodes import NodeProc, NodeSet

from hashmesh.node.config import Home, Peer
from hashmesh.testing import author_keys, one_batch_logs, seed_home

LOGS = 250


def get(node: NodeProc, path: str) -> tuple[int, Any, int]:
    request = urllib.request.Request(
        node.url + path, headers={"Authorization": f"Bearer {node.admin_token()}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw), len(raw)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw), len(raw)


def test_status_lists_a_page_and_the_logs_page_on_in_order(nodes: NodeSet) -> None:
    (node,) = nodes.make("many")
    keys = author_keys(LOGS)
    trust = {k.node_id: "csam" for k in keys}
    seed_home(node.home, trust, one_batch_logs(keys, "csam"))
    home = Home(node.home)
    config = home.load_config()
    peer = author_keys(1, "peer")[0]
    config.add_peer(
        Peer(name="far", url="http://127.0.0.1:9", node_id=peer.node_id, share=["csam"])
    )
    home.save_config(config)
    node.start()

    status, body, size = get(node, "/v1/status")
    assert status == 200
    assert len(body["logs"]) == 100 and body["logs_total"] == LOGS and body["logs_next"]
    assert len(body["trust"]) == 100 and body["trust_total"] == LOGS
    assert body["collections_held"] == ["csam"]
    (far,) = body["peers"]
    assert len(far["lag"]) == 100
    assert far["lag_summary"] == {"logs": LOGS, "behind": 0, "logs_behind": 0, "logs_unknown": LOGS}

    seen = [(log["collection"], log["author"]) for log in body["logs"]]
    after = body["logs_next"]
    while after:
        status, page, _ = get(node, f"/v1/status/logs?after={after}&limit=70")
        assert status == 200 and page["total"] == LOGS and len(page["logs"]) <= 70
        seen += [(log["collection"], log["author"]) for log in page["logs"]]
        after = page["next"]
    assert seen == sorted(seen) and len(set(seen)) == LOGS  # every log once, in order
    assert {a for _, a in seen} == set(trust)
    assert all(log["author_name"] for log in body["logs"])  # named from the trust entries

    # the status no longer grows with the logs: a first page is all it carries
    _, first, first_size = get(node, "/v1/status/logs?limit=100")
    assert first["logs"] == body["logs"]
    assert size < first_size + 40_000, (size, first_size)

    text = node.cli("status").stdout
    assert f"logs      {LOGS}" in text
    assert f"  ... and {LOGS - 100} more (GET /v1/status/logs?after={body['logs_next']})" in text
    assert "in the first 100 of 250 entries" in text


def test_bad_paging_parameters_are_refused_naming_the_field(nodes: NodeSet) -> None:
    (node,) = nodes.make("one")
    node.start()
    for query, field in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("after=nonsense", "after"),
        ("after=csam/ed25519:short", "after"),
        ("after=" + "x" * 400, "after"),
    ]:
        status, body, _ = get(node, f"/v1/status/logs?{query}")
        assert status == 400, (query, body)
        assert body["error"].startswith(f"{field}:"), (query, body)
