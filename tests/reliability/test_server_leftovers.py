"""A served instance leaves no /tmp/nat-metrics-* behind (issue 11, item 7).

Without PROMETHEUS_MULTIPROC_DIR, the gunicorn config makes a temporary metrics
directory; every `serve` used to leave it behind (104 were counted on one machine). It
is now named after the master's pid, removed at exit, and the ones of masters that are
gone (killed before their exit hook) are removed at the next start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.servers import APP, GUNICORN, clean_environ, free_port, http
from webhook_service.db import Database


def dead_pid() -> int:
    """The pid of a process that has exited."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.slow
def test_serve_removes_its_metrics_dir_and_stale_ones(
    env: dict[str, str], database: Database, tmp_path: Path
) -> None:
    """Remove a dead master's directory at start, and this master's own at exit."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    stale = scratch / f"nat-metrics-{dead_pid()}-abc123"
    stale.mkdir()
    (stale / "counter_1234.db").write_bytes(b"x")
    alive = scratch / f"nat-metrics-{os.getpid()}-def456"  # a running master's: kept
    alive.mkdir()
    unnamed = scratch / "nat-metrics-q1w2e3"  # made by an older release: left alone
    unnamed.mkdir()
    port = free_port()
    log = (tmp_path / "stderr.log").open("wb")
    process = subprocess.Popen(
        [
            GUNICORN,
            "-c",
            "python:webhook_service.web.gunicorn_config",
            "--bind",
            f"127.0.0.1:{port}",
            APP,
        ],
        env=clean_environ({**env, "TMPDIR": str(scratch), "WEB_CONCURRENCY": "1"}),
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "stderr.log").read_text()
            try:
                if http("GET", f"http://127.0.0.1:{port}/metrics", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not start"
            time.sleep(0.05)
        own = sorted(p.name for p in scratch.glob(f"nat-metrics-{process.pid}-*"))
        assert len(own) == 1, sorted(p.name for p in scratch.iterdir())
        assert not stale.exists()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            log.close()
    assert process.returncode == 0, (tmp_path / "stderr.log").read_text()[-2000:]
    assert sorted(p.name for p in scratch.iterdir()) == sorted([alive.name, unnamed.name])
