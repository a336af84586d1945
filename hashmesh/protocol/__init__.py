"""hashmesh protocol core: sans-IO, deterministic, no sockets, disk, clock or asyncio.

Bytes in, values out. The node (package `node`) is the I/O shell around this package;
another implementation of hashmesh needs only what is here and docs/protocol.md.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hashmesh.protocol.batches import (
        Batch,
        Header,
        LogKey,
        build_batch,
        verify_batch,
        verify_parts,
    )
    from hashmesh.protocol.errors import ProtocolError, ProtocolUsageError
    from hashmesh.protocol.ops import AddOp, OpId, OpinionOp, RevokeOp
    from hashmesh.protocol.signals import Signal, get_type, register, signal_types
    from hashmesh.protocol.signing import SigningKey

# Where each public name lives. Loaded on first use (PEP 562), so that importing one light
# submodule (hashmesh.protocol.errors, .names) does not load pydantic and cryptography.
_HOMES = {
    "Batch": "batches",
    "Header": "batches",
    "LogKey": "batches",
    "build_batch": "batches",
    "verify_batch": "batches",
    "verify_parts": "batches",
    "ProtocolError": "errors",
    "ProtocolUsageError": "errors",
    "AddOp": "ops",
    "OpId": "ops",
    "OpinionOp": "ops",
    "RevokeOp": "ops",
    "Signal": "signals",
    "get_type": "signals",
    "register": "signals",
    "signal_types": "signals",
    "SigningKey": "signing",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'hashmesh.protocol' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AddOp",
    "Batch",
    "Header",
    "LogKey",
    "OpId",
    "OpinionOp",
    "ProtocolError",
    "ProtocolUsageError",
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
