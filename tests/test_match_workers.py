"""Matcher worker processes (match_workers = N): real node processes, real HTTP.

The same data answered by a node matching in its own process (workers 0) and by its two
workers at the match address; an add and a revocation published on the node reach the
workers; a worker killed with SIGKILL is restarted and answers again; a revoked token is
refused by the workers; /healthz shows the freshness.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import HomeFactory, NodeFactory, NodeProcess, set_config
from testdata import PDQ

from hashmesh.node.config import Home
from hashmesh.node.errors import HomeError
from hashmesh.testing import read_runtime

NEEDLES = PDQ / "needles.txt"
DEADLINE_S = 10.0


def pdq_hashes() -> list[str]:
    return [line.strip() for line in NEEDLES.read_text().splitlines() if line.strip()][:60]


def post(url: str, body: Any, token: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def until(what: str, check: Callable[[], Any], timeout: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)


def queries(pdq: list[str], md5: list[str]) -> list[dict[str, str]]:
    near = [v[:-4] + ("0000" if v[-4:] != "0000" else "ffff") for v in pdq[:20]]
    return (
        [{"type": "pdq", "value": v} for v in pdq[:20] + near]
        + [{"type": "md5", "value": v} for v in md5[:20]]
        + [{"type": "md5", "value": "%032x" % random.getrandbits(128)}]
    )


def publish(node: NodeProcess, pdq: list[str], md5: list[str]) -> dict[str, Any]:
    signals = [{"type": "pdq", "value": v} for v in pdq] + [
        {"type": "md5", "value": v} for v in md5
    ]
    result: dict[str, Any] = node.call(
        "POST", "/v1/signals/batch", {"collection": "csam", "signals": signals}
    )
    return result


def test_workers_answer_as_the_node_and_follow_it(
    home: HomeFactory, start_node: NodeFactory
) -> None:
    rng = random.Random(18)
    pdq = pdq_hashes()
    md5 = ["%032x" % rng.getrandbits(128) for _ in range(40)]
    body = {"queries": queries(pdq[:50], md5), "threshold": 31}

    # The reference: the node matching in its own process (workers 0).
    path = home("A")
    alone = start_node(path)
    publish(alone, pdq[:50], md5)
    expected = alone.call("POST", "/v1/match", body)
    assert expected["matched"] and len(expected["results"]) == len(body["queries"])
    assert alone.stop() == 0  # writes the PDQ index checkpoint the workers will map
    assert (path / "index" / "pdq").is_dir()

    set_config(path, match_workers=2)
    node = start_node(path)
    runtime = read_runtime(path)
    assert runtime is not None
    match_url, pids = runtime["match"], runtime["workers"]
    assert len(pids) == 2 and node.proc.pid not in pids
    token = node.token

    def healthy() -> dict[str, Any] | None:
        status, health = get(match_url + "/healthz")
        return health if status == 200 else None

    ready: set[int] = set()

    def all_healthy() -> bool:
        health = healthy()  # each request lands on either worker: see both say 200
        if health is not None:
            assert health["ok"] is True and health["behind"] == 0
            ready.add(health["pid"])
        return ready == set(pids)

    until("both workers healthy", all_healthy)

    def caught_up() -> bool:
        status, answer = post(match_url + "/v1/match", body, token)
        return status == 200 and answer == expected

    for _ in range(6):  # either worker may answer: each must give the node's answer
        assert caught_up()
    # ... and the node forwards its own /v1/match to them, with the same answer.
    assert node.call("POST", "/v1/match", body) == expected

    # An add on the node becomes matchable on the workers, a revocation stops it.
    fresh = pdq[55]
    one = {"queries": [{"type": "pdq", "value": fresh}], "threshold": 0}

    def matched(expect: bool) -> Callable[[], bool]:
        def check() -> bool:
            # Each request may land on either worker: ask a few times.
            answers = [post(match_url + "/v1/match", one, token) for _ in range(4)]
            return all(s == 200 and a["matched"] is expect for s, a in answers)

        return check

    assert post(match_url + "/v1/match", one, token)[1]["matched"] is False
    added = node.call("POST", "/v1/signals", {"type": "pdq", "value": fresh, "collection": "csam"})
    until("an add matchable on the workers", matched(True))
    node.call("POST", "/v1/revoke", {"op_id": added["op_id"], "reason": "test"})
    until("a revocation applied on the workers", matched(False))

    # A token made on the node works on the workers; revoked, it is refused there.
    made = node.call("POST", "/v1/admin/tokens", {"name": "platform", "scopes": ["match"]})
    until(
        "a new token accepted", lambda: post(match_url + "/v1/match", one, made["token"])[0] == 200
    )
    node.call("DELETE", "/v1/admin/tokens/platform")
    until(
        "a revoked token refused",
        lambda: post(match_url + "/v1/match", one, made["token"])[0] == 401,
    )

    # kill -9 one worker: it is restarted (a new pid in node.json) and answers again.
    victim = pids[0]
    os.kill(victim, signal.SIGKILL)

    def replaced() -> list[int] | None:
        now = (read_runtime(path) or {}).get("workers", [])
        return now if len(now) == 2 and victim not in now else None

    now = until("a killed worker restarted", replaced, timeout=15)
    assert pids[1] in now
    pids, ready = now, set()
    until("both workers healthy again", all_healthy)
    assert all(caught_up() for _ in range(6))
    health = healthy()
    assert health is not None and {"cursor", "head", "behind", "stale_s"} <= set(health)


def test_workers_exit_when_their_node_dies(home: HomeFactory, start_node: NodeFactory) -> None:
    """kill -9 of the node leaves no orphan matcher answering from a database nobody
    updates: each worker sees its parent change and exits."""
    path = home("B")
    set_config(path, match_workers=1)
    node = start_node(path)
    runtime = read_runtime(path)
    assert runtime is not None
    (pid,) = runtime["workers"]
    status, answer = post(
        runtime["match"] + "/v1/match",
        {"queries": [{"type": "md5", "value": "%032x" % random.getrandbits(128)}]},
        node.token,
    )
    assert status == 200 and answer["matched"] is False
    node.proc.kill()
    node.proc.wait(timeout=10)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie (exited, not yet reaped by init) counts as gone.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] == "Z"

    until("the worker exits after its node", gone)


def test_workers_run_at_the_configured_nice_value(
    home: HomeFactory, start_node: NodeFactory
) -> None:
    """match_worker_nice: the workers' matching yields the CPU to the node that publishes
    and ingests, their feed follower does not (the index keeps up under CPU pressure); the
    node itself keeps its own priority."""
    path = home("N")
    set_config(path, match_workers=1, match_worker_nice=7)
    node = start_node(path)
    runtime = read_runtime(path)
    assert runtime is not None
    (pid,) = runtime["workers"]
    pdq = "%064x" % random.getrandbits(256)
    query = {"queries": [{"type": "md5", "value": "%032x" % random.getrandbits(128)}]}
    for body in (query, {"queries": [{"type": "pdq", "value": pdq}]}):  # a match thread too
        until(
            "the worker answers",
            lambda b=body: post(runtime["match"] + "/v1/match", b, node.token)[0] == 200,
        )
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    threads = {int(tid): thread_nice(pid, int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}
    assert threads[pid] == 7  # the event loop
    # The follower (and the merge thread it starts) keep the node's; the loop and the
    # match thread take 7.
    assert mine in threads.values(), threads
    assert list(threads.values()).count(7) >= 2, threads
    assert os.getpriority(os.PRIO_PROCESS, node.proc.pid) == mine


def thread_nice(pid: int, tid: int) -> int:
    stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def test_the_nice_value_defaults_to_10_and_an_operators_0_is_kept(home: HomeFactory) -> None:
    """0 is the operator's choice against the default: a config that dropped it on save
    would put the workers back at 10 at the next start."""
    path = home("M-default")
    assert Home(path).load_config().match_worker_nice == 10
    for value in (0, 19, 10):
        set_config(path, match_worker_nice=value)
        assert Home(path).load_config().match_worker_nice == value


def test_a_nice_value_outside_0_to_19_is_refused(home: HomeFactory) -> None:
    for bad in (-1, 20):
        path = home(f"M{bad}")
        set_config(path, match_worker_nice=bad)
        with pytest.raises(HomeError, match="match_worker_nice must be 0-19"):
            Home(path).load_config()
