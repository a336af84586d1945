"""Gossip of statements between peers: the messages, their bounds and their parsers.

Statements (protocol/statements.py) are few beside batches (certificates, hand-overs, key
revocations, membership documents, cosigns) but must reach every node before the batches
they decide on, so a sync round starts with them:

    index   {"known": digest | "", "after": id | ""}  ->
            {"digest": d, "same": bool, "index": [[id, wire hash], ...], "more": bool}
            `known` is the digest of the answerer's view the caller got last time: equal to
            the current one, the answer is "same" and empty (an idle round costs 100 bytes).
            Otherwise a page of the index of what the caller may see, in id order.
    fetch   {"ids": [id, ...]}  ->  {"statements": [statement, ...]}
            the caller asks only for what it lacks or holds with another set of signatures.
    push    {"statements": [statement, ...]}  ->  {"new": n}
            eager gossip of a statement just learned (a key revocation must not wait for
            the next round).

A statement inside a message is its wire object ({"body", "sigs"}), verified by the node
with parse_statement_json. Every list and message is bounded; a fault is a SyncError
naming the field (peer data).
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from hashmesh.protocol.encoding import canonical, parse_canonical
from hashmesh.protocol.sync import SyncError

MAX_INDEX_PAGE = 2000  # entries per index page: about 260 KB
MAX_FETCH_IDS = 200  # statements per fetch or push: at most 200 x 32 KiB = 6.4 MiB
MAX_REQUEST_BYTES = 64 * 1024
MAX_INDEX_BYTES = 1024 * 1024
MAX_STATEMENTS_BYTES = 8 * 1024 * 1024

_HEX64 = re.compile(r"[0-9a-f]{64}")


class IndexRequest(NamedTuple):
    known: str
    after: str


class IndexPage(NamedTuple):
    digest: str
    same: bool
    entries: list[tuple[str, str]]
    more: bool


def _hex_or_empty(value: Any, what: str) -> str:
    if not isinstance(value, str) or not (value == "" or _HEX64.fullmatch(value)):
        raise SyncError(f"{what}: must be 64 lower-case hex digits or empty")
    return value


def _hex(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise SyncError(f"{what}: must be 64 lower-case hex digits")
    return value


def _object(body: bytes, limit: int, what: str, keys: set[str]) -> dict[str, Any]:
    if len(body) > limit:
        raise SyncError(f"{what}: larger than {limit} bytes")
    value = parse_canonical(body, what)
    if not isinstance(value, dict) or set(value) != keys:
        raise SyncError(f"{what}: must hold exactly {', '.join(sorted(keys))}")
    return value


def encode_index_request(known: str, after: str = "") -> bytes:
    return canonical({"after": after, "known": known})


def parse_index_request(body: bytes) -> IndexRequest:
    value = _object(body, MAX_REQUEST_BYTES, "statement index request", {"after", "known"})
    return IndexRequest(
        _hex_or_empty(value["known"], "statement index request.known"),
        _hex_or_empty(value["after"], "statement index request.after"),
    )


def encode_index_page(page: IndexPage) -> bytes:
    return canonical(
        {
            "digest": page.digest,
            "index": [[i, h] for i, h in page.entries],
            "more": page.more,
            "same": page.same,
        }
    )


def decode_index_page(body: bytes) -> IndexPage:
    what = "statement index"
    value = _object(body, MAX_INDEX_BYTES, what, {"digest", "index", "more", "same"})
    digest = _hex(value["digest"], f"{what}.digest")
    if not isinstance(value["same"], bool) or not isinstance(value["more"], bool):
        raise SyncError(f"{what}.same, .more: must be true or false")
    items = value["index"]
    if not isinstance(items, list) or len(items) > MAX_INDEX_PAGE:
        raise SyncError(f"{what}.index: expected a list of at most {MAX_INDEX_PAGE} entries")
    entries: list[tuple[str, str]] = []
    previous = ""
    for n, item in enumerate(items):
        if not isinstance(item, list) or len(item) != 2:
            raise SyncError(f"{what}.index[{n}]: expected [id, wire hash]")
        sid = _hex(item[0], f"{what}.index[{n}] id")
        if sid <= previous:
            raise SyncError(f"{what}.index[{n}]: ids must be in ascending order")
        previous = sid
        entries.append((sid, _hex(item[1], f"{what}.index[{n}] wire hash")))
    if value["same"] and (entries or value["more"]):
        raise SyncError(f"{what}: a 'same' answer carries no index")
    return IndexPage(digest, value["same"], entries, value["more"])


def encode_fetch(ids: list[str]) -> bytes:
    return canonical({"ids": sorted(set(ids))})


def parse_fetch(body: bytes) -> list[str]:
    value = _object(body, MAX_REQUEST_BYTES, "statement fetch", {"ids"})
    ids = value["ids"]
    if not isinstance(ids, list) or not 0 < len(ids) <= MAX_FETCH_IDS:
        raise SyncError(f"statement fetch.ids: expected 1 to {MAX_FETCH_IDS} ids")
    return [_hex(i, f"statement fetch.ids[{n}]") for n, i in enumerate(ids)]


def encode_statements(objects: list[dict[str, Any]]) -> bytes:
    """`objects`: each statement's wire object (Statement.to_json())."""
    return canonical({"statements": objects})


def decode_statements(body: bytes, what: str = "statements") -> list[Any]:
    """The list of statement objects, unverified: the node verifies each."""
    value = _object(body, MAX_STATEMENTS_BYTES, what, {"statements"})
    items = value["statements"]
    if not isinstance(items, list) or len(items) > MAX_FETCH_IDS:
        raise SyncError(f"{what}.statements: expected a list of at most {MAX_FETCH_IDS}")
    return items


def encode_push_answer(new: int) -> bytes:
    return canonical({"new": new})


def decode_push_answer(body: bytes) -> int:
    value = _object(body, MAX_REQUEST_BYTES, "statement push answer", {"new"})
    new = value["new"]
    if type(new) is not int or not 0 <= new <= MAX_FETCH_IDS:
        raise SyncError(f"statement push answer.new: expected 0 to {MAX_FETCH_IDS}")
    return new
