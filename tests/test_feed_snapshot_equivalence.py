"""Snapshot at cursor C plus the feed after C gives the same state as the feed from 0.

The state is every live add with its labels and the opinions on it. A subscriber may apply
opinion entries as changes (each author's latest confirm, dispute, seen or retract) or
take the opinions every entry carries as the target's whole state; both ways, and for a
token that reads everything as for tokens restricted to some collections, the two paths
agree, through confirmations, disputes, retractions and revocations on either side of C.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from netnodes import NodeProc

MD5 = [
    "5d41402abc4b2a76b9719d911017c592",
    "7d793037a0760186574b0282f2f435e7",
    "c4ca4238a0b923820dcc509a6f75849b",
    "e4da3b7fbbce2345d7772b0674a318d5",
    "1679091c5a880faf6fb5e6087eb1b2dc",
    "8f14e45fceea167a5a36dedd4bea2543",
]
LABELS = ("type", "value", "category", "classification", "quality", "ref")

State = dict[str, dict[str, Any]]


def request(node: NodeProc, path: str, body: Any = None, token: str | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {token or node.admin_token()}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    with urllib.request.urlopen(
        urllib.request.Request(node.url + path, data, headers), timeout=30
    ) as response:
        raw: bytes = response.read()
        return raw


def post(node: NodeProc, path: str, body: Any) -> Any:
    return json.loads(request(node, path, body))


def feed(node: NodeProc, token: str, after: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    while True:
        page = json.loads(request(node, f"/v1/feed?after={after}&limit=3", token=token))
        entries += page["entries"]
        after = page["next"]
        if not page["more"]:
            return entries


def snapshot(node: NodeProc, token: str) -> tuple[int, list[dict[str, Any]]]:
    lines = [json.loads(line) for line in request(node, "/v1/snapshot", token=token).splitlines()]
    assert lines[-1] == {"end": True, "count": len(lines) - 2}
    return int(lines[0]["cursor"]), lines[1:-1]


Stances = dict[tuple[str, str], dict[str, Any]]


def counts(stances: Stances) -> dict[str, int]:
    """Distinct authors per opinion, an author counted once however many logs it writes."""
    return {
        "confirm": len({a for (a, _), s in stances.items() if s["verdict"] == "confirm"}),
        "dispute": len({a for (a, _), s in stances.items() if s["verdict"] == "dispute"}),
        "seen": len({a for (a, _), s in stances.items() if s["seen"]}),
    }


def verdicts_of(stances: Stances) -> dict[str, str]:
    """One verdict an author; a dispute in any of its logs wins."""
    out: dict[str, str] = {}
    for (author, _), s in sorted(stances.items()):
        if s["verdict"] and out.get(author) != "dispute":
            out[author] = s["verdict"]
    return out


def as_changes(state: State, entries: list[dict[str, Any]]) -> State:
    """Opinion entries applied as changes, ignoring the state they carry."""
    for entry in entries:
        if entry["kind"] == "add":
            state[entry["op_id"]] = {k: entry.get(k) for k in LABELS} | {"stances": {}}
        elif entry["kind"] == "revoke":
            state.pop(entry["target"], None)
        elif entry["target"] in state:
            stances = state[entry["target"]]["stances"]
            key = (entry["author"], entry["collection"])
            stance = stances.setdefault(key, {"verdict": None, "seen": False})
            if entry["opinion"] == "seen":
                stance["seen"] = True
            elif entry["opinion"] == "retract":
                stance.update(verdict=None, seen=False)
            else:
                stance["verdict"] = entry["opinion"]
    return state


def from_changes(state: State) -> State:
    out = {}
    for op_id, record in state.items():
        stances = record["stances"]
        out[op_id] = {k: record[k] for k in LABELS} | {
            "opinions": counts(stances),
            "verdicts": verdicts_of(stances),
        }
    return out


def as_states(state: State, entries: list[dict[str, Any]]) -> State:
    """Each entry's carried opinions taken as the target's whole state."""
    for entry in entries:
        if entry["kind"] == "add":
            state[entry["op_id"]] = whole(entry)
        elif entry["kind"] == "revoke":
            state.pop(entry["target"], None)
        elif entry.get("target_live") and entry["target"] in state:
            state[entry["target"]] |= {
                "opinions": entry["opinions"],
                "verdicts": entry["verdicts"],
            }
    return state


def whole(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in LABELS} | {
        "opinions": row["opinions"],
        "verdicts": row["verdicts"],
    }


def snapshot_changes(rows: list[dict[str, Any]]) -> State:
    """Snapshot rows as the change-applying subscriber's starting state."""
    state: State = {}
    for row in rows:
        stances = {
            (s["author"], s["collection"]): {"verdict": s["verdict"], "seen": s["seen"]}
            for s in row["stances"]
        }
        state[row["op_id"]] = {k: row.get(k) for k in LABELS} | {"stances": stances}
    return state


def test_snapshot_plus_feed_equals_feed_from_zero(node: NodeProc) -> None:
    tokens = {"all": node.admin_token()}
    for name, collections in (("csam", ["csam"]), ("both", ["csam", "reviews"])):
        made = post(
            node, "/v1/admin/tokens", {"name": name, "scopes": ["read"], "collections": collections}
        )
        tokens[name] = made["token"]

    def add(value: str) -> str:
        body = {"type": "md5", "value": value, "collection": "csam", "classification": "A1"}
        op_id: str = post(node, "/v1/signals", body)["op_id"]
        return op_id

    def opine(op_id: str, opinion: str, collection: str = "reviews") -> None:
        post(node, "/v1/opinions", {"op_id": op_id, "opinion": opinion, "collection": collection})

    a, b, c, d = (add(v) for v in MD5[:4])
    opine(a, "confirm")
    opine(b, "dispute")
    opine(c, "dispute")
    opine(c, "retract")
    opine(d, "seen")
    opine(d, "confirm", "csam")

    taken = {name: snapshot(node, token) for name, token in tokens.items()}

    opine(a, "retract")
    opine(b, "confirm")
    post(node, "/v1/revoke", {"op_id": c, "reason": "withdrawn"})
    opine(d, "dispute")
    e = add(MD5[4])
    opine(e, "dispute")
    post(node, "/v1/revoke", {"op_id": a})
    f = add(MD5[5])
    opine(f, "confirm")
    opine(f, "retract")

    for name, token in tokens.items():
        cursor, rows = taken[name]
        everything = feed(node, token, 0)
        truth = from_changes(as_changes({}, everything))
        assert as_states({}, everything) == truth, name
        after = feed(node, token, cursor)
        assert from_changes(as_changes(snapshot_changes(rows), after)) == truth, name
        assert as_states({r["op_id"]: whole(r) for r in rows}, after) == truth, name
        assert set(truth) == {b, d, e, f}

    # What each token sees: the reviews log's opinions only with a token that reads it.
    full = from_changes(as_changes({}, feed(node, tokens["all"], 0)))
    assert full[b]["verdicts"] == {node.node_id: "confirm"}
    assert full[d]["opinions"] == {"confirm": 1, "dispute": 1, "seen": 1}
    assert full[d]["verdicts"] == {node.node_id: "dispute"}
    assert full[e]["opinions"] == {"confirm": 0, "dispute": 1, "seen": 0}
    assert full[f]["verdicts"] == {}
    only_csam = from_changes(as_changes({}, feed(node, tokens["csam"], 0)))
    assert only_csam[d]["verdicts"] == {node.node_id: "confirm"}
    assert only_csam[b]["verdicts"] == {}
    # Before C the snapshot held the opinions the platform must not treat as undisputed.
    before = {r["op_id"]: r for r in taken["all"][1]}
    assert before[b]["opinions"]["dispute"] == 1
    assert before[a]["verdicts"] == {node.node_id: "confirm"}
    assert before[c]["verdicts"] == {}
