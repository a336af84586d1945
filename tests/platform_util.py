"""HTTP helpers for the platform tests: raw requests that keep error bodies, and a small
server-sent-events reader over http.client (no client library hides what the node sent)."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit


def request(
    url: str,
    method: str = "GET",
    token: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
    content_type: str = "application/json",
    timeout: float = 30,
) -> tuple[int, bytes]:
    """(status, body bytes) of one request; 4xx answers are returned, not raised."""
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = content_type
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def ok_json(url: str, method: str = "GET", token: str | None = None, body: Any = None) -> Any:
    status, data = request(url, method, token, body)
    assert status == 200, (status, data)
    return json.loads(data)


class SSE:
    """One open /v1/feed/stream connection; `next_event` returns (id, data) or a heartbeat."""

    def __init__(
        self, base: str, token: str, query: str = "", last_event_id: int | None = None
    ) -> None:
        parts = urlsplit(base)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.conn.request("GET", "/v1/feed/stream" + query, headers=headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status

    def next_event(self, timeout: float = 10) -> tuple[int | None, Any]:
        """The next event: (cursor, entry), or (None, "heartbeat") for a comment."""
        deadline = time.monotonic() + timeout
        event_id: int | None = None
        data: Any = None
        while time.monotonic() < deadline:
            line = self.response.fp.readline()
            if not line:
                raise EOFError("stream closed")
            text = line.decode().rstrip("\n")
            if text.startswith(": heartbeat"):
                return None, "heartbeat"
            if text.startswith("id: "):
                event_id = int(text[4:])
            elif text.startswith("data: "):
                data = json.loads(text[6:])
            elif text == "" and data is not None:
                return event_id, data
        raise TimeoutError("no event in time")

    def events_until_idle(self, heartbeat_limit: int = 1) -> list[tuple[int, Any]]:
        """Events until the stream sends a heartbeat (it has caught up)."""
        out = []
        while True:
            event_id, data = self.next_event()
            if event_id is None:
                return out
            out.append((event_id, data))

    def close(self) -> None:
        self.conn.close()


def multipart(parts: dict[str, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body and its content type; the part named "file" is a JPEG."""
    boundary = "hashmesh-test-boundary"
    body = b""
    for name, value in parts.items():
        extra = '; filename="photo.jpg"\r\nContent-Type: image/jpeg' if name == "file" else ""
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'
        body += head.encode() + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def match_file(url: str, token: str, parts: dict[str, bytes]) -> tuple[int, Any]:
    """POST url/v1/match/file with `parts`: (status, decoded JSON answer)."""
    body, content_type = multipart(parts)
    status, data = request(
        url + "/v1/match/file", "POST", token, raw=body, content_type=content_type, timeout=60
    )
    return status, json.loads(data)
