"""Hasher-Matcher-Actioner (HMA 1.1.7) subscribed to real hashmesh nodes (`make test-hma`).

One PostgreSQL cluster and one HMA under gunicorn for the module, configured with the
OMM_CONFIG that docs/platforms.md shows (deploy/examples/hma/omm_config.py) plus the
test's OMM_ overrides (tests/hma_harness.py); each test has its own nodes and its own HMA
exchange (bank). Signals are the PDQ, md5 and sha256 of Meta's PDQ reference images,
published with `hashmesh submit`. Fetches run through HMA's /dev/run_fetch, lookups
through /m/lookup, exactly as a platform's HMA would after its background fetch.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hma_harness import (
    HMA_SRC,
    HMA_VENV,
    MIGRATE,
    OMM_CONFIG,
    REPO,
    SERVE,
    Hma,
    Postgres,
    postgres_bindir,
    unavailable,
    wait_until,
)
from netnodes import NodeProc
from testdata import IMAGES

BRIDGE = IMAGES / "bridge-1-original.jpg"
OTHERS = [IMAGES / "c.png", IMAGES / "wee.jpg", IMAGES / "q2821.jpg", IMAGES / "q1050.jpg"]
FAR_PDQ = "f" * 16 + "0" * 16 + "f0" * 8 + "0f" * 8  # no reference image is within 31 bits
API = "hashmesh"
DOC = (REPO / "docs" / "platforms.md").read_text()
HMA_DOC = DOC[DOC.index("## 8. Hasher-Matcher-Actioner (HMA)") :]


def doc_body(path: str) -> dict[str, Any]:
    """The JSON body the docs give for `POST path` (the test sends that, filled in)."""
    found = re.search(rf"^POST {re.escape(path)} (\{{.*\}})$", HMA_DOC, re.M)
    assert found, f"docs/platforms.md shows no POST {path} body"
    body: dict[str, Any] = json.loads(found.group(1))
    return body


@pytest.fixture(scope="module")
def hma(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hma]:
    if not (HMA_SRC / "OpenMediaMatch" / "app.py").is_file():
        unavailable(f"no HMA source snapshot in {HMA_SRC}")
    if not (HMA_VENV / "bin" / "gunicorn").exists():
        unavailable(f"no HMA venv in {HMA_VENV}")
    bindir = postgres_bindir()
    if bindir is None:
        unavailable("PostgreSQL (initdb) is not installed")
        raise AssertionError
    postgres = Postgres(bindir)
    server = Hma(tmp_path_factory.mktemp("hma"), postgres.uri)
    try:
        postgres.start()
        server.migrate()
        server.start()
        yield server
    finally:
        server.stop()
        postgres.stop()


def node_with_token(tmp_path: Path, name: str) -> tuple[NodeProc, str]:
    node = NodeProc(tmp_path, name)
    node.start()
    token = node.cli(
        "token", "create", "hma", "--scope", "read", "--collection", "csam"
    ).stdout.strip()
    return node, token


def submit(node: NodeProc, *images: Path) -> dict[str, dict[str, str]]:
    """Publish each image's hashes; answer {image name: {type: op id}} and the values."""
    out = json.loads(
        node.cli("submit", *map(str, images), "-c", "csam", "--category", "csam", "--json").stdout
    )
    assert not out["pdq_skipped_low_quality"], out
    by_file: dict[str, dict[str, str]] = {}
    for hashes in out["files"]:
        values = {t: hashes[t] for t in ("pdq", "md5", "sha256")}
        ops = {
            f"{s['type']}_op": s["op_id"] for s in out["signals"] if s["value"] in values.values()
        }
        by_file[Path(hashes["file"]).name] = {**values, **ops}
    return by_file


def set_token(hma: Hma, token: str, api: str = API) -> None:
    body = doc_body(f"/c/exchanges/api/{API}")  # the same body for hashmesh_NAME
    body["credential_json"]["token"] = token
    hma.set_credentials(api, body)


def subscribe(hma: Hma, bank: str, node: NodeProc, api: str = API) -> None:
    body = doc_body("/c/exchanges")
    assert body["api"] == API and body["api_json"]["collection"] == "csam", body
    body.update(bank=bank, api=api)
    body["api_json"]["url"] = node.url
    hma.create_exchange(body)


def fetch(hma: Hma, *banks: str) -> None:
    hma.run_fetch()
    for bank in banks:
        status = hma.fetch_status(bank)
        assert status["last_fetch_succeeded"], (bank, status, hma.log_tail())


def items(hma: Hma, bank: str) -> int:
    """Records HMA holds for the exchange (its ExchangeData rows: one a signal)."""
    return int(hma.fetch_status(bank)["fetched_items"])


def reencoded(path: Path, quality: int) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


def test_docs_show_what_the_hma_test_runs() -> None:
    """The HMA section of docs/platforms.md quotes deploy/examples/hma/omm_config.py
    verbatim, and the commands and request bodies the end-to-end test uses."""
    blocks = re.findall(r"```python\n(.*?)```", HMA_DOC, re.S)
    assert OMM_CONFIG.read_text() in blocks
    assert "flask " + " ".join(MIGRATE) in HMA_DOC
    assert " ".join(SERVE[:-1]) + f" '{SERVE[-1]}'" in HMA_DOC
    for api in (API, f"{API}_police"):
        assert doc_body(f"/c/exchanges/api/{api}") == {"credential_json": {"token": "hm_..."}}
    assert set(doc_body("/c/exchanges")) == {"bank", "api", "api_json"}


@pytest.mark.hma
def test_fetch_then_lookup_by_hash_and_by_uploaded_image(hma: Hma, tmp_path: Path) -> None:
    node, token = node_with_token(tmp_path, "hotline")
    try:
        published = submit(node, BRIDGE, OTHERS[0])
        set_token(hma, token)
        subscribe(hma, "HOTLINE_FETCH", node)
        fetch(hma, "HOTLINE_FETCH")
        assert items(hma, "HOTLINE_FETCH") == 6  # pdq, md5, sha256 of two images

        bridge = published[BRIDGE.name]
        wait_until(lambda: hma.matched_in("HOTLINE_FETCH", "pdq", bridge["pdq"]), "the PDQ match")
        # md5 and sha256 arrive as pytx's video_* types; each type has its own index.
        for signal_type, key in (("video_md5", "md5"), ("video_sha256", "sha256")):
            wait_until(
                lambda t=signal_type, v=bridge[key]: hma.matched_in("HOTLINE_FETCH", t, v),
                f"the {signal_type} match",
            )
        assert not hma.matched_in("HOTLINE_FETCH", "pdq", FAR_PDQ)

        # HMA hashes the upload itself (pytx's PDQ); a re-encode is not the published file.
        upload = reencoded(BRIDGE, quality=40)
        assert upload != BRIDGE.read_bytes()
        answer = hma.lookup_upload("photo", "upload.jpg", upload)
        (match,) = answer["pdq"]["HOTLINE_FETCH"]
        assert int(match["distance"]) <= 31
        assert not answer.get("video_md5", {}).get("HOTLINE_FETCH")  # not byte-identical
    finally:
        node.stop()


@pytest.mark.hma
def test_revocation_stops_the_match_after_the_next_fetch(hma: Hma, tmp_path: Path) -> None:
    node, token = node_with_token(tmp_path, "revoker")
    try:
        published = submit(node, *OTHERS[:3])
        set_token(hma, token)
        subscribe(hma, "HOTLINE_REVOKE", node)
        fetch(hma, "HOTLINE_REVOKE")
        pdqs = [published[p.name]["pdq"] for p in OTHERS[:3]]
        for value in pdqs:
            wait_until(lambda v=value: hma.matched_in("HOTLINE_REVOKE", "pdq", v), "match")

        node.cli("revoke", published[OTHERS[0].name]["pdq_op"], "--reason", "false positive")
        fetch(hma, "HOTLINE_REVOKE")
        assert items(hma, "HOTLINE_REVOKE") == 9 - 1
        wait_until(
            lambda: not hma.matched_in("HOTLINE_REVOKE", "pdq", pdqs[0]),
            "the revoked hash to stop matching",
        )
        assert all(hma.matched_in("HOTLINE_REVOKE", "pdq", v) for v in pdqs[1:])
    finally:
        node.stop()


@pytest.mark.hma
def test_an_opinion_in_a_later_fetch_keeps_its_add(hma: Hma, tmp_path: Path) -> None:
    """Issue 15, defect 1: HMA merges pages with dict.update and converts each record on
    its own, so an opinion stored under its add's key replaced (deleted) the add."""
    node, token = node_with_token(tmp_path, "opinions")
    try:
        first = submit(node, OTHERS[1], OTHERS[2])
        set_token(hma, token)
        subscribe(hma, "HOTLINE_OPINION", node)
        fetch(hma, "HOTLINE_OPINION")
        target = first[OTHERS[1].name]
        wait_until(lambda: hma.matched_in("HOTLINE_OPINION", "pdq", target["pdq"]), "match")

        steps = (("confirm", OTHERS[3]), ("dispute", OTHERS[0]), ("retract", BRIDGE))
        for verdict, sentinel in steps:
            node.cli("opinion", target["pdq_op"], verdict)
            # A new add in the same fetch: once it matches, HMA's index holds that fetch.
            new = submit(node, sentinel)[sentinel.name]
            fetch(hma, "HOTLINE_OPINION")
            wait_until(
                lambda n=new: hma.matched_in("HOTLINE_OPINION", "pdq", n["pdq"]),
                f"the add fetched with the {verdict}",
            )
            assert hma.matched_in("HOTLINE_OPINION", "pdq", target["pdq"]), verdict
        assert items(hma, "HOTLINE_OPINION") == (2 + len(steps)) * 3
    finally:
        node.stop()


@pytest.mark.hma
def test_two_nodes_with_different_tokens_side_by_side(hma: Hma, tmp_path: Path) -> None:
    hotline, hotline_token = node_with_token(tmp_path, "hotline2")
    police, police_token = node_with_token(tmp_path, "police")
    try:
        from_hotline = submit(hotline, OTHERS[0], OTHERS[1])
        from_police = submit(police, OTHERS[2], OTHERS[3])
        # One exchange type a node (exchange_api in the OMM_CONFIG): HMA keeps one
        # credential a type, so a shared `hashmesh` type would keep only the last token.
        set_token(hma, hotline_token, f"{API}_hotline")
        set_token(hma, police_token, f"{API}_police")
        subscribe(hma, "HOTLINE_SIDE", hotline, f"{API}_hotline")
        subscribe(hma, "POLICE_SIDE", police, f"{API}_police")
        fetch(hma, "HOTLINE_SIDE", "POLICE_SIDE")
        assert items(hma, "HOTLINE_SIDE") == 6
        assert items(hma, "POLICE_SIDE") == 6
        for bank, published in (("HOTLINE_SIDE", from_hotline), ("POLICE_SIDE", from_police)):
            for signals in published.values():
                wait_until(
                    lambda b=bank, v=signals["pdq"]: hma.matched_in(b, "pdq", v), f"{bank} match"
                )
        assert not hma.matched_in("POLICE_SIDE", "pdq", from_hotline[OTHERS[0].name]["pdq"])
    finally:
        police.stop()
        hotline.stop()
