"""Videos on the self-report page: vPDQ of one frame a second, hashed in the browser.

The page decodes a chosen video through a <video> element and a canvas (video.js) and
hashes each second's frame with its own PDQ (pdq.js). These tests choose Meta's sample
videos (../shared/testdata/video, H.264 in MP4, which Debian's Chromium decodes) in real
Chromium (tests/cdp.py) and compare every frame hash with Meta's vpdq reference output for
the same video: the reference line closest in time to the page's frame.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import statistics
import struct
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cdp import CHROMIUM, Browser
from netnodes import NodeProc, later_record_arrives, wait_for
from testdata import TESTDATA

from hashmesh.node.config import Home
from hashmesh.protocol.signals import VpdqFrame, VPDQSignal

VIDEO = TESTDATA / "video"
VIDEOS = VIDEO / "videos"
REFERENCE = VIDEO / "vpdq-hashes"
#: Meta's matching rule counts a frame as matched within 31 bits; the page's frames must
#: stay well inside it. Measured (Chromium 156): chair clips at most 4 bits, doorknob 12
#: (a frame of quality 74), test-padded-dimensions 8.
FRAME_BOUND = 16
#: Most frames are far closer (the decoders differ in rounding only): the median frame.
MEDIAN_BOUND = 2
#: The quality floor of the page's frames (the node's min_pdq_quality default).
MIN_QUALITY = 50
COLLECTION = "takeitdown"
POW_BITS = 4

needs_browser = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("HASHMESH_REQUIRE_BROWSER"),
    reason="no chromium here (CI installs it and sets HASHMESH_REQUIRE_BROWSER=1)",
)
needs_videos = pytest.mark.skipif(not REFERENCE.exists(), reason="video test data missing")

ITEMS_JS = "JSON.stringify([...document.querySelectorAll('#items li')].map(l => ({...l.dataset})))"
HASHED_JS = (
    "document.querySelectorAll('#items li').length === {n} && "
    "![...document.querySelectorAll('#items li')].some(l => l.dataset.state === 'hashing')"
)


def reference(name: str) -> list[tuple[int, int, str, float]]:
    """Meta's vpdq lines for a video: frame number, quality, PDQ hex, timestamp seconds."""
    rows = []
    for line in (REFERENCE / f"{name}.txt").read_text().split():
        frame, quality, pdq, seconds = line.split(",")
        rows.append((int(frame), int(quality), pdq, float(seconds)))
    return rows


def distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def frames_of(value: str) -> list[tuple[float, int, str, int]]:
    """The page's vpdq value (the signal type's canonical form): (seconds, quality, pdq,
    frame number) a frame."""
    assert VPDQSignal.normalize(value) == value
    return [(f.seconds, f.quality, f.pdq, f.number) for f in VPDQSignal.parse(value)]


def compare(name: str, value: str) -> list[int]:
    """Each page frame's distance to the reference frame closest to it in time."""
    rows = reference(name)
    out = []
    for seconds, quality, pdq, number in frames_of(value):
        closest = min(rows, key=lambda row: abs(row[3] - seconds))
        assert quality >= MIN_QUALITY
        assert abs(number - closest[0]) <= 1, (name, seconds, number, closest)
        out.append(distance(pdq, closest[2]))
    return out


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProc, NodeProc]]:
    """A hotline with the page on and a platform that trusts it for the collection."""
    root = tmp_path_factory.mktemp("selfreport-video")
    hotline, platform = NodeProc(root, "childfocus"), NodeProc(root, "platform")
    home = Home(hotline.home)
    config = home.load_config()
    config.selfreport_enabled = True
    config.selfreport_pow_bits = POW_BITS
    config.selfreport_submits_per_hour = config.selfreport_total_submits_per_hour = 1000
    config.selfreport_checks_per_hour = 1000
    home.save_config(config)
    hotline.peer(platform, COLLECTION)
    platform.peer(hotline, COLLECTION)
    platform.trust(hotline, COLLECTION)
    hotline.start()
    platform.start()
    yield hotline, platform
    hotline.kill()
    platform.kill()


@pytest.fixture
def hotline(net: tuple[NodeProc, NodeProc]) -> NodeProc:
    return net[0]


async def choose(browser: Browser, node: NodeProc, files: list[Path]) -> list[dict[str, str]]:
    await browser.goto(node.url + "/takeitdown/")
    await browser.wait_for("document.body.dataset.ready === 'true'")
    await browser.set_files("#files", files)
    await browser.wait_for(HASHED_JS.format(n=len(files)), timeout=120)
    items: list[dict[str, str]] = json.loads(await browser.evaluate(ITEMS_JS))
    return items


def check_conformance(items: list[dict[str, str]]) -> dict[str, list[int]]:
    found = {}
    for item in items:
        path = VIDEOS / item["name"]
        assert item["md5"] == hashlib.md5(path.read_bytes()).hexdigest()
        assert item["state"] == "videoHashed", item
        frames = frames_of(item["vpdq"])
        rows = reference(path.stem)
        seconds = [s for s, _, _, _ in frames]
        assert seconds == sorted(set(seconds)) and all(s == int(s) for s in seconds)
        # one frame a second, all of them but those under the quality floor
        duration = rows[-1][3]
        kept = [s for s in range(math.ceil(duration)) if s not in seconds]
        for missing in kept:
            closest = min(rows, key=lambda row: abs(row[3] - missing))
            assert closest[1] < MIN_QUALITY + 10, (item["name"], missing, closest)
        found[item["name"]] = compare(path.stem, item["vpdq"])
    every = [d for ds in found.values() for d in ds]
    assert max(every) <= FRAME_BOUND, found
    assert statistics.median(every) <= MEDIAN_BOUND, found
    return found


@needs_browser
@needs_videos
async def test_page_frame_hashes_match_metas_vpdq(hotline: NodeProc, tmp_path: Path) -> None:
    """Three samples of different kinds: an SD clip with a bar, an HD clip with a frame of
    quality 0 (left out), and one whose coded size is padded."""
    files = [VIDEOS / f"{n}.mp4" for n in ("chair-orig-22-sd-bar", "doorknob-hd-no-bar")]
    files.append(VIDEOS / "test-padded-dimensions.mp4")
    async with Browser(tmp_path / "profile") as browser:
        items = await choose(browser, hotline, files)
        shown = await browser.evaluate("document.getElementById('hashlist').textContent")
        assert await browser.evaluate("document.querySelectorAll('#items progress').length") == 0
        assert await browser.evaluate("document.querySelectorAll('#items canvas').length") == 3
        assert browser.console == [], browser.console
    found = check_conformance(items)
    assert len(found["chair-orig-22-sd-bar.mp4"]) == 23
    assert len(found["doorknob-hd-no-bar.mp4"]) == 3  # seconds 2 and 3 are under quality 50
    for item in items:
        assert item["md5"] in shown and item["vpdq"].split(" ")[0] in shown
    print("page vs Meta's vpdq, bits per frame:", found)


@needs_browser
@needs_videos
@pytest.mark.slow
async def test_page_frame_hashes_match_metas_vpdq_on_every_sample(
    hotline: NodeProc, tmp_path: Path
) -> None:
    files = sorted(VIDEOS.glob("*.mp4"))
    async with Browser(tmp_path / "profile") as browser:
        items = await choose(browser, hotline, files)
    found = check_conformance(items)
    assert len(found) == len(files) == 9
    print("page vs Meta's vpdq, max bits per video:", {k: max(v) for k, v in found.items()})


@needs_browser
@needs_videos
async def test_page_states_its_caps_and_keeps_to_them(hotline: NodeProc, tmp_path: Path) -> None:
    """The caps are on the page before a file is chosen; a file over the size cap is not
    read at all (nothing is sent for it), and a video longer than the duration cap gets
    frames for its first part only."""
    large = tmp_path / "large.mp4"
    with open(large, "wb") as fh:  # sparse: the page must refuse it from its size alone
        fh.truncate(1000 * 1000 * 1000 + 1)
    async with Browser(tmp_path / "profile") as browser:
        (item,) = await choose(browser, hotline, [large])
        text = await browser.evaluate("document.body.innerText")
        assert "Videos: files up to 1 GB. The first 10 minutes are fingerprinted" in text
        assert item["state"] == "videoTooLarge" and "md5" not in item, item
        assert "larger than 1 GB" in await browser.evaluate(
            "document.querySelector('#items li .state').textContent"
        )
        assert await browser.evaluate("document.getElementById('hashlist').children.length") == 0
        # The duration cap, on a 22-second sample with a cap of 5 seconds.
        await browser.evaluate(
            "const probe = document.createElement('input'); probe.type = 'file';"
            " probe.id = 'probe'; document.body.appendChild(probe)"
        )
        await browser.set_files("#probe", [VIDEOS / "chair-orig-22-sd-bar.mp4"])
        result = await browser.evaluate(
            "HashmeshVideo.hashVideo(document.getElementById('probe').files[0],"
            " { maxSeconds: 5, minQuality: 50 })"
        )
        assert result["truncated"] is True and 22 < result["duration"] < 23
        assert [f["t"] for f in result["frames"]] == [0, 1, 2, 3, 4]


def rotated(source: Path, target: Path, matrix: tuple[int, int, int, int]) -> Path:
    """`source` with its video track's matrix set to a rotation, as a phone writes a portrait
    video (landscape frames stored, the turn in the track header): the frames are the same."""
    data = bytearray(source.read_bytes())
    at = data.index(b"tkhd") + 4
    start = at + (36 if data[at] == 1 else 24) + 16
    a, b, c, d = (v * 65536 for v in matrix)
    data[start : start + 36] = struct.pack(">9i", a, b, 0, c, d, 0, 0, 0, 1 << 30)
    target.write_bytes(data)
    return target


@needs_browser
@needs_videos
async def test_a_rotated_video_is_hashed_as_stored(hotline: NodeProc, tmp_path: Path) -> None:
    """Browsers draw a rotated video upright; Meta's vpdq and the node hash the stored frames
    (about 128 bits apart at 90 degrees). The page must turn the frames back."""
    source = VIDEOS / "doorknob-hd-no-bar.mp4"  # landscape, 5 seconds
    files = [source]
    for degrees, matrix in ((90, (0, 1, -1, 0)), (180, (-1, 0, 0, -1)), (270, (0, -1, 1, 0))):
        files.append(rotated(source, tmp_path / f"turned-{degrees}.mp4", matrix))
    async with Browser(tmp_path / "profile") as browser:
        items = await choose(browser, hotline, files)
        size = "[...document.querySelectorAll('#items canvas')].map(c => c.width).join()"
        assert await browser.evaluate(size) == "144,144,144,144"
    by_name = {item["name"]: item for item in items}
    stored = by_name[source.name]["vpdq"]
    assert max(compare(source.stem, stored)) <= FRAME_BOUND
    for path in files[1:]:
        turned = frames_of(by_name[path.name]["vpdq"])
        pairs = zip(turned, frames_of(stored), strict=True)
        print(path.name, [distance(a[2], b[2]) for a, b in pairs])
        assert by_name[path.name]["vpdq"] == stored, path.name


# -- the submit route ----------------------------------------------------------------------


def call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def submit(node: NodeProc, signals: list[dict[str, Any]]) -> tuple[int, Any]:
    status, got = call("GET", node.url + "/takeitdown/api/challenge")
    assert status == 200, got
    n = 0
    while int.from_bytes(hashlib.sha256(f"{got['challenge']}:{n}".encode()).digest(), "big") >> (
        256 - got["bits"]
    ):
        n += 1
    body = {"challenge": got["challenge"], "solution": str(n), "category": "ncii"}
    return call("POST", node.url + "/takeitdown/api/submit", {**body, "signals": signals})


def one_a_second(name: str, minimum: int = MIN_QUALITY) -> list[VpdqFrame]:
    """Meta's reference frames of a sample at one a second (every 30th: the samples are 30
    frames a second), those of quality `minimum` and up, as the page sends them."""
    frames = []
    for number, quality, pdq, seconds in reference(name):
        if number % 30 == 0 and quality >= minimum:
            frames.append(VpdqFrame(number, quality, pdq, round(seconds * 1000)))
    return frames


def live(node: NodeProc, signal_type: str) -> set[str]:
    """The live values of a type in the collection, as `export-list` writes them."""
    out = node.home / "live.json"
    node.cli("export-list", "csv", str(out), "-c", COLLECTION)
    rows = list(csv.DictReader(out.open()))
    return {row["value"] for row in rows if row["type"] == signal_type}


@needs_videos
def test_a_video_is_published_and_withdrawn(net: tuple[NodeProc, NodeProc]) -> None:
    hotline, platform = net
    status, info = call("GET", hotline.url + "/takeitdown/api/info")
    assert status == 200 and info["max_video_frames"] == 600
    value = VPDQSignal.format(one_a_second("chair-20-sd-bar"))
    md5 = hashlib.md5((VIDEOS / "chair-20-sd-bar.mp4").read_bytes()).hexdigest()
    lines = value.replace(" ", "\n")  # Meta's hash file as it is: the type reads it too
    status, case = submit(
        hotline, [{"type": "md5", "value": md5}, {"type": "vpdq", "value": lines}]
    )
    assert status == 200 and case["hashes"] == 2, case
    wait_for(lambda: value in live(platform, "vpdq"))
    creds = {"case": case["case"], "secret": case["secret"]}
    status, done = call("POST", hotline.url + "/takeitdown/api/withdraw", creds)
    assert status == 200 and done["revoked"] == 2, done
    wait_for(lambda: value not in live(platform, "vpdq"))


@needs_videos
def test_video_refusals_name_the_field_and_change_nothing(
    net: tuple[NodeProc, NodeProc],
) -> None:
    hotline, platform = net
    frames = one_a_second("chair-19-sd-bar")
    good = VPDQSignal.format(frames)

    def refused(signals: list[dict[str, Any]], needle: str) -> None:
        status, answer = submit(hotline, signals)
        assert status == 400 and needle in answer["error"], (needle, answer)

    vpdq = "vpdq"
    refused([{"type": vpdq, "value": good, "quality": 100}], "signals[0]: a vpdq hash has a")
    refused([{"type": vpdq, "value": frames}], "signals[0]: a vpdq value is a string")
    refused([{"type": vpdq, "value": "x" * 55_801}], "at most 55800 characters")
    refused(
        [{"type": vpdq, "value": good.replace(",", ";", 1)}], "signals[0]: vpdq value: frame[0]"
    )
    backwards = VPDQSignal.format(frames[:2])
    later, first = backwards.split(" ")[1], backwards.split(" ")[0]
    refused([{"type": vpdq, "value": later + " " + first}], "increasing order")
    many = [VpdqFrame(n, 100, frames[n % len(frames)].pdq, n * 1000) for n in range(601)]
    refused([{"type": vpdq, "value": VPDQSignal.format(many)}], "601 video frames, at most 600")
    low = [frames[0], frames[1]._replace(quality=10)]
    refused([{"type": vpdq, "value": VPDQSignal.format(low)}], "frame[1]: quality 10 is under 50")
    flat = [frames[0]._replace(pdq="0" * 64)]
    refused([{"type": vpdq, "value": VPDQSignal.format(flat)}], "frame[0]: refused, near-constant")
    four = [
        {"type": vpdq, "value": VPDQSignal.format([f._replace(number=f.number + k)])}
        for k, f in enumerate(frames[:4])
    ]
    refused(four, "at most 3 videos")
    status, _ = call("POST", hotline.url + "/takeitdown/api/submit", {"pad": "x" * 250_000})
    assert status == 400
    later_record_arrives(hotline, platform, COLLECTION)
    assert live(platform, "vpdq") == set()  # nothing of the refused reports went out


@needs_browser
@needs_videos
async def test_page_sends_a_videos_frames_and_md5(
    net: tuple[NodeProc, NodeProc], tmp_path: Path
) -> None:
    hotline, platform = net
    path = VIDEOS / "chair-22-sd-grey-bar.mp4"
    async with Browser(tmp_path / "profile") as browser:
        (item,) = await choose(browser, hotline, [path])
        shown = await browser.evaluate("document.querySelector('#hashlist .frames').textContent")
        assert shown == "vpdq " + item["vpdq"].replace(" ", "\n")  # one line a frame
        await browser.evaluate(
            "document.getElementById('cat-ncii').click(); document.getElementById('submit').click()"
        )
        await browser.wait_for("!document.getElementById('result').hidden", timeout=60)
        bodies = [r.get("postData", "") for r in browser.requests]
        assert browser.console == [], browser.console
    sent = json.loads(next(b for b in bodies if '"signals"' in b))["signals"]
    assert sent == [{"type": "md5", "value": item["md5"]}, {"type": "vpdq", "value": item["vpdq"]}]
    assert not any("ftyp" in b or "avc1" in b for b in bodies)  # hashes, not the file
    wait_for(lambda: item["vpdq"] in live(platform, "vpdq"))
    assert item["md5"] in live(platform, "md5")


def with_colour(source: Path, target: Path, matrix: int) -> Path:
    """`source` with a `colr` box (nclx) declaring colour matrix `matrix` (1 BT.709, 6
    BT.601) in its video sample entry: its media data comes first, so growing the boxes
    on the way to the entry (moov, trak, mdia, minf, stbl, stsd, avc1) moves no sample."""
    data = bytearray(source.read_bytes())

    def child(start: int, end: int, name: bytes) -> tuple[int, int]:
        while start < end:
            size = int.from_bytes(data[start : start + 4], "big")
            assert size >= 8, f"box of {size} bytes at {start}"
            if data[start + 4 : start + 8] == name and (
                name != b"trak" or b"vide" in data[start : start + size]
            ):
                return start, size
            start += size
        raise AssertionError(f"no {name!r} box")

    assert child(0, len(data), b"mdat")[0] < child(0, len(data), b"moov")[0]
    chain, (at, size) = [], child(0, len(data), b"moov")
    for name in (b"trak", b"mdia", b"minf", b"stbl", b"stsd"):
        chain.append(at)
        at, size = child(at + 8, at + size, name)
    chain += [
        at,
        at + 16,
    ]  # stsd (a full box: 8 bytes of header, 4 of flags, 4 of count) and its entry
    entry_size = int.from_bytes(data[at + 16 : at + 20], "big")
    primaries = 1 if matrix == 1 else 6
    colr = struct.pack(">I4s4sHHHB", 19, b"colr", b"nclx", primaries, primaries, matrix, 0)
    data[at + 16 + entry_size : at + 16 + entry_size] = colr
    for box in chain:
        grown = int.from_bytes(data[box : box + 4], "big") + len(colr)
        data[box : box + 4] = grown.to_bytes(4, "big")
    target.write_bytes(data)
    return target


@needs_browser
@needs_videos
async def test_the_luma_follows_the_colour_matrix_the_file_declares(
    hotline: NodeProc, tmp_path: Path
) -> None:
    """Meta's vpdq hashes each frame's Y (swscale's BT.601 RGB, then BT.601 luma); the
    browser converts with the matrix the file declares, BT.709 when none (Chromium). With
    BT.601 weights on a BT.709 conversion the padded sample lay 10-18 bits from Meta's."""
    source = VIDEOS / "test-padded-dimensions.mp4"  # no colr box; its media data first
    files = [source]
    for matrix in (1, 6):
        files.append(with_colour(source, tmp_path / f"declared-{matrix}.mp4", matrix))
    async with Browser(tmp_path / "profile") as browser:
        items = await choose(browser, hotline, files)
    by_name = {item["name"]: item for item in items}
    undeclared = compare(source.stem, by_name[source.name]["vpdq"])  # 14-18 with BT.601
    assert len(undeclared) == 5 and max(undeclared) <= 10, undeclared
    assert by_name["declared-1.mp4"]["vpdq"] == by_name[source.name]["vpdq"]
    bt601 = compare(source.stem, by_name["declared-6.mp4"]["vpdq"])
    assert len(bt601) == 5 and max(bt601) <= 6, bt601
