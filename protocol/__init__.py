"""hashmesh protocol core: sans-IO, deterministic, no sockets, disk, clock or asyncio.

Bytes in, values out. The node (package `node`) is the I/O shell around this package;
another implementation of hashmesh needs only what is here and docs/protocol.md.
"""

from .batches import Batch, Header, LogKey, build_batch, verify_batch, verify_parts
from .errors import ProtocolError
from .ops import AddOp, OpId, OpinionOp, RevokeOp
from .signals import Signal, get_type, register, signal_types
from .signing import SigningKey

__all__ = [
    "AddOp",
    "Batch",
    "Header",
    "LogKey",
    "OpId",
    "OpinionOp",
    "ProtocolError",
    "RevokeOp",
    "Signal",
    "SigningKey",
    "build_batch",
    "get_type",
    "register",
    "signal_types",
    "verify_batch",
    "verify_parts",
]
