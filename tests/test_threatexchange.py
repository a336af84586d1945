"""The python-threatexchange extension, driven through the real `threatexchange` CLI.

A hotline publishes PDQ hashes; a platform node receives them by federation; the
platform's pytx (its own HOME) subscribes to the platform node as an exchange: fetch,
match, a revocation that removes the match after the next fetch, and opinions (a
`threatexchange label` confirm, and a false positive reported through the API's
report_opinion) that reach the author's node as opinion ops.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netnodes import NodeProc, wait_for

pytest.importorskip("threatexchange")

from threatexchange.exchanges.fetch_state import (
    SignalOpinion,
    SignalOpinionCategory,
)
from threatexchange.signal_type.pdq.signal import PdqSignal

from hashmesh.integrations.threatexchange import (
    TX_MANIFEST,
    HashmeshCollabConfig,
    HashmeshCredentials,
    HashmeshSignalExchangeAPI,
)

TX = str(Path(sys.executable).with_name("threatexchange"))
# Three hashes: pytx's PDQ index loses a lone entry when it is saved (faiss multi-hash
# index of size 1), so the test keeps at least two live at every step.
PDQ = [
    "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22",
    "2afc4a5c09628a7961c14d436493bba66b89b831453baa1d556ba385554daa82",
    "9def0b7dafa86a1c90f2abd78e79ceb25ec3d1a4b3d4bc7a4354baf7717ea038",
    "48c8f3228f98785352eeae4a8d3575d8ca21a783799e5f68a2e4ab945d1b18d7",
]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[NodeProc, NodeProc]]:
    hotline = NodeProc(tmp_path, "hotline")
    platform = NodeProc(tmp_path, "platform")
    hotline.peer(platform, "csam")
    platform.peer(hotline, "csam")
    platform.trust(hotline, "csam")
    hotline.trust(platform, "csam")
    for value in PDQ:
        hotline.cli("add", "pdq", value, "-c", "csam", "--category", "csam", "--quality", "90")
    hotline.start()
    platform.start()
    yield hotline, platform
    for n in (platform, hotline):
        assert n.stop() == 0


def tx(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TX_")}
    env["HOME"] = str(home)
    result = subprocess.run([TX, *args], capture_output=True, text=True, env=env, timeout=120)
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def matched(home: Path, value: str) -> bool:
    out = tx(home, "match", "-S", "pdq", "-H", "photo", "--", value).stdout
    return any(line.startswith("pdq ") and "(mesh)" in line for line in out.splitlines())


def opinions_on(node: NodeProc, value: str) -> dict[str, int]:
    result = node.json("match", "pdq", value, "--threshold", "0")
    counts: dict[str, int] = result["results"][0]["matches"][0]["opinions"]
    return counts


def test_manifest_names_the_exchange() -> None:
    assert TX_MANIFEST.apis == (HashmeshSignalExchangeAPI,)
    assert HashmeshSignalExchangeAPI.get_name() == "hashmesh"


def test_threatexchange_cli_subscribes_to_a_node(
    nodes: tuple[NodeProc, NodeProc], tmp_path: Path
) -> None:
    hotline, platform = nodes
    wait_for(lambda: platform.status()["live_signals"] == len(PDQ), timeout=20)
    token = platform.cli(
        "token",
        "create",
        "pytx",
        "--scope",
        "read",
        "--scope",
        "match",
        "--scope",
        "publish",
        "--collection",
        "csam",
    ).stdout.strip()
    home = tmp_path / "txhome"
    home.mkdir()
    secret = home / ".tx_hashmesh_token"
    secret.write_text(token + "\n")
    secret.chmod(0o600)

    added = tx(home, "config", "extensions", "add", "hashmesh.integrations.threatexchange")
    assert "hashmesh" in added.stdout
    tx(home, "config", "collab", "edit", "hashmesh", "mesh", "--create", "--url", platform.url)
    fetched = tx(home, "fetch")
    assert "Up to date" in fetched.stderr
    assert all(matched(home, value) for value in PDQ)
    assert not matched(home, "1" * 64)

    revoked_op = hotline.json("match", "pdq", PDQ[0])["results"][0]["matches"][0]["op_id"]
    hotline.cli("revoke", revoked_op, "--reason", "false positive")
    wait_for(lambda: not platform.matches("pdq", PDQ[0]), timeout=20)
    tx(home, "fetch")
    assert not matched(home, PDQ[0])
    assert all(matched(home, value) for value in PDQ[1:])

    # `threatexchange label` can only report a true positive (pytx 1.2: POSITIVE_CLASS).
    tx(home, "label", "-H", "pdq", "mesh", "photo", "--", PDQ[1])
    wait_for(lambda: opinions_on(hotline, PDQ[1])["confirm"] == 1, timeout=20)

    # A false positive goes through the exchange API's report_opinion: a dispute op.
    api = HashmeshSignalExchangeAPI.for_collab(
        HashmeshCollabConfig(name="mesh", url=platform.url), HashmeshCredentials(token)
    )
    api.report_opinion(
        PdqSignal, PDQ[2], SignalOpinion(True, SignalOpinionCategory.NEGATIVE_CLASS, set())
    )
    wait_for(lambda: opinions_on(hotline, PDQ[2])["dispute"] == 1, timeout=20)
    assert opinions_on(hotline, PDQ[3]) == {"confirm": 0, "dispute": 0, "seen": 0}

    # The fetched state carries the dispute into pytx's own view of the match.
    tx(home, "fetch")
    lines = tx(home, "match", "-S", "pdq", "-H", "photo", "--", PDQ[2]).stdout
    assert "DISPUTED" in lines


def test_fetch_checkpoint_resumes_and_revocation_deletes_only_its_add(
    nodes: tuple[NodeProc, NodeProc],
) -> None:
    hotline, _ = nodes
    token = hotline.admin_token()
    api = HashmeshSignalExchangeAPI.for_collab(
        HashmeshCollabConfig(name="mesh", url=hotline.url), HashmeshCredentials(token)
    )
    deltas = list(api.fetch_iter([PdqSignal], None))
    state: dict[str, object] = {}
    for delta in deltas:
        HashmeshSignalExchangeAPI.naive_fetch_merge(state, delta.updates)  # type: ignore[arg-type]
    assert len(state) == len(PDQ)
    checkpoint = deltas[-1].checkpoint
    assert list(api.fetch_iter([PdqSignal], checkpoint)) == []
    op = hotline.json("match", "pdq", PDQ[3])["results"][0]["matches"][0]["op_id"]
    hotline.cli("revoke", op)
    later = list(api.fetch_iter([PdqSignal], checkpoint))
    assert [d.updates for d in later] == [{op: None}]
    assert later[-1].checkpoint.cursor > checkpoint.cursor
    for delta in later:
        HashmeshSignalExchangeAPI.naive_fetch_merge(state, delta.updates)  # type: ignore[arg-type]
    by_type = HashmeshSignalExchangeAPI.naive_convert_to_signal_type(
        [PdqSignal],
        HashmeshCollabConfig(name="mesh", url=hotline.url),
        state,  # type: ignore[arg-type]
    )
    assert set(by_type[PdqSignal]) == set(PDQ[:3])
