"""The self-report logo ([selfreport] logo): read and checked once when the config loads,
served from memory with an ETag, and limited per visitor like the page's API.

Before, GET /takeitdown/logo re-read the file (up to 256 KiB) on every request with no
limit, and a missing or bad file showed up only as a broken image on the page a person in
distress was looking at. Real node processes; visitors are told apart by the proxy header
([selfreport] client_ip_header), as behind an operator's reverse proxy.
"""

from __future__ import annotations

import json
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from netnodes import NodeProc, wait_for
from test_selfreport_branding import logo_png

from hashmesh.node.config import SELFREPORT_MAX_LOGO_BYTES, Home
from hashmesh.node.web.selfreport import LOGO_PER_SUBMIT

HEADER = "X-Forwarded-For"
SUBMITS = 1
ALLOWANCE = SUBMITS * LOGO_PER_SUBMIT


def fetch(
    node: NodeProc, path: str, address: str = "", **headers: str
) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(node.url + path, headers=headers)
    if address:
        request.add_header(HEADER, address)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def write_selfreport(home: Path, **values: object) -> None:
    """Settings written by hand, as an operator edits config.toml (the node's own save
    does not look at the logo file)."""
    path = home / "config.toml"
    data = tomllib.loads(path.read_text())
    data.setdefault("selfreport", {}).update(values)
    path.write_text(tomli_w.dumps(data))


@pytest.fixture(scope="module")
def hotline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    node = NodeProc(tmp_path_factory.mktemp("logo"), "hotline")
    (node.home / "logo.png").write_bytes(logo_png())
    write_selfreport(
        node.home,
        enabled=True,
        logo="logo.png",
        client_ip_header=HEADER,
        submits_per_hour=SUBMITS,
    )
    node.start()
    yield node
    node.kill()


def test_logo_is_served_from_memory_with_an_etag(hotline: NodeProc) -> None:
    original = (hotline.home / "logo.png").read_bytes()
    (hotline.home / "logo.png").write_bytes(b"changed on disk after the config loaded")
    try:
        status, body, headers = fetch(hotline, "/takeitdown/logo", "192.0.2.1")
        assert status == 200 and body == original
        assert headers["Content-Type"] == "image/png"
        assert headers["Cache-Control"] == "no-store"  # no trace in a shared device's cache
        etag = headers["ETag"]
        assert etag.startswith('"') and etag.endswith('"')
        status, body, headers = fetch(
            hotline, "/takeitdown/logo", "192.0.2.1", **{"If-None-Match": f'"other", W/{etag}'}
        )
        assert status == 304 and body == b"" and headers["ETag"] == etag
    finally:
        (hotline.home / "logo.png").write_bytes(original)


def test_a_logo_flood_gets_429_and_others_are_still_served(hotline: NodeProc) -> None:
    flooder = "198.51.100.7"
    codes = [fetch(hotline, "/takeitdown/logo", flooder)[0] for _ in range(ALLOWANCE + 30)]
    assert codes == [200] * ALLOWANCE + [429] * 30, codes
    status, body, _ = fetch(hotline, "/takeitdown/logo", flooder)
    assert status == 429 and "too many requests" in json.loads(body)["error"]
    status, body, _ = fetch(hotline, "/takeitdown/logo", "203.0.113.9")
    assert status == 200 and body.startswith(b"\x89PNG")
    assert fetch(hotline, "/takeitdown/api/info", flooder)[0] == 200
    assert fetch(hotline, "/takeitdown/", flooder)[0] == 200


def test_a_running_node_keeps_its_logo_when_the_new_one_is_bad(hotline: NodeProc) -> None:
    log = hotline.home / "run.log"
    before = log.read_text(errors="replace").count("config not reloaded")
    write_selfreport(hotline.home, logo="gone.png")
    try:
        wait_for(lambda: log.read_text(errors="replace").count("config not reloaded") > before)
        assert "selfreport.logo 'gone.png': no such file" in log.read_text(errors="replace")
        status, body, _ = fetch(hotline, "/takeitdown/logo", "192.0.2.50")
        assert status == 200 and body == (hotline.home / "logo.png").read_bytes()
    finally:
        write_selfreport(hotline.home, logo="logo.png")


def test_logo_file_problems_are_refused_at_config_load(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "badlogo")
    outside = tmp_path / "outside.png"
    outside.write_bytes(logo_png())
    (node.home / "link.png").symlink_to(outside)
    (node.home / "notes.png").write_text("not an image")
    (node.home / "huge.png").write_bytes(logo_png() + b"\0" * SELFREPORT_MAX_LOGO_BYTES)
    (node.home / "folder.png").mkdir()
    cases = {
        "missing.png": f"no such file in {node.home.resolve()}",
        "link.png": "the file is outside the node's home",
        "notes.png": "the file is not a PNG, JPEG, WebP or GIF image",
        "huge.png": "the file is larger than 256 KiB",
        "folder.png": "not a regular file",
    }
    for name, why in cases.items():
        write_selfreport(node.home, enabled=True, logo=name)
        result = node.cli("run", check=False)
        assert result.returncode == 2, (name, result.returncode, result.stderr)
        assert f"selfreport.logo {name!r}: {why}" in result.stderr, (name, result.stderr)
        assert result.stderr.count("selfreport.logo") == 1, result.stderr
    (node.home / "good.png").write_bytes(logo_png())
    write_selfreport(node.home, logo="good.png")
    loaded = Home(node.home).load_config().logo_image
    assert loaded is not None and loaded.body == logo_png() and loaded.content_type == "image/png"
