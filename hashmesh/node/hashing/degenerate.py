"""Hashes that must never be published, recognised from the hash itself.

A published hash is matched on every platform that trusts the publisher. A hash that
describes no particular picture (a black frame, an empty upload) therefore flags innocent
content network-wide: a black picture's PDQ claimed at quality 100 once went out as `csam`
and a platform flagged every black upload. The quality a client claims cannot be trusted
(the self-report page computes it in the visitor's browser), so every publishing route
(hashmesh/node/service.py `prepare_add`: CLI `add` and `submit`, the API, imports, self-reports)
asks `degenerate_reason` first, and no flag overrides it.

Thresholds were measured on Meta's reference hashes (../shared/testdata/pdq haystack.txt
and expected.csv, 1,368 real PDQs): popcount 112-142, at least 7 distinct 16-bit words, at
most 2 zero words, at most 5 copies of one word, longest run of equal bits 33, distance at
least 89 from every flat-picture hash below. Each rule keeps a wide margin from those.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: PDQ sets a bit for each DCT coefficient above the median, so a real hash has about half
#: of its 256 bits set; far from it, the hash is not the output of PDQ on a real picture.
POPCOUNT_MIN, POPCOUNT_MAX = 96, 160
#: Fewer distinct 16-bit words than this is a near-constant hash (all zeros, all ones, a
#: repeated pattern); real hashes have 7 or more.
MIN_DISTINCT_WORDS = 4
#: This many zero words is what flat pictures give (the DCT of a constant is noise around
#: zero); real hashes have at most 2.
MAX_ZERO_WORDS = 3
#: A run of identical bits this long spans four whole words; real hashes stay under 34.
MAX_BIT_RUN = 63
#: Within matching distance of a flat picture's hash the hash would match blank pictures.
FLAT_DISTANCE = 31

#: PDQ of flat-colour pictures (black, white, grey, red, blue; PNG, 5x5 to 1000x700) as
#: hashmesh.node.hashing.hasher.hash_bytes computes them; pictures under 5 px hash to all zeros.
FLAT_PDQS = (
    "0" * 64,
    "00001134000011342c4b00002c4b1134000000002c4b2c4b00002c4b8200554b",
    "000000002c4b11342c4b2c4b0000554b00002c4b113411342c4b585e2c4b017e",
    "2c4b017e82002c4b000000000000554b11342c4b0000a7a1cc53113482008200",
    "000082000000820011342c4b1134cc5300002c4b2c4b2c4b2c4b000011342c4b",
    "0000aaaa5555aaaa555511345555cc530000cc5311342c4b5555aaaa5555aaaa",
    "00002c4b2c4b1134113411340000cc530000cc5311342c4b8200017e2c4b554b",
)
_FLAT = tuple(int(h, 16) for h in FLAT_PDQS)

#: Digests of the empty file: every failed download, truncated upload or placeholder has
#: them, so they would match countless unrelated files.
EMPTY_FILE = {
    "md5": "d41d8cd98f00b204e9800998ecf8427e",
    "sha1": "da39a3ee5e6b4b0d3255bfef95601890afd80709",
    "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
}

_RUN = re.compile(r"0+|1+")
_ALL_ONES = (1 << 256) - 1


def _has_run(bits: int, length: int) -> bool:
    """Whether `bits` has `length` consecutive ones: after `x &= x >> k` a set bit marks a
    run of at least twice the length it marked before, so a few shifts answer what a scan
    of the 256 bits did (every match asks this of its query: matching/matcher.py)."""
    marked = 1
    while marked * 2 <= length:
        bits &= bits >> marked
        marked *= 2
    if marked < length:
        bits &= bits >> (length - marked)
    return bits != 0


def degenerate_reason(kind: str, value: str) -> str | None:
    """Why this (already validated, lower-case hex) hash must not be published, or None."""
    value = value.lower()
    if EMPTY_FILE.get(kind) == value:
        return f"this is the {kind} of the empty file: it would match every empty file"
    if kind != "pdq" or len(value) != 64 or value.strip("0123456789abcdef"):
        return None  # not a pdq: the protocol's own validation refuses malformed values
    bits = int(value, 16)
    words = [value[i : i + 4] for i in range(0, 64, 4)]
    popcount = bits.bit_count()
    if len(set(words)) < MIN_DISTINCT_WORDS:
        return (
            f"near-constant pdq ({len(set(words))} distinct 16-bit words): it describes no "
            "particular picture and would match plain ones"
        )
    if not POPCOUNT_MIN <= popcount <= POPCOUNT_MAX:
        return (
            f"pdq with {popcount} of 256 bits set (real pictures give {POPCOUNT_MIN}-"
            f"{POPCOUNT_MAX}): not the hash of a real picture"
        )
    if words.count("0000") >= MAX_ZERO_WORDS:
        return "pdq of a flat picture (many zero words): it would match plain pictures"
    if _has_run(bits, MAX_BIT_RUN + 1) or _has_run(bits ^ _ALL_ONES, MAX_BIT_RUN + 1):
        longest = max(len(m.group(0)) for m in _RUN.finditer(format(bits, "0256b")))
        return f"pdq with a run of {longest} identical bits: not the hash of a real picture"
    if any((bits ^ flat).bit_count() <= FLAT_DISTANCE for flat in _FLAT):
        return "pdq of an empty or single-colour picture: it would match every plain picture"
    return None


def degenerate_adds(adds: Sequence[tuple[str, str]]) -> list[tuple[int, str]]:
    """(position, reason) of each degenerate (type, value) in `adds`, for ingest from peers,
    where a batch holds up to 10,000 adds: a vectorised pass clears the hashes that no rule
    can catch (7 us a PDQ one by one was 7 s of a 1M sync), and only the rest are asked
    `degenerate_reason`. A run of 64 equal bits spans three whole 16-bit words, so a hash
    with at most two 0000 and two ffff words, enough distinct words, a real popcount and
    no flat hash within FLAT_DISTANCE is cleared; values are validated hex already."""
    import numpy as np

    out: list[tuple[int, str]] = []
    pdq: list[int] = []
    for n, (kind, value) in enumerate(adds):
        if kind == "pdq":
            if len(value) == 64:
                pdq.append(n)
        elif EMPTY_FILE.get(kind) == value.lower():
            out.append((n, degenerate_reason(kind, value) or ""))
    if pdq:
        words = np.frombuffer(bytes.fromhex("".join(adds[n][1] for n in pdq)), dtype=">u2").reshape(
            len(pdq), 16
        )
        popcount = np.bitwise_count(words).sum(axis=1, dtype=np.int64)
        ordered = np.sort(words, axis=1)
        distinct = 1 + (ordered[:, 1:] != ordered[:, :-1]).sum(axis=1)
        flat = np.frombuffer(bytes.fromhex("".join(FLAT_PDQS)), dtype=">u2").reshape(-1, 16)
        nearest = np.bitwise_count(words[:, None, :] ^ flat[None, :, :]).sum(axis=2).min(axis=1)
        cleared = (
            (popcount >= POPCOUNT_MIN)
            & (popcount <= POPCOUNT_MAX)
            & (distinct >= MIN_DISTINCT_WORDS)
            & ((words == 0).sum(axis=1) <= 2)
            & ((words == 0xFFFF).sum(axis=1) <= 2)
            & (nearest > FLAT_DISTANCE)
        )
        for i in np.flatnonzero(~cleared).tolist():
            reason = degenerate_reason("pdq", adds[pdq[i]][1])
            if reason is not None:
                out.append((pdq[i], reason))
    return sorted(out)
