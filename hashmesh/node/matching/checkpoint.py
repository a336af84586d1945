"""PDQ index checkpoints: immutable memory-mapped segment files plus an atomic manifest.

Why: at 10,000,000 signals rebuilding the index from SQLite rows at start-up took a minute
and a half and 3.1 GB. A checkpoint lets a node, or each of its matcher workers, map the
index instead: `read_checkpoint` opens the segment files with ``mmap_mode='r'``, so N
processes mapping the same files share one copy in the page cache (one index's worth of
PSS, not N), and start-up costs a few checks instead of a build.

On disk, in one directory (0700; every file 0600)::

    manifest.json                     format, cursor, threshold, digest, segment list
    seg-<cid>.<array>.npy             a segment's words / keys / offsets / rows [/ key_order]
    ckpt-<token>.dead.npy             this checkpoint's dead rows, all segments concatenated
    ckpt-<token>.delta-keys.npy       this checkpoint's delta buffer (live rows only)
    ckpt-<token>.delta-words.npy

A segment never changes once built (only its `alive` mask does), so its files are named by
a content id (sha256 of its layout, keys and hashes) and a later checkpoint writes only the
segments not on disk yet: checkpointing a loaded 10M index after a day of changes writes the
few small segments the changes made, the dead rows and the delta, not 1.2 GB. Tombstones stay
per process: a loaded segment gets a fresh writable `alive` mask built from the dead rows.

Consistency: the manifest is written to a temporary file, fsynced and moved into place with
`os.replace`, after every file it names is fsynced in place, so a reader sees the old
checkpoint or the new one, never a mix. Files the new manifest no longer names are removed
only after it is in place. A process that has those files mapped keeps working: on Linux an
unlinked file lives until its last mapping goes. A reader that read the old manifest just
before the files went finds one missing, reads the manifest again and loads the new one.
Writers serialise on an flock of ``.lock``.

Nothing on disk is trusted blindly: the manifest is size-bounded and type-checked; each file's
size and header hash must match the manifest, its dtype and shape what the segment's row
count and layout imply; keys must ascend, each chunk table must span its rows, dead rows must
be distinct and in range, the delta's keys must be new, and the loaded index's `digest()` must
equal the manifest's. `verify_content=True` also hashes every byte (about 1 s a GB). Any
failure gives None and a warning: the caller rebuilds from rows. The caller then verifies
the loaded index against the store: `index.digest()` must equal the store's
``SELECT count(*), sum(id) % 2**63`` over the live PDQ rows at `cursor`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from hashmesh.node.matching import pdq_index
from hashmesh.node.matching.pdq_index import (
    _LAYOUTS,
    _MIN_TABLE_BITS,
    PDQIndex,
    _Delta,
    _Segment,
)

__all__ = [
    "FORMAT",
    "CheckpointSnapshot",
    "checkpoint_cursor",
    "read_checkpoint",
    "snapshot",
    "write_checkpoint",
]

log = logging.getLogger("hashmesh.checkpoint")

FORMAT = 1
KIND = "hashmesh-pdq-index-checkpoint"
MANIFEST = "manifest.json"
_MAX_MANIFEST_BYTES = 16 << 20
_MAX_SEGMENTS = 4096
_READ_ATTEMPTS = 3
_OWN_FILE = re.compile(r"^(seg-[0-9a-f]{32}\.[a-z_]+|ckpt-[0-9a-f]{16}\.[a-z-]+)\.npy$")
_TMP_FILE = re.compile(r"^\.tmp-[0-9a-f]{16}-")
_CHUNK = 1 << 24  # bytes per read when hashing a file


class _Invalid(Exception):
    """A checkpoint that must not be loaded; the message says which file or field and why."""


@dataclass(frozen=True)
class _SegmentState:
    segment: _Segment
    dead_rows: npt.NDArray[np.int64]


@dataclass(frozen=True)
class CheckpointSnapshot:
    """What a checkpoint will hold, taken in milliseconds while the index's owner waits.

    Segments are immutable, so holding references to them is enough; the mutable parts (dead
    rows, the delta) are copied. `write` then does the slow part (hashing, writing, fsync)
    without the index, so the owner can keep applying changes and answering queries.
    """

    threshold: int
    cursor: int
    digest: tuple[int, int]
    segments: tuple[_SegmentState, ...]
    delta_keys: npt.NDArray[np.int64]
    delta_words: npt.NDArray[np.uint64]

    def write(self, directory: Path) -> None:
        """Write this snapshot as the directory's checkpoint (see `write_checkpoint`)."""
        _write(Path(directory), self)


def snapshot(index: PDQIndex, cursor: int) -> CheckpointSnapshot:
    """Capture `index` as of feed `cursor`; call where `index` is not being changed."""
    if not isinstance(cursor, int) or isinstance(cursor, bool) or cursor < 0:
        raise ValueError(f"checkpoint cursor must be an integer >= 0, got {cursor!r}")
    states = []
    for seg in index._segments:
        dead = np.flatnonzero(~seg.alive).astype(np.int64)
        if len(dead) < len(seg):  # a segment with no live row holds nothing worth keeping
            states.append(_SegmentState(seg, dead))
    delta_words, delta_keys = index._delta.live()
    return CheckpointSnapshot(
        threshold=index.threshold,
        cursor=cursor,
        digest=index.digest(),
        segments=tuple(states),
        delta_keys=np.ascontiguousarray(delta_keys, dtype=np.int64),
        delta_words=np.ascontiguousarray(delta_words, dtype=np.uint64),
    )


def write_checkpoint(directory: Path, index: PDQIndex, cursor: int) -> None:
    """Persist `index`, which reflects the change feed up to `cursor`, atomically.

    Segment files already on disk (same content id) are reused; files the new manifest does
    not name are removed once it is in place (processes mapping them keep working: Linux
    keeps an unlinked file until its last mapping goes). Not thread-safe with changes to
    `index`: a caller that must not hold its index for the whole write takes `snapshot`
    under its lock and calls `CheckpointSnapshot.write` outside it.
    """
    snapshot(index, cursor).write(Path(directory))


def has_checkpoint(directory: Path) -> bool:
    """Whether a checkpoint's manifest is in `directory` (not whether it is valid)."""
    return (Path(directory) / MANIFEST).is_file()


def read_checkpoint(
    directory: Path, *, verify_content: bool = False
) -> tuple[PDQIndex, int] | None:
    """The checkpointed index (segments memory-mapped read-only) and its cursor, or None.

    None, with a warning saying why, when there is no checkpoint, or it is from another
    format version, truncated, or inconsistent in any way checked (see the module
    docstring); the caller then rebuilds from rows. `verify_content` hashes every file too.
    """
    directory = Path(directory)
    last = ""
    for _attempt in range(_READ_ATTEMPTS):
        try:
            return _read(directory, verify_content)
        except FileNotFoundError as exc:
            if not (directory / MANIFEST).exists():
                log.warning("no PDQ index checkpoint in %s: rebuilding from rows", directory)
                return None
            # A writer replaced the manifest and removed the files this read began with.
            last = f"{exc.filename}: missing"
        except _Invalid as exc:
            log.warning("PDQ index checkpoint in %s not loaded: %s", directory, exc)
            return None
        except (OSError, ValueError) as exc:
            log.warning("PDQ index checkpoint in %s not loaded: %s", directory, exc)
            return None
    log.warning("PDQ index checkpoint in %s not loaded: %s", directory, last)
    return None


def checkpoint_cursor(directory: Path) -> int | None:
    """The feed cursor of the checkpoint in `directory`, reading only its manifest: a
    matcher worker polls it to learn when a newer checkpoint is worth mapping. None when
    there is none or its manifest is unreadable (`read_checkpoint` says why)."""
    try:
        return _int(_manifest(Path(directory)), "cursor", 0)
    except (OSError, ValueError, _Invalid):
        return None


# -- writing ------------------------------------------------------------------------------


def _write(directory: Path, snap: CheckpointSnapshot) -> None:
    _make_private_dir(directory)
    with _locked(directory):
        known = _previous_entries(directory)
        names: set[str] = set()
        segments = []
        for state in snap.segments:
            seg = state.segment
            if seg.cid is None:
                seg.cid = _content_id(seg)
            files = {}
            for name, arr in _segment_arrays(seg).items():
                fname = f"seg-{seg.cid}.{name}.npy"
                files[name] = _ensure_file(directory, fname, arr, known.get(fname))
                names.add(fname)
            segments.append(
                {
                    "id": seg.cid,
                    "rows": len(seg),
                    "widths": list(seg.layout.widths),
                    "bits": seg.bits,
                    "dead": len(state.dead_rows),
                    "files": files,
                }
            )
        token = secrets.token_hex(8)
        small = {
            "dead": np.concatenate(
                [s.dead_rows for s in snap.segments] or [np.empty(0, np.int64)]
            ).astype(np.int64),
            "delta-keys": snap.delta_keys,
            "delta-words": snap.delta_words.reshape(-1, 4),
        }
        small_files = {}
        for name, arr in small.items():
            fname = f"ckpt-{token}.{name}.npy"
            small_files[name] = _write_file(directory, fname, arr)
            names.add(fname)
        manifest = {
            "kind": KIND,
            "format": FORMAT,
            "token": token,
            "cursor": snap.cursor,
            "threshold": snap.threshold,
            "digest": list(snap.digest),
            "segments": segments,
            "files": small_files,
        }
        _fsync_dir(directory)
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        tmp = directory / f".tmp-{secrets.token_hex(8)}-{MANIFEST}"
        _write_bytes(tmp, [body])
        os.replace(tmp, directory / MANIFEST)
        _fsync_dir(directory)
        # Only now may the previous checkpoint's files go (see the module docstring).
        for entry in os.scandir(directory):
            stale = _OWN_FILE.match(entry.name) and entry.name not in names
            if stale or _TMP_FILE.match(entry.name):  # tmp files: a writer that died
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)


def _segment_arrays(seg: _Segment) -> dict[str, npt.NDArray[Any]]:
    arrays: dict[str, npt.NDArray[Any]] = {
        "words": seg.words,
        "keys": seg.keys,
        "offsets": seg.offsets,
        "rows": seg.rows,
    }
    if seg.key_order is not None:
        arrays["key_order"] = seg.key_order
    return arrays


def _content_id(seg: _Segment) -> str:
    """What the segment's files hold: its tables follow from its layout and rows."""
    h = hashlib.sha256(json.dumps([FORMAT, list(seg.layout.widths), seg.bits, len(seg)]).encode())
    h.update(np.ascontiguousarray(seg.keys).data)
    h.update(np.ascontiguousarray(seg.words).data)
    return h.hexdigest()[:32]


def _npy_header(arr: npt.NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(arr))
    return buf.getvalue()


def _previous_entries(directory: Path) -> dict[str, dict[str, Any]]:
    """The current manifest's file entries by name, to reuse their content hashes."""
    try:
        with open(directory / MANIFEST, "rb") as f:
            m = json.loads(f.read(_MAX_MANIFEST_BYTES))
        return {
            e["name"]: e
            for s in m["segments"]
            for e in s["files"].values()
            if isinstance(e.get("name"), str) and isinstance(e.get("sha256"), str)
        }
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _ensure_file(
    directory: Path, fname: str, arr: npt.NDArray[Any], known: dict[str, Any] | None
) -> dict[str, Any]:
    """Reuse a segment file the current manifest names when its size and header agree."""
    header = _npy_header(arr)
    size = len(header) + arr.nbytes
    if known is not None and known.get("size") == size:
        try:
            with open(directory / fname, "rb") as f:
                same = os.fstat(f.fileno()).st_size == size and f.read(len(header)) == header
        except FileNotFoundError:
            same = False
        if same:
            return _file_entry(fname, header, size, str(known["sha256"]))
    return _write_file(directory, fname, arr)


def _write_file(directory: Path, fname: str, arr: npt.NDArray[Any]) -> dict[str, Any]:
    arr = np.ascontiguousarray(arr)
    header = _npy_header(arr)
    data = arr.data.cast("B") if arr.nbytes else memoryview(b"")
    tmp = directory / f".tmp-{secrets.token_hex(8)}-{fname}"
    _write_bytes(tmp, [header, data])
    os.replace(tmp, directory / fname)
    full = hashlib.sha256(header)
    full.update(data)
    return _file_entry(fname, header, len(header) + arr.nbytes, full.hexdigest())


def _file_entry(fname: str, header: bytes, size: int, sha: str | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": fname,
        "size": size,
        "header_sha256": hashlib.sha256(header).hexdigest(),
    }
    if sha is not None:
        entry["sha256"] = sha
    return entry


def _write_bytes(path: Path, parts: list[bytes | memoryview]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    os.close(fd)


def _make_private_dir(directory: Path) -> None:
    missing = []
    for p in (directory, *directory.parents):
        if p.exists():
            break
        missing.append(p)
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):
            p.mkdir(mode=0o700)
    os.chmod(directory, 0o700)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- reading ------------------------------------------------------------------------------


def _manifest(directory: Path) -> dict[str, Any]:
    with open(directory / MANIFEST, "rb") as f:
        body = f.read(_MAX_MANIFEST_BYTES + 1)
    if len(body) > _MAX_MANIFEST_BYTES:
        raise _Invalid(f"{MANIFEST}: larger than {_MAX_MANIFEST_BYTES} bytes")
    try:
        m = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _Invalid(f"{MANIFEST}: not JSON ({exc})") from None
    if not isinstance(m, dict) or m.get("kind") != KIND:
        raise _Invalid(f"{MANIFEST}: not a PDQ index checkpoint")
    if m.get("format") != FORMAT:
        raise _Invalid(f"{MANIFEST}: format {m.get('format')!r}, this version reads {FORMAT}")
    return m


def _read(directory: Path, verify_content: bool) -> tuple[PDQIndex, int]:
    m = _manifest(directory)
    cursor = _int(m, "cursor", 0)
    threshold = _int(m, "threshold", 0, 255)
    digest = m.get("digest")
    if not (isinstance(digest, list) and len(digest) == 2 and all(_is_int(v) for v in digest)):
        raise _Invalid(f"{MANIFEST}: digest must be [count, sum]")
    segs = m.get("segments")
    if not isinstance(segs, list) or len(segs) > _MAX_SEGMENTS:
        raise _Invalid(f"{MANIFEST}: segments must be a list of at most {_MAX_SEGMENTS}")
    small = m.get("files")
    if not isinstance(small, dict):
        raise _Invalid(f"{MANIFEST}: files must be an object")

    index = PDQIndex(threshold)
    loaded: list[_Segment] = []
    dead_counts: list[int] = []
    for i, s in enumerate(segs):
        seg, dead = _load_segment(directory, s, f"segments[{i}]", verify_content)
        loaded.append(seg)
        dead_counts.append(dead)

    dead_rows = _load_small(directory, small, "dead", np.int64, (sum(dead_counts),), verify_content)
    d_keys = _load_small(directory, small, "delta-keys", np.int64, None, verify_content)
    capacity = pdq_index._DELTA_CAPACITY
    if d_keys.ndim != 1 or len(d_keys) > capacity:
        raise _Invalid(f"delta-keys: shape {d_keys.shape}, at most ({capacity},)")
    d_words = _load_small(
        directory, small, "delta-words", np.uint64, (len(d_keys), 4), verify_content
    )

    count = 0
    start = 0
    for seg, dead in zip(loaded, dead_counts, strict=True):
        rows = dead_rows[start : start + dead]
        start += dead
        if dead and (rows.min() < 0 or rows.max() >= len(seg) or np.any(np.diff(rows) <= 0)):
            raise _Invalid(f"segment {seg.cid}: dead rows not ascending within 0..{len(seg) - 1}")
        if dead >= len(seg):
            raise _Invalid(f"segment {seg.cid}: no live row")
        seg.alive[rows] = False
        seg.dead = dead
        count += len(seg) - dead
    if len(np.unique(d_keys)) != len(d_keys):
        raise _Invalid("delta-keys: a key appears twice")
    for seg in loaded:
        if np.any(seg.locate(d_keys) >= 0):
            raise _Invalid(f"delta-keys: a key is also live in segment {seg.cid}")

    delta = _Delta()
    n = len(d_keys)
    delta.words[:n] = d_words
    delta.keys[:n] = d_keys
    delta.alive[:n] = True
    delta.rows = dict(zip(d_keys.tolist(), range(n), strict=True))
    delta.size = n
    index._segments = sorted(loaded, key=len, reverse=True)
    index._delta = delta
    index._count = count + n
    got = index.digest()
    if list(got) != digest:
        raise _Invalid(f"digest {list(got)} of the loaded rows, manifest says {digest}")
    return index, cursor


def _load_segment(
    directory: Path, s: Any, where: str, verify_content: bool
) -> tuple[_Segment, int]:
    if not isinstance(s, dict):
        raise _Invalid(f"{MANIFEST}: {where} must be an object")
    cid = s.get("id")
    if not isinstance(cid, str) or not re.fullmatch(r"[0-9a-f]{32}", cid):
        raise _Invalid(f"{MANIFEST}: {where}.id must be 32 hex digits")
    n = _int(s, "rows", 1, (1 << 32) - 1, where)
    dead = _int(s, "dead", 0, n, where)
    widths = s.get("widths")
    layout = next((lay for lay in _LAYOUTS if list(lay.widths) == widths), None)
    if layout is None:
        raise _Invalid(f"{MANIFEST}: {where}.widths {widths!r} is not a known layout")
    bits = _int(s, "bits", _MIN_TABLE_BITS, min(layout.widths), where)
    files = s.get("files")
    if not isinstance(files, dict) or not {"words", "keys", "offsets", "rows"} <= set(files):
        raise _Invalid(f"{MANIFEST}: {where}.files must name words, keys, offsets and rows")
    if set(files) - {"words", "keys", "offsets", "rows", "key_order"}:
        raise _Invalid(f"{MANIFEST}: {where}.files names an unknown array")
    if layout.chunks * n >= 1 << 32:
        raise _Invalid(f"{MANIFEST}: {where}: {n} rows overflow the uint32 row tables")
    buckets = (1 << bits) + 1
    expect: dict[str, tuple[type[np.generic], tuple[int, ...]]] = {
        "words": (np.uint64, (n, 4)),
        "keys": (np.int64, (n,)),
        "offsets": (np.uint32, (layout.chunks * buckets,)),
        "rows": (np.uint32, (layout.chunks * n,)),
        "key_order": (np.int64, (n,)),
    }
    arrays = {}
    for name, entry in files.items():
        dtype, shape = expect[name]
        fname = f"seg-{cid}.{name}.npy"
        arrays[name] = _load_file(directory, entry, fname, dtype, shape, True, verify_content)
    keys = arrays["keys"]
    key_order = arrays.get("key_order")
    if key_order is None:
        if n > 1 and not np.all(keys[1:] > keys[:-1]):
            raise _Invalid(f"seg-{cid}: keys do not ascend")
    elif key_order.min() < 0 or key_order.max() >= n or not np.all(np.diff(keys[key_order]) > 0):
        raise _Invalid(f"seg-{cid}: key_order does not sort the keys")
    off = arrays["offsets"].reshape(layout.chunks, buckets)
    spans = np.arange(layout.chunks + 1, dtype=np.int64) * n
    if not (np.array_equal(off[:, 0], spans[:-1]) and np.array_equal(off[:, -1], spans[1:])):
        raise _Invalid(f"seg-{cid}: a chunk table does not span its rows")
    seg = _Segment(
        words=arrays["words"],
        keys=keys,
        alive=np.ones(n, dtype=np.bool_),  # this process's own, writable
        layout=layout,
        bits=bits,
        offsets=arrays["offsets"],
        rows=arrays["rows"],
        key_order=key_order,
        cid=cid,
    )
    return seg, dead


def _load_small(
    directory: Path,
    small: dict[str, Any],
    name: str,
    dtype: type[np.generic],
    shape: tuple[int, ...] | None,
    verify_content: bool,
) -> npt.NDArray[Any]:
    entry = small.get(name)
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise _Invalid(f"{MANIFEST}: files.{name} missing")
    fname = entry["name"]
    if not re.fullmatch(r"ckpt-[0-9a-f]{16}\." + re.escape(name) + r"\.npy", fname):
        raise _Invalid(f"{MANIFEST}: files.{name}.name {fname!r} is not a checkpoint file")
    # Small files are read whole and always hashed: they are a few MB at most.
    return _load_file(directory, entry, fname, dtype, shape, False, True)


def _load_file(
    directory: Path,
    entry: Any,
    fname: str,
    dtype: type[np.generic],
    shape: tuple[int, ...] | None,
    mmap: bool,
    verify_content: bool,
) -> npt.NDArray[Any]:
    if not isinstance(entry, dict) or entry.get("name") != fname:
        raise _Invalid(f"{MANIFEST}: entry for {fname} is missing or names another file")
    size = _int(entry, "size", 0, None, fname)
    header_sha = entry.get("header_sha256")
    path = directory / fname
    actual = path.stat().st_size
    if actual != size:
        raise _Invalid(f"{fname}: {actual} bytes, manifest says {size} (truncated?)")
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version != (1, 0):
            raise _Invalid(f"{fname}: npy format {version}, expected (1, 0)")
        f_shape, fortran, f_dtype = np.lib.format.read_array_header_1_0(f)
        header_len = f.tell()
        f.seek(0)
        header = f.read(header_len)
        if hashlib.sha256(header).hexdigest() != header_sha:
            raise _Invalid(f"{fname}: header does not match the manifest's hash")
        if fortran or f_dtype != np.dtype(dtype) or (shape is not None and f_shape != shape):
            raise _Invalid(
                f"{fname}: {f_dtype}{list(f_shape)}, expected {np.dtype(dtype)}"
                f"{list(shape) if shape is not None else ''}"
            )
        if header_len + int(np.prod(f_shape)) * f_dtype.itemsize != size:
            raise _Invalid(f"{fname}: size does not match its header")
        if verify_content:
            want = entry.get("sha256")
            if not isinstance(want, str):
                raise _Invalid(f"{fname}: manifest has no content hash")
            h = hashlib.sha256(header)
            while block := f.read(_CHUNK):
                h.update(block)
            if h.hexdigest() != want:
                raise _Invalid(f"{fname}: content does not match the manifest's hash")
    arr: npt.NDArray[Any]
    if mmap and size > header_len:
        # A plain ndarray view of the map: the np.memmap subclass's wrapping of every
        # result costs ~15% of single-query throughput (measured at 1M rows).
        arr = np.load(path, mmap_mode="r", allow_pickle=False).view(np.ndarray)
    else:
        arr = np.load(path, allow_pickle=False)
        arr.flags.writeable = False
    if arr.dtype != np.dtype(dtype) or (shape is not None and arr.shape != shape):
        raise _Invalid(f"{fname}: changed while it was read")
    return arr


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(
    obj: dict[str, Any], key: str, lo: int, hi: int | None = None, where: str = MANIFEST
) -> int:
    v = obj.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise _Invalid(f"{where}: {key} must be an integer {bound}, got {v!r}")
    return int(v)
