"""The config's trust and peer lookups stay right as the lists change (issue 22: they are
dictionaries now, built from the lists, and must never answer from a stale list)."""

from __future__ import annotations

import hashlib

from hashmesh.node.config import Config, Peer, Trust
from hashmesh.protocol import SigningKey


def _ids(n: int) -> list[str]:
    return [SigningKey(hashlib.sha256(b"a%d" % i).digest()).node_id for i in range(n)]


def _config() -> Config:
    own = SigningKey(b"\x01" * 32).node_id
    return Config(name="self", node_id=own)


def test_lookups_follow_every_change_of_the_lists() -> None:
    config = _config()
    a, b, c = _ids(3)
    assert not config.accepts(a, "csam")
    assert config.accepts(config.node_id, "anything")  # our own logs, always
    config.add_trust(Trust(node_id=a, collection="csam", name="Hotline A"))
    assert config.accepts(a, "csam") and not config.accepts(a, "ncii")
    assert config.accepted_collections() == {"csam"} and config.accepts_collection("csam")
    assert config.author_name(a) == "Hotline A"
    config.add_trust(Trust(node_id=a, collection="ncii", org="A org", country="BE"))
    assert config.trust_labels() == {(a, "ncii"): ("A org", "BE")}
    assert config.author_name(a) == "Hotline A"  # the first named entry names the author
    config.remove_trust(a, "csam")
    assert not config.accepts(a, "csam") and config.accepts(a, "ncii")
    assert config.accepted_collections() == {"ncii"} and not config.accepts_collection("csam")
    assert config.author_name(a) == ""

    config.add_peer(Peer(name="peer-b", url="http://127.0.0.1:1", node_id=b, share=["csam"]))
    assert config.peer(b) is not None and config.peer_may_read(b, "csam")
    assert config.author_name(b) == "peer-b"  # a peer's name when no trust entry names it
    config.update_peer("peer-b", share=["ncii"])
    assert not config.peer_may_read(b, "csam") and config.peer_may_read(b, "ncii")
    config.remove_peer("peer-b")
    assert config.peer(b) is None and not config.peer_may_read(b, "ncii")

    # a list replaced or grown in place (as a test or a script may do) is seen too
    config.trust = [Trust(node_id=c, collection="csam")]
    assert config.accepts(c, "csam") and not config.accepts(a, "ncii")
    config.trust.append(Trust(node_id=b, collection="csam", name="B"))
    assert config.accepts(b, "csam") and config.author_name(b) == "B"


def test_thousands_of_entries_answer_as_the_list_says() -> None:
    config = _config()
    ids = _ids(2000)
    config.trust = [
        Trust(node_id=i, collection=f"c{n % 7}", name=f"org{n}") for n, i in enumerate(ids)
    ]
    for n, i in enumerate(ids):
        assert config.accepts(i, f"c{n % 7}") and not config.accepts(i, f"c{(n + 1) % 7}")
        assert config.author_name(i) == f"org{n}"
    assert config.accepted_collections() == {f"c{k}" for k in range(7)}
