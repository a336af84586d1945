"""With matcher workers, the node's own POST /v1/match/file is answered by a worker.

Hashing an image is the costliest thing a match does (decode, resize, DCT): done in the
node it held the GIL the node's publishing and ingest need. The node now reads the upload
(bounded, paced) and hands it to a worker as it came. Here the node's answer equals the
worker's, the hashing CPU is spent in the worker, not the node, and the node's bounds and
refusals still hold.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from conftest import HomeFactory, NodeFactory, NodeProcess, set_config
from platform_util import match_file
from test_match_workers import get, until
from testdata import IMAGES

from hashmesh.node.hashing.hasher import hash_bytes
from hashmesh.testing import read_runtime


def answered(match_url: str, token: str) -> int:
    request = urllib.request.Request(
        match_url + "/metrics", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    found = re.search(r'^hashmesh_matcher_matches_total\{outcome="answered"\} (\d+)$', text, re.M)
    assert found is not None
    return int(found.group(1))


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_node_hands_uploads_to_its_workers(home: HomeFactory, start_node: NodeFactory) -> None:
    path = home("A")
    set_config(path, match_workers=1)
    node: NodeProcess = start_node(path)
    runtime = read_runtime(path)
    assert runtime is not None
    match_url = runtime["match"]
    until("the worker healthy", lambda: get(match_url + "/healthz")[0] == 200)
    photo = (IMAGES / "bridge-1-original.jpg").read_bytes()
    hashes = hash_bytes(photo)
    assert hashes.pdq is not None
    node.call("POST", "/v1/signals", {"type": "pdq", "value": hashes.pdq, "collection": "csam"})
    until(
        "the add matchable on the worker",
        lambda: match_file(match_url, node.token, {"file": photo})[1].get("matched") is True,
    )

    direct = match_file(match_url, node.token, {"file": photo, "threshold": b"20"})
    before = answered(match_url, node.token)
    through_node = match_file(node.api, node.token, {"file": photo, "threshold": b"20"})
    assert through_node == direct
    assert through_node[0] == 200 and through_node[1]["hashes"]["pdq"] == hashes.pdq
    assert answered(match_url, node.token) == before + 1  # the worker answered it

    # Who hashed: twenty uploads to the node cost the worker more CPU than the node.
    (worker,) = runtime["workers"]
    node_before, worker_before = cpu_s(node.proc.pid), cpu_s(worker)
    for _ in range(20):
        assert match_file(node.api, node.token, {"file": photo})[0] == 200
    node_cost, worker_cost = cpu_s(node.proc.pid) - node_before, cpu_s(worker) - worker_before
    assert worker_cost > node_cost, (worker_cost, node_cost)

    # Bounds and refusals hold: no file part (the worker's 400, passed through), too large
    # and a bad token (the node's own, before the body is read).
    status, body = match_file(node.api, node.token, {"threshold": b"20"})
    assert status == 400 and "'file' part" in body["error"]
    status, body = match_file(node.api, node.token, {"file": b"x" * (51 << 20)})
    assert status == 413 and "upload" in body["error"]
    status, body = match_file(node.api, "not-a-token", {"file": photo})
    assert status == 401
    assert answered(match_url, node.token) == before + 21  # no refusal counted as an answer
