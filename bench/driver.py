"""The load generator, from the harness's side: wrk (with ``bench/wrk_requests.lua``) when
installed, else ``bench/loadgen.py``; either runs in a child process and reports JSON.
Its ceiling is measured against ``bench/null_server.py``, a server that does nothing.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import procstats
from bench.common import BENCH, ROOT, WEBHOOK_SECRET, BenchError, log
from bench.processes import Processes, free_port
from bench.workload import EventStream, signed_webhooks, write_requests


def cpu_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total


@dataclass
class LoadResult:
    tool: str
    duration_s: float
    requests: int
    ok: int
    non_2xx: int
    statuses: dict[str, int]
    exhausted: bool
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    loadgen_cpu_s: float
    socket_errors: dict[str, int]
    command: str


class LoadGenerator:
    """wrk (with the Lua script) when installed, else the Python generator; both in a child."""

    def __init__(self, kind: str, connections: int, wrk: str | None) -> None:
        self.kind = kind
        self.connections = connections
        self.wrk = wrk

    def command(self, port: int, duration: float, path: Path) -> list[str]:
        if self.kind == "wrk" and self.wrk:
            return [
                self.wrk,
                "-t1",
                f"-c{self.connections}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                str(BENCH / "wrk_requests.lua"),
                f"http://127.0.0.1:{port}",
                "--",
                str(path),
            ]
        return [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--port",
            str(port),
            "--file",
            str(path),
            "--duration",
            str(duration),
            "--connections",
            str(self.connections),
        ]

    def run(self, port: int, duration: float, path: Path) -> LoadResult:
        argv = self.command(port, duration, path)
        ru_before = os.times()
        proc = subprocess.run(
            argv, cwd=ROOT, capture_output=True, text=True, timeout=duration + 120, check=False
        )
        ru_after = os.times()
        if proc.returncode != 0:
            raise BenchError(f"load generator failed ({proc.returncode}): {proc.stderr[-2000:]}")
        data: dict[str, Any] | None = None
        for line in proc.stdout.splitlines():
            line = line.strip()
            if line.startswith("BENCH_JSON "):
                data = json.loads(line[len("BENCH_JSON ") :])
            elif line.startswith("{"):
                data = json.loads(line)
        if data is None:
            raise BenchError(f"no result from the load generator: {proc.stdout[-2000:]}")
        child_cpu = (ru_after.children_user - ru_before.children_user) + (
            ru_after.children_system - ru_before.children_system
        )
        cpu = float(data.get("loadgen_cpu_s", child_cpu))
        lat = data["latency_ms"]
        errors = {k: int(v) for k, v in data.get("socket_errors", {}).items() if v}
        return LoadResult(
            tool=str(data["tool"]),
            duration_s=float(data["duration_s"]),
            requests=int(data.get("responses", data["requests"])),
            ok=int(data["ok"]),
            non_2xx=int(data["non_2xx"]),
            statuses={str(k): int(v) for k, v in data["statuses"].items()},
            exhausted=bool(data["exhausted"]),
            p50_ms=float(lat["p50"]),
            p90_ms=float(lat["p90"]),
            p99_ms=float(lat["p99"]),
            max_ms=float(lat["max"]),
            loadgen_cpu_s=cpu,
            socket_errors=errors,
            command=shlex.join(argv),
        )


def measure_ceiling(
    loadgen: LoadGenerator, procs: Processes, stream: EventStream, out: Path, quick: bool
) -> dict[str, Any]:
    """The load generator against a do-nothing server: how fast can it drive?"""
    port = free_port()
    proc = procs.start(
        [sys.executable, "-m", "bench.null_server", "--port", str(port)],
        dict(os.environ),
        out / "null-server.log",
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
            except OSError:
                time.sleep(0.05)
            else:
                break
        duration = 1.0 if quick else 5.0
        count = int(6_000 * duration)
        path = out / "requests-null.bin"
        bodies = stream.batch(count, int(time.time()))
        write_requests(path, signed_webhooks(bodies, WEBHOOK_SECRET, f"127.0.0.1:{port}"))
        cpu_before = procstats.cpu_seconds(proc.pid)
        result = loadgen.run(port, duration, path)
        server_cpu = procstats.cpu_seconds(proc.pid) - cpu_before
        path.unlink(missing_ok=True)
        ceiling = {
            "rps": result.ok / result.duration_s,
            "exhausted": result.exhausted,
            "loadgen_cpu_ms_per_req": 1000 * result.loadgen_cpu_s / max(result.requests, 1),
            "loadgen_cpu_pct": 100 * result.loadgen_cpu_s / result.duration_s,
            "null_server_cpu_pct": 100 * server_cpu / result.duration_s,
            "p99_ms": result.p99_ms,
        }
        log(
            f"== load generator ceiling ({result.tool}, null server): "
            f"{ceiling['rps']:.0f} req/s, {ceiling['loadgen_cpu_ms_per_req']:.3f}"
            f" ms CPU/req",
        )
        return ceiling
    finally:
        procs.stop(proc)
