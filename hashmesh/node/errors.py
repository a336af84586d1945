"""Errors by fault, and the one table that turns each into an HTTP status and an exit code.

Four families, as h11 tells a local from a remote protocol error:

- the caller's: bad input, or a state that forbids the request (`NodeError`). The caller
  gets one sentence naming the field and why: a 4xx (or the 5xx of a full or read-only
  disk) over HTTP, exit 2 on the command line; nothing was changed.
- a peer's: bad data from another node (`PeerError`). It is scored against that peer and
  counted in its refusals; on /v1/peer/ routes the peer is the caller and hears why.
  An operator never reads it as their own fault.
- the operator's: the node's own home (its folder, config, key) is missing or wrong
  (`HomeError`). On the command line the operator is the caller: one sentence, exit 2.
  Over HTTP the caller is someone else, who gets a 500 with the generic message, while
  the log says what is wrong at ERROR (a path is not the caller's business).
- ours: a bug, or a ProtocolError that escaped from data this node produced itself
  (`InternalError`, and anything not in the table). HTTP 500 with a generic message and a
  logged traceback; on the command line "internal error" and exit 70 (EX_SOFTWARE).

The protocol package raises ProtocolError for any bad bytes without knowing whose they
are; `caller_input` converts at the boundaries where they are the caller's, and the peer
layer converts those that are a peer's. One left unconverted is therefore internal.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from hashmesh.protocol.errors import ProtocolError, ProtocolUsageError

EXIT_CALLER = 2
EXIT_PEER = 3
EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE: scripts can tell a bug from a refusal
RETRY_AFTER_S = 2
INTERNAL_MESSAGE = "internal error (see the node's log)"

Family = Literal["caller", "peer", "operator", "internal"]


class HashmeshError(Exception):
    """Base of the node's own errors; its HTTP status comes from FAULTS, never the class."""

    #: seconds a client should wait before retrying (sent as Retry-After), if any
    retry_after_s: int | None = None

    @property
    def status(self) -> int:
        return fault_of(self).status


class NodeError(HashmeshError):
    """A refused request: bad input or a state that forbids it. Nothing was changed."""


class Unauthorized(NodeError):
    pass


class NotFound(NodeError):
    pass


class Forbidden(NodeError):
    pass


class Conflict(NodeError):
    pass


class PayloadTooLarge(NodeError):
    pass


class UnsupportedEncoding(NodeError):
    pass


class TooManyRequests(NodeError):
    @classmethod
    def waiting(cls, what: str, wait_s: int) -> TooManyRequests:
        """A refusal that tells a person when to come back, in minutes, and a client in
        seconds (Retry-After)."""
        exc = cls(f"{what}; please try again in {max(1, wait_s // 60)} minutes")
        exc.retry_after_s = max(1, wait_s)
        return exc


class HomeError(NodeError):
    """The node's home folder is missing, unsafe or held by another process."""


class StorageFull(NodeError):
    """The disk holding the database is full: the write was rolled back, nothing changed."""


class StorageUnavailable(NodeError):
    """The database cannot be written (read-only file system or file, I/O error)."""


class ServiceBusy(NodeError):
    """Too many unauthenticated bytes in flight; the client should retry after a pause."""

    retry_after_s = RETRY_AFTER_S


class IndexLoading(NodeError):
    """A PDQ query arrived while the matcher's index is still loading (start-up, or a
    worker catching up): exact lookups answer meanwhile; the client retries shortly."""

    retry_after_s = 1


class RequestTimeout(NodeError):
    """A client took too long to send its request (a slow or stalled upload)."""


class PeerError(HashmeshError):
    """A peer sent data that breaks the protocol; `reason` is the key it is counted under
    in that peer's refusals (status page, `hashmesh status`, metrics)."""

    def __init__(self, message: str, reason: str = "invalid_data") -> None:
        super().__init__(message)
        self.reason = reason


class InternalError(HashmeshError):
    """Something this node did or holds is wrong: a bug, never the caller's input."""


@dataclass(frozen=True)
class Fault:
    family: Family
    status: int
    exit_code: int
    log_level: int

    @property
    def private(self) -> bool:
        """The message is for this node's log, not for whoever sent the request."""
        return self.family in ("operator", "internal")


def _caller(status: int) -> Fault:
    return Fault("caller", status, EXIT_CALLER, logging.DEBUG)


INTERNAL = Fault("internal", 500, EXIT_INTERNAL, logging.ERROR)

#: Every error class the node raises, with its status, exit code and log level. A class
#: not listed takes its nearest listed base class's row; anything else is INTERNAL.
FAULTS: dict[type[BaseException], Fault] = {
    NodeError: _caller(400),
    Unauthorized: _caller(401),
    Forbidden: _caller(403),
    NotFound: _caller(404),
    RequestTimeout: _caller(408),
    Conflict: _caller(409),
    PayloadTooLarge: _caller(413),
    UnsupportedEncoding: _caller(415),
    TooManyRequests: _caller(429),
    HomeError: Fault("operator", 500, EXIT_CALLER, logging.ERROR),
    ServiceBusy: _caller(503),
    IndexLoading: _caller(503),
    StorageUnavailable: _caller(503),
    StorageFull: _caller(507),
    PeerError: Fault("peer", 400, EXIT_PEER, logging.WARNING),
    InternalError: INTERNAL,
    ProtocolError: INTERNAL,  # not converted at a boundary: it came from our own data
    ProtocolUsageError: INTERNAL,
    Exception: INTERNAL,
}


def fault_of(exc: BaseException) -> Fault:
    for cls in type(exc).__mro__:
        fault = FAULTS.get(cls)
        if fault is not None:
            return fault
    return INTERNAL


@contextmanager
def caller_input(field: str = "") -> Iterator[None]:
    """Parse the caller's bytes (a request body, an argument, a file it named): a
    ProtocolError inside is the caller's fault, reported with the field it concerns."""
    try:
        yield
    except ProtocolError as exc:
        raise NodeError(f"{field}: {exc}" if field else str(exc)) from None
