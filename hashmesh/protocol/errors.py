"""Bad input is a ProtocolError, so a caller parsing bytes needs one except clause.

Subclasses tell *why*; the message always names the field and the reason in one sentence.
Whose fault the input is (the node's operator, a peer) only the caller knows, so the node
converts at each boundary (hashmesh/node/errors.py). Misuse of this package's API by its
caller is a ProtocolUsageError instead, never a ProtocolError.
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


class StatementError(ProtocolError):
    """A statement (certificate, hand-over, revocation, ...) that breaks its kind's rules."""


class UnknownKind(StatementError):
    """A statement of a kind this version does not know: maybe a newer version's, so a
    gossip page skips it instead of refusing the rest (protocol.md, statements)."""


class ProtocolUsageError(Exception):
    """The protocol API was called in a way it never allows: a bug in the caller's code.

    Deliberately not a ProtocolError (h11's LocalProtocolError against its
    RemoteProtocolError): a node converts ProtocolError from a caller's or a peer's bytes
    into that party's fault, and must never blame either for its own mistake.
    """


class BatchOverflow(ProtocolUsageError):
    """Ops that together exceed one batch's byte limit: the caller must pack fewer.

    Its own class so that a publisher packing by count can split and retry on exactly this
    mistake, without measuring every op first."""
