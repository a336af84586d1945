"""The running node: process lifecycle, the store thread, batching, and the HTTP server.

All store work happens on one dedicated thread (SQLite connections are single-owner), so
the event loop never blocks on disk and requests are serialised without locks.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web

from hashmesh.node.config import Home, HomeLock, parse_listen
from hashmesh.node.errors import HomeError
from hashmesh.node.keys import hash_token, read_secret
from hashmesh.node.net.sync import Replicator
from hashmesh.node.runtime import tune_gc
from hashmesh.node.service import NodeService
from hashmesh.node.web import selfreport
from hashmesh.node.web import status as statuspage
from hashmesh.node.web.api import build_app
from hashmesh.node.web.metrics import Metrics, NodeCollector
from hashmesh.node.web.metrics import middleware as metrics_middleware
from hashmesh.protocol.ops import AddOp

log = logging.getLogger("hashmesh.daemon")
T = TypeVar("T")
KEEPALIVE_TIMEOUT_S = 15.0


@dataclass
class _Waiting:
    collection: str
    ops: list[AddOp] = field(default_factory=list)
    futures: list[asyncio.Future[str]] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class BatchingPublisher:
    """Coalesces single adds arriving close together into one signed batch.

    A lone add waits at most batch_delay_ms; a burst is cut at batch_size ops. One
    signature then covers many adds, which is what keeps verification cheap downstream.
    """

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._waiting: dict[str, _Waiting] = {}
        self._unsettled: dict[tuple[str, str, str], asyncio.Future[str]] = {}

    async def add(self, type: str, value: str, collection: str, **labels: Any) -> dict[str, Any]:
        service = self.daemon.service
        op = await self.daemon.call(service.prepare_add, type, value, collection, **labels)
        key = (collection, op.type, op.value)
        if key in self._unsettled:  # the same signal is already on its way: one op, not two
            op_id = await asyncio.shield(self._unsettled[key])
            return {"op_id": op_id, "type": op.type, "value": op.value, "new": False}
        held = await self.daemon.call(service.held_add, collection, op)
        if held is not None:
            return {"op_id": held, "type": op.type, "value": op.value, "new": False}
        if key in self._unsettled:  # queued by another request while we looked
            op_id = await asyncio.shield(self._unsettled[key])
            return {"op_id": op_id, "type": op.type, "value": op.value, "new": False}
        waiting = self._waiting.get(collection)
        if waiting is None:
            waiting = self._waiting[collection] = _Waiting(collection)
            delay = service.config.batch_delay_ms / 1000
            waiting.timer = asyncio.get_running_loop().call_later(
                delay, lambda: asyncio.ensure_future(self.flush(collection))
            )
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._unsettled[key] = future
        future.add_done_callback(lambda _: self._unsettled.pop(key, None))
        waiting.ops.append(op)
        waiting.futures.append(future)
        if len(waiting.ops) >= service.config.batch_size:
            await self.flush(collection)
        op_id = await future
        return {"op_id": op_id, "type": op.type, "value": op.value, "new": True}

    async def flush(self, collection: str) -> None:
        waiting = self._waiting.pop(collection, None)
        if waiting is None:
            return
        if waiting.timer is not None:
            waiting.timer.cancel()
        try:
            op_ids, _ = await self.daemon.call(self.daemon.service.publish, collection, waiting.ops)
        except Exception as exc:
            for future in waiting.futures:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, op_id in zip(waiting.futures, op_ids, strict=True):
            if not future.done():
                future.set_result(str(op_id))

    async def flush_all(self) -> None:
        for collection in list(self._waiting):
            await self.flush(collection)


class Daemon:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.lock = HomeLock(home)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.publisher = BatchingPublisher(self)
        self.runner: web.AppRunner | None = None
        self.api_url = ""
        self.live_counts: dict[str, int] = {}
        self.vector_cache: dict[Any, int] = {}
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run store work on the store thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    async def status(self) -> dict[str, Any]:
        result = await self.call(self.service.status)
        result["running"] = True
        result["api"] = self.api_url
        ours = await self.call(self.service.store.vector)
        by_id = {p.node_id: p for p in self.service.config.peers}
        for entry in result["peers"]:
            peer = by_id.get(entry["node_id"])
            if peer is not None:
                entry.update(self.replicator.peer_status(peer, ours))
        result["sync_rounds"] = self.replicator.rounds
        result["refusals"] = self.replicator.refusal_status()
        return result

    async def refresh_gauges(self) -> None:
        """Read what /metrics reports from the store, on the store thread."""
        store = self.service.store
        self.live_counts, self.vector_cache = await self.call(
            lambda: (store.counts()["live_by_collection"], store.vector())
        )

    async def policy_changed(self) -> None:
        self.replicator.wake()

    async def start(self) -> None:
        self.home.require()
        if not self.lock.try_acquire():
            raise HomeError(f"{self.home.path} is already in use by a running node")
        self.service = await self.call(NodeService, self.home)
        self.admin_token_hash = hash_token(read_secret(self.home.admin_token_path, "admin token"))
        await self.call(lambda: self.service.matcher.pdq)
        host, port = parse_listen(self.service.config.listen)
        ssl_context = None
        config = self.service.config
        if config.tls_cert and config.tls_key:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(config.tls_cert, config.tls_key)
        self.replicator = Replicator(self)
        self.metrics = Metrics()
        self.metrics.registry.register(NodeCollector(self))
        self.service.store.decision_listeners.append(self.metrics.observe_ingest)
        app = build_app(self)
        app.middlewares.insert(0, metrics_middleware(self.metrics))
        self.replicator.register(app)
        statuspage.register(app, self)
        self.selfreport = selfreport.register(
            app, self
        )  # /takeitdown (hashmesh/node/web/selfreport.py)
        # keepalive_timeout also bounds how long a connection may take to send a complete
        # request head (aiohttp arms it when the connection opens): slowloris clients that
        # trickle header bytes are dropped after it, instead of aiohttp's default hour.
        self.runner = web.AppRunner(
            app, access_log=None, handle_signals=False, keepalive_timeout=KEEPALIVE_TIMEOUT_S
        )
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=ssl_context, shutdown_timeout=5)
        try:
            await site.start()
        except OSError as exc:
            raise HomeError(_listen_error(config.listen, exc)) from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        actual_port = sockets[0].getsockname()[1] if sockets else port
        scheme = "https" if ssl_context else "http"
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self.api_url = f"{scheme}://{connect_host}:{actual_port}"
        runtime = {"pid": os.getpid(), "api": self.api_url, "node_id": self.service.node_id}
        tmp = self.home.runtime_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(runtime))
        os.replace(tmp, self.home.runtime_path)
        self._tasks.append(asyncio.create_task(self._watch_config()))
        self.replicator.start()
        log.info("node %s listening on %s", self.service.config.name, self.api_url)

    async def _watch_config(self) -> None:
        """Re-read config.toml when it changes; a bad edit is logged once per change (not once
        a second) and the node keeps running on the last good config."""
        refused_mtime: float | None = None
        while True:
            await asyncio.sleep(1.0)
            try:
                mtime = self.home.config_mtime()
                if mtime == refused_mtime:
                    continue
                if await self.call(self.service.reload_config_if_changed):
                    self.replicator.wake()
                    if refused_mtime is not None:
                        log.info("config reloaded: %s is valid again", self.home.config_path)
                    refused_mtime = None
            except HomeError as exc:
                refused_mtime = mtime
                log.error(
                    "config not reloaded: %s; still running with the last good config "
                    "(fix the file: it is read again when it changes)",
                    exc,
                )
            except OSError as exc:
                log.error("config not reloaded: %s: %s", self.home.config_path, exc.strerror)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.publisher.flush_all()
        await self.replicator.stop()
        if self.runner is not None:
            await self.runner.cleanup()
        self.home.runtime_path.unlink(missing_ok=True)
        await self.call(self.service.close)
        self.executor.shutdown(wait=True)
        self.lock.release()

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        print(f"hashmesh node {self.service.config.name} running at {self.api_url}", flush=True)
        try:
            await self._stopping.wait()
        finally:
            await self.stop()


def _listen_error(listen: str, exc: OSError) -> str:
    """aiohttp's bind error names no address; say which one and what to change."""
    reasons = {
        errno.EADDRINUSE: "address already in use (another node or program is using it",
        errno.EACCES: "permission denied (ports below 1024 need privileges",
        errno.EADDRNOTAVAIL: "address not available on this machine (use one of its addresses",
    }
    reason = reasons.get(exc.errno or 0)
    if reason is None:
        return f"cannot listen on {listen}: {exc.strerror or exc} (check listen in config.toml)"
    return f"cannot listen on {listen}: {reason}; change listen in config.toml)"


class JsonLines(logging.Formatter):
    """One JSON object per line, for log shippers."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def run(home: Home, json_logs: bool = False, level: str = "INFO") -> None:
    # The store thread's ingest is CPU-bound Python; a short GIL switch interval lets the
    # event loop answer requests between its steps instead of waiting up to 5 ms each time.
    sys.setswitchinterval(0.0005)
    tune_gc()
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonLines()
        if json_logs
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler], force=True)
    asyncio.run(Daemon(home).run_forever())
