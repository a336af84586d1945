"""The node's matcher worker processes (match_workers = N in config.toml).

Pre-fork, as gunicorn does it: the node binds the match listening socket itself (so its
address is known and fixed before any worker runs, and a restarted worker takes over the
same socket with no gap a load balancer could see) and passes the descriptor to N worker
processes (`python -m hashmesh.node.worker --home H --fd N`, node/worker.py), which all
accept on it; the kernel spreads connections between them.

Each worker also gets the write end of a pipe of its own (`--report-fd`): every
REPORT_S it writes one JSON line of the hits it answered, counted per signal
(matching/quarantine.py MatchCounter), and the node counts them into its quarantine's
windows (`on_report`), as it counts the matches it answers itself. A line is bounded
(MAX_REPORT_LINE) and checked like a replica's report; a bad one is logged and dropped.

A worker that exits is restarted, after a backoff that doubles per quick death (1 s up to
30 s) and resets once a worker has run for a minute, so a worker that cannot start (a
corrupt checkpoint it cannot read, say) does not spin the machine. On node stop every
worker gets SIGTERM, and SIGKILL if it has not exited within STOP_TIMEOUT_S; a worker
whose node died without stopping it notices (its parent changes) and exits by itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hashmesh.node.config import parse_listen
from hashmesh.node.errors import NodeError
from hashmesh.node.matching.quarantine import parse_report
from hashmesh.protocol.ops import OpId

log = logging.getLogger("hashmesh.workers")

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
WATCH_S = 0.2
STOP_TIMEOUT_S = 10.0
LISTEN_BACKLOG = 1024
MAX_REPORT_LINE = 2 << 20  # a report of 10,000 signals is about 1 MiB

#: Where a worker's report of its matches goes (web/platform.py SpikeWatch.reported).
OnReport = Callable[[list[tuple[OpId, int]]], Awaitable[Any]]


def bind(listen: str) -> socket.socket:
    """The match listening socket, bound and listening, inheritable by the workers."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


class _Slot:
    """One worker position: its current process and its restart backoff."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.backoff = BACKOFF_MIN_S
        self.next_start = 0.0
        self.restarts = 0
        self.report_fd: int | None = None  # the read end of its report pipe
        self.buffer = b""


class WorkerPool:
    def __init__(
        self,
        home: Path,
        listen: str,
        count: int,
        changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.home = home
        self.count = count
        self.sock = bind(listen)
        host, port = self.sock.getsockname()[:2]
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        if ":" in connect_host:
            connect_host = f"[{connect_host}]"
        self.url = f"http://{connect_host}:{port}"
        self._changed = changed
        self._slots = [_Slot() for _ in range(count)]
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.on_report: OnReport | None = None
        self._reports: set[asyncio.Task[Any]] = set()

    @property
    def pids(self) -> list[int]:
        return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.poll() is None]

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self._slots)

    def _spawn(self, slot: _Slot) -> None:
        fd = self.sock.fileno()
        self._close_report(slot)
        read_end, write_end = os.pipe()
        try:
            slot.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hashmesh.node.worker",
                    "--home",
                    str(self.home),
                    "--fd",
                    str(fd),
                    "--report-fd",
                    str(write_end),
                ],
                pass_fds=(fd, write_end),
                stdin=subprocess.DEVNULL,
            )
        except OSError:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        slot.report_fd = read_end
        asyncio.get_running_loop().add_reader(read_end, self._read_report, slot)
        slot.started = time.monotonic()
        log.info("matcher worker started (pid %d) on %s", slot.proc.pid, self.url)

    def _close_report(self, slot: _Slot) -> None:
        if slot.report_fd is not None:
            asyncio.get_running_loop().remove_reader(slot.report_fd)
            os.close(slot.report_fd)
            slot.report_fd, slot.buffer = None, b""

    def _read_report(self, slot: _Slot) -> None:
        """The event loop, when a worker's pipe is readable: its complete report lines."""
        assert slot.report_fd is not None
        try:
            data = os.read(slot.report_fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:  # the worker exited; its restart opens a new pipe
            self._close_report(slot)
            return
        slot.buffer += data
        *lines, slot.buffer = slot.buffer.split(b"\n")
        if len(slot.buffer) > MAX_REPORT_LINE:
            log.warning("matcher worker report over %d bytes: dropped", MAX_REPORT_LINE)
            slot.buffer = b""
        for line in lines:
            try:
                pairs = parse_report(json.loads(line))
            except (ValueError, RecursionError, NodeError) as exc:
                log.warning("matcher worker report refused: %s", str(exc)[:200])
                continue
            if self.on_report is not None and pairs:
                task = asyncio.ensure_future(self.on_report(pairs))
                self._reports.add(task)
                task.add_done_callback(self._reports.discard)

    def start(self) -> None:
        for slot in self._slots:
            self._spawn(slot)
        self._changed()
        self._task = asyncio.create_task(self._watch())

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(WATCH_S)
            changed = False
            now = time.monotonic()
            for slot in self._slots:
                proc = slot.proc
                if proc is not None and proc.poll() is None:
                    if now - slot.started > HEALTHY_AFTER_S:
                        slot.backoff = BACKOFF_MIN_S
                    continue
                if proc is not None:  # it died: schedule its restart
                    log.warning(
                        "matcher worker %d exited with %s; restarting in %.0f s",
                        proc.pid,
                        proc.returncode,
                        slot.backoff,
                    )
                    slot.proc = None
                    slot.next_start = now + slot.backoff
                    slot.backoff = min(BACKOFF_MAX_S, slot.backoff * 2)
                    changed = True
                elif now >= slot.next_start and not self._stopping:
                    try:
                        self._spawn(slot)
                        slot.restarts += 1
                        changed = True
                    except OSError as exc:
                        log.error("matcher worker not started: %s", exc)
                        slot.next_start = now + slot.backoff
            if changed:
                self._changed()

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        procs = [s.proc for s in self._slots if s.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in procs:
            while proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if proc.poll() is None:
                log.warning("matcher worker %d ignored SIGTERM: killed", proc.pid)
                proc.kill()
                await asyncio.to_thread(proc.wait)
        for slot in self._slots:
            if slot.report_fd is not None:
                self._read_report(slot)  # the last report a stopping worker wrote
            self._close_report(slot)
        self.sock.close()
