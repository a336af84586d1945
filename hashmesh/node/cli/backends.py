"""How the CLI reaches a node: directly through its store, or through the running node's API.

`open_backend` takes the home's lock when it can (no node is running: work on the store
directly, holding the lock so a node cannot start mid-command) and otherwise talks to the
running node over HTTP with the admin token from the home folder. Both backends expose the
same methods and return the same JSON values.
"""

from __future__ import annotations

import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from hashmesh.node.config import Home, HomeLock
from hashmesh.node.errors import (
    INTERNAL,
    INTERNAL_MESSAGE,
    HomeError,
    InternalError,
    NodeError,
)
from hashmesh.node.keys import read_secret
from hashmesh.protocol.errors import ProtocolError

if TYPE_CHECKING:  # the store and its dependencies load only when no node is running
    from hashmesh.node.service import NodeService

HTTP_TIMEOUT = 600.0


class LocalBackend:
    """The node is not running: call the service on the store directly."""

    running = False

    def __init__(self, service: NodeService) -> None:
        self.service = service

    def add(self, **params: Any) -> dict[str, Any]:
        return self.service.add(**params)

    def add_many(self, collection: str, signals: list[dict[str, Any]]) -> dict[str, Any]:
        return self.service.add_many(collection, signals)

    def revoke(self, op_id: str, reason: str) -> dict[str, Any]:
        return self.service.revoke(op_id, reason)

    def opinion(self, op_id: str, opinion: str, reason: str | None = None) -> dict[str, Any]:
        return self.service.opinion(op_id, opinion, reason=reason)

    def match(self, queries: list[dict[str, Any]], threshold: int) -> dict[str, Any]:
        return self.service.match(queries, threshold)

    def status(self) -> dict[str, Any]:
        return {**self.service.status(), "running": False}

    def export(self, collection: str, out: str) -> dict[str, Any]:
        return self.service.export(collection, out)

    def import_bundle(self, stream: BinaryIO) -> dict[str, Any]:
        return self.service.import_bundle(stream)

    def backup(self, out: str, force: bool = False) -> dict[str, Any]:
        return self.service.backup(out, overwrite=force)

    def peer_add(self, name: str, url: str, node_id: str, share: list[str]) -> dict[str, Any]:
        return self.service.peer_add(name, url, node_id, share)

    def peer_list(self) -> dict[str, Any]:
        return self.service.peer_list()

    def peer_show(self, name: str) -> dict[str, Any]:
        return self.service.peer_show(name)

    def peer_update(
        self, name: str, url: str | None, node_id: str | None, share: list[str] | None
    ) -> dict[str, Any]:
        return self.service.peer_update(name, url, node_id, share)

    def peer_remove(self, name: str) -> dict[str, Any]:
        return self.service.peer_remove(name)

    def peer_share(self, name: str, collection: str, share: bool) -> dict[str, Any]:
        return self.service.peer_share(name, collection, share)

    def trust_list(self, node_id: str | None = None) -> dict[str, Any]:
        return self.service.trust_list(node_id)

    def trust_add(
        self,
        node_id: str,
        collection: str,
        name: str,
        org: str = "",
        country: str = "",
        kind: str = "node",
    ) -> dict[str, Any]:
        return self.service.trust_add(node_id, collection, name, org, country, kind)

    def trust_remove(self, node_id: str, collection: str) -> dict[str, Any]:
        return self.service.trust_remove(node_id, collection)

    def policy_show(self, collection: str | None = None) -> dict[str, Any]:
        return self.service.policy_show(collection)

    def policy_set(self, collection: str, fields: dict[str, Any]) -> dict[str, Any]:
        return self.service.policy_set(collection, fields)

    def quarantine_list(self, include_lifted: bool = False) -> dict[str, Any]:
        return self.service.quarantine_list(include_lifted)

    def quarantine_lift(self, target: str) -> dict[str, Any]:
        return self.service.quarantine_lift(target)

    def disputes(self) -> dict[str, Any]:
        return self.service.disputes()

    def statement_add(self, wire: bytes, kind: str) -> dict[str, Any]:
        return self.service.statement_add(wire, kind)

    def key_rotate(
        self, identity: bool = False, prepare: bool = False, certificate: bytes | None = None
    ) -> dict[str, Any]:
        return self.service.key_rotate(identity, prepare, certificate)

    # membership and witnesses (node/membership.py, node/witness.py)
    def membership_follow(
        self, collection: str, stewards: list[str], threshold: int
    ) -> dict[str, Any]:
        return self.service.membership_follow(collection, stewards, threshold)

    def membership_unfollow(self, collection: str) -> dict[str, Any]:
        return self.service.membership_unfollow(collection)

    def membership_add(self, wire: bytes) -> dict[str, Any]:
        return self.service.membership_add(wire)

    def membership_show(self) -> dict[str, Any]:
        return self.service.membership_show()

    def log_witnesses(self, author: str, collection: str) -> dict[str, Any]:
        return self.service.log_witnesses(author, collection)


# How long `hashmesh match` waits for a running node's PDQ index to finish loading.
INDEX_WAIT_S = 120.0


class _Loading(Exception):
    """The node answered 503 with Retry-After: busy loading, worth retrying."""

    def __init__(self, error: urllib.error.HTTPError) -> None:
        self.error = error


class RemoteBackend:
    """The node is running: the same calls over its local HTTP API."""

    running = True

    def __init__(self, api: str, token: str, tls_files: tuple[str, ...] = ()) -> None:
        self.api = api.rstrip("/")
        self.token = token
        self.context: ssl.SSLContext | None = None
        if self.api.startswith("https://"):
            # The API address comes from the node holding the home's lock, on loopback, so
            # the certificate chain is checked but not its host name (issued for the
            # public name, reached here as 127.0.0.1).
            self.context = ssl.create_default_context()
            for path in tls_files:
                if path:
                    self.context.load_verify_locations(cafile=path)
            self.context.check_hostname = False

    def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        data: BinaryIO | None = None,
        length: int | None = None,
    ) -> urllib.request.Request:
        headers = {"Authorization": f"Bearer {self.token}"}
        payload: Any = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            payload = data
            headers["Content-Type"] = "application/octet-stream"
            headers["Content-Length"] = str(length)
        return urllib.request.Request(self.api + path, data=payload, headers=headers, method=method)

    def _call(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        request = self._request(method, path, body, **kw)
        try:
            return self._send(request)
        except _Loading as exc:
            raise _http_error(exc.error) from None

    def _match_call(self, body: Any) -> dict[str, Any]:
        """A match waits (up to INDEX_WAIT_S) for a node whose PDQ index is still loading
        after a start, instead of failing a script that started the node a moment ago."""
        deadline = time.monotonic() + INDEX_WAIT_S
        while True:
            try:
                return self._send(self._request("POST", "/v1/match", body))
            except _Loading as exc:
                if time.monotonic() > deadline:
                    raise _http_error(exc.error) from None
                time.sleep(0.2)

    def _send(self, request: urllib.request.Request) -> dict[str, Any]:
        try:
            with urllib.request.urlopen(
                request, timeout=HTTP_TIMEOUT, context=self.context
            ) as response:
                result: dict[str, Any] = json.loads(response.read())
                return result
        except urllib.error.HTTPError as exc:
            if exc.code == 503 and exc.headers.get("Retry-After"):
                raise _Loading(exc) from None
            raise _http_error(exc) from None
        except urllib.error.URLError as exc:
            raise NodeError(f"cannot reach the running node at {self.api}: {exc.reason}") from None

    def add(self, **params: Any) -> dict[str, Any]:
        return self._call("POST", "/v1/signals", {k: v for k, v in params.items() if v is not None})

    def add_many(self, collection: str, signals: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call(
            "POST", "/v1/signals/batch", {"collection": collection, "signals": signals}
        )

    def revoke(self, op_id: str, reason: str) -> dict[str, Any]:
        return self._call("POST", "/v1/revoke", {"op_id": op_id, "reason": reason})

    def opinion(self, op_id: str, opinion: str, reason: str | None = None) -> dict[str, Any]:
        body = {"op_id": op_id, "opinion": opinion}
        if reason is not None:
            body["reason"] = reason
        return self._call("POST", "/v1/opinions", body)

    def match(self, queries: list[dict[str, Any]], threshold: int) -> dict[str, Any]:
        return self._match_call({"queries": queries, "threshold": threshold})

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/v1/status")

    def export(self, collection: str, out: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"collection": collection})
        request = self._request("GET", f"/v1/export?{query}")
        path = Path(out)
        tmp = path.with_name(path.name + ".partial")
        from hashmesh.protocol.bundles import BundleDecoder

        frames = BundleDecoder()  # counts the batches, as the offline export reports them
        batches = 0
        try:
            with (
                urllib.request.urlopen(
                    request, timeout=HTTP_TIMEOUT, context=self.context
                ) as response,
                open(tmp, "wb") as fh,
            ):
                while chunk := response.read(1 << 20):
                    fh.write(chunk)
                    batches += len(frames.feed(chunk))
                fh.flush()
                os.fsync(fh.fileno())
            frames.close()
            tmp.replace(path)
        except urllib.error.HTTPError as exc:
            tmp.unlink(missing_ok=True)
            raise _http_error(exc) from None
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise NodeError(f"export to {out}: {exc}") from None
        except ProtocolError as exc:  # the node's own bytes: its bug, not the caller's
            tmp.unlink(missing_ok=True)
            raise InternalError(f"export to {out}: the node sent a broken bundle: {exc}") from None
        return {"collection": collection, "file": str(path), "batches": batches}

    def backup(self, out: str, force: bool = False) -> dict[str, Any]:
        body = {"file": str(Path(out).resolve()), "overwrite": force}
        return self._call("POST", "/v1/admin/backup", body)

    def import_bundle(self, stream: BinaryIO) -> dict[str, Any]:
        stream.seek(0, 2)
        length = stream.tell()
        stream.seek(0)
        return self._call("POST", "/v1/import", data=stream, length=length)

    def peer_add(self, name: str, url: str, node_id: str, share: list[str]) -> dict[str, Any]:
        body = {"name": name, "url": url, "node_id": node_id, "share": share}
        return self._call("POST", "/v1/admin/peers", body)

    def peer_list(self) -> dict[str, Any]:
        return self._call("GET", "/v1/admin/peers")

    def peer_show(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/admin/peers/{_segment(name)}")

    def peer_update(
        self, name: str, url: str | None, node_id: str | None, share: list[str] | None
    ) -> dict[str, Any]:
        body = {"url": url, "node_id": node_id, "share": share}
        body = {k: v for k, v in body.items() if v is not None}
        return self._call("PATCH", f"/v1/admin/peers/{_segment(name)}", body)

    def peer_remove(self, name: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/admin/peers/{_segment(name)}")

    def peer_share(self, name: str, collection: str, share: bool) -> dict[str, Any]:
        path = f"/v1/admin/peers/{_segment(name)}/share"
        if share:
            return self._call("POST", path, {"collection": collection})
        return self._call("DELETE", f"{path}/{_segment(collection)}")

    def trust_list(self, node_id: str | None = None) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode({'node_id': node_id})}" if node_id else ""
        return self._call("GET", f"/v1/admin/trust{query}")

    def trust_add(
        self,
        node_id: str,
        collection: str,
        name: str,
        org: str = "",
        country: str = "",
        kind: str = "node",
    ) -> dict[str, Any]:
        body = {"node_id": node_id, "collection": collection, "name": name}
        body.update({k: v for k, v in (("org", org), ("country", country)) if v})
        if kind != "node":
            body["kind"] = kind
        return self._call("POST", "/v1/admin/trust", body)

    def trust_remove(self, node_id: str, collection: str) -> dict[str, Any]:
        path = f"/v1/admin/trust/{_segment(node_id)}/{_segment(collection)}"
        return self._call("DELETE", path)

    def policy_show(self, collection: str | None = None) -> dict[str, Any]:
        if collection is None:
            return self._call("GET", "/v1/admin/policy")
        return self._call("GET", f"/v1/admin/policy/{_segment(collection)}")

    def policy_set(self, collection: str, fields: dict[str, Any]) -> dict[str, Any]:
        return self._call("PUT", f"/v1/admin/policy/{_segment(collection)}", fields)

    def quarantine_list(self, include_lifted: bool = False) -> dict[str, Any]:
        return self._call("GET", f"/v1/admin/quarantine?lifted={'1' if include_lifted else '0'}")

    def quarantine_lift(self, target: str) -> dict[str, Any]:
        return self._call("POST", "/v1/admin/quarantine/lift", {"target": target})

    def disputes(self) -> dict[str, Any]:
        return self._call("GET", "/v1/admin/disputes")

    def statement_add(self, wire: bytes, kind: str) -> dict[str, Any]:
        try:
            statement = json.loads(wire)
        except ValueError:
            raise NodeError("FILE: not a statement (not JSON)") from None
        return self._call("POST", "/v1/admin/statements", {"statement": statement, "kind": kind})

    def key_rotate(
        self, identity: bool = False, prepare: bool = False, certificate: bytes | None = None
    ) -> dict[str, Any]:
        if prepare:
            return self._call("POST", "/v1/admin/key/prepare", {})
        body: dict[str, Any] = {"identity": True} if identity else {}
        if certificate is not None:
            try:
                body["certificate"] = json.loads(certificate)
            except ValueError:
                raise NodeError("--certificate: not a statement (not JSON)") from None
        return self._call("POST", "/v1/admin/key/rotate", body)

    # membership and witnesses (node/membership.py, node/witness.py)
    def membership_follow(
        self, collection: str, stewards: list[str], threshold: int
    ) -> dict[str, Any]:
        body = {"collection": collection, "stewards": stewards, "threshold": threshold}
        return self._call("POST", "/v1/admin/membership/follow", body)

    def membership_unfollow(self, collection: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/admin/membership/follow/{_segment(collection)}")

    def membership_add(self, wire: bytes) -> dict[str, Any]:
        try:
            statement = json.loads(wire)
        except ValueError:
            raise NodeError("FILE: not a statement (not JSON)") from None
        return self._call("POST", "/v1/admin/membership", {"statement": statement})

    def membership_show(self) -> dict[str, Any]:
        return self._call("GET", "/v1/admin/membership")

    def log_witnesses(self, author: str, collection: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"author": author, "collection": collection})
        return self._call("GET", f"/v1/admin/witnesses?{query}")


Backend = LocalBackend | RemoteBackend


def _segment(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _http_error(exc: urllib.error.HTTPError) -> NodeError | InternalError:
    """The running node's refusal as the same error the command would raise offline; its
    500 is its internal error (the text only says where to look: the node's log)."""
    text = _error_text(exc)
    if exc.code == INTERNAL.status:
        if text == INTERNAL_MESSAGE:
            return InternalError("the running node failed (its log has the traceback)")
        return InternalError(f"the running node failed: {text}")
    return NodeError(text)


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read())["error"])
    except (ValueError, KeyError, TypeError):
        return f"the node answered HTTP {exc.code}"


def running_api(home: Home, wait: float = 10.0) -> str:
    """The API address of the node holding the home's lock (it may still be starting)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            runtime = json.loads(home.runtime_path.read_text())
            return str(runtime["api"])
        except (FileNotFoundError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise HomeError(
                    f"{home.path} is locked by a process that is not serving an API "
                    "(is a node starting, or another command running?)"
                ) from None
            time.sleep(0.1)


@contextmanager
def open_backend(home: Home) -> Iterator[Backend]:
    home.require()
    lock = HomeLock(home)
    if lock.try_acquire():
        try:
            from hashmesh.node.service import NodeService

            service = NodeService(home)
            try:
                yield LocalBackend(service)
            finally:
                service.close()
        finally:
            lock.release()
        return
    token = read_secret(home.admin_token_path, "admin token")
    config = home.load_config()
    yield RemoteBackend(running_api(home), token, (config.tls_cert, config.tls_ca))
