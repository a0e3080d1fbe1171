"""bench/procstats.py: CPU of a group of processes between two snapshots (Linux /proc)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import procstats

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads /proc")

# Burns CPU for a while, then waits to be told to stop (so it is alive when snapshotted).
BUSY = (
    "import sys, time\n"
    "end = time.process_time() + 0.3\n"
    "while time.process_time() < end: pass\n"
    "sys.stdin.read()"
)


def _busy_process() -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while procstats.cpu_seconds(proc.pid) < 0.25 and time.monotonic() < deadline:
        time.sleep(0.02)
    return proc


def _end(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(10)


def test_a_process_that_ends_between_snapshots_counts_nothing_not_minus_its_cpu() -> None:
    proc = _busy_process()
    before = procstats.group_cpu([proc.pid])
    _end(proc)
    after = procstats.group_cpu([proc.pid])

    assert procstats.cpu_delta(before, after) == 0.0


def test_a_process_started_between_snapshots_counts_all_its_cpu_when_asked() -> None:
    before = procstats.group_cpu([])
    proc = _busy_process()
    try:
        after = procstats.group_cpu([proc.pid])
    finally:
        _end(proc)

    assert procstats.cpu_delta(before, after) == 0.0
    assert procstats.cpu_delta(before, after, include_new=True) >= 0.25


def test_a_running_process_counts_what_it_spent_in_between() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys\nsys.stdin.readline()\n" + BUSY], stdin=subprocess.PIPE
    )
    try:
        time.sleep(0.2)
        before = procstats.group_cpu([proc.pid])
        started = procstats.cpu_seconds(proc.pid)
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 30
        while procstats.cpu_seconds(proc.pid) < started + 0.29 and time.monotonic() < deadline:
            time.sleep(0.02)
        after = procstats.group_cpu([proc.pid])
    finally:
        _end(proc)

    assert 0.25 <= procstats.cpu_delta(before, after) <= 1.0
