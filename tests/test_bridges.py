"""Bridges (issue 21): NCMEC's and StopNCII's APIs into a collection, and feedback back.

The upstreams are local fake servers speaking each API in its real shape
(tests/upstream_fakes.py); the bridge drives them through python-threatexchange's
unchanged clients. Node tests run real `hashmesh run` processes; the checkpoint-rule tests
drive the NCMEC upstream and the page transaction in-process, on a real store.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc, NodeSet, link, wait_for
from upstream_fakes import FakeNCMEC, FakeStopNCII, NCMECEntry, StopNCIIRecord

from hashmesh.node.bridges.apply import apply_page
from hashmesh.node.bridges.kinds import kind_of
from hashmesh.node.bridges.ncmec import NEXT_VALID_S
from hashmesh.node.config import Bridge, Home
from hashmesh.node.service import NodeService, init_home

C = "csam"
TMK = "VE1LMQ" + "A" * 200  # an inline TMK+PDQF value (base64)
PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"


def md5(n: int, salt: str = "a") -> str:
    import hashlib

    return hashlib.md5(f"{salt}{n}".encode()).hexdigest()


@pytest.fixture
def ncmec() -> Iterator[FakeNCMEC]:
    fake = FakeNCMEC(page_size=3)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture
def stopncii() -> Iterator[FakeStopNCII]:
    fake = FakeStopNCII()
    fake.start()
    yield fake
    fake.stop()


def secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


def bridge_show(node: NodeProc, name: str) -> Any:
    return node.json("bridge", "show", name)


def wait_counts(node: NodeProc, name: str, timeout: float = 60, **want: int) -> Any:
    """Wait until `bridge show` has at least these counts (added, revoked, entries)."""

    def done() -> Any:
        shown = bridge_show(node, name)
        ok = all(shown["counts"][k] >= v for k, v in want.items())
        return shown if ok else None

    return wait_for(done, timeout=timeout, step=0.3)


def caught_up_after(node: NodeProc, name: str, ts: int, timeout: float = 60) -> Any:
    """Wait until the bridge has drained the upstream past `ts` (an upstream change's own
    timestamp): NCMEC's drained windows end after it, StopNCII's next start is at or after
    it. The positive witness before asserting that something is (no longer) there."""

    def done() -> Any:
        shown = bridge_show(node, name)
        cp = shown["checkpoint"]
        if shown["kind"] == "ncmec":
            return shown if "next" not in cp and cp.get("from", 0) > ts else None
        return shown if "token" not in cp and cp.get("start", 0) >= ts else None

    return wait_for(done, timeout=timeout, step=0.3)


def add_ncmec_bridge(node: NodeProc, fake: FakeNCMEC, tmp: Path, *extra: str) -> None:
    creds = secret_file(tmp / "ncmec.creds", f"{fake.user}:{fake.password}")
    node.cli(
        "bridge", "add", "ncmec", "--kind", "ncmec", "--collection", C, "--url", fake.url,
        "--credentials-file", str(creds), "--interval", "1", *extra,
    )  # fmt: skip


def bridged_signals(node: NodeProc, collection: str = C) -> list[tuple[str, str, int]]:
    """(type, value, live) of every add this node published in `collection`."""
    with sqlite3.connect(f"file:{node.home / 'hashmesh.db'}?mode=ro", uri=True) as db:
        return [
            (t, v, int(live))
            for t, v, live in db.execute(
                "SELECT s.type, s.value, s.revoked_by IS NULL FROM signals s JOIN logs l"
                " ON l.id = s.log_id WHERE l.author = ? AND l.collection = ?",
                (node.node_id, collection),
            )
        ]


# -- NCMEC, end to end through a node process ------------------------------------------


@pytest.mark.slow  # > 30 s on the shared 2-core machine
def test_ncmec_fill_update_and_deletions_through_a_running_node(
    nodes: NodeSet, ncmec: FakeNCMEC, tmp_path: Path
) -> None:
    now = int(time.time())
    ncmec.put(
        NCMECEntry(
            42, "image1", now - 100, "image", classification="A1",
            fingerprints={"md5": md5(1), "sha1": "a1" * 20, "pdq": PDQ, "pdna": "a1a1a1..."},
        )
    )  # fmt: skip
    ncmec.put(NCMECEntry(42, "image2", now - 90, "image", classification="B1",
                         fingerprints={"md5": md5(2)}))  # fmt: skip
    # the same hash from another ESP: its own add, deleted on its own
    ncmec.put(NCMECEntry(43, "dup", now - 80, "image", fingerprints={"md5": md5(2)}))
    ncmec.put(
        NCMECEntry(
            42, "video1", now - 70, "video", classification="A2",
            fingerprints={"md5": md5(3), "tmk-pdqf": TMK, "netclean": "bmV0Y2xlYW4=",
                          "videntifier": "dmlkZW50aWZpZXI="},
        )
    )  # fmt: skip
    ncmec.put(NCMECEntry(42, "gone", now - 60, "image", fingerprints={"md5": md5(4)}))
    (b,) = nodes.make("bridge")
    add_ncmec_bridge(b, ncmec, tmp_path)
    b.start()
    shown = wait_counts(b, "ncmec", added=10)
    assert shown["counts"]["skipped"] == {"truncated value": 1}
    assert shown["live"] == 10 and shown["healthy"]
    for value in (md5(1), md5(2), md5(3), md5(4)):
        assert b.matches("md5", value)
    assert b.matches("tmk", TMK) and b.matches("netclean", "bmV0Y2xlYW4=")
    assert b.matches("videntifier", "dmlkZW50aWZpZXI=") and b.matches("pdq", PDQ)
    hit = b.json("match", "md5", md5(1))["results"][0]["matches"][0]
    assert (hit["classification"], hit["ref"]) == ("A1", "ncmec:url:42:image1")
    # incremental: image1 changes its md5, 'gone' and one holder of the shared hash go
    since = int(time.time())
    ncmec.put(NCMECEntry(42, "image1", since, "image", classification="A1",
                         fingerprints={"md5": md5(11), "sha1": "a1" * 20, "pdq": PDQ}))  # fmt: skip
    ncmec.delete(42, "gone", since)
    ncmec.delete(43, "dup", since)
    ncmec.put(NCMECEntry(99, "never-seen", since, deleted=True))
    shown = caught_up_after(b, "ncmec", since)
    counts = shown["counts"]
    assert counts["revoked"] == 3 and counts["added"] == 11
    assert counts["skipped"]["deletion of an entry never received"] == 1
    assert counts["skipped"]["unchanged"] == 2  # image1's sha1 and pdq
    assert not b.matches("md5", md5(1)) and b.matches("md5", md5(11))
    assert not b.matches("md5", md5(4))
    assert b.matches("md5", md5(2))  # image2 still holds it
    assert b.matches("sha1", "a1" * 20)
    signals = bridged_signals(b)
    assert len(signals) == 11 and sum(live for *_, live in signals) == 8
    assert b.stop() == 0


@pytest.mark.slow  # > 30 s on the shared 2-core machine
def test_ncmec_bridge_reaches_a_peer_platform_and_deletion_follows(
    nodes: NodeSet, ncmec: FakeNCMEC, tmp_path: Path
) -> None:
    b, p = nodes.make("bridge", "platform")
    link(b, p, C)
    p.trust(b, C)
    ncmec.put(NCMECEntry(42, "x", int(time.time()) - 30, fingerprints={"md5": md5(7)}))
    add_ncmec_bridge(b, ncmec, tmp_path)
    b.start()
    p.start()
    wait_for(lambda: p.matches("md5", md5(7)), timeout=60)
    ncmec.delete(42, "x", int(time.time()))
    wait_for(lambda: not p.matches("md5", md5(7)), timeout=60)


# -- NCMEC's paging rule, in-process on a real store -------------------------------------


def _service(tmp_path: Path) -> NodeService:
    init_home(tmp_path / "h", "h", "127.0.0.1:0", None)
    return NodeService(Home(tmp_path / "h"))


def test_ncmec_window_is_checkpointed_only_when_drained_and_next_only_with_it(
    tmp_path: Path, ncmec: FakeNCMEC
) -> None:
    """Entries of a window come in no time order: after a page holding the window's newest
    entry, the checkpoint still names the window and its next URL, so a restart there
    (a new client, as after a crash) fetches the older entries still to come."""
    service = _service(tmp_path)
    ncmec.page_size = 1
    base = int(time.time()) - 10_000
    for n in range(6):
        ncmec.put(NCMECEntry(42, f"e{n}", base + n * 100, fingerprints={"md5": md5(n)}))
    bridge = Bridge(name="n", kind="ncmec", collection=C, url=ncmec.url, credentials_env="X")
    upstream = kind_of("ncmec")(bridge, "bridge:s3cret")
    first = upstream.fetch({}, int(time.time()))
    apply_page(service, bridge, upstream, first)
    cp = service.store.bridges.state("n")["checkpoint"]
    assert cp["from"] == 0 and cp["next"] and cp["to"] >= base + 500
    # a fresh client resumes mid-window with the window's own from/to and its next URL
    upstream = kind_of("ncmec")(bridge, "bridge:s3cret")
    pages = 1
    while "next" in cp:
        page = upstream.fetch(cp, int(time.time()))
        call = ncmec.entry_calls[-1]
        assert (call["start"], call["to"]) == (str(pages + 1), ncmec.entry_calls[0]["to"])
        apply_page(service, bridge, upstream, page)
        cp = service.store.bridges.state("n")["checkpoint"]
        pages += 1
    assert pages == 6 and cp == {"from": first.checkpoint["to"]}
    shown = service.store.bridges.state("n")
    assert shown["counts"]["added"] == 6 and shown["live"] == 6
    # the taken-out-of-order entries were each published once
    assert sorted(v for _, v in service.store.live_signals("md5")) == sorted(
        md5(n) for n in range(6)
    )


def test_ncmec_stale_next_url_restarts_its_window_without_duplicates(
    tmp_path: Path, ncmec: FakeNCMEC
) -> None:
    service = _service(tmp_path)
    ncmec.page_size = 2
    base = int(time.time()) - 10_000
    for n in range(5):
        ncmec.put(NCMECEntry(42, f"e{n}", base + n, fingerprints={"md5": md5(n)}))
    bridge = Bridge(name="n", kind="ncmec", collection=C, url=ncmec.url, credentials_env="X")
    upstream = kind_of("ncmec")(bridge, "bridge:s3cret")
    apply_page(service, bridge, upstream, upstream.fetch({}, int(time.time())))
    cp = service.store.bridges.state("n")["checkpoint"]
    later = cp["next_at"] + NEXT_VALID_S + 1
    page = upstream.fetch(cp, later)
    assert "start" not in ncmec.entry_calls[-1]  # the window again, from its first page
    apply_page(service, bridge, upstream, page)
    while "next" in (cp := service.store.bridges.state("n")["checkpoint"]):
        apply_page(service, bridge, upstream, upstream.fetch(cp, later))
    state = service.store.bridges.state("n")
    assert state["counts"]["added"] == 5 and state["counts"]["skipped"] == {"unchanged": 2}
    assert len(list(service.store.live_signals("md5"))) == 5


def test_an_entry_replaced_twice_in_one_page_publishes_only_its_last_state(
    tmp_path: Path,
) -> None:
    from hashmesh.node.bridges.upstream import Entry, Page

    service = _service(tmp_path)
    bridge = Bridge(name="n", kind="ncmec", collection=C, url="http://127.0.0.1:1",
                    credentials_env="X")  # fmt: skip
    upstream = kind_of("ncmec")(bridge, "u:p")
    entry = Entry("42-a", False, {"md5": md5(1)}, None, "ncmec:url:42:a")
    changed = Entry("42-a", False, {"md5": md5(2)}, None, "ncmec:url:42:a")
    deleted = Entry("42-b", True, {}, None, "ncmec:url:42:b")
    apply_page(service, bridge, upstream, Page([entry, changed, deleted], {"from": 1}, True))
    assert [v for _, v in service.store.live_signals("md5")] == [md5(2)]
    state = service.store.bridges.state("n")
    assert state["counts"]["added"] == 1 and state["counts"]["revoked"] == 0


# -- StopNCII --------------------------------------------------------------------------


def stopncii_keys(fake: FakeStopNCII) -> str:
    return f"{fake.keys['FetchHashes']},{fake.subscription_key},{fake.keys['SubmitFeedback']}"


def add_stopncii_bridge(node: NodeProc, fake: FakeStopNCII, tmp: Path, env: str = "") -> None:
    if env:
        where = ["--credentials-env", env]
    else:
        where = [
            "--credentials-file",
            str(secret_file(tmp / "stopncii.creds", stopncii_keys(fake))),
        ]
    node.cli(
        "bridge", "add", "ncii", "--kind", "stopncii", "--collection", "ncii", "--url", fake.url,
        *where, "--interval", "1",
    )  # fmt: skip


def pdq(n: int) -> str:
    import hashlib

    return hashlib.sha256(f"pdq{n}".encode()).hexdigest()


@pytest.mark.slow  # > 30 s on the shared 2-core machine
def test_stopncii_records_replace_and_withdrawals_revoke(
    nodes: NodeSet, stopncii: FakeStopNCII, tmp_path: Path
) -> None:
    now = int(time.time())
    for n in range(5):
        stopncii.put(StopNCIIRecord("ImagePDQ", pdq(n), now - 100 + n))
    stopncii.put(StopNCIIRecord("VideoMD5", md5(9), now - 50))
    stopncii.put(StopNCIIRecord("URL", "https://example.com", now - 40))
    (b,) = nodes.make("bridge")
    add_stopncii_bridge(b, stopncii, tmp_path)
    b.start()
    shown = wait_counts(b, "ncii", added=6)
    assert shown["counts"]["skipped"] == {"unsupported type URL": 1}
    hit = b.json("match", "pdq", pdq(0))["results"][0]["matches"][0]
    assert (hit["category"], hit["ref"]) == ("ncii", "stopncii:url:received")
    since = int(time.time())
    stopncii.put(
        StopNCIIRecord("ImagePDQ", pdq(0), since, "Active"),  # replaced: labels changed
        StopNCIIRecord("ImagePDQ", pdq(1), since, "Withdrawn"),
        StopNCIIRecord("VideoMD5", md5(9), since, "Deleted"),
    )
    shown = caught_up_after(b, "ncii", since)
    assert shown["counts"]["revoked"] == 3 and shown["counts"]["added"] == 7
    # polls after that see nothing twice: StopNCII's start is inclusive, the checkpoint
    # remembers the records of its second (a later poll, witnessed by the page count)
    pages = shown["counts"]["pages"]
    shown = wait_for(lambda: (s := bridge_show(b, "ncii"))["counts"]["pages"] >= pages + 2 and s,
                     timeout=30)  # fmt: skip
    assert shown["counts"]["skipped"] == {"unsupported type URL": 1}
    assert shown["counts"]["entries"] == 10
    assert not b.matches("pdq", pdq(1)) and not b.matches("md5", md5(9))
    hit = b.json("match", "pdq", pdq(0))["results"][0]["matches"]
    assert [(h["ref"], h["live"]) for h in hit] == [("stopncii:url:active", True)]
    assert shown["live"] == 4
    assert b.stop() == 0


# -- outages -------------------------------------------------------------------------


@pytest.mark.slow  # > 30 s on the shared 2-core machine
def test_an_outage_backs_off_shows_and_recovers(
    nodes: NodeSet, ncmec: FakeNCMEC, tmp_path: Path
) -> None:
    ncmec.put(NCMECEntry(42, "x", int(time.time()) - 30, fingerprints={"md5": md5(1)}))
    ncmec.down = 503
    (b,) = nodes.make("bridge")
    add_ncmec_bridge(b, ncmec, tmp_path, "--timeout", "5")
    b.start()

    def failing_twice() -> Any:
        shown = bridge_show(b, "ncmec")
        return shown if shown["failures"] >= 2 else None

    shown = wait_for(failing_twice, timeout=60, step=0.5)
    assert not shown["healthy"] and "503" in shown["last_error"]
    status = b.status()
    entry = next(x for x in status["bridges"] if x["name"] == "ncmec")
    assert entry["running"]["failures"] >= 2 and not entry["healthy"]
    assert entry["running"]["state"] in ("backing off", "fetching")
    # each try is one fetch of the client (and its own 4 retries): bounded, not a storm;
    # the calls are read before the failures they are compared with (a try may run between)
    calls = ncmec.failed_calls
    assert calls <= 5 * (bridge_show(b, "ncmec")["failures"] + 1)
    # a timeout is a failure too
    ncmec.down, ncmec.delay_s = None, 7.0
    wait_for(lambda: "no answer within 5 s" in (bridge_show(b, "ncmec")["last_error"] or ""),
             timeout=60, step=0.5)  # fmt: skip
    ncmec.delay_s = 0.0
    shown = wait_counts(b, "ncmec", added=1, timeout=90)
    wait_for(lambda: bridge_show(b, "ncmec")["healthy"], timeout=30)
    assert b.matches("md5", md5(1))


# -- crash safety ----------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_during_a_fill_resumes_with_no_duplicates_and_nothing_missed(
    nodes: NodeSet, ncmec: FakeNCMEC, tmp_path: Path
) -> None:
    ncmec.page_size = 50
    base = int(time.time()) - 100_000
    total = 6000
    for n in range(total):
        ncmec.put(
            NCMECEntry(
                42, f"e{n}", base + n, fingerprints={"md5": md5(n), "sha1": md5(n) + "00000000"}
            )
        )
    deleted = set(range(0, total, 7))
    for n in deleted:  # deleted before the bridge saw them: never published
        ncmec.delete(42, f"e{n}", base + n)
    (b,) = nodes.make("bridge")
    add_ncmec_bridge(b, ncmec, tmp_path)
    db = b.home / "hashmesh.db"
    pages_seen = []
    for _round in range(3):
        b.start()

        def some_pages(before: int = pages_seen[-1] if pages_seen else 0) -> Any:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                row = conn.execute(
                    "SELECT json_extract(counts, '$.pages') FROM bridge_state"
                ).fetchone()
            return row[0] if row and row[0] and row[0] >= before + 5 else None

        pages_seen.append(wait_for(some_pages, timeout=60, step=0.05))
        assert b.run is not None
        os.kill(b.run.proc.pid, signal.SIGKILL)
        b.run.proc.wait(10)
        b.run = None
        if _round == 1:  # deletions of published entries while the bridge is down
            published = [n for n in range(total) if n not in deleted and b_has(b, md5(n))]
            late = set(published[:40])
            for n in late:
                ncmec.delete(42, f"e{n}", int(time.time()))
    since = int(time.time())
    b.start()
    deleted |= late
    live = total - len(deleted)
    shown = caught_up_after(b, "ncmec", since, timeout=180)
    signals = bridged_signals(b)
    values = [(t, v) for t, v, _ in signals]
    # each fingerprint published once, none twice; the late deletions revoked
    assert len(values) == len(set(values)) == 2 * (live + len(late))
    assert sum(is_live for *_, is_live in signals) == 2 * live
    assert shown["live"] == 2 * live and shown["counts"]["added"] == 2 * (live + len(late))
    assert shown["counts"]["revoked"] == 2 * len(late)
    assert b.matches("md5", md5(1)) and not b.matches("md5", md5(7))
    assert not any(b.matches("md5", md5(n)) for n in sorted(late)[:5])
    assert b.stop() == 0


def b_has(node: NodeProc, value: str) -> bool:
    with sqlite3.connect(f"file:{node.home / 'hashmesh.db'}?mode=ro", uri=True) as db:
        return db.execute("SELECT 1 FROM signals WHERE value = ?", (value,)).fetchone() is not None


# -- feedback upstream -----------------------------------------------------------------


def op_of(node: NodeProc, signal_type: str, value: str) -> str:
    hits = node.json("match", signal_type, value)["results"][0]["matches"]
    return str(next(h["op_id"] for h in hits if h["live"]))


@pytest.mark.slow  # > 30 s on the shared 2-core machine
def test_a_platforms_opinions_reach_ncmec_once_each(
    nodes: NodeSet, ncmec: FakeNCMEC, tmp_path: Path
) -> None:
    now = int(time.time())
    ncmec.put(NCMECEntry(42, "e1", now - 60, fingerprints={"md5": md5(1), "sha1": "b1" * 20}))
    ncmec.put(NCMECEntry(43, "e2", now - 50, fingerprints={"md5": md5(2)}))
    b, p = nodes.make("bridge", "platform")
    link(b, p, C)
    p.trust(b, C)
    b.trust(p, C)  # the platform's opinions on the bridged adds
    add_ncmec_bridge(b, ncmec, tmp_path)
    b.start()
    p.start()
    wait_for(lambda: p.matches("md5", md5(1)) and p.matches("md5", md5(2)), timeout=60)
    e1, e2 = op_of(p, "md5", md5(1)), op_of(p, "md5", md5(2))
    p.cli("opinion", e1, "dispute", "--reason", "false-positive")
    p.cli("opinion", e2, "confirm")
    wait_for(lambda: len(ncmec.feedback) >= 2, timeout=60)
    got = sorted(ncmec.feedback, key=lambda f: f["entry"])
    assert got == [
        {"esp": 42, "entry": "e1", "type": "MD5", "vote": "negative",
         "reason": "11111111-0000-0000-0000-000000000001"},
        {"esp": 43, "entry": "e2", "type": "MD5", "vote": "affirmative", "reason": None},
    ]  # fmt: skip
    # the same opinions again, a retract and a dispute again, and a restart in between
    p.cli("opinion", e1, "dispute", "--reason", "false-positive")
    p.cli("opinion", e2, "retract")
    p.cli("opinion", e2, "confirm")
    assert b.stop() == 0
    b.start()
    # the witness: a later opinion, which reaches the upstream after everything before it
    p.cli("opinion", op_of(p, "sha1", "b1" * 20), "confirm")
    wait_for(lambda: any(f["type"] == "SHA1" for f in ncmec.feedback), timeout=60)
    assert len(ncmec.feedback) == 3
    shown = bridge_show(b, "ncmec")
    assert shown["feedback"] == {"sent": 3}
    sent = {(f["target"], f["verdict"]): f["sent"] for f in shown["recent_feedback"]}
    assert sent[(e1, "dispute")]["reason_id"] == "11111111-0000-0000-0000-000000000001"


def test_an_operators_opinion_reaches_stopncii(
    nodes: NodeSet, stopncii: FakeStopNCII, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopncii.put(StopNCIIRecord("ImagePDQ", pdq(1), int(time.time()) - 60))
    (b,) = nodes.make("bridge")
    monkeypatch.setenv("HASHMESH_TEST_STOPNCII_KEYS", stopncii_keys(stopncii))  # the node's
    b.start()
    # added to the running node: it reads config.toml again and starts the bridge
    add_stopncii_bridge(b, stopncii, tmp_path, env="HASHMESH_TEST_STOPNCII_KEYS")
    assert "sub-key" not in (b.home / "config.toml").read_text()
    wait_counts(b, "ncii", added=1)
    b.cli("opinion", op_of(b, "pdq", pdq(1)), "dispute")
    wait_for(lambda: stopncii.feedback, timeout=60)
    assert stopncii.feedback == [{"hashValue": pdq(1), "feedbackValue": "NotBlocked", "tags": []}]
    assert bridge_show(b, "ncii")["feedback"] == {"sent": 1}


# -- the command line ------------------------------------------------------------------


@pytest.mark.slow  # > 30 s on the shared 2-core machine
def test_bridge_add_refuses_what_cannot_work_and_changes_nothing(
    nodes: NodeSet, tmp_path: Path
) -> None:
    (b,) = nodes.make("bridge")
    good = secret_file(tmp_path / "good", "user:pass")
    loose = secret_file(tmp_path / "loose", "user:pass", 0o644)
    bad = secret_file(tmp_path / "bad", "no-colon")
    none = str(tmp_path / "none")
    base = ["bridge", "add", "x", "--collection", C]
    cases = [
        ([*base, "--kind", "threatexchange", "--credentials-file", str(good)], "--privacy-group"),
        ([*base, "--kind", "ncmec", "--privacy-group", "12", "--credentials-file", str(good)],
         "other kinds take none"),
        ([*base, "--kind", "ncmec", "--credentials-file", str(loose)], "chmod 600"),
        ([*base, "--kind", "ncmec", "--credentials-file", str(bad)], "USER:PASSWORD"),
        ([*base, "--kind", "ncmec", "--credentials-file", none], "does not exist"),
        ([*base, "--kind", "ncmec", "--environment", "Mars", "--credentials-file", str(good)],
         "test_Industry"),
        ([*base, "--kind", "ncmec", "--environment", "Industry", "--url", "http://127.0.0.1:9",
          "--credentials-file", str(good)], "not both"),
        ([*base, "--kind", "ncmec"], "--credentials-file"),
        ([*base, "--kind", "ncmec", "--credentials-env", "bad name"], "environment variable"),
        ([*base, "--kind", "ncmec", "--credentials-file", str(good), "--interval", "0"], "1-86400"),
        (["bridge", "add", "Bad Name", "--kind", "ncmec", "-c", C, "--credentials-file", str(good)],
         "bridge name"),
        (["bridge", "show", "nope"], "no such bridge"),
        (["bridge", "remove", "nope"], "no such bridge"),
    ]  # fmt: skip
    before = (b.home / "config.toml").read_text()
    for args, message in cases:
        result = b.cli(*args, check=False)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)
    assert (b.home / "config.toml").read_text() == before
    b.cli(
        *base, "--kind", "ncmec", "--environment", "test_industry", "--credentials-file", str(good)
    )
    assert "user:pass" not in (b.home / "config.toml").read_text()
    listed = b.json("bridge", "list")["bridges"]
    assert [(x["name"], x["environment"], x["healthy"]) for x in listed] == [
        ("x", "test_Industry", True)
    ]
    again = b.cli(*base, "--kind", "ncmec", "--credentials-file", str(good), check=False)
    assert again.returncode == 2 and "already exists" in again.stderr
    b.cli("bridge", "remove", "x")
    assert b.json("bridge", "list") == {"bridges": []}


@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("HASHMESH_REQUIRE_BROWSER"),
    reason="no chromium here (CI installs it and sets HASHMESH_REQUIRE_BROWSER=1)",
)
def test_the_status_page_shows_a_failing_bridge(
    nodes: NodeSet, ncmec: FakeNCMEC, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required (HASHMESH_REQUIRE_BROWSER is set)"
    ncmec.down = 500
    (b,) = nodes.make("bridge")
    add_ncmec_bridge(b, ncmec, tmp_path, "--timeout", "5")
    b.start()
    wait_for(lambda: bridge_show(b, "ncmec")["failures"] >= 1, timeout=60, step=0.5)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=8000"]  # fmt: skip
    url = f"{b.url}/status#token={b.admin_token()}"
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120
    ).stdout
    table = dom.split('id="bridges"', 1)[1].split("</table>", 1)[0]
    assert ">ncmec<" in table and f"ncmec {ncmec.url}" in table
    assert "failing (" in table and "500" in table
    text = b.cli("status").stdout  # the operator's terminal says it too
    line = next(x for x in text.splitlines() if x.strip().startswith("ncmec "))
    assert "ncmec -> " in line and "FAILING (" in line and "0 added" in line, text
    assert "last error: " in text and "500" in text.split("last error: ", 1)[1], text


def test_feedback_out_when_the_node_stopped_is_never_sent_again(tmp_path: Path) -> None:
    service = _service(tmp_path)
    table = service.store.bridges
    table.ensure("n", "ncmec")
    assert table.queue_feedback("n", "t/c/1/0", "dispute", "a", None, 1)
    assert not table.queue_feedback("n", "t/c/1/0", "dispute", "b", "again", 2)  # once
    assert table.queue_feedback("n", "t/c/1/0", "confirm", "a", None, 3)
    table.mark_feedback("n", "t/c/1/0", "dispute", "sending", 4)
    assert table.feedback_interrupted("n", 5) == 1  # what a restart does first
    assert [(t, v) for t, v, _, _ in table.feedback_due("n", 10)] == [("t/c/1/0", "confirm")]
    assert table.state("n")["feedback"] == {"queued": 1, "unknown": 1}


def test_stopncii_page_token_is_kept_with_its_start_and_resumed(
    tmp_path: Path, stopncii: FakeStopNCII, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hashmesh.node.bridges import stopncii as module

    monkeypatch.setattr(module, "PAGE_SIZE", 2)
    service = _service(tmp_path)
    base = int(time.time()) - 1000
    stopncii.put(*(StopNCIIRecord("ImagePDQ", pdq(n), base + n) for n in range(5)))
    bridge = Bridge(name="s", kind="stopncii", collection="ncii", url=stopncii.url,
                    credentials_env="X")  # fmt: skip
    keys = "fetch-key,sub-key,feedback-key"
    upstream = kind_of("stopncii")(bridge, keys)
    apply_page(service, bridge, upstream, upstream.fetch({}, int(time.time())))
    cp = service.store.bridges.progress("s")[0]
    assert cp["start"] == upstream.client.DEFAULT_START_TIME and cp["token"]
    upstream = kind_of("stopncii")(bridge, keys)  # as after a restart
    while "token" in (cp := service.store.bridges.progress("s")[0]):
        apply_page(service, bridge, upstream, upstream.fetch(cp, int(time.time())))
    assert cp["start"] == base + 4 and len(cp["seen"]) == 1
    assert len(list(service.store.live_signals("pdq"))) == 5
    assert service.store.bridges.state("s")["counts"]["added"] == 5


def test_a_name_used_before_comes_back_only_as_it_was(tmp_path: Path) -> None:
    """Its checkpoint and live adds are kept: another kind could not read the checkpoint,
    another collection could not revoke the adds (a revoke names adds of its own log)."""
    from hashmesh.node.bridges.manage import add_bridge, remove_bridge
    from hashmesh.node.bridges.upstream import Entry, Page
    from hashmesh.node.errors import Conflict

    service = _service(tmp_path)
    home = Home(tmp_path / "h")
    add_bridge(home, "n", "ncmec", C, credentials_env="X", url="http://127.0.0.1:1")
    bridge = home.load_config().bridges[0]
    upstream = kind_of("ncmec")(bridge, "u:p")
    entry = Entry("42-a", False, {"md5": md5(1)}, None, "ncmec:url:42:a")
    apply_page(service, bridge, upstream, Page([entry], {"from": 1}, True))
    service.close()
    remove_bridge(home, "n")
    for kind, collection in (("ncmec", "other"), ("stopncii", C)):
        with pytest.raises(Conflict, match="was used before"):
            add_bridge(home, "n", kind, collection, credentials_env="X", url="http://127.0.0.1:1")
    assert home.load_config().bridges == []
    add_bridge(home, "n", "ncmec", C, credentials_env="X", url="http://127.0.0.1:1")
    assert [b.name for b in home.load_config().bridges] == ["n"]


@pytest.mark.parametrize("chunked", [False, True])
def test_an_upstream_answer_is_read_only_up_to_its_bound(
    tmp_path: Path, ncmec: FakeNCMEC, monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    from hashmesh.node.bridges import upstream as module

    base = int(time.time()) - 1000
    for n in range(50):
        ncmec.put(NCMECEntry(42, f"e{n}", base + n, fingerprints={"md5": md5(n)}))
    ncmec.page_size, ncmec.chunked = 50, chunked
    bridge = Bridge(name="n", kind="ncmec", collection=C, url=ncmec.url, credentials_env="X")
    upstream = kind_of("ncmec")(bridge, "bridge:s3cret")
    monkeypatch.setattr(module, "MAX_RESPONSE_BYTES", 4096)
    with pytest.raises(module.UpstreamTooLarge, match="4,096"):
        upstream.fetch({}, int(time.time()))
    monkeypatch.setattr(module, "MAX_RESPONSE_BYTES", 1 << 20)
    assert len(upstream.fetch({}, int(time.time())).entries) == 50


def test_stopncii_sees_no_record_twice_and_misses_none_sharing_a_second(
    tmp_path: Path, stopncii: FakeStopNCII
) -> None:
    """FetchHashes' startTimestamp is inclusive: the records at the checkpoint's second
    come back on every poll. Those already applied are dropped (not even counted), and one
    written later at that same second, or changed within it, is applied."""
    service = _service(tmp_path)
    t = int(time.time()) - 100
    stopncii.put(StopNCIIRecord("ImagePDQ", pdq(1), t - 5), StopNCIIRecord("ImagePDQ", pdq(2), t))
    bridge = Bridge(name="s", kind="stopncii", collection="ncii", url=stopncii.url,
                    credentials_env="X")  # fmt: skip
    upstream = kind_of("stopncii")(bridge, "fetch-key,sub-key,feedback-key")

    def poll() -> list[str]:
        page = upstream.fetch(service.store.bridges.progress("s")[0], int(time.time()))
        assert page.caught_up
        apply_page(service, bridge, upstream, page)
        return sorted(e.key.split(":", 1)[1] for e in page.entries)

    assert poll() == sorted([pdq(1), pdq(2)])
    assert poll() == []  # pdq(2) came back (start is inclusive) and was dropped
    stopncii.put(StopNCIIRecord("ImagePDQ", pdq(3), t))  # later, at the same second
    assert poll() == [pdq(3)]
    assert poll() == []
    stopncii.put(StopNCIIRecord("ImagePDQ", pdq(2), t, "Withdrawn"))  # changed within it
    assert poll() == [pdq(2)]
    assert poll() == []
    state = service.store.bridges.state("s") or {}
    assert state["counts"]["entries"] == 4 and state["counts"]["skipped"] == {}
    assert state["counts"]["revoked"] == 1
    assert sorted(v for _, v in service.store.live_signals("pdq")) == sorted([pdq(1), pdq(3)])
