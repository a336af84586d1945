"""PostgreSQL and Hasher-Matcher-Actioner (HMA, Meta's OpenMediaMatch) as real processes.

HMA is not on PyPI and is not importable from its own install (`py-modules = []`), so, as
its Dockerfile does, it runs under gunicorn from the `src/` folder of its source snapshot,
in a venv of its own that tests/hma_setup.py builds (HMA's dependencies, pytx from PyPI,
and hashmesh[threatexchange] from this working tree). PostgreSQL runs in a cluster of the
test's own: a temporary data folder, its own port, 127.0.0.1 only, no Unix socket.
PostgreSQL refuses to run as root, so under root it runs as `nobody` (setpriv).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from netnodes import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]
_venv = Path(os.environ.get("HMA_VENV") or ".hma-venv")
HMA_VENV = _venv if _venv.is_absolute() else REPO / _venv
HMA_SRC = HMA_VENV / "hma" / "src"
OMM_CONFIG = REPO / "deploy" / "examples" / "hma" / "omm_config.py"
# Settings the test adds to the documented OMM_CONFIG through HMA's OMM_ environment
# overrides: the /dev endpoints (fetch on demand), no background fetch racing the test's
# own, and index rebuilds and cache reloads every second instead of every 60 s and 30 s.
# The commands docs/platforms.md shows (run from HMA's src/ folder).
MIGRATE = [
    "--app",
    "OpenMediaMatch.app",
    "db",
    "upgrade",
    "--directory",
    "OpenMediaMatch/migrations",
]
SERVE = ["--workers", "1", "OpenMediaMatch.app:create_app()"]
TEST_OVERRIDES = {
    "OMM_PRODUCTION": "false",
    "OMM_TASK_FETCHER": "false",
    "OMM_TASK_INDEXER_INTERVAL_SECONDS": "1",
    "OMM_TASK_INDEX_CACHE_INTERVAL_SECONDS": "1",
}


def unavailable(reason: str) -> None:
    """Skip, unless `make test-hma` runs us (HMA_REQUIRED=1): there a missing piece fails."""
    if os.environ.get("HMA_REQUIRED") == "1":
        pytest.fail(f"HMA end-to-end test cannot run: {reason}", pytrace=False)
    pytest.skip(f"{reason} (run `make test-hma`, which installs what it needs)")


def postgres_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class Postgres:
    """One PostgreSQL cluster in a temporary folder, trust auth on 127.0.0.1:port."""

    USER = "media_match"
    DB = "media_match"

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="hashmesh-hma-pg-"))
        self.data = self.root / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
            self.as_user = [
                "setpriv",
                f"--reuid={nobody.pw_uid}",
                f"--regid={nobody.pw_gid}",
                "--clear-groups",
                "--",
            ]
        self.uri = f"postgresql+psycopg2://{self.USER}@127.0.0.1:{self.port}/{self.DB}"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [*self.as_user, str(self.bindir / tool), *args]
        result = subprocess.run(
            cmd, cwd=self.root, capture_output=True, text=True, timeout=120, env=_plain_env()
        )
        if result.returncode != 0:
            raise AssertionError(f"{tool} exited {result.returncode}: {result.stderr}")

    def start(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", self.USER, "--auth=trust", "-E", "UTF8")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\nfsync = off\n"
            )
        log = str(self.root / "postgres.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-w", "-t", "60", "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.USER, self.DB)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _plain_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("TX_", "OMM_"))}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Hma:
    """HMA under gunicorn (one worker, as HMA requires for its in-process scheduler)."""

    def __init__(self, workdir: Path, database_uri: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "hma.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = {
            **_plain_env(),
            "OMM_CONFIG": str(OMM_CONFIG),
            "OMM_DATABASE_URI": database_uri,
            **TEST_OVERRIDES,
            # This working tree's extension, whatever the venv was built from.
            "PYTHONPATH": str(REPO),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self._opener = urllib.request.build_opener(_NoRedirect)

    def migrate(self) -> None:
        flask = HMA_VENV / "bin" / "flask"
        result = subprocess.run(
            [str(flask), *MIGRATE],
            cwd=HMA_SRC,
            env={**self.env, "MIGRATION_COMMAND": "1"},
            capture_output=True,
            text=True,
            timeout=180,
        )
        if result.returncode != 0:
            raise AssertionError(f"flask db upgrade exited {result.returncode}: {result.stderr}")

    def start(self) -> None:
        gunicorn = HMA_VENV / "bin" / "gunicorn"
        # gunicorn 27 opens a control socket in ~/.gunicorn, shared by every instance.
        usage = subprocess.run([str(gunicorn), "--help"], capture_output=True, text=True).stdout
        private = ["--no-control-socket"] if "--no-control-socket" in usage else []
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(gunicorn),
                    "--bind",
                    f"127.0.0.1:{self.port}",
                    *private,
                    "--timeout",
                    "300",
                    *SERVE,
                ],
                cwd=HMA_SRC,
                env=self.env,
                stdout=log,
                stderr=log,
            )
        wait_for(self._alive, timeout=90, step=0.3)

    def _alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"HMA exited: {self.log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(self.url + "/status/live", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    # -- HTTP ----------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        data: bytes | None = None,
        content_type: str = "application/json",
        timeout: float = 300,
    ) -> tuple[int, Any]:
        if body is not None:
            data = json.dumps(body).encode()
        headers = {"Content-Type": content_type} if data is not None else {}
        request = urllib.request.Request(self.url + path, data, headers, method=method)
        try:
            with self._opener.open(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        status, answer = self.call(method, path, body, **kwargs)
        assert 200 <= status < 400, (method, path, status, answer, self.log_tail())
        return answer

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def set_credentials(self, api: str, body: dict[str, Any]) -> None:
        answer = self.ok("POST", f"/c/exchanges/api/{api}", body)
        assert answer["has_set_authentification"], answer

    def create_exchange(self, body: dict[str, Any]) -> None:
        self.ok("POST", "/c/exchanges", body)

    def run_fetch(self) -> None:
        """Fetch every exchange now (the 240 s background task, on demand)."""
        self.ok("POST", "/dev/run_fetch")

    def fetch_status(self, bank: str) -> dict[str, Any]:
        status: dict[str, Any] = self.ok("GET", f"/c/exchange/{bank}/status")
        return status

    def lookup(self, signal_type: str, value: str) -> dict[str, list[dict[str, Any]]]:
        query = urllib.parse.urlencode({"signal_type": signal_type, "signal": value})
        status, answer = self.call("GET", "/m/lookup?" + query)
        if status == 503:  # the index cache is not loaded yet
            return {}
        assert status == 200, (status, answer)
        return dict(answer)

    def lookup_upload(self, field: str, filename: str, content: bytes) -> dict[str, Any]:
        """POST /m/lookup with a multipart upload: HMA hashes the bytes itself."""
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        status, answer = self.call(
            "POST",
            "/m/lookup",
            data=body,
            content_type=f"multipart/form-data; boundary={boundary}",
        )
        if status == 503:
            return {}
        assert status == 200, (status, answer)
        return dict(answer)

    def matched_in(self, bank: str, signal_type: str, value: str) -> bool:
        return bool(self.lookup(signal_type, value).get(bank))


def wait_until(predicate: Any, what: str, timeout: float = 60.0) -> Any:
    """Poll (HMA reloads its index cache every second here), bounded; say what was awaited."""
    start = time.monotonic()
    try:
        return wait_for(predicate, timeout=timeout, step=0.25)
    except AssertionError:
        raise AssertionError(
            f"{what}: not within {timeout} s ({time.monotonic() - start:.0f} s)"
        ) from None
