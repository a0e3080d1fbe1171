"""CPU time and memory of processes, read from /proc (Linux)."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (None if ``pid`` is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces: fields start after the last ')'.
    return stat[stat.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (0.0 if it is gone)."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """Direct children of ``pid``."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(set(found))


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (0.0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


# pid -> (start time in clock ticks since boot, CPU seconds): the start time tells a
# process from a later one that was given the same pid.
Snapshot = dict[int, tuple[int, float]]


def group_cpu(pids: list[int]) -> Snapshot:
    """CPU time of each of ``pids`` that is still running (those gone are left out)."""
    snapshot: Snapshot = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
            snapshot[pid] = (int(fields[19]), cpu)
    return snapshot


def cpu_delta(before: Snapshot, after: Snapshot, *, include_new: bool = False) -> float:
    """CPU seconds spent between two snapshots by the processes alive in both.

    A process that ended in between is left out (its last seconds are lost, never
    counted as negative). With ``include_new``, a process only in ``after`` counts all its
    CPU: it started in between (``after`` listed the group again, e.g. new database
    backends).
    """
    total = 0.0
    for pid, (start, cpu) in after.items():
        if pid in before and before[pid][0] == start:
            total += cpu - before[pid][1]
        elif include_new:
            total += cpu
    return total


def cpu_description() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return model


def memory_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0
