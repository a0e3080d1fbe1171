"""A backend's phases: its database set up, the empty state measured, the big state loaded
and measured again. Each phase starts the service, the baseline and the floor afresh.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict

from bench import checks, databases, procstats, workload
from bench.common import (
    BASELINE,
    FLOOR,
    SERVICE,
    SYNC_KEY,
    VENV_BIN,
    WEBHOOK_SECRET,
    BenchError,
    log,
)
from bench.machine import git_state
from bench.options import Options
from bench.prefill import PrefillStats, prefill
from bench.processes import Launcher, Processes, Server, http_call
from bench.results import PhaseResult, RunResult
from bench.rounds import Rounds


class Phases:
    """Runs every phase of every backend into ``result.phases``."""

    def __init__(
        self,
        opts: Options,
        procs: Processes,
        launcher: Launcher,
        rounds: Rounds,
        result: RunResult,
    ) -> None:
        self.opts = opts
        self.procs = procs
        self.launcher = launcher
        self.rounds = rounds
        self.result = result
        self.out = result.out

    def run_backend(self, backend: str) -> None:
        opts = self.opts
        database_url = databases.service_url(backend, self.out / "sqlite", opts.postgres_url)
        floor_url = databases.floor_url(database_url)
        commands = self.result.commands
        try:
            upgrade = [str(VENV_BIN / "webhook-service"), "db", "upgrade"]
            self.launcher.run(upgrade, database_url, self.out / f"{backend}-upgrade.log")
            commands["upgrade"] = "env DATABASE_URL=<url> webhook-service db upgrade"
            schema = [sys.executable, "-m", "bench.floor_app"]
            self.launcher.run(schema, floor_url, self.out / f"{backend}-floor-schema.log")
            commands["floor-schema"] = "env DATABASE_URL=<url> python -m bench.floor_app"
            self.run_phase(backend, "empty", database_url, floor_url)
            extra = max(0, opts.prefill_tenants - opts.tenants)
            log(
                f"== {backend}: pre-filling {opts.prefill_events:,} events and "
                f"{extra:,} more tenants",
            )
            stats: PrefillStats = prefill(
                database_url, events=opts.prefill_events, tenants_count=extra
            )
            log(f"   loaded in {stats.seconds:.1f}s")
            floor_s = databases.fill_floor(floor_url, database_url)
            floor_events = int(databases.db_scalar(floor_url, "SELECT COUNT(*) FROM floor_events"))
            log(f"   the floor's tables filled from the service's in {floor_s:.1f}s")
            phase = self.run_phase(backend, "prefilled", database_url, floor_url)
            phase.setup["prefill"] = asdict(stats)
            phase.setup["floor_fill_s"] = round(floor_s, 1)
            phase.setup["floor_events_total"] = floor_events
            phase.setup["tenants_total"] = int(
                databases.db_scalar(database_url, "SELECT COUNT(*) FROM tenants")
            )
            phase.setup["events_total"] = int(
                databases.db_scalar(database_url, "SELECT COUNT(*) FROM stripe_events")
            )
        finally:
            if backend == "postgresql":
                databases.drop_pg_database(opts.postgres_url)
            elif not opts.keep_files:
                shutil.rmtree(self.out / "sqlite", ignore_errors=True)

    def run_phase(self, backend: str, state: str, database_url: str, floor_url: str) -> PhaseResult:
        phase = PhaseResult(backend, state)
        self.result.phases.append(phase)
        tag = f"{backend}-{state}"
        log(f"== {tag}")
        servers: list[Server] = []
        try:
            # All boot at once; the rounds then alternate between them.
            for name in (SERVICE, BASELINE, FLOOR):
                url = floor_url if name == FLOOR else database_url
                servers.append(self.launcher.start(name, url, tag))
            service, baseline, floor = servers
            for server in servers:
                self.launcher.wait(server)
                phase.setup[f"{server.name}_port"] = server.port
            # Others may change the service while a run goes on: note what each phase ran.
            phase.setup["code"] = git_state()
            log(
                f"   service :{service.port}, baseline :{baseline.port} and floor :{floor.port} "
                f"ready ({phase.setup['code']})"
            )
            if state == "empty":
                self._sync_and_subscribe(service, floor, phase)
                log(f"   {len(self.rounds.tenants)} tenants synced, their subscriptions created")
            before = checks.counts(database_url, floor_url)
            self.rounds.warm_up(phase, (service, baseline, floor), database_url)
            log("   warmed up")
            for r in range(1, self.opts.rounds + 1):
                # The order flips every round; the floor runs between the baseline and service.
                order = (baseline, floor, service) if r % 2 else (service, floor, baseline)
                for server in order:
                    self.rounds.run_round(phase, server, "webhook", r, database_url)
                self.rounds.run_round(phase, service, "usage", r, database_url)
                self.rounds.run_round(phase, service, "spend", r, database_url)
            if self.opts.profile:
                profiles = self.rounds.profile(phase, (baseline, floor, service), database_url)
                self.result.profiles.update(profiles)
            for server in servers:
                phase.rss_mb[server.name] = [procstats.rss_mb(p) for p in server.workers()]
            checks.check_phase(
                phase,
                service.port,
                self.rounds.tenants,
                self.rounds.stream.run_id,
                database_url,
                floor_url,
                before,
            )
        finally:
            self.procs.stop_many([server.proc for server in servers])
        return phase

    def _sync_and_subscribe(self, service: Server, floor: Server, phase: PhaseResult) -> None:
        """Sync the tenants; create every subscription with a webhook (the floor's too)."""
        started = time.perf_counter()
        status, body = http_call(
            service.port,
            "POST",
            "/api/v1/tenants/sync",
            workload.sync_body(self.rounds.tenants),
            {"Content-Type": "application/json", "X-Sync-Key": SYNC_KEY},
            timeout=120,
        )
        if status != 200:
            raise BenchError(f"tenant sync answered {status}: {body[:500]!r}")
        phase.setup["sync"] = json.loads(body)
        phase.setup["sync_s"] = round(time.perf_counter() - started, 2)
        for server in (service, floor):
            created = self.rounds.stream.creations(int(time.time()) - 60)
            host = f"127.0.0.1:{server.port}"
            requests = workload.signed_webhooks(created, WEBHOOK_SECRET, host)
            what = f"customer.subscription.created for every tenant ({server.name})"
            self.rounds.send_all(server.port, requests, what)
