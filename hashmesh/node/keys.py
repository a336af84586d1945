"""Secrets on disk: the node's Ed25519 seed and bearer tokens, always mode 0600.

Files are created with O_EXCL so an existing key is never overwritten, and loading refuses
a key that group or others can read: a leaked node key lets anyone publish as this
organisation, so a lax file mode is treated as an error, not a warning.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from hashmesh.node.errors import HomeError
from hashmesh.protocol.encoding import b64url, from_b64url
from hashmesh.protocol.errors import EncodingError

if TYPE_CHECKING:  # cryptography is loaded by the commands that sign, not by every command
    from hashmesh.protocol.signing import SigningKey

KEY_PREFIX = "hashmesh-ed25519-seed:"


def write_secret(path: Path, text: str) -> None:
    """Create `path` with mode 0600 holding `text`; refuse if it already exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_secret(path: Path, what: str) -> str:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise HomeError(f"{what} file {path} does not exist") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise HomeError(
            f"{what} file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); "
            f"run: chmod 600 {path}"
        )
    return path.read_text("utf-8").strip()


def write_key(path: Path, key: SigningKey) -> None:
    """A key file (0600, refused if `path` exists) that load_key reads back."""
    write_secret(path, KEY_PREFIX + b64url(key.seed()) + "\n")


def create_key(path: Path) -> SigningKey:
    from hashmesh.protocol.signing import SigningKey

    key = SigningKey(os.urandom(32))
    write_key(path, key)
    return key


def load_key(path: Path) -> SigningKey:
    from hashmesh.protocol.signing import SigningKey

    text = read_secret(path, "node key")
    if not text.startswith(KEY_PREFIX):
        raise HomeError(f"node key file {path} is not a hashmesh key")
    try:
        return SigningKey(from_b64url(text[len(KEY_PREFIX) :], "node key", 32))
    except EncodingError as exc:
        raise HomeError(f"node key file {path} is damaged: {exc}") from None


def new_token() -> str:
    return "hm_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Tokens are stored as SHA-256: they are long random strings, so no salt or KDF is needed."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
