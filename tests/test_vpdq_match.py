"""vPDQ queries through POST /v1/match on every matcher: the node itself, its worker
processes and a replica, real processes on 127.0.0.1, with Meta's reference frame hashes
of the sample videos (one frame a second, as the node hashes): an edit of the chair clip
matches the published original and says what share matched and where, the doorknob
matches no chair, a revocation stops the match, pytx's string form is accepted, and an
over-long video query is refused with a 400 naming it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HomeFactory, NodeFactory, set_config
from netnodes import NodeProc, wait_for
from platform_util import ok_json, request
from test_match_workers import post
from test_replica import MatcherProc, token
from testdata import TESTDATA

from hashmesh.node.matching.matcher import Matcher, video_index
from hashmesh.node.matching.pdq_index import PDQIndex
from hashmesh.protocol.signals import VPDQSignal

HASHES = TESTDATA / "video" / "vpdq-hashes"
FRESH_S = 10.0


def one_per_second(name: str) -> str:
    """The canonical vpdq value of a sample's frames at one a second (the file has all)."""
    kept, second = [], -1
    for line in (HASHES / f"{name}.txt").read_text().splitlines():
        seconds = float(line.rsplit(",", 1)[1])
        if int(seconds) > second:
            kept.append(line.strip())
            second = int(seconds)
    return VPDQSignal.normalize("\n".join(kept))


ORIGINAL = one_per_second("chair-orig-22-sd-bar")
GREY = one_per_second("chair-22-sd-grey-bar")
DOORKNOB = one_per_second("doorknob-hd-no-bar")


def publish(url: str, admin: str, value: str) -> str:
    body = {"type": "vpdq", "value": value, "collection": "csam", "category": "csam"}
    return str(ok_json(url + "/v1/signals", "POST", admin, body)["op_id"])


def ask(url: str, who: str, *values: str) -> tuple[int, Any]:
    body = {"queries": [{"type": "vpdq", "value": v} for v in values]}
    status, raw = request(url + "/v1/match", "POST", who, body)
    return status, json.loads(raw)


def check_answer(answer: dict[str, Any], chair_op: str) -> None:
    grey, door = answer["results"]
    (hit,) = grey["matches"]
    assert hit["op_id"] == chair_op and hit["type"] == "vpdq"
    assert hit["verdict"] == "match" and hit["distance"] == 0
    video = hit["video"]
    assert video["query_percent"] == 100.0 and video["query_frames"] == [23, 23]
    assert video["ranges"] == [[0.0, 22.0]]
    assert door["matches"] == []
    assert answer["matched"] is True


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProc]:
    n = NodeProc(tmp_path, "hotline")
    n.start()
    yield n
    n.stop()


@pytest.fixture
def matchers() -> Iterator[list[MatcherProc]]:
    made: list[MatcherProc] = []
    yield made
    for m in made:
        m.kill()


def test_node_and_replica_match_videos(
    tmp_path: Path, node: NodeProc, matchers: list[MatcherProc]
) -> None:
    admin = node.admin_token()
    platform = token(node, "platform", ["match"])
    chair = publish(node.url, admin, ORIGINAL)
    status, answer = ask(node.url, platform, GREY, DOORKNOB)
    assert status == 200, answer
    check_answer(answer, chair)

    # python-threatexchange's string form of the same query: the same answer.
    status, pytx = ask(node.url, platform, VPDQSignal.to_pytx(GREY), DOORKNOB)
    assert status == 200 and pytx["results"][0]["matches"] == answer["results"][0]["matches"]

    # A replica loads the video from its snapshot and answers the same.
    replica = MatcherProc(tmp_path, node, token(node, "replica", ["read", "replicate"]))
    matchers.append(replica)
    replica.start()
    status, there = ask(replica.url, platform, GREY, DOORKNOB)
    assert status == 200 and there == answer

    # An add reaches the replica through its stream, and so does the revocation.
    door = publish(node.url, admin, DOORKNOB)

    def door_matches(url: str) -> bool:
        return [m["op_id"] for m in ask(url, platform, DOORKNOB)[1]["results"][0]["matches"]] == [
            door
        ]

    assert door_matches(node.url)
    wait_for(lambda: door_matches(replica.url), timeout=FRESH_S)
    ok_json(node.url + "/v1/revoke", "POST", admin, {"op_id": chair, "reason": "test"})
    assert ask(node.url, platform, GREY)[1]["matched"] is False
    wait_for(lambda: ask(replica.url, platform, GREY)[1]["matched"] is False, timeout=FRESH_S)

    # Bounded: more frames in all than one maximal video is refused, naming the query.
    every = VPDQSignal.normalize((HASHES / "chair-orig-22-sd-bar.txt").read_text())
    over = VPDQSignal.max_frames // (every.count(" ") + 1) + 1  # 673 frames a query
    status, refused = ask(node.url, platform, *[every] * over)
    assert status == 400, refused
    assert refused["error"].startswith(f"queries[{over - 1}]: vpdq queries hold"), refused


def test_workers_match_videos(home: HomeFactory, start_node: NodeFactory) -> None:
    """Worker processes load the videos from rows at start and follow adds and
    revocations from the feed table."""
    path = home("W")
    first = start_node(path)
    chair = first.call(
        "POST", "/v1/signals", {"type": "vpdq", "value": ORIGINAL, "collection": "csam"}
    )["op_id"]
    assert first.stop() == 0
    set_config(path, match_workers=1)
    node = start_node(path)
    match_url = json.loads((path / "node.json").read_text())["match"]
    body = {"queries": [{"type": "vpdq", "value": v} for v in (GREY, DOORKNOB)]}

    def answered() -> dict[str, Any] | None:
        status, answer = post(match_url + "/v1/match", body, node.token)
        return answer if status == 200 else None

    check_answer(wait_for(answered, timeout=20), chair)
    door = node.call(
        "POST", "/v1/signals", {"type": "vpdq", "value": DOORKNOB, "collection": "csam"}
    )["op_id"]

    def door_found() -> bool:
        answer = answered()
        return answer is not None and [m["op_id"] for m in answer["results"][1]["matches"]] == [
            door
        ]

    wait_for(door_found, timeout=FRESH_S)
    node.call("POST", "/v1/revoke", {"op_id": chair, "reason": "test"})
    wait_for(lambda: (a := answered()) is not None and not a["results"][0]["matches"], FRESH_S)


def test_remapped_pdq_index_keeps_videos_and_their_cursor() -> None:
    """A worker mapping a newer PDQ checkpoint (which holds no videos) keeps its vPDQ
    index, and its cursor stays where that index is, so the next feed page brings both."""
    matcher = Matcher()
    matcher.load(PDQIndex(), 10, video_index([(1, ORIGINAL)]))
    matcher.apply([], [], 11, [(2, DOORKNOB)])
    matcher.load(PDQIndex(), 12)
    assert (matcher.videos, matcher.cursor) == (2, 11)
    matcher.apply([], [1], 13)
    assert (matcher.videos, matcher.cursor) == (1, 13)
