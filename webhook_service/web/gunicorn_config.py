"""gunicorn settings, shared by the Procfile, the Dockerfile and `webhook-service serve`.

Loaded with ``gunicorn -c python:webhook_service.web.gunicorn_config``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from gunicorn.glogging import Logger

from webhook_service.config import ConfigError, load_settings
from webhook_service.logging import configure_logging, formatter_for_stdlib
from webhook_service.web.server_errors import install as install_json_errors

try:
    _settings = load_settings()
except ConfigError as _exc:
    print(f"configuration error: {_exc}", file=sys.stderr)
    sys.exit(2)

configure_logging(_settings.log_format, _settings.log_level)

bind = [_settings.bind_address]
workers = _settings.web_concurrency
# Threads (gunicorn's gthread) with a read deadline per request (webhook_service.web.worker):
# a slow client holds one thread for at most REQUEST_READ_DEADLINE_S, never a process,
# and the main thread keeps answering gunicorn's heartbeat. Workers accept unevenly (the
# one whose main thread wakes first wins), so each has threads enough for 50 slow clients
# at once and everyone else besides: with 32, tests saw 4-5 s waits when most of them
# landed on one worker. Threads are started only as needed.
worker_class = "webhook_service.web.worker.DeadlineThreadWorker"
threads = 100
# Import the app once in the master (create_app opens no connection, so nothing
# crosses the fork): workers boot in milliseconds and share the code pages.
preload_app = True
# The heartbeat of a worker's main thread (threads serving requests do not delay it);
# requests themselves are bounded by their read deadline and the database deadlines.
timeout = 30
# SIGTERM: stop accepting, finish in-flight requests for up to this long.
graceful_timeout = 20
keepalive = 5
# Header limits (bodies are bounded by the app: MAX_WEBHOOK_BYTES).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
accesslog = None  # the app writes one canonical line per request
errorlog = "-"
loglevel = _settings.log_level
proc_name = "nat-webhook-service"
# Several instances may share a host (tests, benchmarks): no shared control socket.
control_socket_disable = True

# Prometheus multiprocess mode: each worker writes its samples into this directory.
# Unless one is given, a temporary one named after the master's pid, removed at exit
# (on_exit), or at the next start on this host if the master was killed (on_starting).
METRICS_DIR_PREFIX = "nat-metrics-"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(
        prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-"
    )
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
# Made by this master (also when the config is read again on SIGHUP), not given to it.
_own_metrics_dir = os.path.basename(_metrics_dir).startswith(f"{METRICS_DIR_PREFIX}{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_metrics_dirs(parent: str | None = None) -> list[str]:
    """Remove the metrics directories of masters that are gone; return their paths.

    Only ``nat-metrics-<pid>-*`` directories whose pid is not running are removed (the
    pid is in the name since this release; older, unnamed ones are left alone).
    """
    parent = parent or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(METRICS_DIR_PREFIX):
            continue
        pid, sep, _ = name[len(METRICS_DIR_PREFIX) :].partition("-")
        if not sep or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        path = os.path.join(parent, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class StructlogGunicornLogger(Logger):
    """gunicorn's error (and, if enabled, access) log in the service's log shape."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        formatter = formatter_for_stdlib(_settings.log_format)
        for handler in [*self.error_log.handlers, *self.access_log.handlers]:
            handler.setFormatter(formatter)


logger_class = StructlogGunicornLogger


def on_starting(server: Any) -> None:
    """Start with an empty metrics directory: stale files would double-count.

    Also: gunicorn's own error answers become JSON, and the metrics directories that
    masters killed before their exit hook left in the temporary directory are removed.
    """
    install_json_errors()
    remove_stale_metrics_dirs()
    os.makedirs(_metrics_dir, exist_ok=True)
    for name in os.listdir(_metrics_dir):
        path = os.path.join(_metrics_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def on_exit(server: Any) -> None:
    """Remove the metrics directory this master made (not one it was given)."""
    if _own_metrics_dir:
        shutil.rmtree(_metrics_dir, ignore_errors=True)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
