"""Starting and stopping processes: the servers under test and everything else the run starts.

Every process runs in its own process group and is stopped at the end, also on errors.
The service is started as the Procfile does (``webhook-service serve``); the baseline and
the floor under the same gunicorn config, with the same environment.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import procstats
from bench.common import (
    BASELINE,
    FLOOR,
    ROOT,
    SERVICE,
    SYNC_KEY,
    VENV_BIN,
    WEBHOOK_SECRET,
    BenchError,
)

GUNICORN = [sys.executable, "-m", "gunicorn", "-c", "python:webhook_service.web.gunicorn_config"]
# name -> (argv, the path that answers 200 once it is ready)
SERVERS = {
    SERVICE: ([str(VENV_BIN / "webhook-service"), "serve"], "/readyz"),
    BASELINE: ([*GUNICORN, "bench.baseline_app:app"], "/healthz"),
    FLOOR: ([*GUNICORN, "bench.floor_app:app"], "/healthz"),
}


class Processes:
    """Every process the benchmark starts, each in its own process group, stopped at exit."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, argv: Sequence[str], env: dict[str, str], log: Path, cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 25.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # Anything the group left behind (a worker that outlived its master).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_many(self, procs: Sequence[subprocess.Popen[bytes]]) -> None:
        """SIGTERM every group first, then wait for each (they shut down in parallel)."""
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            self.stop(proc)

    def stop_all(self) -> None:
        self.stop_many(list(reversed(self._procs)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server on :{port} exited with {proc.returncode} (see its log)")
        try:
            status, body = http_call(port, "GET", path, timeout=2)
            if status == 200:
                return
            last = f"{status} {body[:200]!r}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise BenchError(f"server on :{port} not ready after {timeout:.0f}s: {last}")


@dataclass
class Server:
    name: str  # SERVICE, BASELINE or FLOOR
    port: int
    proc: subprocess.Popen[bytes]
    argv: list[str]
    ready_path: str

    @property
    def master(self) -> int:
        return self.proc.pid

    def pids(self) -> list[int]:
        return [self.master, *procstats.children(self.master)]

    def workers(self) -> list[int]:
        return procstats.children(self.master)


class Launcher:
    """Starts the servers under test, each with the environment the service gets."""

    def __init__(
        self, procs: Processes, out: Path, workers: int, plans_file: Path, commands: dict[str, str]
    ) -> None:
        self.procs = procs
        self.out = out
        self.workers = workers
        self.plans_file = plans_file
        self.commands = commands  # name -> the command line, for the report

    def env(self, port: int, database_url: str, metrics_dir: Path) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("STRIPE_", "NAT_", "RATE", "DATABASE_", "GUNICORN", "PROMETHEUS"))
        }
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            PORT=str(port),
            WEB_CONCURRENCY=str(self.workers),
            DATABASE_URL=database_url,
            STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET,
            STRIPE_WEBHOOK_TOLERANCE="300",
            NAT_APP_SYNC_KEY=SYNC_KEY,
            NAT_PLANS_FILE=str(self.plans_file),
            # 500 keys at ~1000 req/s would pass the default 120/minute per key: the
            # limiter still counts every request, it just never refuses one.
            RATE_LIMIT="1000000/minute",
            RATELIMIT_STORAGE_URI="memory://",
            TRUSTED_PROXY_HOPS="0",
            LOG_FORMAT="json",
            LOG_LEVEL="info",
            # gunicorn_config binds 0.0.0.0:$PORT; the benchmark stays on the loopback.
            GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
            PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        )
        return env

    def run(self, argv: Sequence[str], database_url: str, log: Path) -> None:
        """Run a set-up command (``webhook-service db upgrade``...) with a server's environment."""
        env = self.env(8080, database_url, self.out)
        with log.open("ab") as fh:
            proc = subprocess.run(
                list(argv), cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=600
            )
        if proc.returncode != 0:
            raise BenchError(f"{shlex.join(argv)} failed with {proc.returncode}; see {log}")

    def start(self, name: str, database_url: str, tag: str) -> Server:
        """Start server ``name`` (see SERVERS) on a free port; wait() waits until it is ready."""
        port = free_port()
        metrics_dir = self.out / f"metrics-{tag}-{name}"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env = self.env(port, database_url, metrics_dir)
        argv, ready = SERVERS[name]
        proc = self.procs.start(argv, env, self.out / f"{tag}-{name}.log")
        server = Server(name, port, proc, argv, ready)
        self.commands[name] = (
            "env PORT=<port> WEB_CONCURRENCY=2 DATABASE_URL=<url> STRIPE_WEBHOOK_SECRET=<whsec> "
            f"NAT_APP_SYNC_KEY=<key> NAT_PLANS_FILE=<plans.toml> RATE_LIMIT=1000000/minute "
            f'GUNICORN_CMD_ARGS="--bind 127.0.0.1:<port>" {shlex.join(argv)}'
        )
        return server

    def wait(self, server: Server) -> None:
        wait_ready(server.port, server.ready_path, server.proc)
        deadline = time.monotonic() + 15
        while len(server.workers()) < self.workers and time.monotonic() < deadline:
            time.sleep(0.1)
