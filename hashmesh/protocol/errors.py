"""Every failure the protocol can report is a ProtocolError, so callers need one except clause.

Subclasses tell *why* (the node maps them to HTTP statuses and peer scores); the message
always names the field and the reason in one sentence.
"""

from __future__ import annotations


class ProtocolError(ValueError):
    """Base class: bad input for the protocol. Never raised for programming errors."""


class EncodingError(ProtocolError):
    """Bytes that are not canonical JSON, base64url or hex as the spec requires."""


class SignalError(ProtocolError):
    """A signal value that is malformed for its type, or an unknown type."""


class OpError(ProtocolError):
    """An operation that breaks the operation schema or limits."""


class LimitError(ProtocolError):
    """Input larger than a protocol limit; refused before it is parsed."""


class SignatureError(ProtocolError):
    """A signature that does not verify, or a key that is not a valid Ed25519 node id."""


class BatchError(ProtocolError):
    """A batch whose framing, header, Merkle root or op list is inconsistent."""


class ProofError(ProtocolError):
    """A Merkle inclusion proof that does not prove what it claims."""


class EvidenceError(ProtocolError):
    """Fork evidence that does not prove equivocation."""


class BundleError(ProtocolError):
    """A bundle file that is truncated or not a hashmesh bundle."""
