"""nginx in front of real instances of the service, as a fleet runs in production.

``Nginx`` runs the nginx binary of the machine (never its system service) with the
repository's site configuration, ``deploy/nginx-webhook-service.conf.template``, filled
in with a free port of 127.0.0.1 and the instances' addresses. Its own master runs in
the foreground with its prefix, pid file, temporary paths and logs in a scratch
directory; its access log records, per request, which instances were tried and what
each answered (``upstream_addr``, ``upstream_status``), so tests read the balancing
from it. ``Instance`` runs ``webhook-service serve`` (gunicorn with the production
config) on a port of its own that it keeps across restarts, as an instance behind a
load balancer does. ``load_balanced(envs)`` starts one instance per environment and
nginx in front of them. Everything is bounded in time and stopped on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.servers import WEBHOOK_SERVICE, clean_environ, free_port, http

REPO = Path(__file__).resolve().parent.parent
SITE_TEMPLATE = REPO / "deploy" / "nginx-webhook-service.conf.template"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 25.0  # above gunicorn's graceful_timeout (20 s)
# What the test harness adds around the site file: its own paths, and an access log of
# the instances each request was sent to (tests read the balancing from it).
MAIN_CONFIG = """\
worker_processes 2;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 512; }}
http {{
    log_format upstreams escape=json '{{"request_id": "$http_x_request_id", '
        '"method": "$request_method", "uri": "$request_uri", "status": $status, '
        '"upstream_addr": "$upstream_addr", "upstream_status": "$upstream_status", '
        '"msec": "$msec"}}';
    access_log {dir}/access.log upstreams;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/webhook-service.conf;
}}
"""


def nginx_binary() -> str | None:
    """The nginx executable of this machine (Debian puts it in /usr/sbin), if any."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


def render_site(listen: str, instances: Sequence[str]) -> str:
    """The repository's site template with its placeholders filled in (two instances)."""
    if len(instances) != 2:
        raise ValueError("the site template names two instances")
    values = {"${LISTEN}": listen, "${INSTANCE_1}": instances[0], "${INSTANCE_2}": instances[1]}
    lines = []
    for line in SITE_TEMPLATE.read_text().splitlines():
        if not line.lstrip().startswith("#"):
            for name, value in values.items():
                line = line.replace(name, value)
            if "${" in line:
                raise ValueError(f"an unknown placeholder in the nginx site template: {line}")
        lines.append(line)
    return "\n".join(lines) + "\n"


def _port_answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _stop_groups(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each process group (all at once), SIGKILL to whatever is left of them."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # what outlived its leader, if anything
        process.wait(timeout=STOP_TIMEOUT_S)


class Nginx:
    """An nginx master of the test's own, in front of ``instances`` (``host:port``)."""

    def __init__(self, binary: str, instances: Sequence[str]) -> None:
        self.binary = binary
        self.instances = list(instances)
        # Started as root, nginx's workers run as nobody: they write request bodies into
        # the temporary paths in here, so every directory above them must let them in.
        self.dir = Path(tempfile.mkdtemp(prefix="nat-test-nginx-"))
        self.dir.chmod(0o755)  # nothing in here is secret
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start on a free port; try another one if that one was taken meanwhile."""
        (self.dir / "nginx.conf").write_text(MAIN_CONFIG.format(dir=self.dir))
        for _attempt in range(3):
            self.port = free_port()
            site = render_site(f"127.0.0.1:{self.port}", self.instances)
            (self.dir / "webhook-service.conf").write_text(site)
            argv = [self.binary, "-p", f"{self.dir}/", "-c", str(self.dir / "nginx.conf")]
            argv += ["-e", str(self.dir / "error.log"), "-g", "daemon off;"]
            with (self.dir / "stderr.log").open("ab") as stderr:
                self.process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    start_new_session=True,
                )
            deadline = time.monotonic() + START_TIMEOUT_S
            while self.process.poll() is None and time.monotonic() < deadline:
                if _port_answers(self.port):
                    return
                time.sleep(0.05)
            self.stop()
            errors = self.error_log()
            if "in use" not in errors:
                raise RuntimeError(f"nginx did not start:\n{errors[-4000:]}")
        raise RuntimeError("nginx found no free port in three attempts")

    def stop(self) -> None:
        if self.process is not None:
            _stop_groups([self.process])

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def error_log(self) -> str:
        text = ""
        for name in ("stderr.log", "error.log"):
            with contextlib.suppress(OSError):
                text += (self.dir / name).read_text("utf-8", "replace")
        return text

    def access_log(self) -> list[dict[str, Any]]:
        """The access log's entries so far (one JSON object per request)."""
        path = self.dir / "access.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def entries(self, request_ids: Sequence[str], timeout: float = 5.0) -> list[dict[str, Any]]:
        """The access log's entries of these requests (by X-Request-ID), in request order.

        nginx writes an entry once the answer has gone out, so the client may read the
        answer first: wait (bounded) until every entry is there.
        """
        wanted = set(request_ids)
        deadline = time.monotonic() + timeout
        while True:
            found = {e["request_id"]: e for e in self.access_log() if e["request_id"] in wanted}
            if len(found) == len(wanted):
                return [found[rid] for rid in request_ids]
            if time.monotonic() > deadline:
                raise LookupError(f"nginx logged {len(found)} of {len(wanted)} requests")
            time.sleep(0.02)


class Instance:
    """``webhook-service serve`` on 127.0.0.1:<port>, the same port across restarts."""

    def __init__(self, env: Mapping[str, str], workers: int, directory: Path, name: str) -> None:
        self.env = dict(env)
        self.workers = workers
        self.dir = directory
        self.name = name
        self.port = free_port()
        self.metrics_dir = tempfile.mkdtemp(prefix="nat-test-metrics-")
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def log_path(self, start: int) -> Path:
        """The stderr of the ``start``-th run (1 is the first)."""
        return self.dir / f"{self.name}-{start}.log"

    def start(self, env: Mapping[str, str] | None = None) -> None:
        """Start gunicorn's master (optionally with another environment); do not wait."""
        if env is not None:
            self.env = dict(env)
        self.starts += 1
        full_env = clean_environ(
            {
                **self.env,
                "PORT": str(self.port),
                "WEB_CONCURRENCY": str(self.workers),
                "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir,
                # The production config binds 0.0.0.0:$PORT; a test binds 127.0.0.1 only.
                "GUNICORN_CMD_ARGS": f"--bind {self.address}",
            }
        )
        with self.log_path(self.starts).open("ab") as stderr:
            self.process = subprocess.Popen(
                [WEBHOOK_SERVICE, "serve"],
                env=full_env,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until /healthz answers 200 (the process serves; it may not be ready)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(OSError):
                if http("GET", self.url + "/healthz", timeout=1.0)[0] == 200:
                    return
            time.sleep(0.05)
        self.stop()
        log_text = self.log_path(self.starts).read_text("utf-8", "replace")
        raise RuntimeError(f"{self.name} did not become healthy:\n{log_text[-4000:]}")

    def boot(self) -> None:
        """Wait for the first start; on another port if this one was taken meanwhile."""
        for _attempt in range(3):
            try:
                self.wait_healthy()
            except RuntimeError:
                if "in use" not in self.log_path(self.starts).read_text("utf-8", "replace"):
                    raise
                self.port = free_port()
                self.start()
            else:
                return
        raise RuntimeError(f"{self.name} found no free port in three attempts")

    def terminate(self) -> float:
        """SIGTERM to gunicorn's master (a graceful stop); wait for it; the seconds it took."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=STOP_TIMEOUT_S)
        return time.monotonic() - started

    def stop(self) -> None:
        if self.process is not None:
            _stop_groups([self.process])

    def log_lines(self) -> list[dict[str, Any]]:
        """Every JSON line the instance logged, over all its runs."""
        lines = []
        for start in range(1, self.starts + 1):
            for raw in self.log_path(start).read_text("utf-8", "replace").splitlines():
                with contextlib.suppress(ValueError):
                    value = json.loads(raw)
                    if isinstance(value, dict):
                        lines.append(value)
        return lines


@dataclass
class Fleet:
    """nginx's URL, nginx itself and the instances behind it."""

    url: str
    nginx: Nginx
    instances: list[Instance]


@contextmanager
def load_balanced(
    binary: str, envs: Sequence[Mapping[str, str]], workers: int = 2
) -> Iterator[Fleet]:
    """One instance per environment (started together) behind one nginx."""
    with tempfile.TemporaryDirectory(prefix="nat-test-fleet-") as scratch:
        directory = Path(scratch)
        instances = [
            Instance(env, workers, directory, f"instance-{i + 1}") for i, env in enumerate(envs)
        ]
        nginx = Nginx(binary, [instance.address for instance in instances])
        try:
            for instance in instances:
                instance.start()
            for instance in instances:
                instance.boot()
            nginx.start()
            yield Fleet(nginx.url, nginx, instances)
        finally:
            nginx.stop()
            nginx.remove()
            _stop_groups([i.process for i in instances if i.process is not None])
            for instance in instances:
                shutil.rmtree(instance.metrics_dir, ignore_errors=True)
