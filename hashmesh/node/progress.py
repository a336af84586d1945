"""Progress bars for long operations, shown only when stderr is a terminal.

Scripts and CI logs stay quiet; a person at a terminal importing a million hashes sees
how far along it is.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import Any, BinaryIO

import click


def interactive() -> bool:
    return sys.stderr.isatty() and os.environ.get("HASHMESH_NO_PROGRESS") is None


class ProgressReader:
    """Wraps a binary file: every read advances a bar sized to the file."""

    def __init__(self, fh: BinaryIO, label: str) -> None:
        self.fh = fh
        self._bar: Any = None
        if interactive():
            size = os.fstat(fh.fileno()).st_size
            self._bar = click.progressbar(length=size, label=label, file=sys.stderr)
            self._bar.__enter__()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        if self._bar is not None:
            self._bar.update(len(data))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()

    def fileno(self) -> int:
        return self.fh.fileno()

    def __enter__(self) -> ProgressReader:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(kind, value, traceback)


class Counter:
    """A bar over a known number of steps (batches written, records published)."""

    def __init__(self, total: int, label: str) -> None:
        self._bar: Any = None
        if interactive() and total > 0:
            self._bar = click.progressbar(length=total, label=label, file=sys.stderr)
            self._bar.__enter__()

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
