"""docs/api.md names the paths that need no token, once, and they are the node's.

The page used to say `GET /v1/healthz` was the only unauthenticated endpoint while its own
tables marked `/healthz`, `/status` and the self-report pages open."""

from __future__ import annotations

import re
from pathlib import Path

from hashmesh.node.web.api import OPEN_PATHS

API_MD = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def _open_paths_paragraph() -> str:
    text = API_MD.read_text()
    start = text.index("Which paths need no token")
    return text[start : text.index("\n\n", start)]


def test_the_documented_open_paths_are_exactly_the_nodes() -> None:
    paragraph = _open_paths_paragraph()
    spans = re.findall(r"`([^`]*)`", paragraph)
    named = {s.removeprefix("GET ") for s in spans if "/" in s} - {"/v1/peer/", "/v1/"}
    assert named == set(OPEN_PATHS)


def test_no_other_sentence_claims_a_single_open_endpoint() -> None:
    assert "only unauthenticated" not in API_MD.read_text()
