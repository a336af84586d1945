"""`hashmesh demo`: four real node processes on loopback telling hashmesh's story.

ncmec (a clearing house), childfocus (a national hotline), platform (a service matching
uploads) and police (a law-enforcement unit). `csam` is shared among all; `le-only` flows
between police and ncmec only. childfocus is not linked to the platform directly: its
hashes reach the platform through ncmec, which relays batches it cannot forge.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from hashmesh.testing import ANY_PORT, NodeRun, stop_all

SHARED_IMAGES = (
    Path(__file__).resolve().parents[3].parent / "shared" / "testdata" / "pdq" / "images"
)
DEMO_IMAGES = ("bridge-1-original.jpg", "c.png", "q0122.jpg")
NAMES = ("ncmec", "childfocus", "platform", "police")


@dataclass(eq=False)
class DemoNode:
    name: str
    home: Path
    node_id: str = ""
    token: str = ""
    run: NodeRun | None = None

    @property
    def url(self) -> str:
        assert self.run is not None and self.run.api, f"{self.name} is not running"
        return self.run.api

    def cli(self, *args: str) -> str:
        cmd = [sys.executable, "-m", "hashmesh", "--home", str(self.home), *args]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if result.returncode not in (0, 1):
            raise RuntimeError(f"{self.name}: hashmesh {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def api(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def peer_state(self, name: str) -> dict[str, Any]:
        peers = self.api("/v1/status")["peers"]
        found: dict[str, Any] = next(p for p in peers if p["name"] == name)
        return found

    def match(self, signal_type: str, value: str) -> dict[str, Any]:
        result: dict[str, Any] = self.api(
            "/v1/match", {"queries": [{"type": signal_type, "value": value}]}
        )
        return result


@dataclass
class Row:
    """One line of the summary: what the command took, and how long after it returned the
    change was visible on the other node (None where a figure does not apply)."""

    what: str
    result: str
    command_s: float | None = None
    visible_s: float | None = None

    def cells(self) -> tuple[str, str, str, str]:
        return (self.what, self.result, _ms(self.command_s), _ms(self.visible_s))


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


SUMMARY_HEADER = ("step", "result", "command", "visible after")
SUMMARY_NOTE = (
    "command: the hashmesh command's own wall time (a new process each time); visible after:"
    " from its return until the other node shows the change"
)


@dataclass
class Story:
    rows: list[Row] = field(default_factory=list)
    start: float = field(default_factory=time.monotonic)

    def step(self, text: str) -> None:
        print(f"\n== {text}", flush=True)

    def say(self, text: str) -> None:
        print(f"   {text}", flush=True)

    def record(
        self,
        what: str,
        result: str,
        command_s: float | None = None,
        visible_s: float | None = None,
    ) -> None:
        row = Row(what, result, command_s, visible_s)
        self.rows.append(row)
        times = [
            f"{label} {cell}"
            for label, cell in zip(SUMMARY_HEADER[2:], row.cells()[2:], strict=True)
        ]
        self.say(f"{what}: {result} ({', '.join(times)})")

    def timed(self, node: DemoNode, *args: str) -> tuple[str, float]:
        """Run one CLI command; the clock for "visible after" starts when it returns."""
        t = time.monotonic()
        out = node.cli(*args)
        return out, time.monotonic() - t


def _wait(predicate: Callable[[], bool], timeout: float = 30.0) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise RuntimeError("the network did not converge in time")
        time.sleep(0.02)
    return time.monotonic() - start


def _images(folder: Path) -> list[Path]:
    """Reference images when the repository's test data is at hand; generated ones otherwise."""
    found = [SHARED_IMAGES / n for n in DEMO_IMAGES if (SHARED_IMAGES / n).exists()]
    if len(found) == len(DEMO_IMAGES):
        return found
    import numpy as np

    rng = np.random.default_rng(7)
    out = []
    for i in range(3):
        base = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        image = Image.fromarray(base).resize((512, 512), Image.Resampling.BICUBIC)
        path = folder / f"picture-{i}.jpg"
        image.save(path, quality=95)
        out.append(path)
    return out


def _reencode(source: Path, target: Path) -> None:
    with Image.open(source) as image:
        copy = image.convert("RGB")
        copy = copy.resize((copy.width * 3 // 4, copy.height * 3 // 4))
        copy.save(target, quality=60)


def run_demo(folder: str | None = None, keep_running: bool = False) -> int:
    root = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="hashmesh-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    nodes = {name: DemoNode(name, root / name) for name in NAMES}
    story = Story()
    interrupted = False

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        _setup(nodes, story)
        _tell(nodes, story, root)
        _summary(story, root)
        if keep_running:
            story.say("nodes keep running; press Ctrl-C to stop them")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping the nodes", flush=True)
    finally:
        stop_all([n.run for n in nodes.values() if n.run is not None], timeout=15)
        signal.signal(signal.SIGTERM, previous)
    print(f"\nthe nodes' homes are in {root}", flush=True)
    return 130 if interrupted else 0


def _setup(nodes: dict[str, DemoNode], story: Story) -> None:
    story.step("Four organisations each start a node (separate processes on 127.0.0.1)")
    for node in nodes.values():
        cmd = [
            sys.executable,
            "-m",
            "hashmesh",
            "init",
            str(node.home),
            "--name",
            node.name,
            "--listen",
            ANY_PORT,
        ]
        node.node_id = subprocess.run(
            cmd, capture_output=True, text=True, check=True
        ).stdout.strip()
        node.token = (node.home / "admin.token").read_text().strip()
        config = node.home / "config.toml"
        config.write_text(config.read_text().replace("interval_s = 30.0", "interval_s = 5.0"))
        story.say(f"{node.name:<11} {node.node_id}")
    ncmec, childfocus, platform, police = (nodes[n] for n in NAMES)
    trust = {
        ncmec: [(childfocus, "csam"), (platform, "csam"), (police, "csam"), (police, "le-only")],
        childfocus: [(ncmec, "csam"), (platform, "csam")],
        platform: [(ncmec, "csam"), (childfocus, "csam")],
        police: [(ncmec, "csam"), (childfocus, "csam"), (ncmec, "le-only")],
    }
    for node, entries in trust.items():
        for author, collection in entries:
            node.cli("trust", "add", author.node_id, collection, "--name", author.name)
    # Each node binds a free port itself (listen 127.0.0.1:0) and reports it in node.json;
    # the links are made once the addresses are known, through the running nodes' API.
    runs = [NodeRun(node.home, node.home / "run.log") for node in nodes.values()]
    for node, run in zip(nodes.values(), runs, strict=True):
        node.run = run
        run.wait_ready(timeout=30)
    story.say("all four nodes are running")

    def link(a: DemoNode, b: DemoNode, *collections: str) -> None:
        shares = [x for c in collections for x in ("--share", c)]
        a.cli("peer", "add", b.name, b.url, b.node_id, *shares)
        b.cli("peer", "add", a.name, a.url, a.node_id, *shares)

    links = [(childfocus, ncmec), (ncmec, platform), (ncmec, police)]
    link(childfocus, ncmec, "csam")
    link(ncmec, platform, "csam")
    link(ncmec, police, "csam", "le-only")
    for a, b in links:  # the story's clocks start once every link has synced once
        _wait(partial(_linked, a, b))
    story.say("links: childfocus - ncmec - platform, ncmec - police; csam shared by all,")
    story.say("le-only only between police and ncmec; the platform trusts ncmec and childfocus")


def _linked(a: DemoNode, b: DemoNode) -> bool:
    return bool(a.peer_state(b.name).get("reachable") and b.peer_state(a.name).get("reachable"))


def _round_since(node: DemoNode, peer: DemoNode, since_ms: int) -> bool:
    """True once `node` completed a sync round with `peer` that began after `since_ms`: the
    witness that what `peer` holds had its chance to reach `node`."""
    state = node.peer_state(peer.name)
    began = state.get("last_attempt_ms") or 0
    return bool(began > since_ms and (state.get("last_sync_ms") or 0) >= began)


def _tell(nodes: dict[str, DemoNode], story: Story, root: Path) -> None:
    ncmec, childfocus, platform, police = (nodes[n] for n in NAMES)
    images = _images(root)

    story.step("childfocus hashes pictures on the analyst's machine and publishes the hashes")
    text, took = story.timed(
        childfocus, "submit", *map(str, images), "-c", "csam", "--category", "csam", "--json"
    )
    out = json.loads(text)
    pdq = [s for s in out["signals"] if s["type"] == "pdq"]
    story.record(
        "childfocus submit", f"{len(out['signals'])} hashes of {len(images)} pictures", took
    )
    story.say(
        "only hashes left the machine: "
        + ", ".join(f"{s['type']} {s['value'][:16]}..." for s in pdq)
    )

    story.step(
        "ncmec relays the signed batches; the platform verifies childfocus's signature itself"
    )
    first = pdq[0]
    elapsed = _wait(lambda: platform.match("pdq", first["value"])["matched"])
    story.record(
        "childfocus -> ncmec -> platform", "pdq matchable on the platform", visible_s=elapsed
    )

    story.step("a user uploads a re-encoded, resized copy of the first picture to the platform")
    copy = root / "upload-reencoded.jpg"
    _reencode(images[0], copy)
    text, took = story.timed(platform, "match", "--file", str(copy), "--json")
    result = json.loads(text)
    hits = [m for r in result["results"] for m in r["matches"]]
    best = min(hits, key=lambda m: m["distance"]) if hits else None
    if best is None:
        raise RuntimeError("the re-encoded copy did not match")
    story.record(
        "platform match --file",
        f"PDQ distance {best['distance']}, published by {best['author_name']} ({best['category']})",
        took,
    )

    story.step("police adds a case hash to the restricted collection le-only")
    case_hash = "9" * 64
    _, took = story.timed(
        police,
        "add",
        *("sha256", case_hash, "-c", "le-only", "--category", "csam", "--ref", "case-2026-0042"),
    )
    elapsed = _wait(lambda: ncmec.match("sha256", case_hash)["matched"])
    story.record("police -> ncmec (le-only)", "ncmec can match the case hash", took, elapsed)
    since = int(time.time() * 1000)
    _wait(lambda: _round_since(platform, ncmec, since) and _round_since(ncmec, platform, since))
    leaked = platform.match("sha256", case_hash)["matched"]
    outcome = "not there after a sync round with ncmec" if not leaked else "LEAKED"
    story.record("platform (no le-only access)", outcome)
    if leaked:
        raise RuntimeError("le-only reached the platform")

    story.step("childfocus finds one hash was a mistake and revokes it")
    mistaken = pdq[-1]
    _, took = story.timed(childfocus, "revoke", mistaken["op_id"], "--reason", "not CSAM on review")
    elapsed = _wait(lambda: not platform.match("pdq", mistaken["value"])["matched"])
    story.record("revocation reaches the platform", "platform no longer matches it", took, elapsed)

    story.step("the platform reviews a match, finds a false positive and disputes it")
    disputed = next(s for s in out["signals"] if s["type"] == "md5")
    _, took = story.timed(platform, "opinion", disputed["op_id"], "dispute")

    def childfocus_sees() -> bool:
        matches = childfocus.match("md5", disputed["value"])["results"][0]["matches"]
        return bool(matches) and matches[0]["opinions"]["dispute"] >= 1

    elapsed = _wait(childfocus_sees)
    story.record(
        "platform dispute -> childfocus", "childfocus sees dispute=1 on its hash", took, elapsed
    )


def _summary(story: Story, root: Path) -> None:
    story.step("summary")
    for line in summary_lines(story.rows):
        print(f"   {line}", flush=True)
    total = time.monotonic() - story.start
    print(f"   total {total:.1f} s", flush=True)
    if os.environ.get("HASHMESH_DEMO_JSON"):
        rows = [[r.what, r.result, r.command_s, r.visible_s] for r in story.rows]
        Path(os.environ["HASHMESH_DEMO_JSON"]).write_text(json.dumps(rows))


def summary_lines(rows: list[Row]) -> list[str]:
    """The note, the header and one line per row, every column as wide as its widest cell."""
    table = [SUMMARY_HEADER, *(r.cells() for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(SUMMARY_HEADER))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]
    return [f"({SUMMARY_NOTE})", *lines]
