"""`make bench`: the webhook service under load, against a stateless Stripe-sample receiver.

For each backend (SQLite, PostgreSQL) and each state (an empty log; then a log of
1,000,000 events and 100,000 tenants), the service is started as the Procfile does
(``webhook-service db upgrade``, then ``webhook-service serve``: gunicorn with
``-c python:webhook_service.web.gunicorn_config``, WEB_CONCURRENCY=2), a plan catalog and
500 tenants are synced, and every tenant's subscription is created by a webhook. The
baseline (``bench/baseline_app.py``) runs beside it under the same gunicorn settings.
Then rounds alternate: baseline webhooks and service webhooks (the order flips every
round), service ``GET /api/v1/usage``, service ``POST /api/v1/usage/scans``; medians of
the rounds are reported, each also as a ratio to the baseline.

Load comes from another process on 127.0.0.1: wrk with ``bench/wrk_requests.lua`` when
wrk is installed, otherwise ``bench/loadgen.py`` (threads + http.client). See
``bench/README.md`` for what is measured and how.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from bench import procstats, profile_summary, workload
from bench.loadgen import parse_raw
from bench.loadgen import run as python_loadgen_run
from bench.prefill import PrefillStats, prefill

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_BIN = Path(sys.executable).parent
WEBHOOK_SECRET = "whsec_bench_0123456789abcdef0123456789abcdef"  # noqa: S105 - synthetic
SYNC_KEY = "sync_bench_key_6c0ffee5d00d"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/nat_bench"
KINDS = ("webhook", "usage", "spend")
KIND_LABEL = {
    "webhook": "POST /api/v1/billing/webhook",
    "usage": "GET /api/v1/usage",
    "spend": "POST /api/v1/usage/scans",
}
# First guesses of req/s, to size each round's pool of requests (then the measured rate).
INITIAL_RATE = {"webhook": 1500.0, "usage": 2000.0, "spend": 1500.0}
POOL_MARGIN = 2.5
TARGETS = {
    "webhook_sqlite_ratio": 2.0,
    "webhook_postgresql_ratio": 1.5,
    "p99_ms": 15.0,
    "usage_ratio": 1.3,
    "spend_ratio": 1.0,
    "rss_mb": 80.0,
    "prefill_cost_pct": 10.0,
}


_STARTED = time.monotonic()


def log(message: str) -> None:
    """A progress line, with the seconds since the benchmark started."""
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", flush=True)


class BenchError(Exception):
    """The benchmark cannot go on (a server did not start, a setup request failed...)."""


# -- configuration -------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    quick: bool
    rounds: int
    duration: float
    connections: int
    workers: int
    tenants: int
    backends: tuple[str, ...]
    prefill_events: int
    prefill_tenants: int
    loadgen: str
    postgres_url: str
    output: Path
    profile: bool
    keep_files: bool
    warmup_s: float


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark the webhook service against a stateless Stripe-sample receiver.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round of 3 s, SQLite only, a small pre-fill (under a minute)",
    )
    parser.add_argument("--rounds", type=int, help="alternating rounds per phase (default 3)")
    parser.add_argument("--duration", type=float, help="seconds per round (default 10)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY (default 2)")
    parser.add_argument("--tenants", type=int, help="tenants under load (500; --quick 100)")
    parser.add_argument("--backends", help="comma-separated: sqlite,postgresql (default both)")
    parser.add_argument("--prefill-events", type=int, help="events in the big log (1,000,000)")
    parser.add_argument(
        "--prefill-tenants", type=int, help="tenants in the big state, load tenants included"
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    parser.add_argument("--output", type=Path, help="report (default bench/RESULTS.md)")
    parser.add_argument(
        "--profile", action="store_true", help="one extra round per endpoint under py-spy"
    )
    parser.add_argument("--keep-files", action="store_true", help="keep request files and DBs")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    backends = tuple(
        b.strip()
        for b in (args.backends or ("sqlite" if quick else "sqlite,postgresql")).split(",")
        if b.strip()
    )
    for backend in backends:
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"unknown backend {backend!r}")
    url = make_url(args.postgres_url)
    if url.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--postgres-url must point at this machine")
    output = args.output or (BENCH / "out" / "RESULTS.quick.md" if quick else BENCH / "RESULTS.md")
    return Options(
        quick=quick,
        rounds=args.rounds or (1 if quick else 3),
        duration=args.duration or (3.0 if quick else 10.0),
        connections=args.connections,
        workers=args.workers,
        tenants=args.tenants or (100 if quick else 500),
        backends=backends,
        prefill_events=(
            args.prefill_events
            if args.prefill_events is not None
            else (10_000 if quick else 1_000_000)
        ),
        prefill_tenants=(
            args.prefill_tenants
            if args.prefill_tenants is not None
            else (2_000 if quick else 100_000)
        ),
        loadgen=args.loadgen,
        postgres_url=args.postgres_url,
        output=output,
        profile=bool(args.profile),
        keep_files=bool(args.keep_files),
        warmup_s=1.0 if quick else 2.0,
    )


# -- processes -------------------------------------------------------------------------


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
    name: str  # "service" | "baseline"
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


# -- machine ---------------------------------------------------------------------------


def _version(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def _git_state() -> str:
    """The commit measured, and whether the service's files differ from it (read-only git)."""
    git = shutil.which("git")
    if not git:
        return "unknown (no git)"
    head = subprocess.run(
        [git, "--no-optional-locks", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        [git, "--no-optional-locks", "status", "--porcelain", "--", "webhook_service"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    if not dirty:
        return f"commit {head or 'unknown'}"
    return f"commit {head} plus uncommitted changes in {len(dirty)} file(s) under webhook_service/"


def machine_description(opts: Options, wrk: str | None) -> dict[str, str]:
    packages = [
        "flask",
        "werkzeug",
        "stripe",
        "sqlalchemy",
        "gunicorn",
        "psycopg",
        "psycopg-binary",
        "structlog",
        "prometheus-client",
        "limits",
        "alembic",
        "py-spy",
    ]
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    info = {
        "service code": _git_state(),
        "nproc": str(os.cpu_count()),
        "cpu": procstats.cpu_description(),
        "memory": f"{procstats.memory_total_gib():.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "packages": ", ".join(versions),
        "load generator": (
            _version([wrk, "-v"])
            if wrk
            else f"python bench/loadgen.py ({opts.connections} threads)"
        ),
    }
    if "postgresql" in opts.backends:
        try:
            with psycopg.connect(_admin_conninfo(opts.postgres_url), connect_timeout=3) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                info["postgresql"] = str(row[0]) if row else "unknown"
        except psycopg.Error as exc:
            info["postgresql"] = f"unreachable ({exc})"
    return info


# -- databases -------------------------------------------------------------------------


def _admin_conninfo(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql", database="postgres").render_as_string(
        hide_password=False
    )


def _pg_name(url: str) -> str:
    name = make_url(url).database or "nat_bench"
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise BenchError(f"refusing an unusual database name {name!r}")
    return name


def create_pg_database(url: str) -> None:
    name = _pg_name(url)
    with psycopg.connect(_admin_conninfo(url), autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def drop_pg_database(url: str) -> None:
    name = _pg_name(url)
    with psycopg.connect(_admin_conninfo(url), autocommit=True, connect_timeout=3) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_backend_pids(url: str) -> list[int]:
    name = _pg_name(url)
    with psycopg.connect(_admin_conninfo(url), autocommit=True, connect_timeout=3) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return [int(r[0]) for r in rows]


def db_scalar(database_url: str, sql: str) -> Any:
    parsed = make_url(database_url)
    if parsed.get_backend_name() == "sqlite":
        with contextlib.closing(sqlite3.connect(parsed.database or "", timeout=30)) as conn:
            return conn.execute(sql).fetchone()[0]
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, connect_timeout=3) as pg:
        row = pg.execute(sql).fetchone()
        return row[0] if row else None


def db_rows(database_url: str, sql: str) -> list[tuple[Any, ...]]:
    parsed = make_url(database_url)
    if parsed.get_backend_name() == "sqlite":
        with contextlib.closing(sqlite3.connect(parsed.database or "", timeout=30)) as conn:
            return list(conn.execute(sql).fetchall())
    conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, connect_timeout=3) as pg:
        return list(pg.execute(sql).fetchall())


# -- load generation -------------------------------------------------------------------


def _cpu_busy() -> tuple[int, int]:
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


# -- results ---------------------------------------------------------------------------


@dataclass
class RoundResult:
    phase: str
    target: str
    kind: str
    round: int
    tool: str
    duration_s: float
    requests: int
    ok: int
    non_2xx: int
    statuses: dict[str, int]
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    server_cpu_ms_per_req: float
    server_cpu_pct: float
    db_cpu_ms_per_req: float | None
    loadgen_cpu_pct: float
    machine_busy_pct: float
    foreign_cpu_pct: float
    socket_errors: dict[str, int]
    pool: int
    retries: int


@dataclass
class PhaseResult:
    backend: str
    state: str
    rounds: list[RoundResult] = field(default_factory=list)
    rss_mb: dict[str, list[float]] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.state}"

    def of(self, target: str, kind: str) -> list[RoundResult]:
        return [r for r in self.rounds if r.target == target and r.kind == kind]

    def median(self, target: str, kind: str, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.of(target, kind)]
        values = [v for v in values if v is not None]
        return float(statistics.median(values)) if values else None

    def non_2xx(self) -> int:
        return sum(r.non_2xx for r in self.rounds)


# -- the benchmark ---------------------------------------------------------------------


class Bench:
    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.procs = Processes()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.out = BENCH / "out" / f"run-{stamp}"
        self.out.mkdir(parents=True, exist_ok=True)
        self.wrk = shutil.which("wrk")
        kind = opts.loadgen
        if kind == "auto":
            kind = "wrk" if self.wrk else "python"
        if kind == "wrk" and not self.wrk:
            raise BenchError("--loadgen wrk: wrk is not installed (apt-get install wrk)")
        self.loadgen = LoadGenerator(kind, opts.connections, self.wrk)
        self.rate: dict[tuple[str, str], float] = {}
        self.phases: list[PhaseResult] = []
        self.commands: dict[str, str] = {}
        self.ceiling: dict[str, Any] = {}
        self.profiles: dict[str, tuple[Path, int]] = {}
        self.plans_file = self.out / "plans.toml"
        self.plans_file.write_text(workload.PLANS_TOML, encoding="utf-8")
        self.now = int(time.time())
        self.tenants = workload.bench_tenants(opts.tenants, self.now)
        self.stream: workload.EventStream | None = None
        self.spends_acknowledged = 0

    # -- environment

    def env(self, port: int, database_url: str, metrics_dir: Path) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("STRIPE_", "NAT_", "RATE", "DATABASE_", "GUNICORN", "PROMETHEUS"))
        }
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            PORT=str(port),
            WEB_CONCURRENCY=str(self.opts.workers),
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

    def run_cli(self, args: Sequence[str], env: dict[str, str], log: Path) -> None:
        argv = [str(VENV_BIN / "webhook-service"), *args]
        with log.open("ab") as fh:
            proc = subprocess.run(
                argv, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=600
            )
        if proc.returncode != 0:
            raise BenchError(f"{shlex.join(argv)} failed with {proc.returncode}; see {log}")

    def start_server(self, name: str, database_url: str, tag: str) -> Server:
        port = free_port()
        metrics_dir = self.out / f"metrics-{tag}-{name}"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        env = self.env(port, database_url, metrics_dir)
        if name == "service":
            argv = [str(VENV_BIN / "webhook-service"), "serve"]
            ready = "/readyz"
        else:
            argv = [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "python:webhook_service.web.gunicorn_config",
                "bench.baseline_app:app",
            ]
            ready = "/healthz"
        proc = self.procs.start(argv, env, self.out / f"{tag}-{name}.log")
        server = Server(name, port, proc, argv, ready)
        self.commands[name] = (
            "env PORT=<port> WEB_CONCURRENCY=2 DATABASE_URL=<url> STRIPE_WEBHOOK_SECRET=<whsec> "
            f"NAT_APP_SYNC_KEY=<key> NAT_PLANS_FILE=<plans.toml> RATE_LIMIT=1000000/minute "
            f'GUNICORN_CMD_ARGS="--bind 127.0.0.1:<port>" {shlex.join(argv)}'
        )
        return server

    def wait_server(self, server: Server) -> None:
        wait_ready(server.port, server.ready_path, server.proc)
        deadline = time.monotonic() + 15
        while len(server.workers()) < self.opts.workers and time.monotonic() < deadline:
            time.sleep(0.1)

    # -- request pools

    def _pool_size(self, target: str, kind: str, duration: float) -> int:
        rate = self.rate.get((target, kind), INITIAL_RATE[kind])
        return int(rate * duration * POOL_MARGIN) + 200

    def _build(self, kind: str, count: int, port: int) -> list[bytes]:
        host = f"127.0.0.1:{port}"
        if kind == "webhook":
            assert self.stream is not None
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
    ) -> RoundResult | None:
        duration = duration or self.opts.duration
        retries = 0
        while True:
            pool = self._pool_size(server.name, kind, duration)
            path = self.out / f"requests-{server.name}-{kind}.bin"
            # Built (and, for webhooks, signed) right before the round starts.
            workload.write_requests(path, self._build(kind, pool, server.port))
            pids = server.pids()
            pg = database_url.startswith("postgresql")
            db_pids = pg_backend_pids(database_url) if pg and server.name == "service" else []
            spy: subprocess.Popen[bytes] | None = None
            if profile_to is not None:
                spy = self._start_profiler(server, duration, profile_to)
            cpu_before = procstats.group_cpu(pids)
            db_before = procstats.group_cpu(db_pids)
            busy_before = _cpu_busy()
            window_started = time.perf_counter()
            try:
                result = self.loadgen.run(server.port, duration, path)
            finally:
                if spy is not None:
                    try:
                        spy.wait(duration + 60)
                    finally:
                        self.procs.stop(spy)
            busy_after = _cpu_busy()
            window = time.perf_counter() - window_started
            cpu_after = procstats.group_cpu(pids)
            db_after = procstats.group_cpu(db_pids)
            if not self.opts.keep_files:
                path.unlink(missing_ok=True)
            self.commands[f"loadgen-{kind}"] = result.command
            if result.exhausted:
                if retries >= 3:
                    raise BenchError(f"{server.name} {kind}: request pool used up 4 times")
                retries += 1
                self.rate[(server.name, kind)] = (
                    max(self.rate.get((server.name, kind), 0), INITIAL_RATE[kind]) * 2
                )
                log(f"    pool of {pool} used up; again with a larger one")
                continue
            break
        if set(procstats.children(server.master)) != set(pids[1:]):
            phase.checks.setdefault("worker_restarts", []).append(f"{server.name} {kind} r{index}")
        if kind == "spend" and server.name == "service":
            self.spends_acknowledged += result.ok
        requests = max(result.requests, 1)
        rps = result.ok / result.duration_s if result.duration_s else 0.0
        # Size later pools for the fastest rate seen (rounds on a shared machine vary).
        self.rate[(server.name, kind)] = max(rps, self.rate.get((server.name, kind), 0.0))
        busy = (busy_after[0] - busy_before[0]) / max(busy_after[1] - busy_before[1], 1)
        busy_s = (busy_after[0] - busy_before[0]) / procstats.CLOCK_TICKS
        server_cpu = procstats.cpu_delta(cpu_before, cpu_after)
        db_cpu = procstats.cpu_delta(db_before, db_after)
        # CPU of everything else on the machine during the round (other jobs, the kernel's
        # softirq work not charged to a process, PostgreSQL's background processes).
        # (Over the whole window: the load generator reads its file before its clock starts.)
        foreign_s = max(0.0, busy_s - server_cpu - db_cpu - result.loadgen_cpu_s)
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
            server_cpu_ms_per_req=server_cpu * 1000 / requests,
            server_cpu_pct=100 * server_cpu / result.duration_s,
            db_cpu_ms_per_req=db_cpu * 1000 / requests if db_pids else None,
            loadgen_cpu_pct=100 * result.loadgen_cpu_s / result.duration_s,
            machine_busy_pct=100 * busy,
            foreign_cpu_pct=100 * foreign_s / max(window, result.duration_s),
            socket_errors=result.socket_errors,
            pool=pool,
            retries=retries,
        )
        label = f"r{index}" if record else "warm"
        log(
            f"    {label} {server.name:8} {kind:7} {rps:8.1f} req/s  p50 {row.p50_ms:6.2f} ms  "
            f"p99 {row.p99_ms:6.2f} ms  non-2xx {row.non_2xx}  cpu {row.server_cpu_ms_per_req:.2f}"
            f" ms/req  loadgen {row.loadgen_cpu_pct:.0f}% of a core  machine "
            f"{row.machine_busy_pct:.0f}% busy, others {row.foreign_cpu_pct:.0f}% of a core"
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

    # -- phases

    def warm_up(self, phase: PhaseResult, servers: Sequence[Server], database_url: str) -> None:
        """Warm every endpoint up (not measured).

        A full run does it with a short round through the load generator, which also sizes
        the request pools; a quick one sends a few requests of each kind.
        """
        for server in servers:
            for kind in KINDS if server.name == "service" else ("webhook",):
                if self.opts.quick:
                    requests = self._build(kind, 16, server.port)
                    statuses = self.send_all(server.port, requests, f"warm-up {kind}")
                    if kind == "spend" and server.name == "service":
                        self.spends_acknowledged += sum(statuses.values())
                    continue
                self.run_round(
                    phase, server, kind, 0, database_url, duration=self.opts.warmup_s, record=False
                )

    def run_phase(self, backend: str, state: str, database_url: str) -> PhaseResult:
        phase = PhaseResult(backend, state)
        self.phases.append(phase)
        tag = f"{backend}-{state}"
        log(f"== {tag}")
        servers: list[Server] = []
        try:
            # Both boot at once; the rounds then alternate between them.
            service = self.start_server("service", database_url, tag)
            servers.append(service)
            baseline = self.start_server("baseline", database_url, tag)
            servers.append(baseline)
            for server in servers:
                self.wait_server(server)
                phase.setup[f"{server.name}_port"] = server.port
            # Others may change the service while a run goes on: note what each phase ran.
            phase.setup["code"] = _git_state()
            log(
                f"   service :{service.port} and baseline :{baseline.port} ready "
                f"({phase.setup['code']})"
            )
            if state == "empty":
                self._sync_and_subscribe(service, phase)
                log(f"   {len(self.tenants)} tenants synced, their subscriptions created")
            self.spends_acknowledged = 0
            spent_before = int(
                db_scalar(database_url, "SELECT COALESCE(SUM(count), 0) FROM scan_spends")
            )
            events_before = int(db_scalar(database_url, "SELECT COUNT(*) FROM stripe_events"))
            self.warm_up(phase, (service, baseline), database_url)
            log("   warmed up")
            for r in range(1, self.opts.rounds + 1):
                order = (baseline, service) if r % 2 else (service, baseline)
                for server in order:
                    self.run_round(phase, server, "webhook", r, database_url)
                self.run_round(phase, service, "usage", r, database_url)
                self.run_round(phase, service, "spend", r, database_url)
            if self.opts.profile:
                self._profile_phase(phase, service, baseline, database_url)
            for server in (service, baseline):
                phase.rss_mb[server.name] = [procstats.rss_mb(p) for p in server.workers()]
            self._check_phase(phase, service, database_url, spent_before, events_before)
        finally:
            self.procs.stop_many([server.proc for server in servers])
        return phase

    def _profile_phase(
        self, phase: PhaseResult, service: Server, baseline: Server, database_url: str
    ) -> None:
        folder = self.out / "profiles"
        folder.mkdir(exist_ok=True)
        for server, kind in (
            (baseline, "webhook"),
            (service, "webhook"),
            (service, "usage"),
            (service, "spend"),
        ):
            path = folder / f"{phase.backend}-{phase.state}-{server.name}-{kind}.txt"
            log(f"    profiling {server.name} {kind} -> {path.relative_to(ROOT)}")
            row = self.run_round(phase, server, kind, 0, database_url, profile_to=path)
            if path.exists() and row is not None:
                self.profiles[f"{phase.name} {server.name} {kind}"] = (path, row.requests)

    def _sync_and_subscribe(self, service: Server, phase: PhaseResult) -> None:
        started = time.perf_counter()
        status, body = http_call(
            service.port,
            "POST",
            "/api/v1/tenants/sync",
            workload.sync_body(self.tenants),
            {"Content-Type": "application/json", "X-Sync-Key": SYNC_KEY},
            timeout=120,
        )
        if status != 200:
            raise BenchError(f"tenant sync answered {status}: {body[:500]!r}")
        phase.setup["sync"] = json.loads(body)
        phase.setup["sync_s"] = round(time.perf_counter() - started, 2)
        assert self.stream is not None
        created = self.stream.creations(int(time.time()) - 60)
        requests = workload.signed_webhooks(created, WEBHOOK_SECRET, f"127.0.0.1:{service.port}")
        self.send_all(service.port, requests, "customer.subscription.created for every tenant")

    def _check_phase(
        self,
        phase: PhaseResult,
        service: Server,
        database_url: str,
        spent_before: int,
        events_before: int,
    ) -> None:
        """No overshoot, every acknowledged spend and event recorded, nothing failed."""
        overshoot = []
        for tenant in self.tenants:
            status, body = http_call(
                service.port, "GET", workload.USAGE_PATH, headers={"X-API-Key": tenant.api_key}
            )
            if status != 200:
                raise BenchError(f"usage check for {tenant.tenant_id} answered {status}")
            usage = json.loads(body)
            if usage["scans_used"] > usage["scans_quota"] or usage["plan"] != workload.BENCH_PLAN:
                overshoot.append(tenant.tenant_id)
        spent = int(db_scalar(database_url, "SELECT COALESCE(SUM(count), 0) FROM scan_spends"))
        events = int(db_scalar(database_url, "SELECT COUNT(*) FROM stripe_events"))
        assert self.stream is not None
        outcomes = dict(
            db_rows(
                database_url,
                "SELECT outcome, COUNT(*) FROM stripe_events "  # noqa: S608 - our own id prefix
                f"WHERE id LIKE 'evt_{self.stream.run_id}%' GROUP BY outcome",
            )
        )
        webhook_ok = sum(r.ok for r in phase.of("service", "webhook"))
        phase.checks.update(
            {
                "tenants_over_quota_or_wrong_plan": overshoot,
                "scans_acknowledged": self.spends_acknowledged,
                "scans_recorded": spent - spent_before,
                "webhooks_acknowledged_in_rounds": webhook_ok,
                "events_logged_during_phase": events - events_before,
                "bench_event_outcomes": {str(k): int(v) for k, v in outcomes.items()},
            }
        )

    def _prepare_database(self, backend: str) -> str:
        if backend == "sqlite":
            folder = self.out / "sqlite"
            folder.mkdir(exist_ok=True)
            return f"sqlite:///{folder / 'nat_bench.db'}"
        create_pg_database(self.opts.postgres_url)
        return str(
            make_url(self.opts.postgres_url)
            .set(drivername="postgresql+psycopg")
            .render_as_string(hide_password=False)
        )

    def run_backend(self, backend: str) -> None:
        database_url = self._prepare_database(backend)
        try:
            env = self.env(8080, database_url, self.out)
            self.run_cli(["db", "upgrade"], env, self.out / f"{backend}-upgrade.log")
            self.commands["upgrade"] = "env DATABASE_URL=<url> webhook-service db upgrade"
            self.run_phase(backend, "empty", database_url)
            extra = max(0, self.opts.prefill_tenants - self.opts.tenants)
            log(
                f"== {backend}: pre-filling {self.opts.prefill_events:,} events and "
                f"{extra:,} more tenants",
            )
            stats: PrefillStats = prefill(
                database_url, events=self.opts.prefill_events, tenants_count=extra
            )
            log(f"   loaded in {stats.seconds:.1f}s")
            phase = self.run_phase(backend, "prefilled", database_url)
            phase.setup["prefill"] = asdict(stats)
            phase.setup["tenants_total"] = int(
                db_scalar(database_url, "SELECT COUNT(*) FROM tenants")
            )
            phase.setup["events_total"] = int(
                db_scalar(database_url, "SELECT COUNT(*) FROM stripe_events")
            )
        finally:
            if backend == "postgresql":
                drop_pg_database(self.opts.postgres_url)
            elif not self.opts.keep_files:
                shutil.rmtree(self.out / "sqlite", ignore_errors=True)

    def measure_ceiling(self) -> None:
        """The load generator against a do-nothing server: how fast can it drive?"""
        port = free_port()
        proc = self.procs.start(
            [sys.executable, "-m", "bench.null_server", "--port", str(port)],
            dict(os.environ),
            self.out / "null-server.log",
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
            duration = 1.0 if self.opts.quick else 5.0
            count = int(6_000 * duration)
            path = self.out / "requests-null.bin"
            assert self.stream is not None
            bodies = self.stream.batch(count, int(time.time()))
            workload.write_requests(
                path, workload.signed_webhooks(bodies, WEBHOOK_SECRET, f"127.0.0.1:{port}")
            )
            cpu_before = procstats.cpu_seconds(proc.pid)
            result = self.loadgen.run(port, duration, path)
            server_cpu = procstats.cpu_seconds(proc.pid) - cpu_before
            path.unlink(missing_ok=True)
            self.ceiling = {
                "rps": result.ok / result.duration_s,
                "exhausted": result.exhausted,
                "loadgen_cpu_ms_per_req": 1000 * result.loadgen_cpu_s / max(result.requests, 1),
                "loadgen_cpu_pct": 100 * result.loadgen_cpu_s / result.duration_s,
                "null_server_cpu_pct": 100 * server_cpu / result.duration_s,
                "p99_ms": result.p99_ms,
            }
            log(
                f"== load generator ceiling ({result.tool}, null server): "
                f"{self.ceiling['rps']:.0f} req/s, {self.ceiling['loadgen_cpu_ms_per_req']:.3f}"
                f" ms CPU/req",
            )
        finally:
            self.procs.stop(proc)

    def run(self) -> int:
        opts = self.opts
        log(f"== output in {self.out.relative_to(ROOT)}; load generator: {self.loadgen.kind}")
        started = time.perf_counter()
        self.stream = workload.EventStream(self.tenants, self.now)
        log(
            f"== {opts.tenants} subscriptions' templates rendered in "
            f"{time.perf_counter() - started:.1f}s (bytes: {self.stream.template_bytes})",
        )
        machine = machine_description(opts, self.wrk if self.loadgen.kind == "wrk" else None)
        self.measure_ceiling()
        for backend in opts.backends:
            self.run_backend(backend)
        elapsed = time.perf_counter() - started
        report = render_report(self, machine, elapsed)
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        opts.output.write_text(report, encoding="utf-8")
        (self.out / "results.json").write_text(
            json.dumps(
                {
                    "machine": machine,
                    "options": {k: str(v) for k, v in asdict(opts).items()},
                    "ceiling": self.ceiling,
                    "phases": [
                        {
                            "name": p.name,
                            "rounds": [asdict(r) for r in p.rounds],
                            "rss_mb": p.rss_mb,
                            "checks": p.checks,
                            "setup": p.setup,
                        }
                        for p in self.phases
                    ],
                },
                indent=2,
            ),
            encoding="utf-8",
        )
        print(report)
        print(f"== wrote {opts.output} and {self.out / 'results.json'} in {elapsed:.0f}s")
        return 1 if invalid_reasons(self) else 0


# -- report --------------------------------------------------------------------------


def invalid_reasons(bench: Bench) -> list[str]:
    reasons = []
    for phase in bench.phases:
        if phase.non_2xx():
            reasons.append(f"{phase.name}: {phase.non_2xx()} non-2xx answers")
        if phase.checks.get("tenants_over_quota_or_wrong_plan"):
            reasons.append(f"{phase.name}: tenants over quota or on the wrong plan")
        if phase.checks.get("worker_restarts"):
            reasons.append(f"{phase.name}: workers restarted: {phase.checks['worker_restarts']}")
        failed = phase.checks.get("bench_event_outcomes", {}).get("failed", 0)
        if failed:
            reasons.append(f"{phase.name}: {failed} events failed")
        if phase.checks.get("scans_recorded", 0) < phase.checks.get("scans_acknowledged", 0):
            reasons.append(f"{phase.name}: fewer scans recorded than acknowledged")
    return reasons


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def _pct_change(new: float | None, old: float | None) -> float | None:
    if new is None or not old:
        return None
    return 100 * (new - old) / old


def render_report(bench: Bench, machine: dict[str, str], elapsed: float) -> str:
    opts = bench.opts
    lines: list[str] = []
    add = lines.append
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    add("# Benchmark results" + (" (quick smoke run — not a measurement)" if opts.quick else ""))
    add("")
    add(
        f"Measured {when} on the current state of the service, in {elapsed:.0f} s. "
        "Regenerate with `make bench` (this file is overwritten; raw rounds are in "
        f"`{bench.out.relative_to(ROOT)}/results.json`, ignored by git)."
    )
    add("")
    reasons = invalid_reasons(bench)
    if reasons:
        add("**INVALID RUN:** " + "; ".join(reasons))
        add("")
    add("## Machine")
    add("")
    for key, value in machine.items():
        add(f"- **{key}**: {value}")
    add("")
    add("## Set-up")
    add("")
    add(
        f"- {opts.rounds} alternating round(s) of {opts.duration:g} s per figure and phase, "
        f"{opts.connections} concurrent connections, medians reported; "
        f"WEB_CONCURRENCY={opts.workers} (threaded workers, `webhook_service.web.gunicorn_config`) "
        "for the service and the baseline."
    )
    add(
        f"- {opts.tenants} tenants synced with `POST /api/v1/tenants/sync`, each with one API "
        f"key, a Stripe customer and one monthly subscription on plan `{workload.BENCH_PLAN}` "
        f"({workload.BENCH_SCANS_PER_MONTH:,} scans a month, so spending never hits a 402), "
        "created by a `customer.subscription.created` webhook before the rounds."
    )
    mix = ", ".join(f"{int(w * 100)} % {k}" for k, w in workload.EVENT_MIX)
    sizes = bench.stream.template_bytes if bench.stream else {}
    add(
        f"- Webhook rounds: unique events ({mix}) over the {opts.tenants} subscriptions, "
        "random payload shape (legacy `2024-06-20` / `2025-03-31.basil`), rendered as Stripe "
        "does (`tests/stripe_events.render`), signed right before each round. Updates flip the "
        "quantity 1↔2 (about half of them change the quota: a history row); invoices are "
        "renewal invoices of the current period. Average body sizes (bytes): "
        + ", ".join(f"{k} {v}" for k, v in sizes.items())
        + '. That is more than the issue\'s "about 3 KB": it is what Stripe renders for a '
        "subscription with its item, price and plan (the fixtures under `fixtures/` are "
        "5.5-8 kB too). The baseline's `construct_event` cost grows with the size (an object "
        "per JSON object), the service's much less, so smaller events would lower every "
        "ratio: `python -m bench.event_sizes` measures both per size."
    )
    add(
        "- Usage rounds: `GET /api/v1/usage` with a random tenant's key; spend rounds: "
        '`POST /api/v1/usage/scans` `{"count": 1}` with a unique `Idempotency-Key`. '
        "`RATE_LIMIT=1000000/minute` (memory storage): the limiter counts, never refuses."
    )
    add(
        "- Ratios (x) divide by the baseline's webhook figure of the same phase: "
        "`bench/baseline_app.py`, Stripe's Flask sample (`request.data`, "
        '`stripe.Webhook.construct_event`, 200 `{"received": true}`, nothing stored).'
    )
    add(
        "- CPU per request: utime+stime of gunicorn master and workers from /proc, before and "
        "after each round, divided by the answered requests. DB CPU: the same for the "
        "PostgreSQL backends serving the service (SQLite runs inside the workers). RSS: VmRSS "
        "of each worker at the end of the phase. *Machine busy* is all cores from /proc/stat; "
        "*others* is the CPU the machine spent outside the servers, their database backends "
        "and the load generator during the round (other jobs on a shared machine, PostgreSQL's "
        "background processes), in % of one core: high values mean a noisy round."
    )
    prefill_phase = next((p for p in bench.phases if p.state == "prefilled"), None)
    if prefill_phase and "prefill" in prefill_phase.setup:
        stats = prefill_phase.setup["prefill"]
        add(
            f"- Pre-filled state: {stats['events']:,} events bulk-loaded into the log and "
            f"{stats['tenants']:,} more tenants (with a key each, {stats['subscriptions']:,} "
            f"subscriptions, one history row each), {prefill_phase.setup.get('tenants_total', 0):,}"
            " tenants in all; rows in the service's own formats, written with SQL "
            "(SQLite, through the service's tables) or COPY (PostgreSQL, then VACUUM ANALYZE "
            "as autovacuum would). Payloads are compact envelopes "
            f"(~{stats['payload_bytes_avg']} bytes, not Stripe's 5-8 kB; see "
            "`bench/prefill.py`). The load still targets the same tenants."
        )
    add("")
    add("## Results")
    add("")
    codes = {p.name: p.setup.get("code", "?") for p in bench.phases}
    if len(set(codes.values())) > 1:
        add(
            "**The service's code changed during the run**; each phase measured: "
            + "; ".join(f"{name}: {code}" for name, code in codes.items())
            + "."
        )
        add("")
    others = [r.foreign_cpu_pct for p in bench.phases for r in p.rounds]
    if others:
        add(
            f"Other work on the machine during the rounds (*others* column): median "
            f"{statistics.median(others):.0f} % of a core, max {max(others):.0f} % "
            f"(of {os.cpu_count()} cores). Above ~20 % the machine was shared with other jobs: "
            "absolute rates are then low and noisy, the ratios of alternating rounds and the "
            "CPU per request hold up better."
        )
        add("")
    add(
        "| phase | figure | req/s | x base | p50 ms | p99 ms | p99 x base | non-2xx | "
        "CPU ms/req | CPU x base | DB CPU ms/req | RSS MB/worker | loadgen % core | "
        "machine busy % | others % core |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for phase in bench.phases:
        base_rps = phase.median("baseline", "webhook", "rps")
        base_p99 = phase.median("baseline", "webhook", "p99_ms")
        base_cpu = phase.median("baseline", "webhook", "server_cpu_ms_per_req")
        for target, kind in (
            ("baseline", "webhook"),
            ("service", "webhook"),
            ("service", "usage"),
            ("service", "spend"),
        ):
            rows = phase.of(target, kind)
            if not rows:
                continue
            rps = phase.median(target, kind, "rps")
            p99 = phase.median(target, kind, "p99_ms")
            cpu = phase.median(target, kind, "server_cpu_ms_per_req")
            rss = phase.rss_mb.get(target, [])
            label = "baseline webhook" if target == "baseline" else KIND_LABEL[kind]
            add(
                f"| {phase.name} | {label} | {_fmt(rps, '.0f')} | "
                f"{_ratio(rps, base_rps) if target == 'service' else '1.00x'} | "
                f"{_fmt(phase.median(target, kind, 'p50_ms'), '.2f')} | {_fmt(p99, '.2f')} | "
                f"{_ratio(p99, base_p99)} | {sum(r.non_2xx for r in rows)} | "
                f"{_fmt(cpu, '.2f')} | {_ratio(cpu, base_cpu)} | "
                f"{_fmt(phase.median(target, kind, 'db_cpu_ms_per_req'), '.2f')} | "
                f"{'/'.join(f'{v:.0f}' for v in rss) if kind == 'webhook' else '(above)'} | "
                f"{_fmt(phase.median(target, kind, 'loadgen_cpu_pct'), '.0f')} | "
                f"{_fmt(phase.median(target, kind, 'machine_busy_pct'), '.0f')} | "
                f"{_fmt(phase.median(target, kind, 'foreign_cpu_pct'), '.0f')} |"
            )
    add("")
    add(
        "RSS is per worker at the end of the phase (service row: the service's workers, which "
        "also served the usage and spend rounds)."
    )
    add("")
    add(_targets_section(bench))
    add(_prefill_section(bench))
    add("## Checks")
    add("")
    for phase in bench.phases:
        checks = phase.checks
        add(
            f"- **{phase.name}**: tenants over quota: "
            f"{len(checks.get('tenants_over_quota_or_wrong_plan', []))}; scans acknowledged "
            f"{checks.get('scans_acknowledged', 0):,}, recorded "
            f"{checks.get('scans_recorded', 0):,} (recorded may exceed acknowledged by the "
            f"requests in flight when a round's clock ran out); webhooks acknowledged in rounds "
            f"{checks.get('webhooks_acknowledged_in_rounds', 0):,}, events logged in the phase "
            f"{checks.get('events_logged_during_phase', 0):,}; outcomes of the benchmark's "
            f"events so far {checks.get('bench_event_outcomes', {})}; worker restarts: "
            f"{checks.get('worker_restarts', 'none')}."
        )
    add("")
    add("## Load generator")
    add("")
    ceiling = bench.ceiling
    top = max((r.rps for p in bench.phases for r in p.rounds), default=0.0)
    add(
        f"- Tool: **{bench.loadgen.kind}**"
        + (
            ""
            if bench.loadgen.kind == "wrk"
            else (
                " (chosen with `--loadgen python`)"
                if bench.wrk
                else " (wrk is not installed; `apt-get install -y wrk` to use it)"
            )
        )
        + "."
    )
    if ceiling:
        add(
            f"- Ceiling against a do-nothing server (`bench/null_server.py`, single-threaded, "
            f"so a lower bound): {ceiling['rps']:.0f} req/s with signed webhook requests, "
            f"{ceiling['loadgen_cpu_ms_per_req']:.3f} ms of load-generator CPU per request "
            f"(null server at {ceiling['null_server_cpu_pct']:.0f} % of a core). The fastest "
            f"round above ran at {top:.0f} req/s ({100 * top / max(ceiling['rps'], 1):.0f} % "
            "of that ceiling); the *loadgen % core* column shows its share of the machine "
            "during each round."
        )
    add("")
    add("## Commands")
    add("")
    add("```sh")
    add("make bench   # = .venv/bin/python bench/run.py")
    add(f"# this run: {shlex.join([sys.executable, 'bench/run.py', *sys.argv[1:]])}")
    for key in ("upgrade", "service", "baseline", "loadgen-webhook", "loadgen-usage", "profiler"):
        if key in bench.commands:
            add(f"# {key}")
            add(bench.commands[key])
    add("```")
    if bench.profiles:
        add("")
        add("## Profiles")
        add("")
        add(
            "py-spy (`--idle`, so wall time: CPU, waiting for the database or a lock, and "
            "waiting for a CPU on a busy machine) of one extra round per figure, summarised by "
            "`python -m bench.profile_summary FILE --requests N`; shares of in-request samples "
            "and worker milliseconds per request."
        )
        for name, (path, requests) in bench.profiles.items():
            add("")
            add(f"### {name} (`{path.relative_to(ROOT)}`, {requests} requests)")
            add("")
            add("```")
            summary = profile_summary.summarise_file(path, requests=requests, top=12)
            add(summary.split("\ninclusive")[0].rstrip())
            add("```")
    analysis = BENCH / "ANALYSIS.md"
    if not bench.opts.quick and analysis.exists():
        add("")
        add(analysis.read_text(encoding="utf-8").rstrip())
    add("")
    return "\n".join(lines)


def _targets_section(bench: Bench) -> str:
    lines = ["## Targets", "", "| target | phase | measured | verdict |", "|---|---|---|---|"]

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("met" if ok else "**missed**")

    for phase in bench.phases:
        base = phase.median("baseline", "webhook", "rps")
        hook = phase.median("service", "webhook", "rps")
        need = TARGETS[f"webhook_{phase.backend}_ratio"]
        ratio = hook / base if hook is not None and base else None
        lines.append(
            f"| webhook ≥ {need:.1f}x baseline events/s | {phase.name} | {_fmt(ratio, '.2f')}x | "
            f"{verdict(None if ratio is None else ratio >= need)} |"
        )
        for kind, key in (("usage", "usage_ratio"), ("spend", "spend_ratio")):
            value = phase.median("service", kind, "rps")
            r = value / base if value is not None and base else None
            lines.append(
                f"| {KIND_LABEL[kind]} ≥ {TARGETS[key]:.1f}x baseline events/s | {phase.name} | "
                f"{_fmt(r, '.2f')}x | {verdict(None if r is None else r >= TARGETS[key])} |"
            )
        for kind in KINDS:
            p99 = phase.median("service", kind, "p99_ms")
            lines.append(
                f"| p99 ≤ {TARGETS['p99_ms']:.0f} ms, {KIND_LABEL[kind]} | {phase.name} | "
                f"{_fmt(p99, '.2f')} ms | "
                f"{verdict(None if p99 is None else p99 <= TARGETS['p99_ms'])} |"
            )
        rss = max(phase.rss_mb.get("service", [0.0]) or [0.0])
        lines.append(
            f"| ≤ {TARGETS['rss_mb']:.0f} MB RSS per worker | {phase.name} | {rss:.0f} MB | "
            f"{verdict(rss <= TARGETS['rss_mb'])} |"
        )
    lines.append("")
    return "\n".join(lines)


def _prefill_section(bench: Bench) -> str:
    lines = [
        "## Cost of a big state (1M-event log, 100k tenants)",
        "",
        "Change from the empty phase to the pre-filled one, same backend (target: < "
        f"{TARGETS['prefill_cost_pct']:.0f} % worse on every figure). Each figure is taken "
        "relative to the baseline of its own phase first (req/s, p99 and CPU/req as ratios "
        "to the baseline's), so a change in the machine's other load between the phases "
        "cancels out; the raw change of req/s is shown too. Throughput down and p99/CPU/RSS "
        "up count as worse.",
        "",
        "| backend | figure | req/s (raw) | req/s x base | p99 x base | CPU/req x base | "
        "RSS/worker | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by_name = {p.name: p for p in bench.phases}

    def relative(phase: PhaseResult, kind: str, attr: str) -> float | None:
        value = phase.median("service", kind, attr)
        base = phase.median("baseline", "webhook", attr)
        return value / base if value is not None and base else None

    for backend in bench.opts.backends:
        empty, full = by_name.get(f"{backend}/empty"), by_name.get(f"{backend}/prefilled")
        if not empty or not full:
            continue
        for kind in KINDS:
            raw = _pct_change(
                full.median("service", kind, "rps"), empty.median("service", kind, "rps")
            )
            worst = 0.0
            cells = []
            for attr, sign in (("rps", -1), ("p99_ms", 1), ("server_cpu_ms_per_req", 1)):
                change = _pct_change(relative(full, kind, attr), relative(empty, kind, attr))
                cells.append(change)
                if change is not None:
                    worst = max(worst, sign * change)
            rss_change = None
            if kind == "webhook":
                rss_change = _pct_change(
                    max(full.rss_mb.get("service", [0.0]) or [0.0]),
                    max(empty.rss_mb.get("service", [0.0]) or [0.0]),
                )
                if rss_change is not None:
                    worst = max(worst, rss_change)

            def pct(value: float | None) -> str:
                return "-" if value is None else f"{value:+.1f} %"

            ok = worst < TARGETS["prefill_cost_pct"]
            lines.append(
                f"| {backend} | {KIND_LABEL[kind]} | {pct(raw)} | "
                + " | ".join(pct(c) for c in cells)
                + f" | {pct(rss_change) if kind == 'webhook' else '(above)'} | "
                f"{'met' if ok else '**missed**'} |"
            )
    lines.append("")
    return "\n".join(lines)


# -- entry point -------------------------------------------------------------------------


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    if not Path("/proc/stat").exists():
        print("the benchmark reads /proc: it runs on Linux only", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    bench = Bench(opts)
    try:
        return bench.run()
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 2
    finally:
        bench.procs.stop_all()
