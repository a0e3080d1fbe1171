"""Start the real service (gunicorn, the production config) or its CLI in tests.

``running_service(env)`` starts ``gunicorn -c python:webhook_service.web.gunicorn_config
'webhook_service.web.app:create_app()'`` on a free port of 127.0.0.1 (working directory: a
scratch directory, so no stray ``.env`` or ``var/`` is used), waits until ``/healthz``
answers and yields the base URL; on exit it stops the server (SIGTERM, then SIGKILL of
its own process group) and removes its metrics directory. ``running_services(env, n)``
does the same for n instances started together (they boot in parallel). Everything is
bounded in time. A server's stderr goes to ``log_path`` when given (to assert on its
log lines), else to a scratch file shown when start-up fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
GUNICORN = str(BIN / "gunicorn")
WEBHOOK_SERVICE = str(BIN / "webhook-service")
APP = "webhook_service.web.app:create_app()"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
# Variables of the developer's shell that must not leak into a service under test.
_SERVICE_VARIABLES = (
    "STRIPE_",
    "NAT_",
    "DATABASE_URL",
    "RATE_LIMIT",
    "RATELIMIT_",
    "MAX_WEBHOOK_BYTES",
    "TRUSTED_PROXY_HOPS",
    "LOG_",
    "PORT",
    "BIND_HOST",
    "WEB_CONCURRENCY",
    "PROMETHEUS_MULTIPROC_DIR",
    "GUNICORN_CMD_ARGS",
)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A port of 127.0.0.1 where a connection is refused (nothing listens)."""
    return free_port()


def clean_environ(env: Mapping[str, str]) -> dict[str, str]:
    """The process environment without the service's variables, plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(_SERVICE_VARIABLES)}
    return {**base, **env}


def http(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; any status (4xx/5xx included) comes back as (status, headers, body)."""
    request = urllib.request.Request(  # noqa: S310 - the test's own local server
        url, data=body, method=method, headers=dict(headers or {})
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _wait_until_healthy(process: subprocess.Popen[Any], base_url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            status, _, _ = http("GET", base_url + "/healthz", timeout=1.0)
        except OSError:
            status = 0
        if status == 200:
            return True
        time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM to the server's own process group, SIGKILL to whatever is left of it."""
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # workers that outlived their master
    process.wait(timeout=STOP_TIMEOUT_S)


class _Server:
    """One gunicorn process group on a port of 127.0.0.1."""

    def __init__(self, env: Mapping[str, str], workers: int, log_path: Path, cwd: Path) -> None:
        self.env = env
        self.workers = workers
        self.log_path = log_path
        self.cwd = cwd
        self.metrics_dir = tempfile.mkdtemp(prefix="nat-test-metrics-")
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    def start(self) -> None:
        port = free_port()
        full_env = clean_environ(
            {
                **self.env,
                "PORT": str(port),
                "WEB_CONCURRENCY": str(self.workers),
                "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
            }
        )
        argv = [GUNICORN, "-c", "python:webhook_service.web.gunicorn_config", "--bind"]
        with self.log_path.open("ab") as stderr:
            self.process = subprocess.Popen(
                [*argv, f"127.0.0.1:{port}", APP],
                env=full_env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        self.base_url = f"http://127.0.0.1:{port}"

    def wait(self, timeout: float) -> None:
        """Wait for /healthz; restart once or twice if the port was taken meanwhile."""
        for _attempt in range(3):
            assert self.process is not None
            if _wait_until_healthy(self.process, self.base_url, time.monotonic() + timeout):
                return
            _stop(self.process)
            log_text = self.log_path.read_text("utf-8", "replace")
            if "in use" not in log_text:
                raise RuntimeError(f"gunicorn did not become healthy:\n{log_text[-4000:]}")
            self.start()
        raise RuntimeError("gunicorn found no free port in three attempts")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process)
        shutil.rmtree(self.metrics_dir, ignore_errors=True)


@contextmanager
def running_services(
    env: Mapping[str, str],
    count: int,
    workers: int = 2,
    *,
    log_paths: Sequence[Path] | None = None,
    timeout: float = START_TIMEOUT_S,
) -> Iterator[list[str]]:
    """Run ``count`` instances with the same ``env`` (started together); yield their URLs."""
    with tempfile.TemporaryDirectory(prefix="nat-test-gunicorn-") as scratch:
        paths = list(log_paths or [Path(scratch) / f"stderr-{i}.log" for i in range(count)])
        servers = [_Server(env, workers, paths[i], Path(scratch)) for i in range(count)]
        try:
            for server in servers:
                server.start()
            for server in servers:
                server.wait(timeout)
            yield [server.base_url for server in servers]
        finally:
            for server in servers:
                server.stop()


@contextmanager
def running_service(
    env: Mapping[str, str],
    workers: int = 2,
    *,
    log_path: Path | None = None,
    timeout: float = START_TIMEOUT_S,
) -> Iterator[str]:
    """Run the service under gunicorn with ``env``; yield its base URL (``http://127.0.0.1:N``)."""
    paths = None if log_path is None else [log_path]
    with running_services(env, 1, workers, log_paths=paths, timeout=timeout) as (base_url,):
        yield base_url


def run_cli(
    *args: str, env: Mapping[str, str], cwd: Path | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``webhook-service`` console script with exactly ``env``."""
    return subprocess.run(
        [WEBHOOK_SERVICE, *args],
        env=clean_environ(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
