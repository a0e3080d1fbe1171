"""What a run measured: one row per round, grouped by phase (backend and state)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.options import Options


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
    total_cpu_ms_per_req: float  # the server's and its database backends'
    loadgen_cpu_pct: float
    machine_busy_pct: float
    foreign_cpu_pct: float
    db_backends_opened: int  # PostgreSQL connections of the server opened during the round
    db_backends_closed: int  # ... and closed (their CPU in the round is not counted)
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
    spends_acknowledged: int = 0  # the service's 2xx answers to spends, warm-up included

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


@dataclass
class RunResult:
    """Everything the report is written from."""

    opts: Options
    out: Path  # this run's folder under bench/out
    loadgen: str  # "wrk" | "python"
    wrk_installed: bool
    template_bytes: dict[str, int] = field(default_factory=dict)  # average body per event type
    phases: list[PhaseResult] = field(default_factory=list)
    commands: dict[str, str] = field(default_factory=dict)  # what -> command line
    ceiling: dict[str, Any] = field(default_factory=dict)  # the load generator's, null server
    profiles: dict[str, tuple[Path, int]] = field(default_factory=dict)  # name -> file, requests
