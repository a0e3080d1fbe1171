"""Recover events that never arrived: list them from Stripe and run them through the log.

Stripe keeps events for 30 days and gives up retrying a delivery after 3 days, so an
endpoint that was down or disabled longer loses them. Reconciliation lists the handled
event types from ``GET /v1/events`` and hands each, oldest first, to the same
:class:`EventLog` pipeline a delivery takes: ids already logged are duplicates, and
nothing is applied twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from webhook_service.billing.stripe_api import StripeGateway
from webhook_service.errors import InvalidPayload
from webhook_service.webhooks.eventlog import DONE_OUTCOMES, EventFailed, EventLog
from webhook_service.webhooks.events import parse_event

RETENTION_DAYS = 30


@dataclass
class ReconcileSummary:
    fetched: int = 0
    new: int = 0
    duplicate: int = 0
    failed: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        applied = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items()))
        return (
            f"fetched {self.fetched}, new {self.new}, duplicate {self.duplicate}, "
            f"failed {self.failed}" + (f" ({applied})" if applied else "")
        )


def reconcile(
    gateway: StripeGateway,
    event_log: EventLog,
    since: datetime,
    *,
    dry_run: bool = False,
    report: Callable[[str], None] = lambda _line: None,
) -> ReconcileSummary:
    """Fetch events created since ``since`` and apply the ones the log has not done."""
    types = sorted(event_log.router.event_types)
    fetched = list(gateway.events_since(int(since.timestamp()), types))
    # Stripe lists newest first; apply oldest first (ties keep Stripe's relative order).
    fetched.reverse()
    fetched.sort(key=lambda e: e.get("created", 0))
    summary = ReconcileSummary(fetched=len(fetched))
    for raw in fetched:
        try:
            event = parse_event(json.dumps(raw, indent=2))
        except InvalidPayload as exc:
            summary.failed += 1
            report(f"{raw.get('id', '?')}  unreadable: {exc.message}")
            continue
        if dry_run:
            row = event_log.get(event.id)
            if row is not None and row.outcome in DONE_OUTCOMES:
                summary.duplicate += 1
            else:
                summary.new += 1
                report(f"{event.id}  {event.type}  would be applied")
            continue
        try:
            receipt = event_log.receive(event)
        except EventFailed as exc:
            summary.failed += 1
            report(f"{event.id}  {event.type}  failed: {exc.error}")
            continue
        if receipt.outcome == "duplicate":
            summary.duplicate += 1
            continue
        summary.new += 1
        summary.outcomes[receipt.outcome] = summary.outcomes.get(receipt.outcome, 0) + 1
        report(f"{event.id}  {event.type}  {receipt.outcome}")
    return summary
