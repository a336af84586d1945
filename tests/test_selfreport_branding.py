"""The self-report page carries the hotline's own name, logo, site and contact line
([selfreport] display_name, logo, site_url, contact), says only what is true about
fingerprints, and shows which files were chosen, in every language it has. Checked in real
Chromium (tests/cdp.py) against a real node, with a screenshot per language."""

from __future__ import annotations

import base64
import io
import json
import os
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from cdp import CHROMIUM, Browser
from netnodes import NodeProc
from PIL import Image, ImageDraw

from hashmesh.node.config import Home

needs_browser = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("HASHMESH_REQUIRE_BROWSER"),
    reason="no chromium here (CI installs it and sets HASHMESH_REQUIRE_BROWSER=1)",
)

DISPLAY_NAME = "Child Focus"
SITE = "https://childfocus.example/help"
CONTACT = {
    "en": "Call 116 000, free, day and night",
    "nl": "Bel 116 000, gratis, dag en nacht",
    "fr": "Appelle le 116 000, gratuit, jour et nuit",
}
#: The old promise, per language: a PDQ hash can be partly inverted, so it must be gone.
FALSE_PROMISE = {
    "en": "can rebuild your picture",
    "nl": "kan er je foto mee terugmaken",
    "fr": "ne peut reconstruire ta photo",
}
#: What is true instead: a fingerprint shows far less, with no guarantee.
TRUTH = {
    "en": "rebuild a rough likeness",
    "nl": "ruwe gelijkenis",
    "fr": "image approximative",
}
CHOSEN = {"en": "2 files chosen", "nl": "2 bestanden gekozen", "fr": "2 fichiers choisis"}
WIDTH, HEIGHT = 800, 1200


def configure(node: NodeProc, **values: Any) -> None:
    home = Home(node.home)
    config = home.load_config()
    for key, value in values.items():
        setattr(config, "selfreport_" + key, value)
    home.save_config(config)


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def logo_png() -> bytes:
    image = Image.new("RGB", (120, 40), (200, 30, 40))
    ImageDraw.Draw(image).rectangle((10, 10, 60, 30), fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def photo(path: Path, seed: int) -> Path:
    image = Image.new("RGB", (200, 160), (20 * seed, 90, 160))
    draw = ImageDraw.Draw(image)
    for i in range(12):
        draw.ellipse(
            (i * 13 + seed, i * 9, i * 13 + 40, i * 9 + 50), fill=(250 - 15 * i, 40, i * 20)
        )
    image.save(path, "JPEG", quality=92)
    return path


@pytest.fixture(scope="module")
def hotline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    node = NodeProc(tmp_path_factory.mktemp("branding"), "hotline")
    (node.home / "logo.png").write_bytes(logo_png())
    configure(
        node,
        enabled=True,
        pow_bits=4,
        display_name=DISPLAY_NAME,
        logo="logo.png",
        site_url=SITE,
        contact=dict(CONTACT),
    )
    node.start()
    yield node
    node.kill()


def bad_config(node: NodeProc, **values: Any) -> str:
    """`run` with these settings written by hand (the node's own save refuses them): exit 2
    and the error text."""
    path = node.home / "config.toml"
    data = tomllib.loads(path.read_text())
    data["selfreport"].update(values)
    path.write_text(tomli_w.dumps(data))
    result = node.cli("run", check=False)
    assert result.returncode == 2, (values, result.returncode, result.stderr)
    return result.stderr


def bad_config_reset(node: NodeProc) -> None:
    path = node.home / "config.toml"
    data = tomllib.loads(path.read_text())
    data["selfreport"].update(site_url="", logo="", display_name="", contact={})
    path.write_text(tomli_w.dumps(data))


@pytest.mark.slow
def test_bad_settings_are_refused_at_config_load(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "badconfig")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"site_url": "http://childfocus.example"}, "selfreport.site_url 'http://"),
        ({"site_url": "javascript:alert(1)"}, "selfreport.site_url 'javascript"),
        ({"logo": "../outside.png"}, "selfreport.logo '../outside.png': must be a file name"),
        ({"logo": "/etc/passwd.png"}, "selfreport.logo '/etc/passwd.png': must be a file name"),
        ({"logo": "logo.svg"}, "selfreport.logo 'logo.svg': must be a .png"),
        ({"display_name": "x" * 81}, "selfreport.display_name must be 1-80"),
        ({"display_name": "two\nlines"}, "selfreport.display_name must be 1-80"),
        ({"contact": {"de": "Ruf an"}}, "selfreport.contact.de is not a language"),
        ({"contact": {"en": "a" * 301}}, "selfreport.contact.en must be 1-300"),
        ({"contact": {"en": ""}}, "selfreport.contact.en must be 1-300"),
        ({"contact": {"en": 116000}}, "selfreport.contact.en must be 1-300"),
        ({"contact": "116 000"}, "selfreport.contact: expected dict"),
        ({"site_url": 1}, "selfreport.site_url: expected str"),
    ]
    for values, text in cases:
        stderr = bad_config(node, **values)
        assert text in stderr, (values, stderr)
        bad_config_reset(node)
    assert Home(node.home).load_config().selfreport_site_url == ""  # reset is accepted


def test_settings_reach_the_page_info(hotline: NodeProc) -> None:
    status, body, _ = get(hotline.url + "/takeitdown/api/info")
    info = json.loads(body)
    assert status == 200
    assert info["hotline"] == DISPLAY_NAME
    assert info["site_url"] == SITE
    assert info["contact"] == CONTACT
    assert info["logo"] is True


def test_logo_is_served_as_the_image_its_bytes_show(hotline: NodeProc) -> None:
    status, body, kind = get(hotline.url + "/takeitdown/logo")
    assert status == 200 and kind == "image/png"
    assert body == (hotline.home / "logo.png").read_bytes()


def assert_screenshot(png: bytes, path: Path) -> None:
    path.write_bytes(png)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (WIDTH, HEIGHT)
    colours = image.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50, "the screenshot is blank"


PAGE_JS = """JSON.stringify({
  hotline: document.getElementById('hotline').textContent,
  site: document.getElementById('site').hidden ? null : document.getElementById('site').href,
  siteText: document.getElementById('site').textContent,
  contact: document.getElementById('contact').hidden ? null
    : document.getElementById('contact').textContent,
  contactLink: document.getElementById('contact-site').hidden ? null
    : document.getElementById('contact-link').href,
  logo: document.getElementById('logo').hidden ? 0 : document.getElementById('logo').naturalWidth,
  chosen: document.getElementById('files-chosen').textContent,
  inputFiles: document.getElementById('files').files.length,
  text: document.body.innerText,
  lang: document.documentElement.lang,
})"""


@needs_browser
async def test_page_shows_the_hotline_in_every_language(hotline: NodeProc, tmp_path: Path) -> None:
    assert CHROMIUM, "chromium is required (HASHMESH_REQUIRE_BROWSER is set)"
    files = [photo(tmp_path / "beach.jpg", 1), photo(tmp_path / "party.jpg", 5)]
    async with Browser(tmp_path / "profile") as browser:
        await browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        )
        for lang in CONTACT:
            await browser.goto(hotline.url + "/takeitdown/")
            await browser.wait_for("document.body.dataset.ready === 'true'")
            await browser.evaluate(f"document.querySelector('[data-lang={lang}]').click()")
            await browser.set_files("#files", files)
            await browser.wait_for("document.querySelectorAll('#items li').length === 2")
            await browser.wait_for("document.getElementById('logo').naturalWidth > 0")
            page = json.loads(await browser.evaluate(PAGE_JS))
            assert page["lang"] == lang
            assert DISPLAY_NAME in page["hotline"], page["hotline"]
            assert page["site"] == SITE and page["siteText"] == "childfocus.example"
            assert page["contact"] == CONTACT[lang]
            assert page["contactLink"] == SITE
            assert page["logo"] == 120
            assert page["chosen"].startswith(CHOSEN[lang]), page["chosen"]
            assert "beach.jpg" in page["chosen"] and "party.jpg" in page["chosen"]
            assert page["inputFiles"] == 2  # so the browser's own text is not "No file chosen"
            assert FALSE_PROMISE[lang] not in page["text"]
            assert TRUTH[lang] in page["text"]
            shot = await browser.send("Page.captureScreenshot", {"format": "png"})
            assert_screenshot(base64.b64decode(shot["data"]), tmp_path / f"selfreport-{lang}.png")


@needs_browser
async def test_config_text_is_shown_as_text_never_as_html(tmp_path: Path) -> None:
    assert CHROMIUM, "chromium is required (HASHMESH_REQUIRE_BROWSER is set)"
    node = NodeProc(tmp_path, "inject")
    name = '<img src="/takeitdown/logo" id="injected">Hotline'
    contact = {"en": '<a href="https://evil.example" id="evil">call</a>'}
    configure(node, enabled=True, display_name=name, contact=contact)
    node.start()
    try:
        async with Browser(tmp_path / "profile") as browser:
            await browser.goto(node.url + "/takeitdown/")
            await browser.wait_for("document.body.dataset.ready === 'true'")
            await browser.evaluate("document.querySelector('[data-lang=en]').click()")
            found = json.loads(
                await browser.evaluate(
                    "JSON.stringify([!!document.getElementById('injected'),"
                    " !!document.getElementById('evil'),"
                    " document.getElementById('hotline').textContent,"
                    " document.getElementById('contact').textContent,"
                    " document.getElementById('logo').hidden])"
                )
            )
            assert found == [False, False, f"A service of {name}", contact["en"], True]
    finally:
        node.kill()
