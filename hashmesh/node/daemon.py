"""The running node: process lifecycle, the store thread, and the HTTP server.

This is the one place the node is wired together (docs/design-notes.md, "Wiring"): each
route set and the replicator receive the few collaborators they use, built here at start,
and none of them imports this module. All store work happens on one dedicated thread
(store/executor.py), so the event loop never blocks on disk.
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
from typing import Any

from aiohttp import web

from hashmesh.node.batching import BatchingPublisher
from hashmesh.node.bridges.runner import Bridges
from hashmesh.node.config import Home, HomeLock, parse_listen
from hashmesh.node.errors import HomeError
from hashmesh.node.keys import hash_token, read_secret
from hashmesh.node.matching import loading
from hashmesh.node.matching.checkpoint import has_checkpoint, write_checkpoint
from hashmesh.node.net.proof import SplitProver
from hashmesh.node.net.sync import Replicator, SyncObserver
from hashmesh.node.runtime import release_free_memory, tune_gc
from hashmesh.node.service import NodeService
from hashmesh.node.store.executor import StoreThread
from hashmesh.node.store.feed import connect_reader, feed_head
from hashmesh.node.web import platform, replicas, selfreport
from hashmesh.node.web import status as statuspage
from hashmesh.node.web.access import TokenCache
from hashmesh.node.web.api import ApiDeps, build_app
from hashmesh.node.web.metrics import Metrics, NodeCollector
from hashmesh.node.web.metrics import middleware as metrics_middleware
from hashmesh.node.workers import WorkerPool

log = logging.getLogger("hashmesh.daemon")
KEEPALIVE_TIMEOUT_S = 15.0
LOCK_WAIT_S = 10.0  # a start waits this long for a CLI command holding the home lock
WITNESS_TICK_S = 1.0  # how often the node looks for heads to cosign (node/witness.py)


class Daemon:
    def __init__(self, home: Home) -> None:
        self.home = home
        self.lock = HomeLock(home)
        self.store_thread = StoreThread()
        self.runner: web.AppRunner | None = None
        self.api_url = ""
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.workers: WorkerPool | None = None

    async def status(self) -> dict[str, Any]:
        """The service's status with what only the running node knows: its address, and
        each peer's replication state."""
        result = await self.store_thread.call(self.service.status)
        result["running"] = True
        result["api"] = self.api_url
        ours = await self.store_thread.call(self.service.store.vector)
        by_id = {p.node_id: p for p in self.service.config.peers}
        for entry in result["peers"]:
            peer = by_id.get(entry["node_id"])
            if peer is not None:
                entry.update(self.replicator.peer_status(peer, ours))
        result["sync_rounds"] = self.replicator.rounds
        result["refusals"] = self.replicator.refusal_status()
        result["bridges"] = await self.bridges.status()
        return result

    async def _take_lock(self) -> None:
        """The home's lock, waiting up to LOCK_WAIT_S for it: a CLI command working on the
        store offline (`peer add` while systemd restarts the node, a script's `trust add`)
        holds it for a second or two, and a start must not fail for that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT_S
        while not self.lock.try_acquire():
            if loop.time() >= deadline:
                raise HomeError(
                    f"{self.home.path} is already in use by a running node (or a command on"
                    f" it did not finish within {LOCK_WAIT_S:g} s)"
                )
            await asyncio.sleep(0.1)

    async def start(self) -> None:
        self.home.require()
        await self._take_lock()
        self.service = service = await self.store_thread.call(NodeService, self.home)
        # adds are journalled (node/intake.py) and every store call sees them first
        await self.store_thread.call(service.open_intake)
        self.store_thread.prelude = service.intake.apply
        admin_token_hash = hash_token(read_secret(self.home.admin_token_path, "admin token"))
        # The PDQ index loads after the listener opens (_load_index): until then health,
        # exact matches, feeds and publishing answer, and PDQ queries get 503 "loading".
        service.matcher.defer_load()
        if service.config.match_workers:
            try:
                self.workers = WorkerPool(
                    self.home.path,
                    service.config.match_listen,
                    service.config.match_workers,
                    changed=self._write_runtime,
                )
            except OSError as exc:
                raise HomeError(
                    _listen_error(service.config.match_listen, exc).replace(
                        "(check listen", "(check match_listen"
                    )
                ) from None
        host, port = parse_listen(service.config.listen)
        ssl_context = None
        config = service.config
        if config.tls_cert and config.tls_key:
            ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_context.load_cert_chain(config.tls_cert, config.tls_key)
        app = self._wire(service, admin_token_hash)
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
        # Workers map the checkpoint; without one they would each build a private index
        # from the rows, so then they start once the node has written it.
        early = self.workers is not None and has_checkpoint(self.home.index_dir)
        if early and self.workers is not None:
            self.workers.start()  # writes node.json with their pids
        self._write_runtime()
        self._tasks.append(asyncio.create_task(self._load_index(start_workers=not early)))
        self._tasks.append(asyncio.create_task(self._watch_config()))
        self._tasks.append(asyncio.create_task(self._witness()))
        self._tasks.append(asyncio.create_task(self.prover.run()))  # split views proven
        self.replicator.start()
        self.bridges = Bridges(service, self.store_thread, self.home.path)
        await self.bridges.reconcile()
        log.info("node %s listening on %s", config.name, self.api_url)

    def _write_runtime(self) -> None:
        """node.json: pid, API address, node id; with matcher workers their address and
        pids (rewritten when one is restarted)."""
        if not self.api_url:
            return
        runtime: dict[str, Any] = {
            "pid": os.getpid(),
            "api": self.api_url,
            "node_id": self.service.node_id,
        }
        if self.workers is not None:
            runtime["match"] = self.workers.url
            runtime["workers"] = self.workers.pids
        tmp = self.home.runtime_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(runtime))
        os.replace(tmp, self.home.runtime_path)

    async def _load_index(self, start_workers: bool) -> None:
        """Load the PDQ index off the store thread, install it, then keep checkpoints.
        Workers held back for want of a checkpoint start once it is written (before the
        node reports itself ready, so node.json names them by then)."""
        try:
            loaded = await asyncio.to_thread(_load_index, self.home)
            if start_workers and self.workers is not None:
                self.workers.start()
                self._write_runtime()
            caught_up = await self.store_thread.call(
                self.service.install_index, loaded.index, loaded.cursor, loaded.videos
            )
        except Exception:
            log.exception("PDQ index not loaded: PDQ queries answer 503 until a restart")
            return
        log.info(
            "PDQ index ready: %d live, from %s, %d changes caught up",
            len(loaded.index),
            loaded.how,
            caught_up,
        )
        await self._checkpoints()

    async def _checkpoint(self) -> None:
        """Write the PDQ index checkpoint: captured on the store thread (milliseconds),
        written on another (segment files are reused, so only new ones cost)."""
        snap = await self.store_thread.call(self.service.index_snapshot)
        if snap is None:
            return
        try:
            await asyncio.to_thread(snap.write, self.home.index_dir)
        except OSError as exc:
            log.error("PDQ index checkpoint not written to %s: %s", self.home.index_dir, exc)

    async def _checkpoints(self) -> None:
        written = await self.store_thread.call(lambda: feed_head(self.service.store.conn))
        while True:
            # A restarted worker (or the node) replays at most this much of the feed.
            await asyncio.sleep(self.service.config.index_checkpoint_s)
            head = await self.store_thread.call(lambda: feed_head(self.service.store.conn))
            if head != written:
                await self._checkpoint()
                written = head
                release_free_memory()  # what the ingest since freed (runtime.py)

    def _wire(self, service: NodeService, admin_token_hash: str) -> web.Application:
        """Build every component and hand each exactly what it uses."""
        store_thread = self.store_thread
        self.metrics = metrics = Metrics()
        self.replicator = replicator = Replicator(
            service,
            store_thread,
            SyncObserver(
                batches_sent=metrics.history.sent,
                round_done=lambda peer, outcome: metrics.sync_rounds.labels(peer, outcome).inc(),
            ),
        )
        gauges = NodeCollector(service, store_thread, replicator)
        metrics.registry.register(gauges)
        service.store.decision_listeners.append(metrics.observe_ingest)
        self.publisher = BatchingPublisher(service, store_thread)
        app = build_app(
            ApiDeps(
                service=service,
                store_thread=store_thread,
                publisher=self.publisher,
                tokens=TokenCache(admin_token_hash),
                spool_dir=self.home.path,
                status=self.status,
                policy_changed=replicator.wake,
            )
        )
        app.middlewares.insert(0, metrics_middleware(metrics))
        match_url = self.workers.url if self.workers is not None else ""
        platform.register(
            app, platform.PlatformDeps(service, store_thread, self.home.path, match_url)
        )
        if self.workers is not None:  # their matches count towards quarantine windows
            watch = app[platform.SPIKES_KEY]
            self.workers.on_report = lambda pairs: watch.reported(pairs, None)
        replicas.register(app, service)  # /v1/replica/state (hashmesh matcher --follow)
        replicator.register(app)
        self.prover = SplitProver(replicator)  # /v1/peer/header (node/net/proof.py)
        self.prover.register(app)
        statuspage.register(
            app, statuspage.StatusDeps(metrics, gauges, service.store, store_thread)
        )
        # /takeitdown (hashmesh/node/web/selfreport.py)
        self.selfreport = selfreport.register(app, service, store_thread)
        return app

    async def _witness(self) -> None:
        """Cosign the heads this node verified (node/witness.py) every WITNESS_TICK_S: a
        tick with no head moved costs a comparison; a failure is logged and the next tick
        tries again (the node keeps serving)."""
        while True:
            await asyncio.sleep(WITNESS_TICK_S)
            try:
                await self.store_thread.call(self.service.witness_tick)
            except Exception:
                log.exception("witness tick failed")

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
                if await self.store_thread.call(self.service.reload_config_if_changed):
                    self.replicator.wake()
                    await self.bridges.reconcile()
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
        if hasattr(self, "bridges"):
            await self.bridges.stop()
        await self.replicator.stop()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.publisher.close()
        if self.workers is not None:
            await self.workers.stop()
        await self._checkpoint()
        self.home.runtime_path.unlink(missing_ok=True)
        await self.store_thread.call(self.service.close)
        self.store_thread.shutdown()
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


def _load_index(home: Home) -> loading.Loaded:
    """The node's index, read through a connection of its own (matching/loading.py).

    After a build from rows the checkpoint is written and the index loaded back from it,
    memory-mapped: the matcher workers map the same files, so the machine holds one copy
    of the segments, not one per process."""
    conn = connect_reader(home.db_path)
    try:
        loaded = loading.load(conn, home.index_dir)
        if loaded.how != "rows":
            return loaded
        try:
            write_checkpoint(home.index_dir, loaded.index, loaded.cursor)
        except OSError as exc:
            log.error("PDQ index checkpoint not written to %s: %s", home.index_dir, exc)
            return loaded
        mapped = loading.load(conn, home.index_dir)
        if mapped.how == "rows":
            return loaded
        how = f"rows, then mapped ({mapped.how})"
        return loading.Loaded(mapped.index, mapped.cursor, how, videos=mapped.videos)
    finally:
        conn.close()


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
