"""The report: ``bench/RESULTS.md`` (or ``--output``) and the raw ``results.json`` of a run."""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
from dataclasses import asdict
from datetime import UTC, datetime

from bench import profile_summary
from bench.checks import invalid_reasons
from bench.common import BASELINE, BENCH, FLOOR, KIND_LABEL, ROOT, SERVICE
from bench.report_sections import fmt, prefill_section, ratio, setup_section, targets_section
from bench.results import PhaseResult, RunResult

# The rows of every phase, in this order: (server, kind).
ROWS: tuple[tuple[str, str], ...] = (
    (BASELINE, "webhook"),
    (FLOOR, "webhook"),
    (SERVICE, "webhook"),
)
ROWS += ((SERVICE, "usage"), (SERVICE, "spend"))


def _label(target: str, kind: str) -> str:
    return f"{target} webhook" if target != SERVICE else KIND_LABEL[kind]


def results_table(phase: PhaseResult) -> list[str]:
    """Rows of the main table for one phase; every ratio against the baseline's and the
    floor's webhook figure of the same phase."""
    lines = []

    def med(target: str, kind: str, attr: str) -> float | None:
        return phase.median(target, kind, attr)

    base = {a: med(BASELINE, "webhook", a) for a in ("rps", "p99_ms", "server_cpu_ms_per_req")}
    floor = {a: med(FLOOR, "webhook", a) for a in ("rps", "p99_ms", "server_cpu_ms_per_req")}
    for target, kind in ROWS:
        rows = phase.of(target, kind)
        if not rows:
            continue
        rps = med(target, kind, "rps")
        p99 = med(target, kind, "p99_ms")
        cpu = med(target, kind, "server_cpu_ms_per_req")
        rss = phase.rss_mb.get(target, [])
        lines.append(
            f"| {phase.name} | {_label(target, kind)} | {fmt(rps, '.0f')} | "
            f"{ratio(rps, base['rps'])} | {ratio(rps, floor['rps'])} | "
            f"{fmt(med(target, kind, 'p50_ms'), '.2f')} | {fmt(p99, '.2f')} | "
            f"{ratio(p99, base['p99_ms'])} | {ratio(p99, floor['p99_ms'])} | "
            f"{sum(r.non_2xx for r in rows)} | {fmt(cpu, '.2f')} | "
            f"{ratio(cpu, base['server_cpu_ms_per_req'])} | "
            f"{ratio(cpu, floor['server_cpu_ms_per_req'])} | "
            f"{fmt(med(target, kind, 'db_cpu_ms_per_req'), '.2f')} | "
            f"{'/'.join(f'{v:.0f}' for v in rss) if kind == 'webhook' else '(above)'} | "
            f"{fmt(med(target, kind, 'loadgen_cpu_pct'), '.0f')} | "
            f"{fmt(med(target, kind, 'machine_busy_pct'), '.0f')} | "
            f"{fmt(med(target, kind, 'foreign_cpu_pct'), '.0f')} |"
        )
    return lines


def cpu_table(phase: PhaseResult) -> list[str]:
    """CPU per request of every row of one phase: the server's, its database's, both."""
    lines = []
    base = phase.median(BASELINE, "webhook", "total_cpu_ms_per_req")
    floor = phase.median(FLOOR, "webhook", "total_cpu_ms_per_req")
    for target, kind in ROWS:
        rows = phase.of(target, kind)
        if not rows:
            continue
        total = phase.median(target, kind, "total_cpu_ms_per_req")
        lines.append(
            f"| {phase.name} | {_label(target, kind)} | "
            f"{fmt(phase.median(target, kind, 'server_cpu_ms_per_req'), '.3f')} | "
            f"{fmt(phase.median(target, kind, 'db_cpu_ms_per_req'), '.3f')} | "
            f"{fmt(total, '.3f')} | {ratio(total, base)} | {ratio(total, floor)} | "
            + " / ".join(f"{r.total_cpu_ms_per_req:.3f}" for r in rows)
            + " |"
        )
    return lines


def results_section(run: RunResult) -> list[str]:
    lines = ["## Results", ""]
    codes = {p.name: p.setup.get("code", "?") for p in run.phases}
    if len(set(codes.values())) > 1:
        lines += [
            "**The service's code changed during the run**; each phase measured: "
            + "; ".join(f"{name}: {code}" for name, code in codes.items())
            + ".",
            "",
        ]
    others = [r.foreign_cpu_pct for p in run.phases for r in p.rounds]
    if others:
        lines += [
            f"Other work on the machine during the rounds (*others* column): median "
            f"{statistics.median(others):.0f} % of a core, max {max(others):.0f} % "
            f"(of {os.cpu_count()} cores). Above ~20 % the machine was shared with other jobs: "
            "absolute rates are then low and noisy, the ratios of alternating rounds and the "
            "CPU per request hold up better.",
            "",
        ]
    lines += [
        "| phase | figure | req/s | x base | x floor | p50 ms | p99 ms | p99 x base | "
        "p99 x floor | non-2xx | CPU ms/req | CPU x base | CPU x floor | DB CPU ms/req | "
        "RSS MB/worker | loadgen % core | machine busy % | others % core |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in run.phases:
        lines += results_table(phase)
    lines += [
        "",
        "RSS is per worker at the end of the phase (service row: the service's workers, which "
        "also served the usage and spend rounds). Usage and spend rows are divided by the "
        "webhook figures of the baseline and the floor too.",
        "",
        "### CPU per request",
        "",
        "The figure that holds on a noisy machine: CPU of the server (gunicorn master and "
        "workers) and of its PostgreSQL backends per answered request, medians of the rounds "
        "(the last column: the total of each round, to show the spread).",
        "",
        "| phase | figure | server ms/req | DB ms/req | total ms/req | total x base | "
        "total x floor | total ms/req by round |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for phase in run.phases:
        lines += cpu_table(phase)
    lines.append("")
    return lines


def checks_section(run: RunResult) -> list[str]:
    lines = ["## Checks", ""]
    for phase in run.phases:
        checks = phase.checks
        lines.append(
            f"- **{phase.name}**: tenants over quota: "
            f"{len(checks.get('tenants_over_quota_or_wrong_plan', []))}; scans acknowledged "
            f"{checks.get('scans_acknowledged', 0):,}, recorded "
            f"{checks.get('scans_recorded', 0):,} (recorded may exceed acknowledged by the "
            f"requests in flight when a round's clock ran out); webhooks acknowledged in rounds "
            f"{checks.get('webhooks_acknowledged_in_rounds', 0):,}, events logged in the phase "
            f"{checks.get('events_logged_during_phase', 0):,}; outcomes of the benchmark's "
            f"events so far {checks.get('bench_event_outcomes', {})}; floor: webhooks "
            f"acknowledged in rounds {checks.get('floor_webhooks_acknowledged_in_rounds', 0):,}, "
            f"events logged in the phase {checks.get('floor_events_logged_during_phase', 0):,}, "
            f"subscriptions of the load missing {checks.get('floor_subscriptions_missing', 0)}; "
            f"worker restarts: {checks.get('worker_restarts', 'none')}."
        )
    lines.append("")
    return lines


def loadgen_section(run: RunResult) -> list[str]:
    ceiling = run.ceiling
    top = max((r.rps for p in run.phases for r in p.rounds), default=0.0)
    if run.loadgen == "wrk":
        why = ""
    elif run.wrk_installed:
        why = " (chosen with `--loadgen python`)"
    else:
        why = " (wrk is not installed; `apt-get install -y wrk` to use it)"
    lines = ["## Load generator", "", f"- Tool: **{run.loadgen}**{why}."]
    if ceiling:
        lines.append(
            f"- Ceiling against a do-nothing server (`bench/null_server.py`, single-threaded, "
            f"so a lower bound): {ceiling['rps']:.0f} req/s with signed webhook requests, "
            f"{ceiling['loadgen_cpu_ms_per_req']:.3f} ms of load-generator CPU per request "
            f"(null server at {ceiling['null_server_cpu_pct']:.0f} % of a core). The fastest "
            f"round above ran at {top:.0f} req/s ({100 * top / max(ceiling['rps'], 1):.0f} % "
            "of that ceiling); the *loadgen % core* column shows its share of the machine "
            "during each round."
        )
    lines.append("")
    return lines


def commands_section(run: RunResult) -> list[str]:
    lines = ["## Commands", "", "```sh", "make bench   # = .venv/bin/python bench/run.py"]
    lines.append(f"# this run: {shlex.join([sys.executable, 'bench/run.py', *sys.argv[1:]])}")
    keys = ("upgrade", "floor-schema", SERVICE, BASELINE, FLOOR, "loadgen-webhook")
    for key in (*keys, "loadgen-usage", "profiler"):
        if key in run.commands:
            lines += [f"# {key}", run.commands[key]]
    lines.append("```")
    return lines


def profiles_section(run: RunResult) -> list[str]:
    if not run.profiles:
        return []
    lines = [
        "",
        "## Profiles",
        "",
        "py-spy (`--idle`, so wall time: CPU, waiting for the database or a lock, and "
        "waiting for a CPU on a busy machine) of one extra round per figure, summarised by "
        "`python -m bench.profile_summary FILE --requests N`; shares of in-request samples "
        "and worker milliseconds per request.",
    ]
    for name, (path, requests) in run.profiles.items():
        summary = profile_summary.summarise_file(path, requests=requests, top=12)
        lines += ["", f"### {name} (`{path.relative_to(ROOT)}`, {requests} requests)", ""]
        lines += ["```", summary.split("\ninclusive")[0].rstrip(), "```"]
    return lines


def render_report(run: RunResult, machine: dict[str, str], elapsed: float) -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    quick = " (quick smoke run — not a measurement)" if run.opts.quick else ""
    lines = [
        f"# Benchmark results{quick}",
        "",
        f"Measured {when} on the current state of the service, in {elapsed:.0f} s. "
        "Regenerate with `make bench` (this file is overwritten; raw rounds are in "
        f"`{run.out.relative_to(ROOT)}/results.json`, ignored by git).",
        "",
    ]
    reasons = invalid_reasons(run.phases)
    if reasons:
        lines += ["**INVALID RUN:** " + "; ".join(reasons), ""]
    lines += ["## Machine", ""]
    lines += [f"- **{key}**: {value}" for key, value in machine.items()]
    lines.append("")
    lines += setup_section(run)
    lines += results_section(run)
    lines += [targets_section(run), prefill_section(run)]
    lines += checks_section(run)
    lines += loadgen_section(run)
    lines += commands_section(run)
    lines += profiles_section(run)
    analysis = BENCH / "ANALYSIS.md"
    if not run.opts.quick and analysis.exists():
        lines += ["", analysis.read_text(encoding="utf-8").rstrip()]
    lines.append("")
    return "\n".join(lines)


def results_json(run: RunResult, machine: dict[str, str]) -> str:
    """Every round of the run, raw."""
    return json.dumps(
        {
            "machine": machine,
            "options": {k: str(v) for k, v in asdict(run.opts).items()},
            "ceiling": run.ceiling,
            "phases": [
                {
                    "name": p.name,
                    "rounds": [asdict(r) for r in p.rounds],
                    "rss_mb": p.rss_mb,
                    "checks": p.checks,
                    "setup": p.setup,
                }
                for p in run.phases
            ],
        },
        indent=2,
    )
