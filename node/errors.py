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
