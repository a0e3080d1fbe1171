"""What must hold after every phase, or the run is invalid (exit status 1).

The service: no tenant over its quota or on the wrong plan, at least as many scans
recorded as acknowledged, no failed event. The floor: at least as many events logged as
acknowledged, and a subscription row for every subscription of the load. Everywhere:
no non-2xx answer, no worker restarted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from bench import workload
from bench.common import FLOOR, SERVICE, BenchError
from bench.databases import db_rows, db_scalar
from bench.processes import http_call
from bench.results import PhaseResult

SPENT = "SELECT COALESCE(SUM(count), 0) FROM scan_spends"
EVENTS = "SELECT COUNT(*) FROM stripe_events"
FLOOR_EVENTS = "SELECT COUNT(*) FROM floor_events"


@dataclass(frozen=True)
class Counts:
    """The rows a phase's checks compare with, read before its first request."""

    spent: int
    events: int
    floor_events: int


def counts(database_url: str, floor_database_url: str) -> Counts:
    return Counts(
        spent=int(db_scalar(database_url, SPENT)),
        events=int(db_scalar(database_url, EVENTS)),
        floor_events=int(db_scalar(floor_database_url, FLOOR_EVENTS)),
    )


def check_phase(
    phase: PhaseResult,
    service_port: int,
    tenants: Sequence[workload.BenchTenant],
    run_id: str,
    database_url: str,
    floor_database_url: str,
    before: Counts,
) -> None:
    """Fill ``phase.checks`` (see invalid_reasons for what makes a run invalid)."""
    overshoot = []
    for tenant in tenants:
        status, body = http_call(
            service_port, "GET", workload.USAGE_PATH, headers={"X-API-Key": tenant.api_key}
        )
        if status != 200:
            raise BenchError(f"usage check for {tenant.tenant_id} answered {status}")
        usage = json.loads(body)
        if usage["scans_used"] > usage["scans_quota"] or usage["plan"] != workload.BENCH_PLAN:
            overshoot.append(tenant.tenant_id)
    after = counts(database_url, floor_database_url)
    outcomes = dict(
        db_rows(
            database_url,
            "SELECT outcome, COUNT(*) FROM stripe_events "  # noqa: S608 - our own id prefix
            f"WHERE id LIKE 'evt_{run_id}%' GROUP BY outcome",
        )
    )
    ids = ", ".join(f"'{t.subscription_id}'" for t in tenants)
    floor_subscriptions = int(
        db_scalar(
            floor_database_url,
            f"SELECT COUNT(*) FROM floor_subscriptions WHERE id IN ({ids})",  # noqa: S608 - our ids
        )
    )
    phase.checks.update(
        {
            "tenants_over_quota_or_wrong_plan": overshoot,
            "scans_acknowledged": phase.spends_acknowledged,
            "scans_recorded": after.spent - before.spent,
            "webhooks_acknowledged_in_rounds": sum(r.ok for r in phase.of(SERVICE, "webhook")),
            "events_logged_during_phase": after.events - before.events,
            "bench_event_outcomes": {str(k): int(v) for k, v in outcomes.items()},
            "floor_webhooks_acknowledged_in_rounds": sum(r.ok for r in phase.of(FLOOR, "webhook")),
            "floor_events_logged_during_phase": after.floor_events - before.floor_events,
            "floor_subscriptions_missing": len(tenants) - floor_subscriptions,
        }
    )


def invalid_reasons(phases: Sequence[PhaseResult]) -> list[str]:
    reasons = []
    for phase in phases:
        checks = phase.checks
        if phase.non_2xx():
            reasons.append(f"{phase.name}: {phase.non_2xx()} non-2xx answers")
        if checks.get("tenants_over_quota_or_wrong_plan"):
            reasons.append(f"{phase.name}: tenants over quota or on the wrong plan")
        if checks.get("worker_restarts"):
            reasons.append(f"{phase.name}: workers restarted: {checks['worker_restarts']}")
        failed = checks.get("bench_event_outcomes", {}).get("failed", 0)
        if failed:
            reasons.append(f"{phase.name}: {failed} events failed")
        if checks.get("scans_recorded", 0) < checks.get("scans_acknowledged", 0):
            reasons.append(f"{phase.name}: fewer scans recorded than acknowledged")
        if checks.get("floor_events_logged_during_phase", 0) < checks.get(
            "floor_webhooks_acknowledged_in_rounds", 0
        ):
            reasons.append(f"{phase.name}: the floor logged fewer events than it acknowledged")
        if checks.get("floor_subscriptions_missing", 0):
            reasons.append(f"{phase.name}: the floor misses subscriptions of the load")
    return reasons
