"""A matcher worker maps each newer PDQ index checkpoint the node writes.

Without it a worker keeps in private memory every PDQ signal added since it started (at
1,000,000 synced signals, node plus two workers held 1,368 MB PSS instead of sharing one
copy). Here the node checkpoints every second; after 1,200 adds the worker swaps in the
newer checkpoint (its /metrics say which), and still answers every add, and every
revocation, made before and after the swap.
"""

from __future__ import annotations

import random
import re
import urllib.request
from typing import Any

import pytest
from conftest import Cli, HomeFactory, NodeFactory, set_config
from test_match_workers import get, post, until

from hashmesh.testing import read_runtime


def metric(match_url: str, token: str, name: str) -> float:
    request = urllib.request.Request(
        match_url + "/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in the worker's metrics"
    return float(found.group(1))


def real_looking(rng: random.Random, count: int) -> list[str]:
    """Random PDQs with as many bits set as real pictures give (publishing refuses others)."""
    found: list[str] = []
    while len(found) < count:
        value = rng.getrandbits(256)
        if 104 <= value.bit_count() <= 152:
            found.append("%064x" % value)
    return found


def test_worker_remaps_newer_checkpoints_and_stays_current(
    home: HomeFactory, start_node: NodeFactory
) -> None:
    rng = random.Random(1802)
    pdq = real_looking(rng, 1_202)
    path = home("A")
    set_config(path, match_workers=1, index_checkpoint_s=1)
    node = start_node(path)
    runtime = read_runtime(path)
    assert runtime is not None
    match_url = runtime["match"]
    until("the worker healthy", lambda: get(match_url + "/healthz")[0] == 200)
    first = metric(match_url, node.token, "hashmesh_matcher_checkpoint_cursor")
    assert metric(match_url, node.token, "hashmesh_matcher_remaps_total") == 0

    published = node.call(
        "POST",
        "/v1/signals/batch",
        {"collection": "csam", "signals": [{"type": "pdq", "value": v} for v in pdq[:1_200]]},
    )
    until(
        "the worker remapped a newer checkpoint",
        lambda: metric(match_url, node.token, "hashmesh_matcher_remaps_total") >= 1,
        timeout=30,
    )
    assert metric(match_url, node.token, "hashmesh_matcher_checkpoint_cursor") > first

    def answer(value: str) -> dict[str, Any]:
        near = value[:-2] + ("00" if value[-2:] != "00" else "ff")  # a few bits away
        status, body = post(
            match_url + "/v1/match",
            {"queries": [{"type": "pdq", "value": near}], "threshold": 31},
            node.token,
        )
        assert status == 200, body
        return body

    assert all(answer(v)["matched"] for v in pdq[:1_200:97])
    assert answer(pdq[1_201])["matched"] is False

    # After the swap the worker still follows the feed: an add, then its revocation.
    added = node.call(
        "POST", "/v1/signals", {"type": "pdq", "value": pdq[1_200], "collection": "csam"}
    )
    until("an add after the remap matchable", lambda: answer(pdq[1_200])["matched"])
    node.call("POST", "/v1/revoke", {"op_id": added["op_id"], "reason": "test"})
    until("its revocation applied", lambda: not answer(pdq[1_200])["matched"])
    # ... and a revocation of a signal that came with the mapped checkpoint's segments.
    node.call("POST", "/v1/revoke", {"op_id": published["signals"][97]["op_id"]})
    until("a mapped signal's revocation applied", lambda: not answer(pdq[97])["matched"])
    assert answer(pdq[194])["matched"]
    assert get(match_url + "/healthz")[0] == 200


@pytest.mark.parametrize("value", ["0", "86401", '"often"'])
def test_a_bad_checkpoint_period_is_refused_by_name(
    home: HomeFactory, cli: Cli, value: str
) -> None:
    path = home("B")
    config = path / "config.toml"
    config.write_text(f"index_checkpoint_s = {value}\n" + config.read_text())
    result = cli("status", home=path, expect=2)
    assert "index_checkpoint_s" in result.stderr
