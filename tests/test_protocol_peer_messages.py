"""The two peer messages besides the sync page, as the protocol defines them: the reply to
pushed batches and the gossiped fork evidence (docs/protocol.md, "Peer messages"). They
used to be ad-hoc JSON inside the node; a second implementation needs their decoders."""

from __future__ import annotations

import pytest

from hashmesh.protocol.batches import LogKey
from hashmesh.protocol.encoding import canonical
from hashmesh.protocol.errors import ProtocolError
from hashmesh.protocol.signing import SigningKey
from hashmesh.protocol.sync import (
    MAX_EVIDENCE_MESSAGE_BYTES,
    MAX_EVIDENCE_PER_MESSAGE,
    PushReply,
    PushResult,
    decode_evidence_message,
    decode_push_reply,
    encode_evidence_message,
    encode_push_reply,
)

AUTHOR = SigningKey(bytes([1]) * 32).node_id
REPLY = PushReply(
    [PushResult(f"{AUTHOR}/csam", 3, "applied"), PushResult(f"{AUTHOR}/csam", 5, "deferred")],
    {LogKey(AUTHOR, "csam"): 3},
    True,
)


def test_push_reply_round_trips_in_canonical_form() -> None:
    body = encode_push_reply(REPLY)
    assert body == canonical(
        {
            "deferred": True,
            "results": [
                {"log": f"{AUTHOR}/csam", "outcome": "applied", "seq": 3},
                {"log": f"{AUTHOR}/csam", "outcome": "deferred", "seq": 5},
            ],
            "vector": [[AUTHOR, "csam", 3]],
        }
    )
    assert decode_push_reply(body) == REPLY


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b'{"results":[],"vector":[]}',
        b'{"deferred":"yes","results":[],"vector":[]}',
        b'{"deferred":false,"results":{},"vector":[]}',
        b'{"deferred":false,"results":[{"log":"x","outcome":"eaten","seq":1}],"vector":[]}',
        b'{"deferred":false,"results":[{"log":"x","outcome":"applied","seq":"1"}],"vector":[]}',
        b'{"deferred":false,"results":[],"vector":[["nobody","csam",1]]}',
        b'{"deferred": false, "results": [], "vector": []}',
        b'{"deferred":false,"error":"x","results":[],"vector":[]}',
    ],
)
def test_malformed_push_replies_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_push_reply(body)


def test_evidence_message_round_trips_and_is_bounded() -> None:
    blobs = [b"fork one", b"fork two"]
    assert decode_evidence_message(encode_evidence_message(blobs)) == blobs
    assert decode_evidence_message(encode_evidence_message([])) == []
    with pytest.raises(ProtocolError, match="at most"):
        decode_evidence_message(encode_evidence_message([b"x"] * (MAX_EVIDENCE_PER_MESSAGE + 1)))
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_evidence_message(encode_evidence_message([b"x" * MAX_EVIDENCE_MESSAGE_BYTES]))


@pytest.mark.parametrize(
    "body",
    [
        b'{"evidence":"AAAA"}',
        b'{"evidence":["AA=="]}',
        b'{"evidence":[1]}',
        b'{"evidence":[],"more":1}',
        b'{"evidence": []}',
    ],
)
def test_malformed_evidence_messages_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_evidence_message(body)
