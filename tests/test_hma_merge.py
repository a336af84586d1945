"""The extension's fetched records merged the way HMA and the pytx CLI merge them.

HMA (OpenMediaMatch 1.1.7, background_tasks/fetcher.py and storage/postgres/impl.py)
merges the deltas of a fetch with a plain `dict.update`, then converts each record on
its own with `naive_convert_to_signal_type({key: record})`: a record that converts to no
signal is a delete of that key. The pytx CLI merges with `naive_fetch_merge`, that is
`fetch_value_merge(old, new)` per key, and converts the whole state at once. Both run
here against a real node over HTTP; an opinion that arrives in the same page as its add,
in a later page or in a later fetch must leave the add in the bank with the opinions it
now has, and a revocation must remove it.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from netnodes import NodeProc

pytest.importorskip("threatexchange")

from threatexchange.signal_type.md5 import VideoMD5Signal
from threatexchange.signal_type.pdq.signal import PdqSignal
from threatexchange.signal_type.signal_base import SignalType

from hashmesh.integrations import threatexchange as ext
from hashmesh.integrations.threatexchange import (
    HashmeshCheckpoint,
    HashmeshCollabConfig,
    HashmeshCredentials,
    HashmeshSignalExchangeAPI,
    HashmeshSignalMetadata,
    exchange_api,
)

TYPES: list[type[SignalType]] = [PdqSignal, VideoMD5Signal]
MD5 = [
    "5d41402abc4b2a76b9719d911017c592",
    "7d793037a0760186574b0282f2f435e7",
    "c4ca4238a0b923820dcc509a6f75849b",
    "e4da3b7fbbce2345d7772b0674a318d5",
    "1679091c5a880faf6fb5e6087eb1b2dc",
]


class Hma:
    """HMA's fetch and commit for one exchange: bank content keyed by fetch id."""

    def __init__(self, api_cls: type[HashmeshSignalExchangeAPI], collab: HashmeshCollabConfig):
        self.api_cls = api_cls
        self.collab = collab
        self.checkpoint: HashmeshCheckpoint | None = None
        self.records: dict[str, bytes] = {}  # fetch_id -> pickled metadata
        self.bank: dict[str, tuple[str, str]] = {}  # fetch_id -> (signal type, value)

    def fetch(self, token: str | None = None) -> None:
        credentials = HashmeshCredentials(token) if token else None
        api = self.api_cls.for_collab(self.collab, credentials)
        pending: dict[str, Any] | None = None
        for delta in api.fetch_iter(TYPES, self.checkpoint):
            assert delta.checkpoint is not None
            if pending is None:
                pending = dict(delta.updates)
            else:
                pending.update(delta.updates)  # fetcher._merge_delta
            self.checkpoint = delta.checkpoint
        if pending is None:
            return
        for key, val in pending.items():
            converted = {}
            if val is not None:
                converted = self.api_cls.naive_convert_to_signal_type(
                    TYPES, self.collab, {key: val}
                )
                if not converted:
                    val = None
            if val is None:
                self.records.pop(key, None)
                self.bank.pop(key, None)
                continue
            self.records[key] = pickle.dumps(val)
            ((signal_type, signals),) = converted.items()
            ((value, _),) = signals.items()
            self.bank[key] = (signal_type.get_name(), value)

    def record(self, key: str) -> HashmeshSignalMetadata:
        value: HashmeshSignalMetadata = pickle.loads(self.records[key])
        return value


class PytxCli:
    """The pytx CLI's fetch: naive_fetch_merge of every delta, the whole state converted."""

    def __init__(self, collab: HashmeshCollabConfig):
        self.collab = collab
        self.checkpoint: HashmeshCheckpoint | None = None
        self.state: dict[str, HashmeshSignalMetadata] = {}

    def fetch(self, token: str) -> None:
        api = HashmeshSignalExchangeAPI.for_collab(self.collab, HashmeshCredentials(token))
        for delta in api.fetch_iter(TYPES, self.checkpoint):
            HashmeshSignalExchangeAPI.naive_fetch_merge(self.state, delta.updates)
            self.checkpoint = delta.checkpoint

    def index(self) -> dict[str, HashmeshSignalMetadata]:
        by_type = HashmeshSignalExchangeAPI.naive_convert_to_signal_type(
            TYPES,
            self.collab,
            self.state,
        )
        return dict(by_type.get(VideoMD5Signal, {}))


def call(node: NodeProc, path: str, body: Any, token: str | None = None) -> Any:
    request = urllib.request.Request(
        node.url + path,
        json.dumps(body).encode(),
        {
            "Authorization": f"Bearer {token or node.admin_token()}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def publish(node: NodeProc, value: str) -> str:
    out = call(node, "/v1/signals", {"type": "md5", "value": value, "collection": "csam"})
    op_id: str = out["op_id"]
    return op_id


def opine(node: NodeProc, op_id: str, opinion: str) -> None:
    call(node, "/v1/opinions", {"op_id": op_id, "opinion": opinion, "collection": "reviews"})


def revoke(node: NodeProc, op_id: str) -> None:
    call(node, "/v1/revoke", {"op_id": op_id, "reason": "withdrawn"})


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages of two entries, so an opinion lands pages after its add (as 10,000 would)."""
    monkeypatch.setattr(ext, "PAGE_SIZE", 2)


class Both:
    """An HMA and a pytx CLI subscribed to the same node with the same config."""

    def __init__(self, node: NodeProc, **options: Any) -> None:
        self.node = node
        self.token = node.admin_token()
        collab = HashmeshCollabConfig(name="mesh", url=node.url, **options)
        self.hma = Hma(HashmeshSignalExchangeAPI, collab)
        self.cli = PytxCli(collab)

    def fetch(self) -> None:
        self.hma.fetch(self.token)
        self.cli.fetch(self.token)

    def assert_holds(self, op_id: str, value: str, verdicts: dict[str, str]) -> None:
        assert self.hma.bank.get(op_id) == ("video_md5", value)
        assert self.hma.record(op_id).verdicts == verdicts
        held = self.cli.index().get(value)
        assert held is not None and held.op_ids == [op_id]
        assert held.verdicts == verdicts

    def assert_absent(self, op_id: str, value: str) -> None:
        assert op_id not in self.hma.bank
        assert value not in self.cli.index()


def test_opinion_in_the_same_page(node: NodeProc) -> None:
    both = Both(node)
    first = publish(node, MD5[0])
    publish(node, MD5[1])
    opine(node, first, "confirm")
    both.fetch()
    both.assert_holds(first, MD5[0], {node.node_id: "confirm"})
    assert len(both.hma.bank) == 2


def test_opinion_pages_after_its_add(node: NodeProc, small_pages: None) -> None:
    both = Both(node)
    first = publish(node, MD5[0])
    for value in MD5[1:]:
        publish(node, value)
    opine(node, first, "dispute")
    both.fetch()
    both.assert_holds(first, MD5[0], {node.node_id: "dispute"})
    assert len(both.hma.bank) == len(MD5)
    assert len(both.cli.index()) == len(MD5)


def test_opinion_in_a_later_fetch(node: NodeProc) -> None:
    both = Both(node)
    first = publish(node, MD5[0])
    publish(node, MD5[1])
    both.fetch()
    both.assert_holds(first, MD5[0], {})
    opine(node, first, "confirm")
    both.fetch()
    both.assert_holds(first, MD5[0], {node.node_id: "confirm"})
    assert len(both.hma.bank) == 2


@pytest.mark.parametrize("verdict", ["confirm", "dispute"])
def test_an_opinion_then_retract_in_later_fetches(node: NodeProc, verdict: str) -> None:
    both = Both(node)
    first = publish(node, MD5[0])
    both.fetch()
    opine(node, first, verdict)
    both.fetch()
    both.assert_holds(first, MD5[0], {node.node_id: verdict})
    opine(node, first, "retract")
    both.fetch()
    both.assert_holds(first, MD5[0], {})


def test_revocation_after_an_opinion(node: NodeProc, small_pages: None) -> None:
    both = Both(node)
    first = publish(node, MD5[0])
    second = publish(node, MD5[1])
    opine(node, first, "confirm")
    opine(node, second, "confirm")
    both.fetch()
    both.assert_holds(first, MD5[0], {node.node_id: "confirm"})
    revoke(node, first)
    both.fetch()
    both.assert_absent(first, MD5[0])
    # Opinion and revocation in one fetch, the revocation pages later: still gone.
    opine(node, second, "dispute")
    publish(node, MD5[2])
    revoke(node, second)
    both.fetch()
    both.assert_absent(second, MD5[1])
    assert set(both.hma.bank.values()) == {("video_md5", MD5[2])}


def test_drop_disputed_removes_and_a_retraction_restores(node: NodeProc) -> None:
    both = Both(node, drop_disputed=True)
    first = publish(node, MD5[0])
    publish(node, MD5[1])
    both.fetch()
    both.assert_holds(first, MD5[0], {})
    opine(node, first, "dispute")
    both.fetch()
    both.assert_absent(first, MD5[0])
    assert len(both.hma.bank) == 1
    opine(node, first, "retract")
    both.fetch()
    both.assert_holds(first, MD5[0], {})


def test_min_confirmations_admits_confirmed_adds_only(node: NodeProc) -> None:
    both = Both(node, min_confirmations=1)
    first = publish(node, MD5[0])
    second = publish(node, MD5[1])
    both.fetch()
    assert both.hma.bank == {}
    assert both.cli.index() == {}
    opine(node, first, "confirm")
    both.fetch()
    both.assert_holds(first, MD5[0], {node.node_id: "confirm"})
    both.assert_absent(second, MD5[1])


def test_metadata_shows_labels_and_who_disputed(node: NodeProc) -> None:
    both = Both(node)
    first = publish(node, MD5[0])
    both.fetch()
    opine(node, first, "dispute")
    both.fetch()
    record = both.hma.record(first)
    assert record.author_ids == (node.node_id,)
    opinions = record.get_as_opinions()
    assert {"collection:csam", "author:hotline"} <= opinions[0].tags
    assert opinions[1].category.name == "NEGATIVE_CLASS"
    assert opinions[1].tags == {"dispute:hotline"}


def test_two_nodes_with_two_tokens_side_by_side(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-node exchange types keep one credential each, as HMA stores them (one per
    get_name()), so neither token replaces the other."""
    hotline, police = NodeProc(tmp_path, "hotline"), NodeProc(tmp_path, "police")
    hotline.start()
    police.start()
    try:
        publish(hotline, MD5[0])
        publish(police, MD5[1])
        tokens = {}
        for node in (hotline, police):
            made = call(node, "/v1/admin/tokens", {"name": "hma", "scopes": ["read"]})
            tokens[node.name] = made["token"]
        hotline_api, police_api = exchange_api("hotline"), exchange_api("police")
        assert exchange_api("hotline") is hotline_api
        assert {hotline_api.get_name(), police_api.get_name(), "hashmesh"} == {
            "hashmesh_hotline",
            "hashmesh_police",
            "hashmesh",
        }
        hotline_creds = hotline_api.get_credential_cls()
        police_creds = police_api.get_credential_cls()
        assert hotline_creds is not police_creds
        # HMA's exchange_get_client: the stored credential set as the class default.
        hmas = []
        for api_cls, creds, node in (
            (hotline_api, hotline_creds, hotline),
            (police_api, police_creds, police),
        ):
            hma = Hma(api_cls, HashmeshCollabConfig(name=f"{node.name}_side", url=node.url))
            with creds.set_default(creds(tokens[node.name]), "db"):
                hma.fetch()
            hmas.append(hma)
        assert set(hmas[0].bank.values()) == {("video_md5", MD5[0])}
        assert set(hmas[1].bank.values()) == {("video_md5", MD5[1])}

        # The environment variables of each type, and a collab naming its own.
        monkeypatch.setenv("TX_HASHMESH_TOKEN_HOTLINE", tokens["hotline"])
        monkeypatch.setenv("TX_HASHMESH_TOKEN_POLICE", tokens["police"])
        publish(hotline, MD5[2])
        hmas[0].fetch()
        assert ("video_md5", MD5[2]) in hmas[0].bank.values()
        monkeypatch.setenv("POLICE_TOKEN", tokens["police"])
        by_env = Hma(
            HashmeshSignalExchangeAPI,
            HashmeshCollabConfig(name="p", url=police.url, token_env="POLICE_TOKEN"),
        )
        by_env.fetch()
        assert set(by_env.bank.values()) == {("video_md5", MD5[1])}
        secret = tmp_path / "hotline.token"
        secret.write_text(tokens["hotline"] + "\n")
        by_file = Hma(
            HashmeshSignalExchangeAPI,
            HashmeshCollabConfig(name="h", url=hotline.url, token_file=str(secret)),
        )
        by_file.fetch()
        assert len(by_file.bank) == 2
    finally:
        police.stop()
        hotline.stop()


def test_bad_node_names_and_empty_token_sources_are_refused(tmp_path: Path) -> None:
    for bad in ("", "Police", "a-b", "x" * 41, "_x"):
        with pytest.raises(ValueError, match="exchange name"):
            exchange_api(bad)
    with pytest.raises(ValueError, match="token_env: environment variable NOPE_NOT_SET"):
        HashmeshCredentials.named_by(
            HashmeshCollabConfig(name="x", url="http://127.0.0.1:1", token_env="NOPE_NOT_SET")
        )
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match=r"token_file: .* is empty"):
        HashmeshCredentials.named_by(
            HashmeshCollabConfig(name="x", url="http://127.0.0.1:1", token_file=str(empty))
        )


def test_twelve_thousand_adds_and_a_confirm_on_the_first(node: NodeProc) -> None:
    """The reported case at the real page size: 12,000 adds, then one confirm on the first
    (the confirm lands in the second 10,000-entry page). HMA must hold all 12,000."""
    values = [hashlib.md5(f"hma-merge-{i}".encode()).hexdigest() for i in range(12_000)]
    op_ids = []
    for at in range(0, len(values), 4_000):
        chunk = [{"type": "md5", "value": v} for v in values[at : at + 4_000]]
        out = call(node, "/v1/signals/batch", {"collection": "csam", "signals": chunk})
        op_ids += [s["op_id"] for s in out["signals"]]
    opine(node, op_ids[0], "confirm")
    both = Both(node)
    both.fetch()
    assert len(both.hma.bank) == 12_000
    assert len(both.cli.index()) == 12_000
    both.assert_holds(op_ids[0], values[0], {node.node_id: "confirm"})


def test_records_pickled_by_the_previous_version_still_load() -> None:
    """HMA keeps pickles of the metadata class: one without the fields added since (as
    the previous version wrote it) loads, converts and reports its opinions."""
    record = HashmeshSignalMetadata(
        signal_type="video_md5",
        signal=MD5[0],
        op_ids=["a/csam/1/0"],
        authors=["hotline"],
        collection="csam",
        category="csam",
        verdicts={"b": "dispute"},
    )
    for added in ("ref", "author_ids", "verdict_names"):
        del record.__dict__[added]
    old = pickle.loads(pickle.dumps(record))
    assert old.disputes == 1
    assert old.get_as_opinions()[1].tags == {"dispute:b"}
    collab = HashmeshCollabConfig(name="m", url="http://127.0.0.1:1", drop_disputed=True)
    assert not old.passes(collab)
    plain = HashmeshCollabConfig(name="m", url="http://127.0.0.1:1")
    converted = HashmeshSignalExchangeAPI.naive_convert_to_signal_type(
        TYPES, plain, {"a/csam/1/0": old}
    )
    assert list(converted[VideoMD5Signal]) == [MD5[0]]
