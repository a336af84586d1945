"""The CLI's side of tokens, list imports and list exports, for either backend.

Offline (LocalBackend) these work on the store directly; online (RemoteBackend) through
the running node's API, so a token created or revoked while the node runs takes effect at
once, and an import is applied by the node in one transaction either way.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

from hashmesh.node.cli.backends import (
    HTTP_TIMEOUT,
    Backend,
    LocalBackend,
    RemoteBackend,
    _http_error,
)
from hashmesh.node.errors import NodeError
from hashmesh.node.lists.feed import FeedReader
from hashmesh.node.lists.listfiles import apply_import, snapshot_rows
from hashmesh.node.tokens import TokenStore


def _local_tokens(backend: LocalBackend) -> TokenStore:
    return TokenStore(backend.service.store)


def _remote(backend: RemoteBackend, method: str, path: str, body: Any = None) -> dict[str, Any]:
    return backend._call(method, path, body)


def token_create(
    backend: Backend, name: str, scopes: list[str], collections: list[str] | None
) -> dict[str, Any]:
    if isinstance(backend, LocalBackend):
        return _local_tokens(backend).create(name, scopes, collections)
    body = {"name": name, "scopes": scopes, "collections": collections}
    return _remote(backend, "POST", "/v1/admin/tokens", body)


def token_list(backend: Backend) -> list[dict[str, Any]]:
    if isinstance(backend, LocalBackend):
        return _local_tokens(backend).list()
    tokens: list[dict[str, Any]] = _remote(backend, "GET", "/v1/admin/tokens")["tokens"]
    return tokens


def token_revoke(backend: Backend, name_or_id: str) -> dict[str, Any]:
    if isinstance(backend, LocalBackend):
        return _local_tokens(backend).revoke(name_or_id)
    quoted = urllib.parse.quote(name_or_id, safe="")
    return _remote(backend, "DELETE", f"/v1/admin/tokens/{quoted}")


def min_pdq_quality(backend: Backend) -> int:
    if isinstance(backend, LocalBackend):
        return backend.service.config.min_pdq_quality
    return int(backend.status().get("min_pdq_quality", 50))


def import_plan(backend: Backend, request: dict[str, Any]) -> dict[str, Any]:
    if isinstance(backend, LocalBackend):
        return apply_import(
            backend.service,
            request["collection"],
            request["adds"],
            request["revoke_signals"],
            request["revoke_refs"],
        )
    return _remote(backend, "POST", "/v1/lists/import", request)


def import_file(
    backend: RemoteBackend,
    path: str,
    list_format: str,
    collection: str,
    category: str | None,
) -> dict[str, Any]:
    """Send the list file itself: the node parses it from disk in bounded memory, where a
    JSON plan of a large list would be refused (the plan form is capped at 16 MiB)."""
    query = {"format": list_format, "collection": collection, "on_error": "skip"}
    if category:
        query["category"] = category
    with open(path, "rb") as data:
        return backend._call(
            "POST",
            "/v1/lists/import?" + urllib.parse.urlencode(query),
            data=data,
            length=os.fstat(data.fileno()).st_size,
        )


def snapshot(backend: Backend, collection: str) -> Iterator[dict[str, Any]]:
    """The live signals of one collection, as of one cursor (first item: the header)."""
    if isinstance(backend, LocalBackend):
        service = backend.service
        reader = FeedReader(service.store.path, service.config.author_name, threads=1)
        snap = reader.snapshot([collection])
        try:
            yield {"cursor": snap.cursor, "collections": snap.collections}
            yield from snapshot_rows(snap)
        finally:
            snap.close()
            reader.close()
        return
    query = urllib.parse.urlencode({"collection": collection})
    request = backend._request("GET", f"/v1/snapshot?{query}")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            ended = False
            for n, line in enumerate(response):
                item = json.loads(line)
                if n == 0:
                    yield item
                elif item.get("end") is True:
                    ended = True
                else:
                    yield item
            if not ended:
                raise NodeError("the node's snapshot ended early; nothing complete was received")
    except urllib.error.HTTPError as exc:
        raise _http_error(exc) from None
    except urllib.error.URLError as exc:
        raise NodeError(f"cannot reach the running node at {backend.api}: {exc.reason}") from None
