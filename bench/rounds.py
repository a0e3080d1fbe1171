"""Rounds: a pool of fresh requests, one load-generator run against one server, measured.

Each round's requests are built (webhooks signed) right before it starts and each is sent
once; a pool that runs out before the round's end is made larger and the round run again.
CPU of the server (master and workers) and of its PostgreSQL backends is read from /proc
before and after, and the machine's busy time from /proc/stat.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import procstats, workload
from bench.common import FLOOR, KINDS, ROOT, SERVICE, VENV_BIN, WEBHOOK_SECRET, BenchError, log
from bench.databases import backend_pids
from bench.driver import LoadGenerator, LoadResult, cpu_busy
from bench.loadgen import parse_raw
from bench.loadgen import run as python_loadgen_run
from bench.options import Options
from bench.processes import Processes, Server
from bench.results import PhaseResult, RoundResult

# First guesses of req/s, to size each round's pool of requests (then the measured rate).
INITIAL_RATE = {"webhook": 1500.0, "usage": 2000.0, "spend": 1500.0}
POOL_MARGIN = 2.5


@dataclass(frozen=True)
class Window:
    """CPU spent while the load generator ran: the server's, its database's, the machine's."""

    server_cpu_s: float
    db_cpu_s: float | None  # None: no database backends of its own (SQLite, the baseline)
    busy: float  # share of all cores
    busy_s: float
    seconds: float
    db_backends_opened: int
    db_backends_closed: int  # their CPU in the round is lost


class Rounds:
    """Runs the rounds of a phase against the servers under test."""

    def __init__(
        self,
        opts: Options,
        out: Path,
        loadgen: LoadGenerator,
        procs: Processes,
        stream: workload.EventStream,
        tenants: Sequence[workload.BenchTenant],
        commands: dict[str, str],
    ) -> None:
        self.opts = opts
        self.out = out
        self.loadgen = loadgen
        self.procs = procs
        self.stream = stream
        self.tenants = tenants
        self.commands = commands
        self.rate: dict[tuple[str, str], float] = {}

    # -- request pools

    def _pool_size(self, target: str, kind: str, duration: float) -> int:
        rate = self.rate.get((target, kind), INITIAL_RATE[kind])
        return int(rate * duration * POOL_MARGIN) + 200

    def build(self, kind: str, count: int, port: int) -> list[bytes]:
        host = f"127.0.0.1:{port}"
        if kind == "webhook":
            now = int(time.time())
            return workload.signed_webhooks(self.stream.batch(count, now), WEBHOOK_SECRET, host)
        if kind == "usage":
            return workload.usage_requests(self.tenants, count, host)
        return workload.spend_requests(self.tenants, count, host)

    def send_all(self, port: int, requests: list[bytes], what: str) -> dict[str, int]:
        """Send every request (setup/warm-up, not measured); all must be 2xx."""
        result = python_loadgen_run(
            "127.0.0.1", port, [parse_raw(r) for r in requests], 600.0, min(4, len(requests))
        )
        if result["non_2xx"] or result["socket_errors"] or result["requests"] != len(requests):
            raise BenchError(f"{what}: {result['statuses']} {result['socket_errors']}")
        return {str(k): int(v) for k, v in result["statuses"].items()}

    # -- one round

    @staticmethod
    def _has_backends(server: Server, database_url: str) -> bool:
        """Whether ``server`` has database backends of its own (not SQLite nor the baseline)."""
        return database_url.startswith("postgresql") and server.name in (SERVICE, FLOOR)

    def _db_pids(self, server: Server, database_url: str) -> list[int]:
        """The PostgreSQL backends serving ``server`` now."""
        if not self._has_backends(server, database_url):
            return []
        return backend_pids(database_url, floor=server.name == FLOOR)

    def _drive(
        self,
        server: Server,
        kind: str,
        duration: float,
        database_url: str,
        profile_to: Path | None,
    ) -> tuple[LoadResult, Window, int, int]:
        """One load-generator run on a pool large enough; (result, window, pool, retries)."""
        retries = 0
        while True:
            pool = self._pool_size(server.name, kind, duration)
            path = self.out / f"requests-{server.name}-{kind}.bin"
            # Built (and, for webhooks, signed) right before the round starts.
            workload.write_requests(path, self.build(kind, pool, server.port))
            pids = server.pids()
            db_pids = self._db_pids(server, database_url)
            spy: subprocess.Popen[bytes] | None = None
            if profile_to is not None:
                spy = self._start_profiler(server, duration, profile_to)
            cpu_before = procstats.group_cpu(pids)
            db_before = procstats.group_cpu(db_pids)
            busy_before = cpu_busy()
            window_started = time.perf_counter()
            try:
                result = self.loadgen.run(server.port, duration, path)
            finally:
                if spy is not None:
                    try:
                        spy.wait(duration + 60)
                    finally:
                        self.procs.stop(spy)
            busy_after = cpu_busy()
            seconds = time.perf_counter() - window_started
            cpu_after = procstats.group_cpu(pids)
            db_after = procstats.group_cpu(db_pids)
            # Backends opened during the round count too (all their CPU is the round's).
            opened = [p for p in self._db_pids(server, database_url) if p not in db_before]
            db_after.update(procstats.group_cpu(opened))
            if not self.opts.keep_files:
                path.unlink(missing_ok=True)
            self.commands[f"loadgen-{kind}"] = result.command
            if not result.exhausted:
                window = Window(
                    server_cpu_s=procstats.cpu_delta(cpu_before, cpu_after),
                    db_cpu_s=(
                        procstats.cpu_delta(db_before, db_after, include_new=True)
                        if self._has_backends(server, database_url)
                        else None
                    ),
                    db_backends_opened=len(opened),
                    db_backends_closed=len(db_before.keys() - db_after.keys()),
                    busy=(busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1),
                    busy_s=(busy_after[0] - busy_before[0]) / procstats.CLOCK_TICKS,
                    seconds=seconds,
                )
                return result, window, pool, retries
            if retries >= 3:
                raise BenchError(f"{server.name} {kind}: request pool used up 4 times")
            retries += 1
            self.rate[(server.name, kind)] = (
                max(self.rate.get((server.name, kind), 0), INITIAL_RATE[kind]) * 2
            )
            log(f"    pool of {pool} used up; again with a larger one")

    def run_round(
        self,
        phase: PhaseResult,
        server: Server,
        kind: str,
        index: int,
        database_url: str,
        duration: float | None = None,
        profile_to: Path | None = None,
        record: bool = True,
    ) -> RoundResult:
        duration = duration or self.opts.duration
        workers = server.workers()
        result, window, pool, retries = self._drive(
            server, kind, duration, database_url, profile_to
        )
        if set(procstats.children(server.master)) != set(workers):
            phase.checks.setdefault("worker_restarts", []).append(f"{server.name} {kind} r{index}")
        if kind == "spend" and server.name == SERVICE:
            phase.spends_acknowledged += result.ok
        requests = max(result.requests, 1)
        rps = result.ok / result.duration_s if result.duration_s else 0.0
        # Size later pools for the fastest rate seen (rounds on a shared machine vary).
        self.rate[(server.name, kind)] = max(rps, self.rate.get((server.name, kind), 0.0))
        db_cpu = window.db_cpu_s or 0.0
        # CPU of everything else on the machine during the round (other jobs, the kernel's
        # softirq work not charged to a process, PostgreSQL's background processes).
        # (Over the whole window: the load generator reads its file before its clock starts.)
        foreign_s = max(0.0, window.busy_s - window.server_cpu_s - db_cpu - result.loadgen_cpu_s)
        row = RoundResult(
            phase=phase.name,
            target=server.name,
            kind=kind,
            round=index,
            tool=result.tool,
            duration_s=result.duration_s,
            requests=result.requests,
            ok=result.ok,
            non_2xx=result.non_2xx,
            statuses=result.statuses,
            rps=rps,
            p50_ms=result.p50_ms,
            p90_ms=result.p90_ms,
            p99_ms=result.p99_ms,
            max_ms=result.max_ms,
            server_cpu_ms_per_req=window.server_cpu_s * 1000 / requests,
            server_cpu_pct=100 * window.server_cpu_s / result.duration_s,
            db_cpu_ms_per_req=db_cpu * 1000 / requests if window.db_cpu_s is not None else None,
            total_cpu_ms_per_req=(window.server_cpu_s + db_cpu) * 1000 / requests,
            loadgen_cpu_pct=100 * result.loadgen_cpu_s / result.duration_s,
            machine_busy_pct=100 * window.busy,
            foreign_cpu_pct=100 * foreign_s / max(window.seconds, result.duration_s),
            db_backends_opened=window.db_backends_opened,
            db_backends_closed=window.db_backends_closed,
            socket_errors=result.socket_errors,
            pool=pool,
            retries=retries,
        )
        db = "" if row.db_cpu_ms_per_req is None else f" + db {row.db_cpu_ms_per_req:.2f}"
        if row.db_backends_opened or row.db_backends_closed:
            db += f" (db connections +{row.db_backends_opened} -{row.db_backends_closed})"
        log(
            f"    {f'r{index}' if record else 'warm'} {server.name:8} {kind:7} {rps:8.1f} req/s"
            f"  p50 {row.p50_ms:6.2f} ms  p99 {row.p99_ms:6.2f} ms  non-2xx {row.non_2xx}  "
            f"cpu {row.server_cpu_ms_per_req:.2f}{db} ms/req  loadgen "
            f"{row.loadgen_cpu_pct:.0f}% of a core  machine {row.machine_busy_pct:.0f}% busy, "
            f"others {row.foreign_cpu_pct:.0f}% of a core"
        )
        if record and profile_to is None:
            phase.rounds.append(row)
        return row

    def _start_profiler(
        self, server: Server, duration: float, path: Path
    ) -> subprocess.Popen[bytes] | None:
        spy = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
        if not Path(spy).exists():
            log("    py-spy is not installed (pip install py-spy); no profile")
            return None
        argv = [
            spy,
            "record",
            "--pid",
            str(server.master),
            "--subprocesses",
            "--idle",
            "--nonblocking",
            "--rate",
            "250",
            "--format",
            "raw",
            "--duration",
            str(max(1, round(duration))),
            "--output",
            str(path),
        ]
        self.commands["profiler"] = shlex.join(argv).replace(str(path), "<out.txt>")
        proc = self.procs.start(argv, dict(os.environ), self.out / "py-spy.log")
        time.sleep(0.5)  # let it attach before the load starts
        return proc

    # -- a phase's extra rounds

    def warm_up(self, phase: PhaseResult, servers: Sequence[Server], database_url: str) -> None:
        """Warm every endpoint up (not measured).

        A full run does it with a short round through the load generator, which also sizes
        the request pools; a quick one sends a few requests of each kind.
        """
        for server in servers:
            for kind in KINDS if server.name == SERVICE else ("webhook",):
                if self.opts.quick:
                    requests = self.build(kind, 16, server.port)
                    statuses = self.send_all(server.port, requests, f"warm-up {kind}")
                    if kind == "spend" and server.name == SERVICE:
                        phase.spends_acknowledged += sum(statuses.values())
                    continue
                self.run_round(
                    phase, server, kind, 0, database_url, duration=self.opts.warmup_s, record=False
                )

    def profile(
        self, phase: PhaseResult, servers: Sequence[Server], database_url: str
    ) -> dict[str, tuple[Path, int]]:
        """One more round of every figure under py-spy; name -> (profile, requests)."""
        folder = self.out / "profiles"
        folder.mkdir(exist_ok=True)
        profiles = {}
        for server in servers:
            for kind in KINDS if server.name == SERVICE else ("webhook",):
                path = folder / f"{phase.backend}-{phase.state}-{server.name}-{kind}.txt"
                log(f"    profiling {server.name} {kind} -> {path.relative_to(ROOT)}")
                row = self.run_round(phase, server, kind, 0, database_url, profile_to=path)
                if path.exists():
                    profiles[f"{phase.name} {server.name} {kind}"] = (path, row.requests)
        return profiles
