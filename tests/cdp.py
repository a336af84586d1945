"""Headless Chromium driven over the DevTools protocol (CDP) with aiohttp's websocket.

Why not playwright: its npm package must be downloaded at test time and pinned to a
browser revision; the DevTools protocol is built into the Chromium the CI installs, and
the few commands needed here (navigate, evaluate, set files on an input, watch network
requests) are stable. Used by tests/test_selfreport.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class CdpError(RuntimeError):
    pass


class Browser:
    """One headless Chromium process with one page attached (flat session mode)."""

    def __init__(self, profile: Path, accept_language: str = "en-US,en") -> None:
        self.profile = profile
        self.accept_language = accept_language
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.session = ""
        self.requests: list[dict[str, Any]] = []
        self.console: list[str] = []
        self._next = 0
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Browser:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        assert CHROMIUM, "chromium is not installed"
        self.profile.mkdir(parents=True, exist_ok=True)
        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-extensions",
                "--disable-dev-shm-usage",
                f"--accept-lang={self.accept_language}",
                f"--lang={self.accept_language.split(',')[0]}",
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                "--window-size=420,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise CdpError("chromium did not start its DevTools endpoint")
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(f"ws://127.0.0.1:{port}{path}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        targets = await self.send("Target.getTargets", session=False)
        page = next(t for t in targets["targetInfos"] if t["type"] == "page")
        attached = await self.send(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, session=False
        )
        self.session = attached["sessionId"]
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Network.enable")

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            if "id" in data:
                future = self._waiting.pop(data["id"], None)
                if future is not None and not future.done():
                    if "error" in data:
                        future.set_exception(CdpError(str(data["error"])))
                    else:
                        future.set_result(data.get("result", {}))
            elif data.get("method") == "Network.requestWillBeSent":
                self.requests.append(data["params"]["request"])
            elif data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", "")) for a in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append("exception: " + json.dumps(data["params"])[:500])

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session: bool = True
    ) -> Any:
        assert self.ws is not None
        self._next += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[self._next] = future
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        await self.ws.send_str(json.dumps(message))
        return await asyncio.wait_for(future, 60)

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", {"url": url})
        await self.wait_for("document.readyState === 'complete'")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in result:
            raise CdpError(json.dumps(result["exceptionDetails"])[:1000])
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(CdpError):
                value = await self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not true within {timeout} s: {expression}\nconsole: {self.console[-10:]}"
                )
            await asyncio.sleep(0.1)

    async def set_files(self, selector: str, files: list[Path]) -> None:
        """Choose files in an <input type=file>, as a person would (fires `change`)."""
        document = await self.send("DOM.getDocument", {"depth": 0})
        found = await self.send(
            "DOM.querySelector", {"nodeId": document["root"]["nodeId"], "selector": selector}
        )
        await self.send(
            "DOM.setFileInputFiles",
            {"nodeId": found["nodeId"], "files": [str(f) for f in files]},
        )

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.send("Browser.close", session=False)
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
        if self.http is not None:
            await self.http.close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
