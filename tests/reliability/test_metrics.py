"""/metrics adds up across gunicorn workers: every event and request counted exactly once."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import stripe_events as se
from tests.helpers import SECOND_SECRET, WEBHOOK_SECRET
from tests.reliability.support import WEBHOOK_PATH, master_pid, metrics_dir, signed
from tests.servers import http, running_service
from webhook_service.db import Database

WORKERS = 3
SENDERS = 8
PER_KIND = 20
NOW = int(time.time())


def unique_events() -> list[dict[str, Any]]:
    """3 x 20 events: ignored, processed subscriptions, processed payment failures."""
    events = []
    for index in range(PER_KIND):
        events.append(
            se.event(
                "charge.refund.updated",
                {"id": se.new_id("re"), "object": "refund"},
                created=NOW,
                api_version=se.BASIL_API_VERSION,
            )
        )
        events.append(
            se.subscription_event(
                "customer.subscription.created",
                sub_id=se.new_id("sub"),
                customer=se.new_id("cus"),
                status="active",
                period_start=NOW - 86400,
                period_end=se.add_months(NOW - 86400, 1),
                created=NOW,
                api_version=se.API_VERSIONS[index % 2],
                metadata={"tenant_id": f"tnt_metrics_{index}_{se.new_id('x', 6)[2:]}"},
            )
        )
        events.append(
            se.invoice_event(
                "invoice.payment_failed",
                invoice_id=se.new_id("in"),
                sub_id=se.new_id("sub"),
                customer=se.new_id("cus"),
                period_start=NOW - 86400,
                period_end=se.add_months(NOW - 86400, 1),
                created=NOW,
                api_version=se.API_VERSIONS[index % 2],
            )
        )
    return events


def bad_deliveries() -> tuple[list[tuple[bytes, dict[str, str]]], Counter[str]]:
    """Deliveries whose signature fails, and how many of each reason they are."""
    body = se.render(unique_events()[0])
    now = int(time.time())
    good = se.sign(body, WEBHOOK_SECRET)
    cases = [
        ("missing", {}),
        ("missing", {"Stripe-Signature": "   "}),
        ("malformed", {"Stripe-Signature": "garbage"}),
        ("malformed", {"Stripe-Signature": "t=abc,v1=00"}),
        ("no_v1", {"Stripe-Signature": f"t={now},v0=abc"}),
        ("mismatch", {"Stripe-Signature": se.sign(body, "whsec_not_the_right_one_000000")}),
        # A well-formed v1 (64 hex digits) with its last digit changed.
        ("mismatch", {"Stripe-Signature": good[:-1] + ("1" if good[-1] == "0" else "0")}),
        ("malformed", {"Stripe-Signature": good.replace("v1=", "v1=0")}),  # 65 digits
        ("mismatch", {"Stripe-Signature": se.sign(body + b" ", WEBHOOK_SECRET)}),
        ("too_old", {"Stripe-Signature": se.sign(body, WEBHOOK_SECRET, now - 3600)}),
        ("too_old", {"Stripe-Signature": se.sign(body, SECOND_SECRET, now - 3600)}),
        ("too_new", {"Stripe-Signature": se.sign(body, WEBHOOK_SECRET, now + 3600)}),
    ]
    deliveries = [(body, {"Content-Type": "application/json", **headers}) for _, headers in cases]
    return deliveries, Counter(reason for reason, _ in cases)


def scrape(base_url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of /metrics by sample name: [(labels, value)]."""
    status, _, raw = http("GET", base_url + "/metrics", timeout=10)
    assert status == 200
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(raw.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def total(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str
) -> float:
    """The sum of the ``name`` samples whose labels include ``labels``."""
    return sum(
        value
        for found, value in samples.get(name, [])
        if all(found.get(key) == wanted for key, wanted in labels.items())
    )


@pytest.mark.slow
def test_metrics_add_up_across_workers(env: dict[str, str], database: Database) -> None:
    """Send 60 events and 11 bad signatures over 8 connections to 3 workers; /metrics adds up."""
    events = unique_events()
    bad, reasons = bad_deliveries()
    deliveries = [signed(event) for event in events] + bad
    with running_service(
        {**env, "STRIPE_WEBHOOK_SECRET": f"{WEBHOOK_SECRET},{SECOND_SECRET}"}, workers=WORKERS
    ) as base_url:

        def send(delivery: tuple[bytes, dict[str, str]]) -> int:
            body, headers = delivery
            return http("POST", base_url + WEBHOOK_PATH, body=body, headers=headers, timeout=30)[0]

        with ThreadPoolExecutor(SENDERS) as pool:
            statuses = Counter(pool.map(send, deliveries, timeout=120))
        assert statuses == {200: len(events), 400: len(bad)}

        master = master_pid(base_url)
        writers = {
            int(path.stem.rsplit("_", 1)[-1]) for path in metrics_dir(master).glob("counter_*.db")
        } - {master}
        assert len(writers) >= 2, f"only {writers} counted: not spread over workers"

        scrapes = [scrape(base_url) for _ in range(2 * WORKERS)]  # answered by several workers
        for samples in scrapes:
            assert total(samples, "nat_webhook_events_total") == len(events)
            by_kind = {
                (labels["type"], labels["outcome"]): value
                for labels, value in samples["nat_webhook_events_total"]
                if value
            }
            assert by_kind == {
                ("other", "ignored"): PER_KIND,  # no handler: "other", a bounded label
                ("customer.subscription.created", "processed"): PER_KIND,
                ("invoice.payment_failed", "processed"): PER_KIND,
            }
            assert total(samples, "nat_webhook_processing_seconds_count") == len(events)
            webhook = {"route": WEBHOOK_PATH, "method": "POST"}
            assert total(samples, "nat_http_requests_total", **webhook, status="200") == len(events)
            assert total(samples, "nat_http_requests_total", **webhook, status="400") == len(bad)
            assert total(samples, "nat_http_requests_total", **webhook) == len(deliveries)
            failures = {
                labels["reason"]: value
                for labels, value in samples["nat_webhook_signature_failures_total"]
                if value
            }
            assert failures == reasons
            matched = {
                labels["index"]: value
                for labels, value in samples["nat_webhook_secret_matches_total"]
                if value
            }
            assert matched == {"0": len(events)}
