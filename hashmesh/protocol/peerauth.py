"""Peer request and response signatures: who is calling, to whom, and for exactly what.

Every peer request carries the caller's node id, the callee's node id, a timestamp, a
random nonce and a signature over those plus the method, path (with query) and SHA-256 of
the body. The response is signed by the callee over the request's nonce, the status and
the response body's digest, so the caller knows it reached the peer it meant. TLS is
optional on top; these signatures make the application layer safe on its own.

Pure functions: the node supplies the clock reading, the nonce and the replay cache.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from hashlib import sha256

from hashmesh.protocol.encoding import b64url, canonical, from_b64url
from hashmesh.protocol.errors import EncodingError, ProtocolError
from hashmesh.protocol.signing import (
    CONTEXT_PEER_REQUEST,
    CONTEXT_PEER_RESPONSE,
    SigningKey,
    validate_node_id,
    verify,
)

H_FROM = "X-Hashmesh-From"
H_TO = "X-Hashmesh-To"
H_TS = "X-Hashmesh-Timestamp"
H_NONCE = "X-Hashmesh-Nonce"
H_SIG = "X-Hashmesh-Signature"
DEFAULT_WINDOW_MS = 60_000
MAX_PATH = 2048


class PeerAuthError(ProtocolError):
    """A peer request or response whose authentication is missing, stale or invalid."""


@dataclass(frozen=True, slots=True)
class RequestAuth:
    caller: str
    nonce: str
    ts: int
    #: the node id the request was addressed to (one of the callee's ids)
    callee: str = ""


def _request_message(
    method: str, path: str, body: bytes, caller: str, callee: str, ts: int, nonce: str
) -> bytes:
    return canonical(
        {
            "method": method.upper(),
            "path": path,
            "body": sha256(body).hexdigest(),
            "from": caller,
            "to": callee,
            "ts": ts,
            "nonce": nonce,
        }
    )


def sign_request(
    key: SigningKey, callee: str, method: str, path: str, body: bytes, ts: int, nonce: bytes
) -> dict[str, str]:
    """Headers to add to a peer request. `nonce` is 16+ random bytes from the caller."""
    nonce_text = b64url(nonce)
    message = _request_message(method, path, body, key.node_id, callee, ts, nonce_text)
    return {
        H_FROM: key.node_id,
        H_TO: callee,
        H_TS: str(ts),
        H_NONCE: nonce_text,
        H_SIG: b64url(key.sign(CONTEXT_PEER_REQUEST, message)),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise PeerAuthError(f"peer auth: header {name} is missing")
    return value


@dataclass(frozen=True, slots=True)
class RequestClaim:
    """What a request's headers claim, checked for form but not yet for signature."""

    caller: str
    ts: int
    nonce: str
    signature: bytes
    callee: str = ""


def read_claim(
    headers: Mapping[str, str], path: str, callee: str | Collection[str]
) -> RequestClaim:
    """The headers' claim, without the body: lets the node refuse unknown or stale callers
    before it spends memory on a body whose signature it cannot check yet. `callee` is
    the node's id, or all its ids (a node that rotated its identity is still addressed by
    its old ids until each peer has learned the new one)."""
    caller = _header(headers, H_FROM)
    try:
        validate_node_id(caller, f"peer auth: {H_FROM}")
    except ProtocolError as exc:
        raise PeerAuthError(str(exc)) from None
    to = _header(headers, H_TO)
    if to != callee if isinstance(callee, str) else to not in callee:
        raise PeerAuthError("peer auth: request is addressed to another node")
    ts_text = _header(headers, H_TS)
    if not (ts_text.isascii() and ts_text.isdigit()) or len(ts_text) > 16:
        raise PeerAuthError(f"peer auth: {H_TS} is not a millisecond timestamp")
    nonce = _header(headers, H_NONCE)
    try:
        nonce_bytes = from_b64url(nonce, f"peer auth: {H_NONCE}")
        signature = from_b64url(_header(headers, H_SIG), f"peer auth: {H_SIG}", 64)
    except EncodingError as exc:
        raise PeerAuthError(str(exc)) from None
    if not 16 <= len(nonce_bytes) <= 64:
        raise PeerAuthError(f"peer auth: {H_NONCE} must be 16-64 bytes")
    if len(path) > MAX_PATH:
        raise PeerAuthError("peer auth: path too long")
    return RequestClaim(caller, int(ts_text), nonce, signature, to)


def check_freshness(ts: int, now_ms: int, window_ms: int = DEFAULT_WINDOW_MS) -> None:
    if abs(now_ms - ts) > window_ms:
        raise PeerAuthError(
            f"peer auth: timestamp is {abs(now_ms - ts) // 1000} s off (window "
            f"{window_ms // 1000} s); check the clocks"
        )


def verify_request(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    callee: str | Collection[str],
    now_ms: int,
    window_ms: int = DEFAULT_WINDOW_MS,
) -> RequestAuth:
    """Check a request's signature, audience and freshness; the node checks the nonce cache."""
    claim = read_claim(headers, path, callee)
    check_freshness(claim.ts, now_ms, window_ms)
    message = _request_message(
        method, path, body, claim.caller, claim.callee, claim.ts, claim.nonce
    )
    try:
        verify(claim.caller, CONTEXT_PEER_REQUEST, message, claim.signature)
    except ProtocolError:
        raise PeerAuthError("peer auth: request signature does not verify") from None
    return RequestAuth(claim.caller, claim.nonce, claim.ts, claim.callee)


def _response_message(status: int, body: bytes, responder: str, caller: str, nonce: str) -> bytes:
    return canonical(
        {
            "status": status,
            "body": sha256(body).hexdigest(),
            "from": responder,
            "to": caller,
            "nonce": nonce,
        }
    )


def sign_response(
    key: SigningKey, caller: str, request_nonce: str, status: int, body: bytes
) -> dict[str, str]:
    message = _response_message(status, body, key.node_id, caller, request_nonce)
    return {H_FROM: key.node_id, H_SIG: b64url(key.sign(CONTEXT_PEER_RESPONSE, message))}


def verify_response(
    headers: Mapping[str, str],
    status: int,
    body: bytes,
    expected_responder: str,
    caller: str,
    request_nonce: str,
) -> None:
    """Raise PeerAuthError unless the response was signed by the peer we meant to call."""
    responder = _header(headers, H_FROM)
    if responder != expected_responder:
        raise PeerAuthError("peer auth: response signed by another node than the one called")
    try:
        signature = from_b64url(_header(headers, H_SIG), f"peer auth: {H_SIG}", 64)
        verify(
            responder,
            CONTEXT_PEER_RESPONSE,
            _response_message(status, body, responder, caller, request_nonce),
            signature,
        )
    except ProtocolError:
        raise PeerAuthError("peer auth: response signature does not verify") from None
