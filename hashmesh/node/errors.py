"""Node-level failures that an operator must read: one sentence, exit code 2, HTTP 4xx."""

from __future__ import annotations


class NodeError(Exception):
    """A refused request: bad input or a state that forbids it. Nothing was changed."""

    status = 400


class Unauthorized(NodeError):
    status = 401


class NotFound(NodeError):
    status = 404


class Forbidden(NodeError):
    status = 403


class Conflict(NodeError):
    status = 409


class PayloadTooLarge(NodeError):
    status = 413


class TooManyRequests(NodeError):
    status = 429


class HomeError(NodeError):
    """The node's home folder is missing, unsafe or held by another process."""

    status = 500


class StorageFull(NodeError):
    """The disk holding the database is full: the write was rolled back, nothing changed."""

    status = 507


class StorageUnavailable(NodeError):
    """The database cannot be written (read-only file system or file, I/O error)."""

    status = 503


class RequestTimeout(NodeError):
    """A client took too long to send its request (a slow or stalled upload)."""

    status = 408
