"""Per-collection match policy (issue 19): `hashmesh policy show|set`, and every match
answer judged by it, on real node processes, real SQLite and real PDQ hashes.

The seeded network: an author's PDQ of a black picture is refused, the MD5 of a popular
meme listed in a negative collection never matches (and the answer says which list
suppressed it, or only that one did to a caller who may not read that list), quorum 2
matches only once a second author lists the signal, and each other knob (threshold,
minimum quality, suspension after disputes, review) holds a hit back with its reason.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

from netnodes import NodeProc
from PIL import Image
from platform_util import ok_json, request
from testdata import IMAGES

from hashmesh.node.hashing.degenerate import degenerate_reason
from hashmesh.node.hashing.hasher import hash_bytes, hash_file


def _black_pdq() -> str:
    picture = io.BytesIO()
    Image.new("RGB", (640, 480), (0, 0, 0)).save(picture, "PNG")
    pdq = hash_bytes(picture.getvalue()).pdq
    assert pdq is not None and degenerate_reason("pdq", pdq) is not None
    return pdq


BLACK_PDQ = _black_pdq()
MEME_MD5 = hashlib.md5(b"the popular meme, as everyone forwards it").hexdigest()
BRIDGE = hash_file(IMAGES / "bridge-1-original.jpg")
assert BRIDGE.pdq is not None and degenerate_reason("pdq", BRIDGE.pdq) is None


def flip(value: str, bits: int) -> str:
    """`value` with its lowest `bits` bits flipped: another hotline's hash of a re-encoded
    copy, at PDQ distance `bits`."""
    return f"{int(value, 16) ^ ((1 << bits) - 1):064x}"


def match(node: NodeProc, signal_type: str, value: str, *extra: str) -> tuple[int, Any]:
    result = node.cli("match", signal_type, value, *extra, "--json", check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def hits(answer: Any) -> dict[str, dict[str, Any]]:
    """The first query's hits by collection."""
    return {m["collection"]: m for m in answer["results"][0]["matches"]}


def policies(node: NodeProc, *collection: str) -> list[dict[str, Any]]:
    return list(node.json("policy", "show", *collection)["policies"])


# -- the commands -----------------------------------------------------------------------------


def test_policy_commands_offline_and_through_the_running_node(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "platform")
    assert node.cli("policy", "show").stdout.strip() == (
        "no collection has a policy: every hit matches"
    )
    default = policies(node, "csam")[0]
    assert default == {
        "collection": "csam",
        "default": True,
        "negative": False,
        "threshold": None,
        "min_quality": None,
        "quorum": 1,
        "suspend_after_disputes": None,
        "require_review": False,
    }
    out = node.json("policy", "set", "csam", "--quorum", "2", "--threshold", "20")
    assert out["change"] == "set" and out["previous"]["quorum"] == 1
    assert out["policy"]["quorum"] == 2 and out["policy"]["threshold"] == 20

    refusals = [
        (["csam", "--threshold", "32"], "--threshold: must be an integer 0-31"),
        (["csam", "--quorum", "0"], "--quorum: must be an integer 1-16"),
        (["csam", "--min-quality", "101"], "--min-quality: must be an integer 0-100"),
        (["csam", "--suspend-after-disputes", "0"], "--suspend-after-disputes: must be"),
        (["benign", "--negative", "--quorum", "2"], "--quorum: a negative collection"),
        (["benign", "--negative", "--require-review"], "--require-review: a negative"),
        (["Bad Name"], "collection: 'Bad Name' is not a collection name"),
    ]
    for args, message in refusals:
        refused = node.cli("policy", "set", *args, check=False)
        assert refused.returncode == 2, refused
        assert message in refused.stderr, refused.stderr
    assert [p["collection"] for p in policies(node)] == ["csam"]
    assert policies(node, "csam")[0]["quorum"] == 2  # refusals changed nothing

    node.start()
    try:
        out = node.json("policy", "set", "benign", "--negative", "--threshold", "8")
        assert out["change"] == "set" and out["policy"]["negative"] is True
        text = node.cli("policy", "show").stdout
        assert "benign" in text and "negative (suppresses others within PDQ distance 8)" in text
        assert "csam" in text and "threshold 20; quorum 2 authors" in text
        assert node.json("policy", "set", "csam")["change"] == "reset"
        assert [p["collection"] for p in policies(node)] == ["benign"]
        assert node.json("policy", "set", "csam")["change"] == "unchanged"

        url = node.url + "/v1/admin/policy/csam"
        for body, field in [
            ({"quorum": "2"}, "quorum"),
            ({"quorum": True}, "quorum"),
            ({"colour": "red"}, "colour"),
            ({"negative": "yes"}, "negative"),
        ]:
            status, data = request(url, "PUT", node.admin_token(), body)
            assert status == 400 and json.loads(data)["error"].startswith(f"{field}: "), data
        listed = ok_json(node.url + "/v1/admin/policy", token=node.admin_token())
        assert [p["collection"] for p in listed["policies"]] == ["benign"]
    finally:
        assert node.stop() == 0
    # Kept in the database, read again offline.
    assert [p["collection"] for p in policies(node)] == ["benign"]


def test_a_refused_policy_request_changes_nothing(tmp_path: Path) -> None:
    node = NodeProc(tmp_path, "platform")
    node.cli("policy", "set", "csam", "--quorum", "3")
    refused = node.cli("policy", "set", "csam", "--negative", "--min-quality", "50", check=False)
    assert refused.returncode == 2 and "--min-quality: a negative collection" in refused.stderr
    assert policies(node, "csam")[0]["quorum"] == 3
    assert policies(node, "csam")[0]["negative"] is False
