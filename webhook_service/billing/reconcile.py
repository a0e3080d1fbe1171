"""Recover events that never arrived: list them from Stripe and run them through the log.

Stripe keeps events for 30 days and gives up retrying a delivery after 3 days, so an
endpoint that was down or disabled longer loses them. Reconciliation lists the handled
event types from ``GET /v1/events`` and hands each to the same :class:`EventLog`
pipeline a delivery takes: ids already logged are duplicates, and nothing is applied
twice.

It is a bounded job that trusts nothing the API says:

- each page is applied before the next is asked for (oldest first within the page),
  so what was applied survives a page that fails, and memory stays one page. Stripe
  lists newest first, so pages go back in time; the event log converges whatever the
  order (an older event than the state it would change is logged ``stale``);
- it stops when the cursor does not advance or the listing repeats an event, after
  ``max_pages`` pages, and at ``max_seconds``;
- a 429 is retried a few times, after Stripe's Retry-After;
- events older than ``since``, of types not handled, or listed twice are skipped here,
  whatever filters the server applied; items without an id, a type or an integer
  ``created`` count as failed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from webhook_service.billing.stripe_api import StripeGateway
from webhook_service.errors import InvalidPayload, ServiceError, StripeRateLimited
from webhook_service.webhooks.eventlog import DONE_OUTCOMES, EventFailed, EventLog
from webhook_service.webhooks.events import parse_event

RETENTION_DAYS = 30
MAX_PAGES = 1_000  # 100,000 events at Stripe's page size of 100
MAX_SECONDS = 600.0
RATE_LIMIT_RETRIES = 3
# A 429 without Retry-After waits 1, 2, 4 s; a Retry-After is honoured up to this.
MAX_RETRY_WAIT_S = 60.0


@dataclass(frozen=True)
class Bounds:
    """When a run stops even though the listing says there is more."""

    max_pages: int = MAX_PAGES
    max_seconds: float = MAX_SECONDS
    rate_limit_retries: int = RATE_LIMIT_RETRIES


@dataclass
class ReconcileSummary:
    fetched: int = 0
    new: int = 0
    duplicate: int = 0
    failed: int = 0
    skipped: int = 0  # older than --since, a type not handled, or listed twice
    pages: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    stopped: str | None = None  # why the listing was not read to its end

    @property
    def complete(self) -> bool:
        """Read to its end with nothing failed."""
        return self.stopped is None and not self.failed

    def line(self) -> str:
        applied = ", ".join(f"{n} {k}" for k, n in sorted(self.outcomes.items()))
        text = (
            f"fetched {self.fetched}, new {self.new}, duplicate {self.duplicate}, "
            f"failed {self.failed}"
            + (f" ({applied})" if applied else "")
            + f"; skipped {self.skipped}; {self.pages} page{'' if self.pages == 1 else 's'}"
        )
        return text + (f"; reconciliation stopped: {self.stopped}" if self.stopped else "")


def _item_problem(raw: object) -> str | None:
    """Why a listed item is not an event this job can hand on, if it is not."""
    if not isinstance(raw, dict):
        return "not an object"
    if not isinstance(raw.get("id"), str) or not raw["id"]:
        return "no id"
    if not isinstance(raw.get("type"), str):
        return "no type"
    created = raw.get("created")
    if not isinstance(created, int) or isinstance(created, bool):
        return "created is not a Unix time"
    return None


def _last_id(data: list[Any]) -> str | None:
    """The cursor for the next page: the id of the page's last item that has one."""
    for raw in reversed(data):
        if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
            return str(raw["id"])
    return None


class _Run:
    def __init__(
        self,
        gateway: StripeGateway,
        event_log: EventLog,
        since: datetime,
        dry_run: bool,
        bounds: Bounds,
        report: Callable[[str], None],
        clock: Callable[[], float],
        sleep: Callable[[float], None],
    ) -> None:
        self.gateway = gateway
        self.event_log = event_log
        self.types = sorted(event_log.router.event_types)
        self.created_gte = int(since.timestamp())
        self.dry_run = dry_run
        self.bounds = bounds
        self.report = report
        self.clock = clock
        self.sleep = sleep
        self.deadline = clock() + bounds.max_seconds
        self.seen: set[str] = set()
        self.summary = ReconcileSummary()

    def fetch(self, cursor: str | None) -> dict[str, Any]:
        """One page, retrying a 429 after Stripe's Retry-After while time allows."""
        attempt = 0
        while True:
            try:
                return self.gateway.events_page(self.created_gte, self.types, cursor)
            except StripeRateLimited as exc:
                if attempt >= self.bounds.rate_limit_retries:
                    raise
                wait = min(float(exc.retry_after), MAX_RETRY_WAIT_S)
                if self.clock() + wait > self.deadline:
                    raise
                self.report(f"rate limited by Stripe; retrying in {wait:g} s")
                self.sleep(wait)
                attempt += 1

    def page(self, data: list[Any]) -> bool:
        """Check, filter and apply one page; False if it repeated an event already listed."""
        summary = self.summary
        summary.fetched += len(data)
        wanted = set(self.types)
        fresh: list[dict[str, Any]] = []
        repeated = False
        for raw in data:
            problem = _item_problem(raw)
            if problem is not None:
                summary.failed += 1
                event_id = raw.get("id") if isinstance(raw, dict) else None
                self.report(
                    f"{event_id if isinstance(event_id, str) else '?'}  malformed: {problem}"
                )
                continue
            if raw["id"] in self.seen:
                summary.skipped += 1
                repeated = True
                continue
            self.seen.add(raw["id"])
            if raw["type"] not in wanted or raw["created"] < self.created_gte:
                summary.skipped += 1
                continue
            fresh.append(raw)
        # Stripe lists newest first: apply oldest first (ties keep Stripe's relative order).
        fresh.reverse()
        fresh.sort(key=lambda e: int(e["created"]))
        for raw in fresh:
            self.apply(raw)
        return not repeated

    def apply(self, raw: dict[str, Any]) -> None:
        summary = self.summary
        try:
            event = parse_event(json.dumps(raw, indent=2))
        except InvalidPayload as exc:
            summary.failed += 1
            self.report(f"{raw['id']}  unreadable: {exc.message}")
            return
        if self.dry_run:
            row = self.event_log.get(event.id)
            if row is not None and row.outcome in DONE_OUTCOMES:
                summary.duplicate += 1
            else:
                summary.new += 1
                self.report(f"{event.id}  {event.type}  would be applied")
            return
        try:
            receipt = self.event_log.receive(event)
        except EventFailed as exc:
            summary.failed += 1
            self.report(f"{event.id}  {event.type}  failed: {exc.error}")
            return
        if receipt.outcome == "duplicate":
            summary.duplicate += 1
            return
        summary.new += 1
        summary.outcomes[receipt.outcome] = summary.outcomes.get(receipt.outcome, 0) + 1
        self.report(f"{event.id}  {event.type}  {receipt.outcome}")

    def run(self, cursor: str | None) -> ReconcileSummary:
        summary = self.summary
        while True:
            if summary.pages >= self.bounds.max_pages:
                summary.stopped = (
                    f"{summary.pages} pages read (--max-pages) and Stripe lists more; "
                    f"continue with --starting-after {cursor}"
                )
                return summary
            if self.clock() >= self.deadline:
                summary.stopped = (
                    f"{self.bounds.max_seconds:g} s spent (--max-seconds) and Stripe lists "
                    f"more; continue with --starting-after {cursor}"
                )
                return summary
            try:
                body = self.fetch(cursor)
            except StripeRateLimited:
                summary.stopped = "Stripe kept answering 429 (rate limited)" + (
                    f"; continue with --starting-after {cursor}" if cursor else ""
                )
                return summary
            except ServiceError as exc:
                summary.stopped = exc.message + (
                    f" (continue with --starting-after {cursor})" if cursor else ""
                )
                return summary
            summary.pages += 1
            data, has_more = body.get("data"), body.get("has_more")
            if not isinstance(data, list) or not isinstance(has_more, bool):
                summary.stopped = (
                    f"page {summary.pages} of Stripe's listing has no data list or no has_more"
                )
                return summary
            if not self.page(data):
                summary.stopped = "Stripe's listing repeated events it had already listed"
                return summary
            if not has_more:
                return summary
            following = _last_id(data)
            if following is None or following == cursor:
                summary.stopped = "Stripe's listing says it has more but its cursor did not advance"
                return summary
            cursor = following


def reconcile(
    gateway: StripeGateway,
    event_log: EventLog,
    since: datetime,
    *,
    dry_run: bool = False,
    bounds: Bounds | None = None,
    starting_after: str | None = None,
    report: Callable[[str], None] = lambda _line: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ReconcileSummary:
    """Apply, page by page, the events created since ``since`` the log has not done.

    Never raises for what Stripe answers: a failure ends the run with
    :attr:`ReconcileSummary.stopped` set (database errors do propagate).
    """
    run = _Run(gateway, event_log, since, dry_run, bounds or Bounds(), report, clock, sleep)
    return run.run(starting_after)
