"""The ThreatExchange bridge (issue 21): a privacy group's threat_updates into a
collection, and a platform's opinions back as descriptor reactions.

The upstream is a local fake speaking the Graph API's shape (tests/upstream_fakes.py:
threat_updates pages with `paging.next` cursors, entries in no time order inside a
window, Graph error objects); the bridge drives it through python-threatexchange's
unchanged ThreatExchangeAPI. Node tests run real `hashmesh run` processes; the
checkpoint and publishing tests drive the upstream and the page transaction in-process,
on a real store.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc, NodeSet, wait_for
from upstream_fakes import FakeThreatExchange, TEDescriptor, TEIndicator

from hashmesh.node.bridges import threatexchange as module
from hashmesh.node.bridges.apply import apply_page
from hashmesh.node.bridges.kinds import kind_of
from hashmesh.node.config import Bridge, Home
from hashmesh.node.errors import NodeError
from hashmesh.node.service import NodeService, init_home

pytest.importorskip("threatexchange")

C = "te"
APP = 1234567890  # the bridge's own app (the fake's token)
OTHER = 777000111  # another member's app


def md5(n: int, salt: str = "te") -> str:
    return hashlib.md5(f"{salt}{n}".encode()).hexdigest()


def pdq(n: int) -> str:
    return hashlib.sha256(f"te-pdq{n}".encode()).hexdigest()


def ind(
    n: int, kind: str, value: str, ts: int, *descriptors: TEDescriptor, deleted: bool = False
) -> TEIndicator:
    if not descriptors and not deleted:
        descriptors = (TEDescriptor(f"{n}01", OTHER, tags=["csam"]),)
    return TEIndicator(str(n), kind, value, ts, list(descriptors), deleted)


@pytest.fixture
def te() -> Iterator[FakeThreatExchange]:
    fake = FakeThreatExchange()
    fake.start()
    yield fake
    fake.stop()


def _service(tmp_path: Path) -> NodeService:
    init_home(tmp_path / "h", "h", "127.0.0.1:0", None)
    return NodeService(Home(tmp_path / "h"))


def _bridge(fake: FakeThreatExchange) -> Bridge:
    return Bridge(
        name="t",
        kind="threatexchange",
        collection=C,
        url=fake.url,
        credentials_env="X",
        privacy_group=str(fake.privacy_group),
    )


def _drain(service: NodeService, bridge: Bridge, upstream: Any, now: int) -> dict[str, Any]:
    while True:
        page = upstream.fetch(service.store.bridges.progress(bridge.name)[0], now)
        apply_page(service, bridge, upstream, page)
        if page.caught_up:
            return service.store.bridges.state(bridge.name) or {}


# -- the checkpoint, in-process --------------------------------------------------------


def test_a_window_is_checkpointed_only_when_drained_and_its_cursor_without_the_token(
    tmp_path: Path, te: FakeThreatExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Updates of a window come in no time order (ThreatExchange issue #1269), so the
    checkpoint names the window and its next cursor until the window is drained; a
    restart (a new client, as after a crash) resumes at the cursor with the window's own
    start_time/stop_time. The access token is never part of the checkpoint."""
    monkeypatch.setattr(module, "PAGE_SIZE", 2)
    service = _service(tmp_path)
    base = int(time.time()) - 10_000
    for n in range(7):
        te.put(ind(100 + n, "HASH_MD5", md5(n), base + n * 100))
    bridge = _bridge(te)
    upstream = kind_of("threatexchange")(bridge, te.token)
    first = upstream.fetch({}, int(time.time()))
    apply_page(service, bridge, upstream, first)
    cp = service.store.bridges.progress("t")[0]
    assert cp["since"] == 0 and cp["until"] >= base + 600 and cp["next"]
    assert te.token not in json.dumps(cp) and "access_token" not in cp["next"]
    assert te.token.split("|")[1] not in (tmp_path / "h" / "hashmesh.db").read_bytes().decode(
        "latin-1"
    )
    newest_first = max(int(e.key) for e in first.entries)
    upstream = kind_of("threatexchange")(bridge, te.token)  # as after a restart
    later: list[int] = []
    while "next" in cp:
        page = upstream.fetch(cp, int(time.time()))
        call = te.update_calls[-1]
        assert "after" in call and call["stop_time"] == te.update_calls[0]["stop_time"]
        later += [int(e.key) for e in page.entries]
        apply_page(service, bridge, upstream, page)
        cp = service.store.bridges.progress("t")[0]
    # the reordering was there: pytx's newest-update-time checkpoint would have skipped
    assert min(later) < newest_first
    assert cp == {"since": first.checkpoint["until"]}
    state = service.store.bridges.state("t") or {}
    assert state["counts"]["added"] == 7 and state["live"] == 7
    assert sorted(v for _, v in service.store.live_signals("md5")) == sorted(
        md5(n) for n in range(7)
    )
    # the next window starts where the last one stopped: nothing seen twice
    te.put(ind(200, "HASH_MD5", md5(50), int(time.time())))
    state = _drain(service, bridge, upstream, int(time.time()) + module.SETTLE_S + 1)
    assert state["counts"]["entries"] == 8 and state["counts"]["skipped"] == {}
    assert te.update_calls[-1]["start_time"] == str(first.checkpoint["until"])


@pytest.mark.parametrize("how", ["stale", "refused"])
def test_a_stale_or_refused_cursor_restarts_its_window_without_duplicates(
    tmp_path: Path, te: FakeThreatExchange, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(module, "PAGE_SIZE", 2)
    service = _service(tmp_path)
    base = int(time.time()) - 10_000
    for n in range(5):
        te.put(ind(100 + n, "HASH_MD5", md5(n), base + n))
    bridge = _bridge(te)
    upstream = kind_of("threatexchange")(bridge, te.token)
    apply_page(service, bridge, upstream, upstream.fetch({}, int(time.time())))
    cp = service.store.bridges.progress("t")[0]
    now = int(time.time())
    if how == "stale":
        now = cp["next_at"] + module.NEXT_VALID_S + 1
    else:
        te.refuse_cursors = True
    calls = len(te.update_calls)
    page = upstream.fetch(cp, now)
    assert "after" not in te.update_calls[-1]  # the window again, from its first page
    assert len(te.update_calls) == calls + (2 if how == "refused" else 1)
    te.refuse_cursors = False
    apply_page(service, bridge, upstream, page)
    while "next" in (cp := service.store.bridges.progress("t")[0]):
        apply_page(service, bridge, upstream, upstream.fetch(cp, now))
    state = service.store.bridges.state("t") or {}
    assert state["counts"]["added"] == 5 and state["counts"]["skipped"] == {"unchanged": 2}
    assert len(list(service.store.live_signals("md5"))) == 5


def test_an_answer_is_read_only_up_to_its_bound(
    tmp_path: Path, te: FakeThreatExchange, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pytx's GETs go through its session (timeout, retries, our bound), not requests.get."""
    from hashmesh.node.bridges import upstream as bounds

    base = int(time.time()) - 1000
    te.put(*(ind(100 + n, "HASH_MD5", md5(n), base + n) for n in range(50)))
    upstream = kind_of("threatexchange")(_bridge(te), te.token)
    monkeypatch.setattr(bounds, "MAX_RESPONSE_BYTES", 4096)
    with pytest.raises(bounds.UpstreamTooLarge, match="4,096"):
        upstream.fetch({}, int(time.time()))
    monkeypatch.setattr(bounds, "MAX_RESPONSE_BYTES", 1 << 20)
    assert len(upstream.fetch({}, int(time.time())).entries) == 50


# -- what is published and revoked, in-process ------------------------------------------


def test_types_opinions_tags_and_deletions_follow_the_threat_updates(
    tmp_path: Path, te: FakeThreatExchange
) -> None:
    service = _service(tmp_path)
    bridge = _bridge(te)
    upstream = kind_of("threatexchange")(bridge, te.token)
    t = int(time.time()) - 1000
    te.put(
        ind(1, "HASH_PDQ", pdq(1), t),
        ind(2, "HASH_MD5", md5(2), t),
        ind(3, "HASH_VIDEO_MD5", md5(3), t, TEDescriptor("301", OTHER, "SUSPICIOUS", ["x"])),
        ind(4, "HASH_SHA256", "ab" * 32, t),
        ind(5, "DEBUG_STRING", pdq(5), t, TEDescriptor("501", OTHER, tags=["signal_type:pdq"])),
        ind(6, "URI", "https://example.com/x", t),
        ind(7, "HASH_MD5", md5(7), t, TEDescriptor("701", OTHER, "NON_MALICIOUS")),
        ind(8, "HASH_MD5", md5(8), t, TEDescriptor("801", OTHER, owner_visible=False)),
        ind(9, "HASH_MD5", md5(9), t, deleted=True),
        ind(10, "DEBUG_STRING", "hello", t, TEDescriptor("1001", OTHER, tags=["note"])),
    )
    state = _drain(service, bridge, upstream, int(time.time()))
    assert state["counts"]["added"] == 5 and state["live"] == 5
    assert state["counts"]["skipped"] == {
        "unsupported type URI": 1,
        "every opinion NON_MALICIOUS": 1,
        "deletion of an entry never received": 2,  # the tombstone, the invisible owner
        "DEBUG_STRING without a signal_type: tag": 1,
    }
    live = {(ty, v) for ty, v in _live(service)}
    assert live == {("pdq", pdq(1)), ("md5", md5(2)), ("md5", md5(3)), ("sha256", "ab" * 32),
                    ("pdq", pdq(5))}  # fmt: skip
    hit = service.store.bridges.items_of("t", ["1"])["1"][0]
    assert hit.detail["labels"] == [
        "threatexchange",
        None,
        f"threatexchange:url:{te.privacy_group}:1",
    ]
    assert hit.detail["descriptors"] == [
        {"id": "101", "owner": str(OTHER), "status": "MALICIOUS",
         "review_status": "REVIEWED_MANUALLY", "tags": ["csam"]}
    ]  # fmt: skip
    # incremental: a signal_type tag removed, an indicator deleted, every opinion turned
    # NON_MALICIOUS, and a second member's descriptor on one (unchanged, provenance follows)
    t2 = int(time.time())  # an update's time is when it happened: after the last window
    te.put(
        ind(5, "DEBUG_STRING", pdq(5), t2, TEDescriptor("501", OTHER, tags=["other"])),
        ind(1, "HASH_PDQ", pdq(1), t2, TEDescriptor("101", OTHER, "NON_MALICIOUS", ["csam"])),
        ind(3, "HASH_VIDEO_MD5", md5(3), t2, TEDescriptor("301", OTHER, "SUSPICIOUS", ["x"]),
            TEDescriptor("302", 555000, "MALICIOUS", ["y"])),
        ind(7, "HASH_MD5", md5(7), t2, TEDescriptor("701", OTHER, "MALICIOUS")),  # now it is
    )  # fmt: skip
    te.delete("2", t2)
    state = _drain(service, bridge, upstream, t2 + module.SETTLE_S + 1)
    assert state["counts"]["revoked"] == 3 and state["counts"]["added"] == 6
    assert {(ty, v) for ty, v in _live(service)} == {
        ("md5", md5(3)), ("sha256", "ab" * 32), ("md5", md5(7))
    }  # fmt: skip
    assert state["counts"]["skipped"]["unchanged"] == 1
    three = service.store.bridges.items_of("t", ["3"])["3"][0]
    assert [d["id"] for d in three.detail["descriptors"]] == ["301", "302"]


def _live(service: NodeService) -> list[tuple[str, str]]:
    return [(ty, v) for ty in ("md5", "pdq", "sha256") for _, v in service.store.live_signals(ty)]


def test_bridge_add_checks_the_token_and_the_privacy_group(
    tmp_path: Path, te: FakeThreatExchange
) -> None:
    from hashmesh.node.bridges.manage import add_bridge

    _service(tmp_path).close()
    home = Home(tmp_path / "h")
    bad = tmp_path / "bad.token"
    bad.write_text("not-a-token\n")
    os.chmod(bad, 0o600)
    good = tmp_path / "tx.token"
    good.write_text(te.token + "\n")
    os.chmod(good, 0o600)
    with pytest.raises(NodeError, match=r"APP_ID\|APP_SECRET"):
        add_bridge(home, "t", "threatexchange", C, str(bad), privacy_group="12")
    with pytest.raises(NodeError, match="1-20 digits"):
        add_bridge(home, "t", "threatexchange", C, str(good), privacy_group="12a")
    with pytest.raises(NodeError, match="needs --privacy-group"):
        add_bridge(home, "t", "threatexchange", C, str(good))
    assert home.load_config().bridges == []
    shown = add_bridge(home, "t", "threatexchange", C, str(good), privacy_group="12")
    assert shown["privacy_group"] == "12" and shown["environment"] == "production"
    assert te.token not in (home.path / "config.toml").read_text()
    assert home.load_config().bridges[0].privacy_group == "12"


def test_a_reaction_goes_to_the_other_members_descriptors_and_graph_errors_are_read(
    tmp_path: Path, te: FakeThreatExchange
) -> None:
    from hashmesh.node.bridges.upstream import UpstreamRefused
    from hashmesh.node.store.bridges import Item

    te.put(ind(1, "HASH_MD5", md5(1), 1, TEDescriptor("101", OTHER), TEDescriptor("102", APP)))
    upstream = kind_of("threatexchange")(_bridge(te), te.token)

    def item(*descriptors: tuple[str, int]) -> Item:
        found = [{"id": d, "owner": str(o)} for d, o in descriptors]
        return Item(
            "1", "HASH_MD5", "md5", md5(1), "x", {"indicator_id": "1", "descriptors": found}
        )

    sent = upstream.send_feedback(item(("101", OTHER), ("102", APP)), "dispute", "fp")
    assert sent == {"indicator_id": "1", "reaction": "DISAGREE_WITH_TAGS", "descriptors": ["101"]}
    assert te.reactions == [{"descriptor": "101", "reaction": "DISAGREE_WITH_TAGS"}]
    with pytest.raises(UpstreamRefused, match="this app's own"):
        upstream.send_feedback(item(("102", APP)), "confirm", None)
    with pytest.raises(UpstreamRefused, match="error 100"):  # no such descriptor: for good
        upstream.send_feedback(item(("999", OTHER)), "confirm", None)
    module_check = module._check_answer
    with pytest.raises(RuntimeError, match="error 17") as raised:  # throttled: retried later
        module_check([None, None, {"error": {"code": 17, "message": "User request limit"}}])
    assert not isinstance(raised.value, UpstreamRefused)
    assert len(te.reactions) == 1


# -- through a running node ------------------------------------------------------------


def add_te_bridge(node: NodeProc, fake: FakeThreatExchange, tmp: Path, *extra: str) -> None:
    creds = tmp / "tx.token"
    creds.write_text(fake.token + "\n")
    os.chmod(creds, 0o600)
    node.cli(
        "bridge", "add", "tx", "--kind", "threatexchange", "--collection", C, "--url", fake.url,
        "--privacy-group", str(fake.privacy_group), "--credentials-file", str(creds),
        "--interval", "1", *extra,
    )  # fmt: skip


def show(node: NodeProc) -> Any:
    return node.json("bridge", "show", "tx")


def drained_after(node: NodeProc, ts: int, timeout: float = 60) -> Any:
    """The positive witness: a window drained past `ts` (an upstream change's time)."""

    def done() -> Any:
        shown = show(node)
        cp = shown["checkpoint"]
        return shown if "next" not in cp and cp.get("since", 0) > ts else None

    return wait_for(done, timeout=timeout, step=0.3)


@pytest.mark.slow  # > 20 s on the shared 2-core machine
def test_an_outage_shows_then_the_fill_and_a_deletion_go_through(
    nodes: NodeSet, te: FakeThreatExchange, tmp_path: Path
) -> None:
    now = int(time.time())
    te.put(ind(1, "HASH_PDQ", pdq(1), now - 60), ind(2, "HASH_MD5", md5(2), now - 50))
    te.down = 503
    (b,) = nodes.make("bridge")
    add_te_bridge(b, te, tmp_path, "--timeout", "5")
    b.start()
    wait_for(lambda: show(b)["failures"] >= 2, timeout=60, step=0.5)
    calls = te.failed_calls  # read first: every try it counts is in the failures after
    shown = show(b)
    assert not shown["healthy"] and "503" in shown["last_error"]
    secret = te.token.split("|")[1]  # in every URL the client calls: never in what is kept
    assert secret not in json.dumps(shown) and secret not in json.dumps(b.status())
    assert calls <= 5 * (shown["failures"] + 1)  # a try is the client's 5 calls: bounded
    te.down, te.delay_s = None, 7.0  # a timeout is a failure too
    wait_for(lambda: "no answer within 5 s" in (show(b)["last_error"] or ""), timeout=60,
             step=0.5)  # fmt: skip
    te.delay_s = 0.0
    wait_for(lambda: show(b)["counts"]["added"] >= 2, timeout=90, step=0.3)
    assert show(b)["healthy"] and b.matches("pdq", pdq(1)) and b.matches("md5", md5(2))
    hit = b.json("match", "md5", md5(2))["results"][0]["matches"][0]
    assert hit["ref"] == f"threatexchange:url:{te.privacy_group}:2"
    since = int(time.time())
    te.delete("2", since)
    shown = drained_after(b, since)
    assert shown["counts"]["revoked"] == 1 and not b.matches("md5", md5(2))
    assert b.matches("pdq", pdq(1))
    assert b.stop() == 0
    assert secret not in (b.home / "run.log").read_text()


@pytest.mark.slow
def test_sigkill_during_a_fill_resumes_with_no_duplicates_and_nothing_missed(
    nodes: NodeSet, te: FakeThreatExchange, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    te.page_size_cap = 40  # the API's own limit on a page: many pages, many instants
    base = int(time.time()) - 100_000
    total = 4000
    te.put(*(ind(10_000 + n, "HASH_MD5", md5(n), base + n) for n in range(total)))
    gone = set(range(0, total, 9))
    for n in gone:  # deleted before the bridge saw them: tombstones, never published
        te.delete(str(10_000 + n), base + n)
    (b,) = nodes.make("bridge")
    add_te_bridge(b, te, tmp_path)
    db = b.home / "hashmesh.db"
    seen = 0
    late: set[int] = set()
    for round_ in range(3):
        b.start()

        def some_pages(before: int = seen) -> Any:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                row = conn.execute(
                    "SELECT json_extract(counts, '$.pages') FROM bridge_state"
                ).fetchone()
            return row[0] if row and row[0] and row[0] >= before + 5 else None

        seen = wait_for(some_pages, timeout=60, step=0.05)
        assert b.run is not None
        os.kill(b.run.proc.pid, signal.SIGKILL)
        b.run.proc.wait(10)
        b.run = None
        if round_ == 1:  # deletions of published indicators while the bridge is down
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                have = {v for (v,) in conn.execute("SELECT value FROM signals")}
            late = {n for n in range(total) if n not in gone and md5(n) in have}
            late = set(sorted(late)[:30])
            for n in late:
                te.delete(str(10_000 + n), int(time.time()))
    since = int(time.time())
    b.start()
    shown = drained_after(b, since, timeout=180)
    live = total - len(gone) - len(late)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT s.value, s.revoked_by IS NULL FROM signals s JOIN logs l ON l.id = s.log_id"
            " WHERE l.author = ? AND l.collection = ?",
            (b.node_id, C),
        ).fetchall()
    values = [v for v, _ in rows]
    assert len(values) == len(set(values)) == live + len(late)  # each published once
    assert sum(is_live for _, is_live in rows) == live
    assert shown["live"] == live and shown["counts"]["revoked"] == len(late)
    assert b.matches("md5", md5(1)) and not b.matches("md5", md5(9))
    assert not any(b.matches("md5", md5(n)) for n in sorted(late)[:5])
    assert b.stop() == 0


@pytest.mark.slow  # > 20 s on the shared 2-core machine
def test_an_operators_opinions_reach_threatexchange_once_each(
    nodes: NodeSet, te: FakeThreatExchange, tmp_path: Path
) -> None:
    now = int(time.time())
    te.put(
        ind(1, "HASH_PDQ", pdq(1), now - 60, TEDescriptor("101", OTHER),
            TEDescriptor("102", APP)),  # our own app's descriptor: no reaction on it
        ind(2, "HASH_MD5", md5(2), now - 60, TEDescriptor("201", OTHER),
            TEDescriptor("202", 555000)),
        ind(3, "HASH_MD5", md5(3), now - 60, TEDescriptor("301", APP)),
    )  # fmt: skip
    (b,) = nodes.make("bridge")
    add_te_bridge(b, te, tmp_path)
    b.start()
    wait_for(lambda: show(b)["counts"]["added"] >= 3, timeout=60, step=0.3)

    def op(signal_type: str, value: str) -> str:
        hits = b.json("match", signal_type, value)["results"][0]["matches"]
        return str(next(h["op_id"] for h in hits if h["live"]))

    p1, m2, m3 = op("pdq", pdq(1)), op("md5", md5(2)), op("md5", md5(3))
    b.cli("opinion", p1, "dispute", "--reason", "false-positive")
    b.cli("opinion", m2, "confirm")
    b.cli("opinion", m3, "confirm")  # only our own descriptor: refused, nothing sent
    wait_for(lambda: len(te.reactions) >= 3, timeout=60)
    b.cli("opinion", p1, "dispute", "--reason", "false-positive")  # the same again
    b.cli("opinion", m2, "retract")
    b.cli("opinion", m2, "confirm")

    def settled() -> Any:
        shown = show(b)
        return shown if sum(shown["feedback"].values()) == 3 and "queued" not in shown[
            "feedback"] else None  # fmt: skip

    shown = wait_for(settled, timeout=60)
    # the witness: a later opinion reaches the upstream after everything before it
    te.put(ind(4, "HASH_MD5", md5(4), int(time.time()), TEDescriptor("401", OTHER)))
    wait_for(lambda: show(b)["counts"]["added"] >= 4, timeout=60, step=0.3)
    b.cli("opinion", op("md5", md5(4)), "confirm")
    wait_for(lambda: any(r["descriptor"] == "401" for r in te.reactions), timeout=60)
    assert sorted((r["descriptor"], r["reaction"]) for r in te.reactions) == [
        ("101", "DISAGREE_WITH_TAGS"), ("201", "HELPFUL"), ("202", "HELPFUL"),
        ("401", "HELPFUL"),
    ]  # fmt: skip
    shown = show(b)
    assert shown["feedback"] == {"sent": 3, "refused": 1}
    sent = {(f["target"], f["verdict"]): f for f in shown["recent_feedback"]}
    assert sent[(p1, "dispute")]["sent"] == {
        "indicator_id": "1", "reaction": "DISAGREE_WITH_TAGS", "descriptors": ["101"]
    }  # fmt: skip
    assert "this app's own" in sent[(m3, "confirm")]["error"]
    assert b.stop() == 0
