"""Sections of the report: the set-up it measured, the targets, the cost of a big state."""

from __future__ import annotations

from bench import workload
from bench.common import BASELINE, KIND_LABEL, KINDS, SERVICE
from bench.results import PhaseResult, RunResult

TARGETS = {
    "webhook_sqlite_ratio": 2.0,
    "webhook_postgresql_ratio": 1.5,
    "p99_ms": 15.0,
    "usage_ratio": 1.3,
    "spend_ratio": 1.0,
    "rss_mb": 80.0,
    "prefill_cost_pct": 10.0,
}


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def pct_change(new: float | None, old: float | None) -> float | None:
    if new is None or not old:
        return None
    return 100 * (new - old) / old


def setup_section(run: RunResult) -> list[str]:
    opts = run.opts
    mix = ", ".join(f"{int(w * 100)} % {k}" for k, w in workload.EVENT_MIX)
    sizes = run.template_bytes
    lines = [
        "## Set-up",
        "",
        f"- {opts.rounds} alternating round(s) of {opts.duration:g} s per figure and phase, "
        f"{opts.connections} concurrent connections, medians reported; "
        f"WEB_CONCURRENCY={opts.workers} (threaded workers, `webhook_service.web.gunicorn_config`) "
        "for the service, the baseline and the floor.",
        f"- {opts.tenants} tenants synced with `POST /api/v1/tenants/sync`, each with one API "
        f"key, a Stripe customer and one monthly subscription on plan `{workload.BENCH_PLAN}` "
        f"({workload.BENCH_SCANS_PER_MONTH:,} scans a month, so spending never hits a 402), "
        "created by a `customer.subscription.created` webhook before the rounds (sent to the "
        "floor too).",
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
        "ratio: `python -m bench.event_sizes` measures both per size.",
        "- Usage rounds: `GET /api/v1/usage` with a random tenant's key; spend rounds: "
        '`POST /api/v1/usage/scans` `{"count": 1}` with a unique `Idempotency-Key`. '
        "`RATE_LIMIT=1000000/minute` (memory storage): the limiter counts, never refuses.",
        "- Ratios divide by the webhook figure of the same phase of: the **baseline** (x base), "
        "`bench/baseline_app.py`, Stripe's Flask sample (`request.data`, "
        '`stripe.Webhook.construct_event`, 200 `{"received": true}`, nothing stored); the '
        "**floor** (x floor), `bench/floor_app.py`, the least a complete receiver does: plain "
        "WSGI, `stripe.WebhookSignature.verify_header`, `json.loads`, and one transaction that "
        "logs the event (`ON CONFLICT (id) DO NOTHING`) and upserts its subscription's row, on "
        "the service's backend (its own SQLite file; its own tables in the service's PostgreSQL "
        "database). What the service costs above the floor is what its layers cost.",
        "- CPU per request: utime+stime of gunicorn master and workers from /proc, before and "
        "after each round, divided by the answered requests. DB CPU: the same for the "
        "PostgreSQL backends serving the service or the floor (told apart by their "
        "`application_name`; SQLite runs inside the workers); total = both. RSS: VmRSS "
        "of each worker at the end of the phase. *Machine busy* is all cores from /proc/stat; "
        "*others* is the CPU the machine spent outside the servers, their database backends "
        "and the load generator during the round (other jobs on a shared machine, PostgreSQL's "
        "background processes), in % of one core: high values mean a noisy round.",
    ]
    prefill_phase = next((p for p in run.phases if p.state == "prefilled"), None)
    if prefill_phase and "prefill" in prefill_phase.setup:
        stats = prefill_phase.setup["prefill"]
        lines.append(
            f"- Pre-filled state: {stats['events']:,} events bulk-loaded into the log and "
            f"{stats['tenants']:,} more tenants (with a key each, {stats['subscriptions']:,} "
            f"subscriptions, one history row each), {prefill_phase.setup.get('tenants_total', 0):,}"
            " tenants in all; rows in the service's own formats, written with SQL "
            "(SQLite, through the service's tables) or COPY (PostgreSQL, then VACUUM ANALYZE "
            "as autovacuum would). Payloads are compact envelopes "
            f"(~{stats['payload_bytes_avg']} bytes, not Stripe's 5-8 kB; see "
            "`bench/prefill.py`). The load still targets the same tenants. The floor's tables "
            "get a copy of the service's event log and subscriptions "
            f"({prefill_phase.setup.get('floor_events_total', 0):,} events), so both write "
            "into tables of the same size."
        )
    lines.append("")
    return lines


def targets_section(run: RunResult) -> str:
    lines = ["## Targets", "", "| target | phase | measured | verdict |", "|---|---|---|---|"]

    def verdict(ok: bool | None) -> str:
        return "-" if ok is None else ("met" if ok else "**missed**")

    for phase in run.phases:
        base = phase.median(BASELINE, "webhook", "rps")
        hook = phase.median(SERVICE, "webhook", "rps")
        need = TARGETS[f"webhook_{phase.backend}_ratio"]
        times = hook / base if hook is not None and base else None
        lines.append(
            f"| webhook ≥ {need:.1f}x baseline events/s | {phase.name} | {fmt(times, '.2f')}x | "
            f"{verdict(None if times is None else times >= need)} |"
        )
        for kind, key in (("usage", "usage_ratio"), ("spend", "spend_ratio")):
            value = phase.median(SERVICE, kind, "rps")
            r = value / base if value is not None and base else None
            lines.append(
                f"| {KIND_LABEL[kind]} ≥ {TARGETS[key]:.1f}x baseline events/s | {phase.name} | "
                f"{fmt(r, '.2f')}x | {verdict(None if r is None else r >= TARGETS[key])} |"
            )
        for kind in KINDS:
            p99 = phase.median(SERVICE, kind, "p99_ms")
            lines.append(
                f"| p99 ≤ {TARGETS['p99_ms']:.0f} ms, {KIND_LABEL[kind]} | {phase.name} | "
                f"{fmt(p99, '.2f')} ms | "
                f"{verdict(None if p99 is None else p99 <= TARGETS['p99_ms'])} |"
            )
        rss = max(phase.rss_mb.get(SERVICE, [0.0]) or [0.0])
        lines.append(
            f"| ≤ {TARGETS['rss_mb']:.0f} MB RSS per worker | {phase.name} | {rss:.0f} MB | "
            f"{verdict(rss <= TARGETS['rss_mb'])} |"
        )
    lines.append("")
    return "\n".join(lines)


def prefill_section(run: RunResult) -> str:
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
    by_name = {p.name: p for p in run.phases}

    def relative(phase: PhaseResult, kind: str, attr: str) -> float | None:
        value = phase.median(SERVICE, kind, attr)
        base = phase.median(BASELINE, "webhook", attr)
        return value / base if value is not None and base else None

    for backend in run.opts.backends:
        empty, full = by_name.get(f"{backend}/empty"), by_name.get(f"{backend}/prefilled")
        if not empty or not full:
            continue
        for kind in KINDS:
            raw = pct_change(full.median(SERVICE, kind, "rps"), empty.median(SERVICE, kind, "rps"))
            worst = 0.0
            cells = []
            for attr, sign in (("rps", -1), ("p99_ms", 1), ("server_cpu_ms_per_req", 1)):
                change = pct_change(relative(full, kind, attr), relative(empty, kind, attr))
                cells.append(change)
                if change is not None:
                    worst = max(worst, sign * change)
            rss_change = None
            if kind == "webhook":
                rss_change = pct_change(
                    max(full.rss_mb.get(SERVICE, [0.0]) or [0.0]),
                    max(empty.rss_mb.get(SERVICE, [0.0]) or [0.0]),
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
