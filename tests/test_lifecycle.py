"""A whole subscription lifecycle, in each payload shape, seen through GET /api/v1/usage."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import Clock, Subscription, spend, usage_of, utc
from webhook_service.db import Database
from webhook_service.models import tenant_changes

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

JAN = (utc(2025, 1, 1), utc(2025, 2, 1))
FEB = (utc(2025, 2, 1), utc(2025, 3, 1))
MAR = (utc(2025, 3, 1), utc(2025, 4, 1))


def body(
    plan: str,
    status: str | None,
    quota: int,
    used: int,
    start: str,
    reset: str,
    tenant: str = "tnt_life",
) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "plan": plan,
        "subscription_status": status,
        "scans_quota": quota,
        "scans_used": used,
        "scans_remaining": max(0, quota - used),
        "period_start": start,
        "quota_reset_date": reset,
    }


def processed(response: TestResponse) -> str:
    assert response.status_code == 200, response.json
    assert response.json["outcome"] == "processed", response.json
    event_id: str = response.json["event_id"]
    return event_id


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_whole_lifecycle_reports_usage_at_every_step(
    api_version: str,
    client: FlaskClient,
    clock: Clock,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    database: Database,
) -> None:
    """Walk checkout to customer deletion and check the usage body field by field."""
    clock.set(utc(2025, 1, 1, 0, 0, 1))
    key = make_tenant("tnt_life")
    sub = Subscription(api_version=api_version, metadata={"tenant_id": "tnt_life"})
    free_jan = body("free", None, 10, 0, "2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z")
    assert usage_of(client, key) == free_jan
    causes: list[str] = []

    # Checkout links the customer; nothing is subscribed yet.
    processed(post_event(sub.checkout("tnt_life", utc(2025, 1, 1, 0, 0, 5))))
    assert usage_of(client, key) == free_jan

    # created (incomplete): not granting, the default plan reports its status.
    created = sub.event(
        "customer.subscription.created", "incomplete", JAN, utc(2025, 1, 1, 0, 0, 6)
    )
    causes.append(processed(post_event(created)))
    assert usage_of(client, key) == {**free_jan, "subscription_status": "incomplete"}

    # The first invoice is paid; the subscription is still incomplete until updated.
    first = sub.invoice(JAN, utc(2025, 1, 1, 0, 0, 8), billing_reason="subscription_create")
    processed(post_event(first))
    assert usage_of(client, key) == {**free_jan, "subscription_status": "incomplete"}

    activated = sub.event(
        "customer.subscription.updated",
        "active",
        JAN,
        utc(2025, 1, 1, 0, 0, 9),
        previous={"status": "incomplete"},
    )
    causes.append(processed(post_event(activated)))
    pro_jan = body("pro", "active", 500, 0, "2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z")
    assert usage_of(client, key) == pro_jan

    # Spend within January.
    clock.set(utc(2025, 1, 10))
    assert spend(client, key).json == {**pro_jan, "scans_used": 1, "scans_remaining": 499}
    assert spend(client, key, 4).json == {**pro_jan, "scans_used": 5, "scans_remaining": 495}
    assert usage_of(client, key) == {**pro_jan, "scans_used": 5, "scans_remaining": 495}

    # Renewal: until Stripe reports the next period, the last one stays in force.
    clock.set(utc(2025, 2, 1, 0, 30))
    assert usage_of(client, key) == {**pro_jan, "scans_used": 5, "scans_remaining": 495}
    renewal = sub.invoice(FEB, utc(2025, 2, 1, 1))
    causes.append(processed(post_event(renewal)))
    pro_feb = body("pro", "active", 500, 0, "2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z")
    assert usage_of(client, key) == pro_feb
    renewed = sub.event(
        "customer.subscription.updated",
        "active",
        FEB,
        utc(2025, 2, 1, 1, 0, 5),
        start_date=JAN[0],
        previous={"period_start": JAN[0], "period_end": JAN[1]},
    )
    processed(post_event(renewed))
    assert usage_of(client, key) == pro_feb

    clock.set(utc(2025, 2, 5))
    assert spend(client, key, 10).status_code == 200

    # Upgrade to quantity 2: quota 500 x 2; what was spent stays spent.
    upgraded = sub.event(
        "customer.subscription.updated",
        "active",
        FEB,
        utc(2025, 2, 10),
        start_date=JAN[0],
        quantity=2,
        previous={"quantity": 1},
    )
    causes.append(processed(post_event(upgraded)))
    pro2_feb = {**pro_feb, "scans_quota": 1000, "scans_used": 10, "scans_remaining": 990}
    clock.set(utc(2025, 2, 10, 1))
    assert usage_of(client, key) == pro2_feb

    # The March renewal fails: recorded only, then past_due keeps the plan.
    clock.set(utc(2025, 3, 1, 1))
    failed = sub.invoice(MAR, utc(2025, 3, 1, 1), event_type="invoice.payment_failed", quantity=2)
    processed(post_event(failed))
    assert usage_of(client, key) == pro2_feb
    past_due = sub.event(
        "customer.subscription.updated",
        "past_due",
        MAR,
        utc(2025, 3, 1, 1, 0, 3),
        start_date=JAN[0],
        quantity=2,
        previous={"status": "active", "period_start": FEB[0], "period_end": FEB[1]},
    )
    causes.append(processed(post_event(past_due)))
    pro2_mar = body("pro", "past_due", 1000, 0, "2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z")
    assert usage_of(client, key) == pro2_mar
    clock.set(utc(2025, 3, 2))
    assert spend(client, key, 2).json == {**pro2_mar, "scans_used": 2, "scans_remaining": 998}

    # unpaid and paused fall back to the default plan on calendar months.
    free_mar = body("free", "unpaid", 10, 2, "2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z")
    unpaid = sub.event(
        "customer.subscription.updated",
        "unpaid",
        MAR,
        utc(2025, 3, 5),
        start_date=JAN[0],
        quantity=2,
        previous={"status": "past_due"},
    )
    causes.append(processed(post_event(unpaid)))
    clock.set(utc(2025, 3, 5, 1))
    assert usage_of(client, key) == free_mar
    paused = sub.event(
        "customer.subscription.paused",
        "paused",
        MAR,
        utc(2025, 3, 8),
        start_date=JAN[0],
        quantity=2,
    )
    causes.append(processed(post_event(paused)))
    assert usage_of(client, key) == {**free_mar, "subscription_status": "paused"}
    resumed = sub.event(
        "customer.subscription.resumed",
        "active",
        MAR,
        utc(2025, 3, 9),
        start_date=JAN[0],
        quantity=2,
    )
    causes.append(processed(post_event(resumed)))
    assert usage_of(client, key) == {
        **pro2_mar,
        "subscription_status": "active",
        "scans_used": 2,
        "scans_remaining": 998,
    }

    # Deleted (canceled): the default plan, calendar month, what was spent still counts.
    deleted = sub.event(
        "customer.subscription.deleted",
        "canceled",
        MAR,
        utc(2025, 3, 15, 9, 30),
        start_date=JAN[0],
        quantity=2,
    )
    causes.append(processed(post_event(deleted)))
    clock.set(utc(2025, 3, 31, 23, 59, 59))
    assert usage_of(client, key) == {**free_mar, "subscription_status": "canceled"}

    # The customer is deleted: unlinked, no subscription status any more.
    causes.append(processed(post_event(sub.customer_deleted(utc(2025, 3, 16)))))
    assert usage_of(client, key) == {**free_mar, "subscription_status": None}

    # The calendar month turns over: quota_reset_date is the first of the next month.
    clock.set(utc(2025, 4, 1))
    assert usage_of(client, key) == body(
        "free", None, 10, 0, "2025-04-01T00:00:00Z", "2025-05-01T00:00:00Z"
    )

    # Every change of plan, status or period was recorded with the event that caused it.
    with database.transaction() as conn:
        rows = conn.execute(
            select(tenant_changes)
            .where(tenant_changes.c.tenant_id == "tnt_life")
            .order_by(tenant_changes.c.id)
        ).all()
    assert [row.source for row in rows] == ["sync"] + ["webhook"] * len(causes)
    assert [row.event_id for row in rows[1:]] == causes
    assert [(r.plan, r.subscription_status, r.scans_quota) for r in rows] == [
        ("free", None, 10),
        ("free", "incomplete", 10),
        ("pro", "active", 500),
        ("pro", "active", 500),
        ("pro", "active", 1000),
        ("pro", "past_due", 1000),
        ("free", "unpaid", 10),
        ("free", "paused", 10),
        ("pro", "active", 1000),
        ("free", "canceled", 10),
        ("free", None, 10),
    ]
    assert rows[3].period_start.isoformat() == "2025-02-01T00:00:00+00:00"


@pytest.mark.parametrize("folder", sorted(p.name for p in FIXTURES.glob("lifecycle-*")))
def test_bundled_fixtures_replay_to_the_documented_states(
    folder: str,
    client: FlaskClient,
    clock: Clock,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
) -> None:
    """Replay each bundled lifecycle in order and check the state after each step."""
    files = sorted((FIXTURES / folder).glob("*.json"))
    events = [json.loads(path.read_bytes()) for path in files]
    tenant = events[0]["data"]["object"]["client_reference_id"]
    key = make_tenant(tenant)
    outcomes: list[str] = []
    states: list[tuple[str, str | None, int, str]] = []
    for path, event in zip(files, events, strict=True):
        clock.set(event["created"] + 60)
        response = post_event(path.read_bytes())
        assert response.status_code == 200, (path.name, response.json)
        outcomes.append(response.json["outcome"])
        usage = usage_of(client, key)
        states.append(
            (
                usage["plan"],
                usage["subscription_status"],
                usage["scans_quota"],
                usage["period_start"],
            )
        )
    assert outcomes == ["processed"] * 11 + ["ignored", "processed"]
    jan, feb, mar = "2025-01-01T00:00:00Z", "2025-02-01T00:00:00Z", "2025-03-01T00:00:00Z"
    assert states == [
        ("free", None, 10, jan),  # 01 checkout: linked, nothing subscribed
        ("free", "incomplete", 10, jan),  # 02 created
        ("free", "incomplete", 10, jan),  # 03 first invoice paid
        ("pro", "active", 500, jan),  # 04 active
        ("pro", "active", 500, feb),  # 05 renewal invoice
        ("pro", "active", 500, feb),  # 06 new period
        ("pro", "active", 1000, feb),  # 07 quantity 2
        ("pro", "active", 1000, feb),  # 08 payment failed: recorded only
        ("pro", "past_due", 1000, mar),  # 09 past_due keeps the plan
        ("pro", "active", 1000, mar),  # 10 retry succeeded
        ("free", "canceled", 10, mar),  # 11 deleted
        ("free", "canceled", 10, mar),  # 12 payment_intent: ignored
        ("free", None, 10, mar),  # 13 customer deleted: unlinked
    ]


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
@pytest.mark.parametrize("reported_by", ["invoice", "update", "both"])
def test_renewal_starts_the_new_period_at_zero(
    api_version: str,
    reported_by: str,
    client: FlaskClient,
    clock: Clock,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
) -> None:
    """Reset scans_used when either the cycle invoice or the update reports the next period."""
    sub = Subscription(api_version=api_version)
    key = make_tenant("tnt_renew", customer=sub.customer)
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0])
    processed(post_event(created))
    clock.set(utc(2025, 1, 20))
    assert spend(client, key, 7).status_code == 200

    # The period ended; Stripe has not reported the next one: January stays in force,
    # and a spend in the gap still counts against it.
    clock.set(utc(2025, 2, 1, 0, 20))
    gap = spend(client, key, 1).json
    assert (gap["period_start"], gap["quota_reset_date"], gap["scans_used"]) == (
        "2025-01-01T00:00:00Z",
        "2025-02-01T00:00:00Z",
        8,
    )
    clock.set(utc(2025, 2, 1, 1, 30))
    if reported_by in ("update", "both"):
        renewed = sub.event(
            "customer.subscription.updated", "active", FEB, utc(2025, 2, 1), start_date=JAN[0]
        )
        processed(post_event(renewed))
    if reported_by in ("invoice", "both"):
        processed(post_event(sub.invoice(FEB, utc(2025, 2, 1, 1))))
    # The spend made in the gap lies in the new period: it is the only one counted.
    assert usage_of(client, key) == body(
        "pro",
        "active",
        500,
        1,
        "2025-02-01T00:00:00Z",
        "2025-03-01T00:00:00Z",
        tenant="tnt_renew",
    )
    clock.set(utc(2025, 2, 2))
    assert spend(client, key, 4).json["scans_used"] == 5
