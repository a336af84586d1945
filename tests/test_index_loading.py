"""The node answers while its PDQ index loads (issue 18: "health, exact matches and feeds
answer from the first second while the PDQ index loads").

The load is held open for real, not simulated: with no checkpoint the node builds its index
from the rows and then writes the checkpoint, which takes the checkpoint directory's writer
lock; the test holds that lock, so the node sits between "listening" and "index ready" for
as long as the test needs. Meanwhile health says `pdq_ready: false`, exact matches, the feed
and publishing answer, a PDQ match gets 503 with Retry-After, and `hashmesh match` waits;
once the lock is released the index is installed with what was published during the load.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import HASHMESH, HomeFactory, NodeFactory, clean_env
from testdata import PDQ

from hashmesh.testing import NodeRun, read_runtime

NEEDLES = PDQ / "needles.txt"


def request(url: str, token: str | None = None, body: Any = None) -> tuple[int, Any, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers


def loading_refusals(api: str, token: str) -> float:
    """503s the node answered on /v1/match, from its own /metrics."""
    req = urllib.request.Request(api + "/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        ours = 'status="503"' in line and '"/v1/match"' in line
        if line.startswith("hashmesh_http_requests_total{") and ours:
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_listening(run: NodeRun, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.proc.poll() is None, run.log()
        runtime = read_runtime(run.home)
        if runtime is not None and runtime.get("pid") == run.proc.pid:
            try:
                return str(runtime["api"]) if request(runtime["api"] + "/healthz")[0] else ""
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"node not listening within {timeout} s:\n{run.log()}")


def test_node_answers_while_its_pdq_index_loads(
    home: HomeFactory, start_node: NodeFactory, tmp_path: Path
) -> None:
    pdq = [line.strip() for line in NEEDLES.read_text().splitlines() if line.strip()]
    path = home("L")
    node = start_node(path)
    token = node.token
    md5 = "9e107d9d372bb6826bd81d3542a419d6"
    signals = [{"type": "pdq", "value": v} for v in pdq[:40]] + [{"type": "md5", "value": md5}]
    node.call("POST", "/v1/signals/batch", {"collection": "csam", "signals": signals})
    assert node.stop() == 0
    index_dir = path / "index" / "pdq"
    (index_dir / "manifest.json").unlink()  # next start builds from rows, then checkpoints

    fd = os.open(index_dir / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    run = NodeRun(path, tmp_path / "loading.log", command=(HASHMESH,), env=clean_env())
    try:
        api = wait_listening(run)
        status, health, _ = request(api + "/healthz")
        assert status == 200 and health == {"ok": True, "pdq_ready": False}

        exact = {"queries": [{"type": "md5", "value": md5}]}
        status, answer, _ = request(api + "/v1/match", token, exact)
        assert status == 200 and answer["matched"] is True

        near = {"queries": [{"type": "pdq", "value": pdq[0]}], "threshold": 31}
        status, answer, headers = request(api + "/v1/match", token, near)
        assert status == 503 and "loading" in answer["error"]
        assert headers["Retry-After"] == "1"

        status, feed, _ = request(api + "/v1/feed?limit=100", token)
        assert status == 200 and len(feed["entries"]) == 41

        late = pdq[41]
        status, added, _ = request(
            api + "/v1/signals/batch",
            token,
            {"collection": "csam", "signals": [{"type": "pdq", "value": late}]},
        )
        assert status == 200, added

        # `hashmesh match` against the loading node waits for the index, then answers: it
        # is seen retrying (503s counted by the node) before the load is let go.
        refused = loading_refusals(api, token)
        waiting = subprocess.Popen(
            [HASHMESH, "--home", str(path), "match", "pdq", late, "--json"],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 20
        while loading_refusals(api, token) < refused + 2:
            assert waiting.poll() is None, waiting.communicate()
            assert time.monotonic() < deadline, "hashmesh match did not retry"
            time.sleep(0.05)
        fcntl.flock(fd, fcntl.LOCK_UN)
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert json.loads(out)["matched"] is True

        status, health, _ = request(api + "/healthz")
        assert health == {"ok": True, "pdq_ready": True}
        both = {"queries": [{"type": "pdq", "value": v} for v in (pdq[0], late)], "threshold": 31}
        status, answer, _ = request(api + "/v1/match", token, both)
        assert status == 200 and all(r["matches"] for r in answer["results"])
        assert (index_dir / "manifest.json").is_file()
    finally:
        os.close(fd)
        assert run.stop() == 0, run.log()
