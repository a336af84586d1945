"""Errors by fault (hashmesh/node/errors.py): the caller's input is a 400 naming the field
and exit 2; our own bug is a 500 with a logged traceback and exit 70, never "your input
was bad"; a peer's bad data is scored and shown as that peer's.

Real nodes, a real database made corrupt with sqlite3 the way a bad disk or a bad restore
would, and a scripted peer on 127.0.0.1 whose answers are validly signed.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import Cli, HomeFactory
from hostile_peer import HostilePeer, ScriptedServer
from netnodes import NodeProc, wait_for

from hashmesh.node import errors
from hashmesh.node.config import Home, Peer
from hashmesh.node.errors import (
    EXIT_CALLER,
    EXIT_INTERNAL,
    FAULTS,
    INTERNAL_MESSAGE,
    NodeError,
    PeerError,
    caller_input,
    fault_of,
)
from hashmesh.protocol.errors import EncodingError, ProtocolError, ProtocolUsageError

MD5 = "5d41402abc4b2a76b9719d911017c592"
OTHER_MD5 = "7d793037a0760186574b0282f2f435e7"
MAX_SAFE_INT = 2**53 - 1


def test_every_node_error_class_has_its_own_row() -> None:
    """The table is the one source of statuses: a class without a row would silently take
    its parent's, as selfreport's duplicate TooMany once did."""
    classes = [
        c
        for c in vars(errors).values()
        if isinstance(c, type) and issubclass(c, errors.HashmeshError)
    ]
    assert len(classes) > 10
    for cls in classes:
        if cls is not errors.HashmeshError:
            assert cls in FAULTS, cls
    assert {FAULTS[c].family for c in classes if c is not errors.HashmeshError} == {
        "caller",
        "peer",
        "operator",
        "internal",
    }
    for cls in classes:
        if cls is not errors.HashmeshError and issubclass(cls, NodeError):
            assert FAULTS[cls].exit_code == EXIT_CALLER, cls
    # What only this node's log may say (a path, a bug) is never told to a remote caller.
    assert {f.family for f in FAULTS.values() if f.private} == {"operator", "internal"}


def test_faults_by_family() -> None:
    assert fault_of(errors.NotFound("x")).status == 404
    assert errors.Conflict("x").status == 409
    assert fault_of(PeerError("x", "bad_page")).family == "peer"
    internal = [ProtocolError("x"), ProtocolUsageError("x"), KeyError("x"), errors.InternalError()]
    for exc in internal:
        assert (fault_of(exc).family, fault_of(exc).status) == ("internal", 500), exc
        assert fault_of(exc).exit_code == EXIT_INTERNAL
    with pytest.raises(NodeError, match=r"^collection: JSON: bad$"), caller_input("collection"):
        raise EncodingError("JSON: bad")


def test_a_retry_later_refusal_says_when() -> None:
    refusal = errors.TooManyRequests.waiting("too many requests from your network", 300)
    assert (refusal.status, refusal.retry_after_s) == (429, 300)
    assert str(refusal).endswith("please try again in 5 minutes")


# -- an internal error: a corrupt row of the node's own database ------------------------


def _corrupt_head(home: Path) -> None:
    """The log's head one below the largest integer a batch header may carry: the next
    batch this node signs would be seq 2**53, which the protocol refuses to encode."""
    conn = sqlite3.connect(home / "hashmesh.db")
    with conn:
        changed = conn.execute("UPDATE logs SET head = ?", (MAX_SAFE_INT,)).rowcount
    conn.close()
    assert changed == 1


def _post(node: NodeProc, path: str, body: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(
        node.url + path,
        method="POST",
        data=json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {node.admin_token()}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


def test_a_corrupt_stored_row_is_a_500_with_a_trace_not_the_callers_fault(
    tmp_path: Path,
) -> None:
    node = NodeProc(tmp_path, "A")
    node.cli("add", "md5", MD5, "-c", "csam")
    _corrupt_head(node.home)
    node.start()
    try:
        status, body, _ = _post(
            node, "/v1/signals", {"type": "md5", "value": OTHER_MD5, "collection": "csam"}
        )
        assert (status, body) == (500, {"error": INTERNAL_MESSAGE})
        log = (node.home / "run.log").read_text(errors="replace")
        assert "internal error on POST /v1/signals" in log
        assert "Traceback" in log and "EncodingError" in log
        # The caller's own bad input is still the caller's: 400, the field named.
        status, body, _ = _post(
            node, "/v1/signals", {"type": "md5", "value": "xyz", "collection": "csam"}
        )
        assert status == 400 and body["error"].startswith("md5 value: "), body
        status, body, _ = _post(
            node, "/v1/signals", {"type": "md5", "value": MD5, "collection": "no such/name"}
        )
        assert status == 400 and "collection" in body["error"], body
        # The CLI through the running node: internal error, exit 70, not a refusal.
        result = node.cli("add", "md5", OTHER_MD5, "-c", "csam", check=False)
        assert result.returncode == EXIT_INTERNAL, result
        assert result.stderr.startswith("hashmesh: internal error: the running node failed")
        # Nothing was published by the failed attempts.
        assert [s["live"] for s in node.status()["logs"]] == [1]
    finally:
        node.kill()


def test_a_broken_config_on_a_running_node_is_logged_not_told_to_the_caller(
    tmp_path: Path,
) -> None:
    """A hand edit that breaks config.toml is the operator's fault, not the HTTP caller's
    and not a bug: the caller gets the generic 500 (no path of the node's), the log says
    what is wrong at ERROR, and the node answers again once the file is fixed."""
    node = NodeProc(tmp_path, "A")
    node.start()
    config = node.home / "config.toml"
    good = config.read_text()
    request = urllib.request.Request(
        f"{node.url}/v1/admin/peers",
        headers={"Authorization": f"Bearer {node.admin_token()}"},
    )

    def get() -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        assert get() == (200, {"peers": []})
        config.write_text(good + "\n[[[ not toml\n")
        assert get() == (500, {"error": INTERNAL_MESSAGE})
        log = (node.home / "run.log").read_text(errors="replace")
        line = next(x for x in log.splitlines() if "operator error on GET /v1/admin/peers" in x)
        assert "ERROR" in line, line
        assert "not valid TOML" in log
        config.write_text(good)
        assert get() == (200, {"peers": []})
    finally:
        node.kill()


def test_the_cli_offline_says_internal_error_and_exit_70(cli: Cli, home: HomeFactory) -> None:
    target = home("A")
    cli("add", "md5", MD5, "-c", "csam", home=target)
    _corrupt_head(target)
    result = cli("add", "md5", OTHER_MD5, "-c", "csam", home=target, expect=EXIT_INTERNAL)
    assert result.stderr.startswith("hashmesh: internal error: EncodingError: JSON: integer")
    assert "not in your input" in result.stderr and "HASHMESH_TRACEBACK=1" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    shown = cli(
        "add",
        "md5",
        OTHER_MD5,
        "-c",
        "csam",
        home=target,
        expect=EXIT_INTERNAL,
        env={"HASHMESH_TRACEBACK": "1"},
    )
    assert "Traceback (most recent call last)" in shown.stderr and "build_batch" in shown.stderr
    # A refusal of the caller's input keeps its exit code 2 and its one sentence.
    bad = cli("add", "md5", "xyz", "-c", "csam", home=target, expect=EXIT_CALLER)
    assert bad.stderr.startswith("hashmesh: md5 value: "), bad


# -- a peer's bad data: scored, counted and shown as the peer's -------------------------


def _liar(node: NodeProc) -> dict[str, Any]:
    return next(p for p in node.status()["peers"] if p["name"] == "liar")


def test_a_peers_malformed_sync_page_is_scored_and_shown_as_the_peers(tmp_path: Path) -> None:
    """A validly signed 200 whose body is not a sync page: before, the round failed
    unscored, so a peer could answer garbage for ever without being cut off."""
    node = NodeProc(tmp_path, "puller")
    liar = HostilePeer("liar", node, node.node_id)
    # an older peer (no reconcile route), so the node pulls version 1 pages from it
    server = ScriptedServer(
        liar, lambda path: (404, b"") if path == "/v1/peer/reconcile" else (200, b"HMPAGE garbage")
    )
    home = Home(node.home)
    config = home.load_config()
    config.add_peer(Peer(name="liar", url=server.url, node_id=liar.node_id, share=["csam"]))
    home.save_config(config)
    node.start()
    try:
        wait_for(lambda: _liar(node).get("refused", {}).get("bad_page", 0) >= 1)
        state = _liar(node)
        assert state["score"] > 0, state
        assert state["last_error"].startswith("peer liar: sync page: "), state
        text = node.cli("status").stdout
        assert "refused  bad_page" in text and "error    peer liar: sync page: " in text
        log = (node.home / "run.log").read_text(errors="replace")
        assert "peer liar sent bad_page" in log and "Traceback" not in log
    finally:
        node.kill()
        server.close()


def test_the_docs_tables_are_the_fault_table() -> None:
    import re

    docs = Path(__file__).resolve().parent.parent / "docs"
    api = (docs / "api.md").read_text()
    section = api.split("## Errors by fault", 1)[1].split("\n## ", 1)[0]
    rows = {
        cells[0]: cells
        for line in section.splitlines()
        if line.startswith("| ")
        and (cells := [c.strip() for c in line.strip("|").split("|")])[0]
        in ("caller", "peer", "operator", "internal")
    }
    assert set(rows) == {"caller", "peer", "operator", "internal"}
    for family, (_, _, http, exit_code, level) in rows.items():
        faults = {f for f in FAULTS.values() if f.family == family}
        assert {str(f.exit_code) for f in faults} == {exit_code}, family
        assert {f.status for f in faults} == {int(n) for n in re.findall(r"\b[45]\d\d\b", http)}
        assert {logging_name(f.log_level) for f in faults} == {level.split(",")[0]}, family
    operators = (docs / "operators.md").read_text()
    codes = re.findall(r"^\| (\d+) \|", operators.split("## Exit codes", 1)[1], re.M)
    assert codes == ["0", "1", str(EXIT_CALLER), str(errors.EXIT_PEER), str(EXIT_INTERNAL)]
    assert "HASHMESH_TRACEBACK=1" in operators


def logging_name(level: int) -> str:
    import logging

    return logging.getLevelName(level).lower()


def test_the_self_report_pages_429_says_when_to_retry(tmp_path: Path) -> None:
    """The self-report page's refusals are the one TooManyRequests (its duplicate TooMany is
    gone): the person reads minutes, a client reads Retry-After in seconds."""
    from test_selfreport import configure

    node = NodeProc(tmp_path, "hotline")
    configure(node, enabled=True, submits_per_hour=1, client_ip_header="X-Forwarded-For")
    node.start()
    try:
        answers = []
        for _ in range(10):  # challenges: a few per allowed submission
            request = urllib.request.Request(
                node.url + "/takeitdown/api/challenge", headers={"X-Forwarded-For": "192.0.2.7"}
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    answers.append((response.status, dict(response.headers), b""))
            except urllib.error.HTTPError as exc:
                answers.append((exc.code, dict(exc.headers), exc.read()))
                break
        status, headers, body = answers[-1]
        assert status == 429, [a[0] for a in answers]
        assert "please try again in" in json.loads(body)["error"]
        assert 1 <= int(headers["Retry-After"]) <= 3600, headers
    finally:
        node.kill()
