"""The operator's status page (rendered in headless Chromium), /metrics and /healthz."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from netnodes import NodeProc, wait_for

MD5 = "%032x"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProc, NodeProc]]:
    root = tmp_path_factory.mktemp("status")
    a, b = NodeProc(root, "ncmec"), NodeProc(root, "childfocus")
    a.peer(b, "csam")
    b.peer(a, "csam", "ncii")
    a.trust(b, "csam")  # and not in ncii: b's ncii batches are refused, and shown
    a.start()
    b.start()
    yield a, b
    a.kill()
    b.kill()


def scrape(node: NodeProc) -> str:
    request = urllib.request.Request(
        node.url + "/metrics", headers={"Authorization": f"Bearer {node.admin_token()}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_change_when_traffic_flows(pair: tuple[NodeProc, NodeProc]) -> None:
    a, b = pair
    before = scrape(a)
    b.cli("add", "md5", MD5 % 1, "-c", "csam")
    wait_for(lambda: a.matches("md5", MD5 % 1))
    after = scrape(a)
    key = 'hashmesh_batches_ingested_total{outcome="applied",source="peer"}'
    assert metric(after, key) >= metric(before, key) + 1
    assert metric(after, 'hashmesh_ops_applied_total{kind="add"}') >= 1
    assert metric(after, "hashmesh_match_requests_total") > metric(
        before, "hashmesh_match_requests_total"
    )
    assert metric(after, 'hashmesh_live_signals{collection="csam"}') >= 1
    wait_for(lambda: 'hashmesh_peer_reachable{peer="childfocus"} 1.0' in scrape(a))
    assert "hashmesh_match_latency_seconds_bucket" in after


def test_metrics_and_status_data_need_the_token(pair: tuple[NodeProc, NodeProc]) -> None:
    a, _ = pair
    for path in ("/metrics", "/v1/status/history", "/v1/status/recent"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(a.url + path, timeout=5)
        assert info.value.code == 401
    with urllib.request.urlopen(a.url + "/healthz", timeout=5) as response:
        assert response.status == 200


def _script_sources(policy: str) -> list[str]:
    """The sources scripts may come from (script-src, else default-src)."""
    directives: dict[str, list[str]] = {}
    for directive in policy.split(";"):
        name, *sources = directive.split() or [""]
        directives[name.lower()] = sources
    return directives.get("script-src", directives.get("default-src", []))


def test_status_page_runs_no_inline_script(pair: tuple[NodeProc, NodeProc]) -> None:
    """Peer names and hashes on the page come from other nodes: an injected <script> or
    handler must not run, so the policy allows only the node's own script file."""
    a, _ = pair
    with urllib.request.urlopen(a.url + "/status", timeout=10) as response:
        policy = response.headers["Content-Security-Policy"]
        html = response.read().decode()
    assert policy and "'unsafe-inline'" not in _script_sources(policy)
    assert _script_sources(policy) == ["'self'"]
    for meta in re.findall(r'http-equiv="Content-Security-Policy" content="([^"]*)"', html):
        assert _script_sources(meta) == ["'self'"]
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S | re.I)
    assert scripts and all("src=" in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html, re.I)  # no inline event handlers
    (src,) = re.findall(r'<script[^>]*\ssrc="([^"]+)"', html)
    with urllib.request.urlopen(a.url + src, timeout=10) as response:  # no token needed
        assert response.headers["Content-Type"].startswith("text/javascript")
        assert "'unsafe-inline'" not in _script_sources(response.headers["Content-Security-Policy"])
        assert b"sessionStorage" in response.read()


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("HASHMESH_REQUIRE_BROWSER"),
    reason="no chromium here (CI installs it and sets HASHMESH_REQUIRE_BROWSER=1)",
)
def test_status_page_renders_in_headless_chromium(
    pair: tuple[NodeProc, NodeProc], tmp_path: Path
) -> None:
    assert CHROMIUM, "chromium is required (HASHMESH_REQUIRE_BROWSER is set)"
    a, b = pair
    b.cli("add", "md5", MD5 % 2, "-c", "csam")
    b.cli("add", "md5", MD5 % 3, "-c", "ncii")
    wait_for(lambda: a.matches("md5", MD5 % 2))
    wait_for(lambda: a.status()["refusals"])
    url = f"{a.url}/status#token={a.admin_token()}"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=8000",
    ]
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    page = dom.split("<script", 1)[0]  # what was rendered, not the script's source
    assert "hashmesh node ncmec" in page
    assert a.node_id in page
    main = page.split("<main", 1)[1]
    assert 'id="content">' in page.split("<main", 1)[1][:40]  # shown, not hidden
    assert "childfocus" in main and ">reachable<" in main  # the peer table
    assert "FORKED" not in main and "None: every log held is a single history." in main
    assert (MD5 % 2)[:16] in main  # recent changes
    refused = main.split('id="refusals"', 1)[1].split("</table>", 1)[0]
    assert f"hashmesh trust add {b.node_id} ncii" in refused  # the fix, on the page
    assert ">childfocus<" in refused and ">ncii<" in refused
    trusted = main.split('id="trust"', 1)[1].split("</table>", 1)[0]
    assert f">{b.node_id}<" in trusted and ">csam<" in trusted
    assert "<rect" in main  # the chart drew bars of sync traffic
    shot = tmp_path / "status.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,1400", url],
        capture_output=True,
        timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 10_000


@pytest.mark.slow  # ~40 s: a node and a headless Chromium on the shared machine
@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("HASHMESH_REQUIRE_BROWSER"),
    reason="no chromium here (CI installs it and sets HASHMESH_REQUIRE_BROWSER=1)",
)
def test_status_page_shows_what_holds_hits_back(tmp_path: Path) -> None:
    """Issue 19: every suppression is explained on the status page too. What a held-back
    hit's reasons point at is drawn there: each collection's policy in words, each signal
    under quarantine with its reason and the op id to lift it, and the degenerate hashes
    each other author sent."""
    from conftest import author_key, chain, write_bundle

    assert CHROMIUM, "chromium is required (HASHMESH_REQUIRE_BROWSER is set)"
    node = NodeProc(tmp_path, "platform")
    elsewhere = author_key(7)
    node.cli("trust", "add", elsewhere.node_id, "csam", "--name", "elsewhere")
    flat = "0" * 64  # a flat picture's PDQ: another implementation signed it
    ops = [{"op": "add", "type": "pdq", "value": flat, "quality": 100, "category": "csam"}]
    node.cli(
        "import", str(write_bundle(tmp_path / "e.hmb", chain(elsewhere, "csam", [ops]), "csam"))
    )
    node.cli("policy", "set", "benign", "--negative", "--threshold", "8")
    node.cli("policy", "set", "csam", "--quorum", "2", "--quorum-by", "org", "--min-quality", "70")
    [held] = node.json("quarantine", "list")["quarantine"]
    node.start()
    try:
        url = f"{node.url}/status#token={node.admin_token()}"
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=8000",
        ]
        dom = subprocess.run(
            [CHROMIUM, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
        ).stdout
        main = dom.split("<script", 1)[0].split("<main", 1)[1]
        policy = main.split('id="policy"', 1)[1].split("</table>", 1)[0]
        assert ">benign<" in policy
        assert "never matches; suppresses the same signal elsewhere (PDQ within 8)" in policy
        assert ">csam<" in policy
        assert "quality under 70; fewer than 2 organisations list it" in policy
        quarantine = main.split('id="quarantine"', 1)[1].split("</table>", 1)[0]
        assert f">{held['op_id']}<" in quarantine and ">elsewhere<" in quarantine
        assert held["reason"].startswith("degenerate hash from another node: ")
        assert held["reason"] in quarantine.replace("&gt;", ">").replace("&lt;", "<")
        assert "Degenerate hashes other nodes sent" in main and "elsewhere 1" in main
    finally:
        assert node.stop() == 0
