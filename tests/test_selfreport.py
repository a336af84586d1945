"""The self-report ("Take It Down") page: hashing in the browser, submission, withdrawal.

Real node processes: a hotline (ChildFocus) with the page enabled and a platform node that
peers with it and trusts it for the self-report collection. The browser tests drive the
Chromium the CI installs over the DevTools protocol (tests/cdp.py).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cdp import CHROMIUM, Browser
from netnodes import NodeProc, later_record_arrives, wait_for
from PIL import Image
from testdata import PDQ

from hashmesh.node.config import Home

PDQ_DATA = PDQ
COLLECTION = "takeitdown"
POW_BITS = 10

needs_browser = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("HASHMESH_REQUIRE_BROWSER"),
    reason="no chromium here (CI installs it and sets HASHMESH_REQUIRE_BROWSER=1)",
)
needs_data = pytest.mark.skipif(not PDQ_DATA.exists(), reason="PDQ reference data missing")


def expected() -> dict[str, str]:
    with open(PDQ_DATA / "expected.csv") as fh:
        return {row["file"]: row["pdq"] for row in csv.DictReader(fh)}


def distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def configure(node: NodeProc, **values: Any) -> None:
    """Change [selfreport] settings through the node's own config code."""
    home = Home(node.home)
    config = home.load_config()
    for key, value in values.items():
        setattr(config, "selfreport_" + key, value)
    home.save_config(config)


def call(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def solve(challenge: str, bits: int) -> str:
    n = 0
    while True:
        digest = hashlib.sha256(f"{challenge}:{n}".encode()).digest()
        if int.from_bytes(digest, "big") >> (256 - bits) == 0:
            return str(n)
        n += 1


def submit(
    node: NodeProc, signals: list[dict[str, Any]], category: str = "ncii"
) -> tuple[int, Any]:
    status, got = call("GET", node.url + "/takeitdown/api/challenge")
    assert status == 200, got
    body = {
        "challenge": got["challenge"],
        "solution": solve(got["challenge"], got["bits"]),
        "category": category,
        "signals": signals,
    }
    return call("POST", node.url + "/takeitdown/api/submit", body)


def md5_of(n: int) -> str:
    return hashlib.md5(f"selfreport-{n}-{time.time_ns()}".encode()).hexdigest()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProc, NodeProc]]:
    root = tmp_path_factory.mktemp("selfreport")
    hotline, platform = NodeProc(root, "childfocus"), NodeProc(root, "platform")
    configure(hotline, enabled=True, pow_bits=POW_BITS, submits_per_hour=1000)
    configure(hotline, checks_per_hour=1000, total_submits_per_hour=1000)
    hotline.peer(platform, COLLECTION)
    platform.peer(hotline, COLLECTION)  # the platform's opinions flow back
    platform.trust(hotline, COLLECTION)
    hotline.trust(platform, COLLECTION)
    hotline.start()
    platform.start()
    yield hotline, platform
    hotline.kill()
    platform.kill()


# -- API ----------------------------------------------------------------------------------


def test_off_by_default(net: tuple[NodeProc, NodeProc]) -> None:
    _, platform = net
    assert Home(platform.home).load_config().selfreport_enabled is False
    for path in ("/takeitdown/", "/takeitdown/api/info", "/takeitdown/app.js"):
        status, _ = call("GET", platform.url + path)
        assert status == 404, path
    status, _ = call("POST", platform.url + "/takeitdown/api/submit", {})
    assert status == 404


def test_submit_match_status_withdraw(net: tuple[NodeProc, NodeProc]) -> None:
    hotline, platform = net
    md5 = md5_of(1)
    pdq = expected()["q2821.jpg"]
    status, case = submit(
        hotline,
        [
            {"type": "md5", "value": md5},
            {"type": "pdq", "value": pdq, "quality": 100},
        ],
        category="csam",
    )
    assert status == 200, case
    assert case["hashes"] == 2 and len(case["case"]) == 9 and len(case["secret"]) == 24
    wait_for(lambda: platform.matches("md5", md5) and platform.matches("pdq", pdq))
    found = platform.json("match", "md5", md5)["results"][0]["matches"][0]
    assert found["category"] == "csam"
    assert found["classification"] == "self-reported"
    assert found["author"] == hotline.node_id and found["collection"] == COLLECTION

    creds = {"case": case["case"], "secret": case["secret"]}
    status, state = call("POST", hotline.url + "/takeitdown/api/status", creds)
    assert status == 200 and state["state"] == "active" and state["live"] == 2
    # what a person types: lower case, spaces instead of dashes
    loose = {"case": case["case"].lower().replace("-", " "), "secret": case["secret"].lower()}
    assert call("POST", hotline.url + "/takeitdown/api/status", loose)[0] == 200

    wrong = {"case": case["case"], "secret": "A" * 20}
    for body in (wrong, {"case": "ZZZZ-ZZZZ", "secret": case["secret"]}, {"case": 1}):
        status, answer = call("POST", hotline.url + "/takeitdown/api/withdraw", body)
        assert status == 403 and answer["error"] == "case number or secret is wrong"
    assert platform.matches("md5", md5)  # the refused withdrawals changed nothing

    status, done = call("POST", hotline.url + "/takeitdown/api/withdraw", creds)
    assert status == 200 and done["state"] == "withdrawn" and done["revoked"] == 2
    wait_for(lambda: not platform.matches("md5", md5) and not platform.matches("pdq", pdq))
    status, again = call("POST", hotline.url + "/takeitdown/api/withdraw", creds)
    assert status == 200 and again["revoked"] == 0
    status, state = call("POST", hotline.url + "/takeitdown/api/status", creds)
    assert state["state"] == "withdrawn" and state["live"] == 0


def test_a_shared_hash_stays_until_every_case_withdraws(net: tuple[NodeProc, NodeProc]) -> None:
    hotline, platform = net
    md5 = md5_of(2)
    first = submit(hotline, [{"type": "md5", "value": md5}])[1]
    second = submit(hotline, [{"type": "md5", "value": md5}])[1]
    wait_for(lambda: platform.matches("md5", md5))
    call("POST", hotline.url + "/takeitdown/api/withdraw", first)
    later_record_arrives(hotline, platform, COLLECTION)
    assert platform.matches("md5", md5)  # the second person's report still stands
    status, done = call("POST", hotline.url + "/takeitdown/api/withdraw", second)
    assert status == 200 and done["revoked"] == 1
    wait_for(lambda: not platform.matches("md5", md5))


def test_a_full_case_of_40_hashes_can_be_withdrawn(net: tuple[NodeProc, NodeProc]) -> None:
    """A case may hold 40 hashes (20 files, 2 each) but one revoke op only ~28 op ids: the
    withdrawal must span several ops, or a victim could never take such a case back."""
    hotline, platform = net
    values = [md5_of(1000 + n) for n in range(40)]
    status, creds = submit(hotline, [{"type": "md5", "value": v} for v in values])
    assert status == 200, creds
    wait_for(lambda: platform.matches("md5", values[-1]))
    status, done = call("POST", hotline.url + "/takeitdown/api/withdraw", creds)
    assert status == 200 and done["state"] == "withdrawn" and done["revoked"] == 40, done
    wait_for(lambda: not any(platform.matches("md5", v) for v in (values[0], values[-1])))


def test_refusals(net: tuple[NodeProc, NodeProc]) -> None:
    hotline, _ = net
    low = expected()["small.jpg"]
    status, answer = submit(hotline, [{"type": "pdq", "value": low, "quality": 0}])
    assert status == 400 and "too plain or too small" in answer["error"]
    status, answer = submit(hotline, [{"type": "pdq", "value": low}])
    assert status == 400 and "quality" in answer["error"]
    status, answer = submit(hotline, [{"type": "sha256", "value": "0" * 64}])
    assert status == 400
    status, answer = submit(hotline, [{"type": "md5", "value": md5_of(3)}], category="terror")
    assert status == 400 and "category" in answer["error"]
    too_many = [{"type": "md5", "value": md5_of(100 + n)} for n in range(41)]
    assert submit(hotline, too_many)[0] == 400
    assert submit(hotline, [{"type": "md5", "value": "not-hex"}])[0] == 400
    assert submit(hotline, [{"type": "pdq", "value": "x" * 64, "quality": 100}])[0] == 400

    url = hotline.url + "/takeitdown/api/submit"
    challenge = call("GET", hotline.url + "/takeitdown/api/challenge")[1]["challenge"]
    body = {
        "challenge": challenge,
        "category": "ncii",
        "signals": [{"type": "md5", "value": md5_of(4)}],
    }
    solution = solve(challenge, POW_BITS)
    wrong = next(
        str(n)
        for n in range(1000)
        if int.from_bytes(hashlib.sha256(f"{challenge}:{n}".encode()).digest(), "big") >> 250
    )
    status, answer = call("POST", url, {**body, "solution": wrong})
    assert status == 400 and "solution is wrong" in answer["error"]
    forged = challenge.rsplit(".", 1)[0] + ".AAAAAAAAAAAAAAAAAAAAAAAA"
    status, answer = call("POST", url, {**body, "challenge": forged, "solution": solution})
    assert status == 400 and "not issued" in answer["error"]
    easier = challenge.split(".")
    easier[1] = "1"
    status, answer = call("POST", url, {**body, "challenge": ".".join(easier), "solution": "0"})
    assert status == 400
    assert call("POST", url, {**body, "solution": solution})[0] == 200
    status, answer = call("POST", url, {**body, "solution": solution})
    assert status == 400 and "already used" in answer["error"]
    big = {**body, "solution": solution, "pad": "x" * 70_000}
    assert call("POST", url, big)[0] == 400


def test_rate_limits_hold(net: tuple[NodeProc, NodeProc]) -> None:
    hotline, _ = net
    info_url = hotline.url + "/takeitdown/api/info"
    configure(hotline, submits_per_hour=2, checks_per_hour=3)
    wait_for(lambda: call("GET", info_url)[0] == 200)
    time.sleep(2.5)  # the node re-reads config.toml every second
    try:
        codes = [submit(hotline, [{"type": "md5", "value": md5_of(10 + n)}])[0] for n in range(2)]
        assert codes == [200, 200]
        status, answer = call("GET", hotline.url + "/takeitdown/api/challenge")
        assert status == 200  # challenges have their own, larger allowance
        body = {
            "challenge": answer["challenge"],
            "solution": solve(answer["challenge"], POW_BITS),
            "category": "ncii",
            "signals": [{"type": "md5", "value": md5_of(12)}],
        }
        status, answer = call("POST", hotline.url + "/takeitdown/api/submit", body)
        assert status == 429 and "too many requests" in answer["error"]
        creds = {"case": "AAAA-AAAA", "secret": "A" * 20}
        checks = [call("POST", hotline.url + "/takeitdown/api/status", creds)[0] for _ in range(4)]
        assert checks == [403, 403, 403, 429]
    finally:
        configure(hotline, submits_per_hour=1000, checks_per_hour=1000)
        time.sleep(2.5)


def test_nothing_identifying_is_stored(net: tuple[NodeProc, NodeProc]) -> None:
    hotline, _ = net
    assert submit(hotline, [{"type": "md5", "value": md5_of(20)}])[0] == 200
    db = sqlite3.connect(f"file:{hotline.home / 'hashmesh.db'}?mode=ro", uri=True)
    try:
        columns = {r[1] for r in db.execute("PRAGMA table_info(selfreport_cases)")}
        assert columns == {
            "case_number",
            "secret_salt",
            "secret_hash",
            "category",
            "created_day",
            "withdrawn_day",
        }
        assert {r[1] for r in db.execute("PRAGMA table_info(selfreport_ops)")} == {
            "case_number",
            "op_id",
            "type",
        }
        for day, withdrawn in db.execute("SELECT created_day, withdrawn_day FROM selfreport_cases"):
            assert len(day) == 10 and (withdrawn is None or len(withdrawn) == 10)  # days only
    finally:
        db.close()
    stored = b"".join(p.read_bytes() for p in hotline.home.glob("hashmesh.db*"))
    log = (hotline.home / "run.log").read_text()
    for needle in ("Mozilla", "HeadlessChrome", "Python-urllib"):
        assert needle.encode() not in stored and needle not in log
    assert "takeitdown" not in log  # no request lines at all for these endpoints


def test_operator_report(net: tuple[NodeProc, NodeProc]) -> None:
    hotline, platform = net
    md5 = md5_of(30)
    assert submit(hotline, [{"type": "md5", "value": md5}])[0] == 200
    wait_for(lambda: platform.matches("md5", md5))
    op_id = platform.json("match", "md5", md5)["results"][0]["matches"][0]["op_id"]
    platform.cli("opinion", op_id, "seen")
    platform.cli("opinion", op_id, "dispute")
    assert call("GET", hotline.url + "/v1/admin/selfreport")[0] == 401

    def report() -> Any:
        status, body = call(
            "GET", hotline.url + "/v1/admin/selfreport", token=hotline.admin_token()
        )
        assert status == 200, body
        return body if body["opinions"]["hashes_disputed"] >= 1 else None

    body = wait_for(report)
    assert body["enabled"] is True and body["collection"] == COLLECTION
    assert body["totals"]["cases"] >= 1 and body["days"][0]["cases"] >= 1
    assert body["opinions"]["seen"] >= 1 and body["opinions"]["hashes_seen"] >= 1
    assert {"op_id": op_id, "disputes": 1} in body["disputed"]
    assert (
        call("GET", platform.url + "/v1/admin/selfreport", token=platform.admin_token())[1][
            "enabled"
        ]
        is False
    )


def test_degenerate_hashes_are_refused_whatever_the_claimed_quality(
    net: tuple[NodeProc, NodeProc],
) -> None:
    """The black picture's PDQ (all zeros) claimed at quality 100 once went out as csam."""
    from hashmesh.node.hashing.hasher import hash_bytes

    hotline, platform = net
    black = io.BytesIO()
    Image.new("RGB", (64, 64), (0, 0, 0)).save(black, "PNG")
    tiny = io.BytesIO()
    Image.effect_noise((4, 4), 80).convert("RGB").save(tiny, "PNG")
    flat = [hash_bytes(data.getvalue()).pdq for data in (black, tiny)]
    for value in ["0" * 64, "f" * 64, *flat]:
        signals = [{"type": "pdq", "value": value, "quality": 100}]
        status, answer = submit(hotline, [{"type": "md5", "value": md5_of(50)}, *signals])
        assert status == 400 and answer["error"].startswith("signals[1]: value refused"), answer
    status, answer = submit(hotline, [{"type": "md5", "value": hashlib.md5(b"").hexdigest()}])
    assert status == 400 and "empty file" in answer["error"]
    later_record_arrives(hotline, platform, COLLECTION)
    assert not platform.matches("pdq", "0" * 64)


def test_pdqs_per_case_are_capped(net: tuple[NodeProc, NodeProc]) -> None:
    hotline, _ = net
    real = [h for h in (PDQ_DATA / "haystack.txt").read_text().split() if h][:11]
    signals = [{"type": "pdq", "value": h, "quality": 100} for h in real]
    status, answer = submit(hotline, signals)
    assert status == 400 and "at most 10" in answer["error"], answer
    status, case = submit(hotline, signals[:10])
    assert status == 200 and case["hashes"] == 10, case


def test_only_the_utc_day_is_stored(net: tuple[NodeProc, NodeProc]) -> None:
    """The page promises the day only: the case's batches (signed time, receipt time, feed
    and log rows) must not tell the second either, for the submission and the withdrawal."""
    hotline, _ = net
    status, case = submit(hotline, [{"type": "md5", "value": md5_of(60)}])
    assert status == 200
    creds = {"case": case["case"], "secret": case["secret"]}
    assert call("POST", hotline.url + "/takeitdown/api/withdraw", creds)[1]["revoked"] == 1
    day = int(time.time()) // 86400 * 86400 * 1000
    number = case["case"].replace("-", "")
    db = sqlite3.connect(f"file:{hotline.home / 'hashmesh.db'}?mode=ro", uri=True)
    try:
        created, withdrawn = db.execute(
            "SELECT created_day, withdrawn_day FROM selfreport_cases WHERE case_number = ?",
            (number,),
        ).fetchone()
        assert created == withdrawn == time.strftime("%Y-%m-%d", time.gmtime())
        (op_id,) = db.execute(
            "SELECT op_id FROM selfreport_ops WHERE case_number = ?", (number,)
        ).fetchone()
        author, collection, seq, _ = op_id.split("/")
        log_id, updated = db.execute(
            "SELECT id, updated_at FROM logs WHERE author = ? AND collection = ?",
            (author, collection),
        ).fetchone()
        (revoke_by,) = db.execute(
            "SELECT revoked_by FROM signals WHERE log_id = ? AND seq = ?", (log_id, int(seq))
        ).fetchone()
        for batch_seq in (int(seq), int(revoke_by.split("/")[2])):
            header, received = db.execute(
                "SELECT header, received_at FROM batches WHERE log_id = ? AND seq = ?",
                (log_id, batch_seq),
            ).fetchone()
            assert json.loads(header)["ts"] == received == day, (header, received)
        feed = db.execute(
            "SELECT at FROM feed WHERE signal_id IN (SELECT id FROM signals WHERE log_id = ?"
            " AND seq = ?) OR target = ?",
            (log_id, int(seq), op_id),
        ).fetchall()
        assert len(feed) == 2 and {at for (at,) in feed} == {day}
        assert updated == day
    finally:
        db.close()


def test_withdrawal_keeps_the_analysts_own_adds(net: tuple[NodeProc, NodeProc]) -> None:
    hotline, platform = net
    md5 = md5_of(70)
    hotline.cli("add", "md5", md5, "-c", COLLECTION, "--classification", "self-reported")
    status, case = submit(
        hotline, [{"type": "md5", "value": md5}, {"type": "md5", "value": md5_of(71)}]
    )
    assert status == 200
    creds = {"case": case["case"], "secret": case["secret"]}
    status, done = call("POST", hotline.url + "/takeitdown/api/withdraw", creds)
    assert status == 200 and done["revoked"] == 2, done  # the same answer as a fresh case
    wait_for(lambda: platform.matches("md5", md5))
    later_record_arrives(hotline, platform, COLLECTION)
    assert platform.matches("md5", md5)  # the analyst's add stands


def test_a_failed_case_record_publishes_nothing(tmp_path: Path) -> None:
    """The hashes and the case commit together: a case that cannot be recorded must not
    leave published hashes behind that nobody can withdraw."""
    from hashmesh.node.service import NodeService, init_home
    from hashmesh.node.web.selfreport import CaseStore, Submission

    init_home(tmp_path / "h", "h", "127.0.0.1:1", None)
    service = NodeService(Home(tmp_path / "h"))
    try:
        cases = CaseStore(service)
        submission = Submission("ncii", [{"type": "md5", "value": md5_of(80)}])
        with pytest.raises(sqlite3.IntegrityError):
            cases.create(COLLECTION, submission, None, b"x")  # type: ignore[arg-type]
        assert service.status()["live_signals"] == 0
        assert sum(service.store.vector({COLLECTION}).values()) == 0  # no batch either
        done = cases.create(COLLECTION, submission, b"salt", b"x")
        assert done["hashes"] == 1 and service.status()["live_signals"] == 1
    finally:
        service.close()


# -- in the browser -----------------------------------------------------------------------

ITEMS_JS = "JSON.stringify([...document.querySelectorAll('#items li')].map(l => ({...l.dataset})))"
HASHED_JS = (
    "document.querySelectorAll('#items li').length === {n} && "
    "![...document.querySelectorAll('#items li')].some(l => l.dataset.state === 'hashing')"
)


async def open_page(browser: Browser, node: NodeProc) -> None:
    await browser.goto(node.url + "/takeitdown/")
    await browser.wait_for("document.body.dataset.ready === 'true'")


async def choose(browser: Browser, files: list[Path]) -> list[dict[str, str]]:
    await browser.set_files("#files", files)
    await browser.wait_for(HASHED_JS.format(n=len(files)), timeout=90)
    items: list[dict[str, str]] = json.loads(await browser.evaluate(ITEMS_JS))
    return items


@needs_browser
@needs_data
async def test_page_reports_checks_and_withdraws(
    net: tuple[NodeProc, NodeProc], tmp_path: Path
) -> None:
    assert CHROMIUM, "chromium is required (HASHMESH_REQUIRE_BROWSER is set)"
    hotline, platform = net
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(300_000))
    video_md5 = hashlib.md5(video.read_bytes()).hexdigest()
    photo = PDQ_DATA / "images" / "bridge-1-original.jpg"
    photo_md5 = hashlib.md5(photo.read_bytes()).hexdigest()
    flat = PDQ_DATA / "images" / "small.jpg"
    async with Browser(tmp_path / "profile") as browser:
        await open_page(browser, hotline)
        items = await choose(browser, [photo, flat, video])
        by_name = {i["name"]: i for i in items}
        assert by_name[photo.name]["md5"] == photo_md5
        assert by_name[photo.name]["state"] == "hashed"
        assert by_name[flat.name]["state"] == "lowQuality" and "pdq" not in by_name[flat.name]
        undecodable = {"state": "videoUndecodable", "md5": video_md5}
        assert by_name[video.name] == {**by_name[video.name], **undecodable}
        shown = await browser.evaluate("document.getElementById('hashlist').textContent")
        assert photo_md5 in shown and by_name[photo.name]["pdq"] in shown
        assert await browser.evaluate("document.querySelectorAll('#items canvas').length") == 2

        await browser.evaluate("document.getElementById('submit').click()")
        await browser.wait_for("document.getElementById('progress').className === 'error'")
        await browser.evaluate(
            "document.getElementById('cat-csam').click(); document.getElementById('submit').click()"
        )
        await browser.wait_for("!document.getElementById('result').hidden", timeout=60)
        case = await browser.evaluate("document.getElementById('case-number').textContent")
        secret = await browser.evaluate("document.getElementById('case-secret').textContent")
        assert await browser.evaluate("document.querySelectorAll('#items li').length") == 0

        pdq = by_name[photo.name]["pdq"]
        wait_for(
            lambda: all(
                platform.matches(t, v)
                for t, v in (("md5", photo_md5), ("md5", video_md5), ("pdq", pdq))
            )
        )
        # a platform that hashes the same picture with pdqhash finds it
        reference = expected()[photo.name]
        assert platform.matches("pdq", reference)
        found = platform.json("match", "pdq", reference)["results"][0]["matches"][0]
        assert found["classification"] == "self-reported" and found["category"] == "csam"

        async def manage(button: str, secret_text: str) -> str:
            await browser.evaluate(
                f"document.getElementById('m-case').value = {json.dumps(case)};"
                f"document.getElementById('m-secret').value = {json.dumps(secret_text)};"
                "document.getElementById('manage-result').textContent = '';"
                f"document.getElementById({json.dumps(button)}).click()"
            )
            text: str = await browser.wait_for(
                "document.getElementById('manage-result').textContent"
            )
            return text

        assert "wrong" in await manage("check", "0000-0000-0000-0000-0000")
        assert "active" in await manage("check", secret)
        await browser.evaluate("document.getElementById('withdraw').click()")
        assert await browser.evaluate("!document.getElementById('confirm').hidden")
        await browser.evaluate("document.getElementById('manage-result').textContent = ''")
        await browser.evaluate("document.getElementById('withdraw-confirm').click()")
        text = await browser.wait_for("document.getElementById('manage-result').textContent")
        assert "withdrawn" in text
        wait_for(
            lambda: (
                not platform.matches("md5", photo_md5) and not platform.matches("pdq", reference)
            )
        )
        assert "withdrawn" in await manage("check", secret)

        origin = hotline.url + "/"
        urls = [r["url"] for r in browser.requests]
        assert any(u.endswith("/takeitdown/api/submit") for u in urls)
        # blob: URLs are the chosen files read by the browser itself (video.js), not requests
        assert [u for u in urls if not u.startswith((origin, "blob:" + origin))] == []
        bodies = [r.get("postData", "") for r in browser.requests]
        assert not any("ftypmp42" in b or "JFIF" in b for b in bodies)  # hashes, not files
        assert browser.console == [], browser.console


@needs_browser
async def test_page_refuses_pdq_for_pictures_under_5_px(
    net: tuple[NodeProc, NodeProc], tmp_path: Path
) -> None:
    hotline, _ = net
    tiny = tmp_path / "tiny.png"
    Image.effect_noise((4, 40), 80).convert("RGB").save(tiny)
    async with Browser(tmp_path / "profile") as browser:
        await open_page(browser, hotline)
        (item,) = await choose(browser, [tiny])
        assert item["state"] == "tooSmall" and "pdq" not in item, item
        assert item["md5"] == hashlib.md5(tiny.read_bytes()).hexdigest()
        text = await browser.evaluate("document.querySelector('#items li .state').textContent")
        assert "smaller than 5 pixels" in text


@needs_browser
async def test_page_is_locked_to_its_origin(net: tuple[NodeProc, NodeProc]) -> None:
    hotline, _ = net
    with urllib.request.urlopen(hotline.url + "/takeitdown/", timeout=10) as response:
        csp = response.headers["Content-Security-Policy"]
        html = response.read().decode()
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert response.headers["Referrer-Policy"] == "no-referrer"
    texts = [html]
    for name in ("app.js", "pdq.js", "video.js", "md5.js", "i18n.js", "style.css"):
        with urllib.request.urlopen(f"{hotline.url}/takeitdown/{name}", timeout=10) as r:
            assert r.headers["Content-Security-Policy"] == csp
            texts.append(r.read().decode())
    for text in texts:
        assert "http://" not in text and "https://" not in text and "//cdn" not in text
    assert "<script>" not in html and "style=" not in html  # nothing inline for the CSP


@needs_browser
@needs_data
async def test_js_pdq_conforms_to_meta_reference(
    net: tuple[NodeProc, NodeProc], tmp_path: Path
) -> None:
    assert CHROMIUM, "chromium is required (HASHMESH_REQUIRE_BROWSER is set)"
    hotline, _ = net
    reference = expected()
    images = sorted((PDQ_DATA / "images").iterdir())
    mods = sorted((PDQ_DATA / "bridge-mods").iterdir())
    async with Browser(tmp_path / "profile") as browser:
        await open_page(browser, hotline)
        items = await choose(browser, images)
        await open_page(browser, hotline)
        edits = await choose(browser, mods)
    distances = {}
    for item in items:
        quality = int(item["quality"])
        if quality >= 80:
            distances[item["name"]] = distance(item["pdq"], reference[item["name"]])
        else:
            assert item["state"] == "lowQuality" and quality < 50, item
    assert len(distances) >= 14, distances
    assert max(distances.values()) <= 10, distances
    original = reference["bridge-1-original.jpg"]
    far = {e["name"]: distance(e["pdq"], original) for e in edits}
    assert max(far.values()) <= 31, far
    print("max JS PDQ distance to Meta's reference:", max(distances.values()), "edits:", far)


@needs_browser
@needs_data
async def test_large_jpegs_hash_alike_in_the_page_and_in_the_node(
    net: tuple[NodeProc, NodeProc], tmp_path: Path
) -> None:
    """Large JPEGs are reduced differently (the page box-averages a canvas, the node decodes
    at a DCT scale to the Y plane and folds its resize into PDQ's filters): both must stay
    close, or a victim's report would not match the platform's copy of the same photo."""
    from PIL import Image, ImageEnhance

    from hashmesh.node.hashing.hasher import hash_file

    files = []
    for name, saturation, width in (
        ("bridge-1-original.jpg", 1.0, 2400),
        ("bridge-1-original.jpg", 2.5, 3000),
        ("bridge-2-rotate-90.jpg", 1.0, 1800),
        ("q1050.jpg", 1.0, 2000),
        ("q2821.jpg", 1.5, 2600),
        ("q0291.jpg", 1.0, 1500),
    ):
        with Image.open(PDQ_DATA / "images" / name) as im:
            picture = ImageEnhance.Color(im.convert("RGB")).enhance(saturation)
        big = picture.resize((width, width * im.height // im.width), Image.Resampling.BICUBIC)
        path = tmp_path / f"large-{len(files)}-{name}"
        big.save(path, quality=90)
        files.append(path)
    async with Browser(tmp_path / "profile") as browser:
        await open_page(browser, net[0])
        items = await choose(browser, files)
    by_name = {item["name"]: item for item in items}
    distances = {}
    for path in files:
        node = hash_file(path)
        assert node.pdq is not None and node.quality is not None and node.quality >= 80
        distances[path.name] = distance(by_name[path.name]["pdq"], node.pdq)
    print("page vs node PDQ distance on large JPEGs:", distances)
    assert max(distances.values()) <= 10, distances


@needs_browser
async def test_languages_follow_the_browser_and_switch(
    net: tuple[NodeProc, NodeProc], tmp_path: Path
) -> None:
    hotline, _ = net
    heading = "document.querySelector('h1').textContent"
    async with Browser(tmp_path / "nl", accept_language="nl-BE,nl") as browser:
        await open_page(browser, hotline)
        assert await browser.evaluate("document.documentElement.lang") == "nl"
        assert await browser.evaluate(heading) == "Haal het offline"
        assert "verlaten dit toestel nooit" in await browser.evaluate("document.body.innerText")
        await browser.evaluate("document.querySelector('button[data-lang=fr]').click()")
        assert await browser.evaluate(heading) == "Fais-le retirer"
        assert await browser.evaluate("document.documentElement.lang") == "fr"
        pressed = "document.querySelector('button[data-lang=fr]').getAttribute('aria-pressed')"
        assert await browser.evaluate(pressed) == "true"
        await browser.evaluate("document.querySelector('button[data-lang=en]').click()")
        assert await browser.evaluate(heading) == "Take it down"
        missing = await browser.evaluate(
            "(() => { const s = HashmeshI18n.STRINGS; const keys = Object.keys(s.en);"
            " return ['nl', 'fr']"
            ".flatMap(l => keys.filter(k => !(k in s[l])).map(k => l + ':' + k))"
            ".concat(Object.keys(s.nl).concat(Object.keys(s.fr)).filter(k => !(k in s.en))); })()"
        )
        assert missing == []
        # every control has a label a screen reader can read
        unlabeled = await browser.evaluate(
            "[...document.querySelectorAll('input')].filter(i => !i.labels.length).length"
        )
        assert unlabeled == 0
    async with Browser(tmp_path / "fr", accept_language="fr-BE,fr") as browser:
        await open_page(browser, hotline)
        assert await browser.evaluate(heading) == "Fais-le retirer"
        assert await browser.evaluate("document.getElementById('hotline').textContent") == (
            "Un service de childfocus"
        )
    async with Browser(tmp_path / "de", accept_language="de-DE,de") as browser:
        await open_page(browser, hotline)
        assert await browser.evaluate(heading) == "Take it down"


@needs_browser
async def test_status_page_shows_self_reports(
    net: tuple[NodeProc, NodeProc], tmp_path: Path
) -> None:
    hotline, platform = net
    assert submit(hotline, [{"type": "md5", "value": md5_of(40)}])[0] == 200
    async with Browser(tmp_path / "hotline") as browser:
        await browser.goto(f"{hotline.url}/status#token={hotline.admin_token()}")
        await browser.wait_for("!document.getElementById('selfreport').hidden")
        text = await browser.evaluate("document.getElementById('selfreport').innerText")
        assert "Self-reports (/takeitdown/, collection takeitdown)" in text
        assert int(await browser.evaluate("document.getElementById('sr-cases').textContent")) >= 1
        assert "Platforms:" in text
    async with Browser(tmp_path / "platform") as browser:  # not enabled there: no section
        await browser.goto(f"{platform.url}/status#token={platform.admin_token()}")
        await browser.wait_for("!document.getElementById('content').hidden")
        await browser.wait_for("document.querySelector('#recent tbody').children.length > 0")
        assert await browser.evaluate("document.getElementById('selfreport').hidden")
