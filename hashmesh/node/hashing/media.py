"""Hashes of a file that is a picture or a video: exact digests, then PDQ or vPDQ.

One entry point for the command line (`hash`, `submit`, `match --file`), so that a file
is tried the same way everywhere: as a picture first (Pillow; an animated picture is a
picture), then as a video (FFmpeg). A file that is neither is refused: its MD5 alone,
published as if it were a picture, would only be noise in everyone's lists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hashmesh.node.hashing.hasher import FileHashes, ImageError, ImageTooLarge, hash_file
from hashmesh.node.hashing.video import VideoError, VideoHashes, VideoTooLarge, hash_video


class MediaError(ValueError):
    """Neither a picture nor a video that can be decoded (the caller's file)."""


@dataclass(frozen=True, slots=True)
class MediaHashes:
    """`hashes` always has the digests; `hashes.pdq` is set for a picture, `video` for a
    video; `note` says why a picture or video over a budget has its digests only."""

    hashes: FileHashes
    video: VideoHashes | None = None
    note: str | None = None


def hash_media(
    path: str | os.PathLike[str],
    *,
    dihedral: bool = False,
    refuse_large: bool = False,
    seconds_per_hash: float = 1.0,
) -> MediaHashes:
    """Digests and PDQ (a picture) or vPDQ (a video) of `path`.

    With `refuse_large`, a picture or video over the decoding budget raises (ImageTooLarge,
    VideoTooLarge) instead of giving its digests only: asked for a perceptual hash, a
    caller must not read "no PDQ" as "hashed".
    """
    try:
        return MediaHashes(hash_file(path, dihedral=dihedral))
    except ImageTooLarge as exc:
        if refuse_large:
            raise
        return MediaHashes(hash_file(path, pdq=False), note=f"no PDQ: {exc}")
    except ImageError as exc:
        image_reason = str(exc)
    digests = hash_file(path, pdq=False)
    try:
        video = hash_video(path, seconds_per_hash=seconds_per_hash)
    except VideoTooLarge as exc:
        if refuse_large:
            raise
        return MediaHashes(digests, note=f"no vPDQ: {exc}")
    except VideoError as exc:
        raise MediaError(
            f"{os.fspath(path)}: neither a picture nor a video that can be decoded"
            f" ({_without_name(image_reason, path)}; {_without_name(str(exc), path)})"
        ) from exc
    return MediaHashes(digests, video)


def _without_name(reason: str, path: str | os.PathLike[str]) -> str:
    name = os.fspath(path)
    for prefix in (f"{name}: ", f"{name} is ", f"{name} "):
        if reason.startswith(prefix):
            return reason[len(prefix) :]
    return reason
