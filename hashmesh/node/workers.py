"""The node's matcher worker processes (match_workers = N in config.toml).

Pre-fork, as gunicorn does it: the node binds the match listening socket itself (so its
address is known and fixed before any worker runs, and a restarted worker takes over the
same socket with no gap a load balancer could see) and passes the descriptor to N worker
processes (`python -m hashmesh.node.worker --home H --fd N`, node/worker.py), which all
accept on it; the kernel spreads connections between them.

A worker that exits is restarted, after a backoff that doubles per quick death (1 s up to
30 s) and resets once a worker has run for a minute, so a worker that cannot start (a
corrupt checkpoint it cannot read, say) does not spin the machine. On node stop every
worker gets SIGTERM, and SIGKILL if it has not exited within STOP_TIMEOUT_S; a worker
whose node died without stopping it notices (its parent changes) and exits by itself.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from hashmesh.node.config import parse_listen

log = logging.getLogger("hashmesh.workers")

BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
WATCH_S = 0.2
STOP_TIMEOUT_S = 10.0
LISTEN_BACKLOG = 1024


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

    @property
    def pids(self) -> list[int]:
        return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.poll() is None]

    @property
    def restarts(self) -> int:
        return sum(s.restarts for s in self._slots)

    def _spawn(self, slot: _Slot) -> None:
        fd = self.sock.fileno()
        slot.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hashmesh.node.worker",
                "--home",
                str(self.home),
                "--fd",
                str(fd),
            ],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
        )
        slot.started = time.monotonic()
        log.info("matcher worker started (pid %d) on %s", slot.proc.pid, self.url)

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
        self.sock.close()
