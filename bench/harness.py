"""`make bench`: the webhook service under load, against a baseline and a floor.

For each backend (SQLite, PostgreSQL) and each state (an empty log; then a log of
1,000,000 events and 100,000 tenants), the service is started as the Procfile does
(``webhook-service db upgrade``, then ``webhook-service serve``: gunicorn with
``-c python:webhook_service.web.gunicorn_config``, WEB_CONCURRENCY=2), a plan catalog and
500 tenants are synced, and every tenant's subscription is created by a webhook. Beside it,
under the same gunicorn settings: the baseline (``bench/baseline_app.py``, Stripe's Flask
sample, nothing stored) and the floor (``bench/floor_app.py``, the least a complete
receiver does, on the same backend). Rounds alternate: webhooks to the baseline, the floor
and the service (the order flips every round), service ``GET /api/v1/usage``, service
``POST /api/v1/usage/scans``; medians of the rounds are reported, each also as a ratio to
the baseline's and to the floor's.

The parts: ``options`` (command line), ``processes`` (servers), ``databases``, ``driver``
(the load generator), ``rounds`` (one measured round), ``phases`` (a backend's phases),
``checks``, ``report`` and ``report_sections`` (RESULTS.md), ``machine``. See
``bench/README.md`` for what is measured and how.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import workload
from bench.checks import invalid_reasons
from bench.common import BENCH, ROOT, BenchError, log
from bench.driver import LoadGenerator, measure_ceiling
from bench.machine import machine_description
from bench.options import Options, parse_args
from bench.phases import Phases
from bench.processes import Launcher, Processes
from bench.report import render_report, results_json
from bench.results import RunResult
from bench.rounds import Rounds


class Bench:
    """One run: its folder, its processes, the load generator, and what it measured."""

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
        self.result = RunResult(opts, self.out, kind, wrk_installed=bool(self.wrk))
        plans_file = self.out / "plans.toml"
        plans_file.write_text(workload.PLANS_TOML, encoding="utf-8")
        self.launcher = Launcher(
            self.procs, self.out, opts.workers, plans_file, self.result.commands
        )
        self.now = int(time.time())
        self.tenants = workload.bench_tenants(opts.tenants, self.now)

    def run(self) -> int:
        opts = self.opts
        log(f"== output in {self.out.relative_to(ROOT)}; load generator: {self.loadgen.kind}")
        started = time.perf_counter()
        stream = workload.EventStream(self.tenants, self.now)
        self.result.template_bytes = stream.template_bytes
        log(
            f"== {opts.tenants} subscriptions' templates rendered in "
            f"{time.perf_counter() - started:.1f}s (bytes: {stream.template_bytes})",
        )
        machine = machine_description(opts, self.wrk if self.loadgen.kind == "wrk" else None)
        self.result.ceiling = measure_ceiling(
            self.loadgen, self.procs, stream, self.out, opts.quick
        )
        rounds = Rounds(
            opts, self.out, self.loadgen, self.procs, stream, self.tenants, self.result.commands
        )
        phases = Phases(opts, self.procs, self.launcher, rounds, self.result)
        for backend in opts.backends:
            phases.run_backend(backend)
        elapsed = time.perf_counter() - started
        report = render_report(self.result, machine, elapsed)
        opts.output.parent.mkdir(parents=True, exist_ok=True)
        opts.output.write_text(report, encoding="utf-8")
        results = self.out / "results.json"
        results.write_text(results_json(self.result, machine), encoding="utf-8")
        print(report)
        print(f"== wrote {opts.output} and {results} in {elapsed:.0f}s")
        return 1 if invalid_reasons(self.result.phases) else 0


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
