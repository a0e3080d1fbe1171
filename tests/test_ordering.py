"""Out-of-order delivery: every arrival order of a subscription's events converges."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import (
    Clock,
    Subscription,
    count_rows,
    new_api_key,
    sync_tenants,
    usage_of,
    utc,
)
from webhook_service.db import Database

JAN = (utc(2025, 1, 1), utc(2025, 2, 1))
FEB = (utc(2025, 2, 1), utc(2025, 3, 1))
MAR = (utc(2025, 3, 1), utc(2025, 4, 1))
T = utc(2025, 1, 1, 0, 0, 10)


def outcome(response: TestResponse) -> str:
    assert response.status_code == 200, response.json
    result: str = response.json["outcome"]
    return result


def logged_as_stale(database: Database, event: dict[str, Any]) -> bool:
    where = "id = :id AND outcome = 'stale'"
    return count_rows(database, "stripe_events", where, id=event["id"]) == 1


@pytest.fixture
def linked(
    make_tenant: Callable[..., str], clock: Clock
) -> Callable[[str], tuple[Subscription, str]]:
    """A tenant linked to a fresh customer: (its subscription's event builder, its key)."""

    def make(api_version: str = se.BASIL_API_VERSION) -> tuple[Subscription, str]:
        sub = Subscription(api_version=api_version)
        key = make_tenant("tnt_" + sub.customer[4:], customer=sub.customer)
        return sub, key

    return make


def state(client: FlaskClient, key: str) -> tuple[str, str | None, int, str, str]:
    body = usage_of(client, key)
    return (
        body["plan"],
        body["subscription_status"],
        body["scans_quota"],
        body["period_start"],
        body["quota_reset_date"],
    )


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_older_event_is_logged_stale_and_changes_nothing(
    api_version: str,
    client: FlaskClient,
    post_event: Callable[..., TestResponse],
    database: Database,
    linked: Callable[[str], tuple[Subscription, str]],
) -> None:
    """Apply the newer update, then log the older one as stale."""
    sub, key = linked(api_version)
    newer = sub.event("customer.subscription.updated", "past_due", JAN, T + 20)
    older = sub.event("customer.subscription.updated", "active", JAN, T + 10, quantity=3)
    assert outcome(post_event(newer)) == "processed"
    assert outcome(post_event(older)) == "stale"
    assert logged_as_stale(database, older)
    assert state(client, key) == (
        "pro",
        "past_due",
        500,
        "2025-01-01T00:00:00Z",
        "2025-02-01T00:00:00Z",
    )
    # A redelivery of the stale event is a duplicate, not applied either.
    assert outcome(post_event(older)) == "duplicate"
    assert state(client, key)[1:3] == ("past_due", 500)


@pytest.mark.parametrize(
    "order",
    [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)],
)
def test_same_second_ranks_created_before_updated_before_deleted(
    order: tuple[int, int, int],
    client: FlaskClient,
    post_event: Callable[..., TestResponse],
    linked: Callable[[str], tuple[Subscription, str]],
) -> None:
    """On one second, created < updated < deleted whatever the arrival order."""
    sub, key = linked(se.BASIL_API_VERSION)
    events = [
        sub.event("customer.subscription.created", "active", JAN, T),
        sub.event("customer.subscription.updated", "active", JAN, T, quantity=2),
        sub.event("customer.subscription.deleted", "canceled", JAN, T, quantity=2),
    ]
    outcomes = {i: outcome(post_event(events[i])) for i in order}
    assert outcomes[order[0]] == "processed"
    assert outcomes[2] == "processed"  # deleted always applies: nothing outranks it
    assert state(client, key)[:3] == ("free", "canceled", 10)


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_same_second_updated_outranks_created(
    api_version: str,
    client: FlaskClient,
    post_event: Callable[..., TestResponse],
    linked: Callable[[str], tuple[Subscription, str]],
) -> None:
    """Log created as stale when updated of the same second came first."""
    sub, key = linked(api_version)
    assert outcome(post_event(sub.event("customer.subscription.updated", "active", JAN, T))) == (
        "processed"
    )
    created = sub.event("customer.subscription.created", "incomplete", JAN, T)
    assert outcome(post_event(created)) == "stale"
    assert state(client, key)[:3] == ("pro", "active", 500)


@pytest.mark.parametrize("first_quantity", [2, 3])
def test_between_equal_ranks_the_later_arrival_wins(
    first_quantity: int,
    client: FlaskClient,
    post_event: Callable[..., TestResponse],
    linked: Callable[[str], tuple[Subscription, str]],
) -> None:
    """Apply two updates of the same second in arrival order: the second one wins."""
    sub, key = linked(se.LEGACY_API_VERSION)
    second_quantity = 5 - first_quantity
    for quantity in (first_quantity, second_quantity):
        event = sub.event("customer.subscription.updated", "active", JAN, T, quantity=quantity)
        assert outcome(post_event(event)) == "processed"
    assert state(client, key)[2] == 500 * second_quantity


@pytest.mark.parametrize(
    ("event_type", "terminal"),
    [
        ("customer.subscription.deleted", "canceled"),
        ("customer.subscription.updated", "incomplete_expired"),
    ],
)
def test_terminal_statuses_are_never_left(
    event_type: str,
    terminal: str,
    client: FlaskClient,
    post_event: Callable[..., TestResponse],
    database: Database,
    linked: Callable[[str], tuple[Subscription, str]],
) -> None:
    """Log anything after canceled or incomplete_expired as stale, even a later event."""
    sub, key = linked(se.BASIL_API_VERSION)
    assert outcome(post_event(sub.event(event_type, terminal, JAN, T))) == "processed"
    later = sub.event("customer.subscription.updated", "active", JAN, T + 3600)
    resumed = sub.event("customer.subscription.resumed", "active", JAN, T + 7200)
    assert outcome(post_event(later)) == "stale"
    assert outcome(post_event(resumed)) == "stale"
    assert logged_as_stale(database, later)
    assert state(client, key)[:3] == ("free", terminal, 10)


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_invoice_before_the_subscription_keeps_its_period(
    api_version: str,
    client: FlaskClient,
    clock: Clock,
    post_event: Callable[..., TestResponse],
    linked: Callable[[str], tuple[Subscription, str]],
) -> None:
    """Keep an early renewal invoice's period when older subscription events arrive."""
    sub, key = linked(api_version)
    clock.set(utc(2025, 2, 1, 2))
    assert outcome(post_event(sub.invoice(FEB, utc(2025, 2, 1, 1)))) == "processed"
    # Only the invoice is known: no status, so nothing is granted yet.
    assert state(client, key)[:2] == ("free", None)
    created = sub.event("customer.subscription.created", "incomplete", JAN, T)
    activated = sub.event("customer.subscription.updated", "active", JAN, T + 5)
    assert outcome(post_event(created)) == "processed"
    assert outcome(post_event(activated)) == "processed"
    assert state(client, key) == (
        "pro",
        "active",
        500,
        "2025-02-01T00:00:00Z",
        "2025-03-01T00:00:00Z",
    )


def test_periods_only_move_forward(
    client: FlaskClient,
    clock: Clock,
    post_event: Callable[..., TestResponse],
    linked: Callable[[str], tuple[Subscription, str]],
) -> None:
    """Ignore an older period, whether it comes on a later event or a late invoice."""
    sub, key = linked(se.BASIL_API_VERSION)
    clock.set(utc(2025, 3, 2))
    march = sub.event("customer.subscription.updated", "active", MAR, utc(2025, 3, 1, 1))
    assert outcome(post_event(march)) == "processed"
    late_invoice = sub.invoice(FEB, utc(2025, 2, 1, 1))
    assert outcome(post_event(late_invoice)) == "processed"
    # A newer event with an older period: its status applies, its period does not.
    odd = sub.event("customer.subscription.updated", "past_due", FEB, utc(2025, 3, 1, 2))
    assert outcome(post_event(odd)) == "processed"
    assert state(client, key) == (
        "pro",
        "past_due",
        500,
        "2025-03-01T00:00:00Z",
        "2025-04-01T00:00:00Z",
    )


# --------------------------------------------------------------------------- property

RANK = {"created": 0, "updated": 1, "paused": 1, "resumed": 1, "deleted": 2}
GRANTING = {"active", "trialing", "past_due"}


@dataclass(frozen=True)
class Step:
    """One event of an abstract history, rendered later for a concrete subscription."""

    kind: str  # a subscription event kind (RANK) or invoice.paid / invoice.payment_failed
    created: int
    api_version: str
    status: str = ""
    quantity: int = 1
    period: int = 0  # index of the month the period starts in (0 = January 2025)
    billing_reason: str = "subscription_cycle"


def month(index: int) -> tuple[int, int]:
    return se.add_months(JAN[0], index), se.add_months(JAN[0], index + 1)


@st.composite
def histories(draw: st.DrawFn) -> list[Step]:
    """A plausible short history of one subscription, in the order Stripe created it.

    Events of one second differ in rank (equal ranks of one second would make the
    outcome depend on arrival order, by design); renewals move the period by an
    invoice, with or without the subscription update that reports the new period.
    """
    version = st.sampled_from(se.API_VERSIONS)
    gaps = st.sampled_from([0, 0, 0, 1, 2, 3600])
    status = draw(st.sampled_from(["incomplete", "trialing", "active"]))
    quantity, period, last_rank = 1, 0, 0
    steps = [Step("created", T, draw(version), status, quantity, period)]

    def add_subscription_event(kind: str) -> None:
        nonlocal last_rank
        gap = draw(gaps)
        if gap == 0 and RANK[kind] <= last_rank:
            gap = 1
        last_rank = RANK[kind]
        steps.append(Step(kind, steps[-1].created + gap, draw(version), status, quantity, period))

    def add_invoice(kind: str, reason: str = "subscription_cycle") -> None:
        created = steps[-1].created + draw(gaps)
        steps.append(Step(kind, created, draw(version), period=period, billing_reason=reason))

    for _ in range(draw(st.integers(1, 6))):
        action = draw(
            st.sampled_from(
                ["update", "update", "renew", "renew", "first_invoice", "fail", "pause", "end"]
            )
        )
        if action == "first_invoice":
            add_invoice("invoice.paid", "subscription_create")
        elif action == "fail":
            add_invoice("invoice.payment_failed")
        elif action == "renew":
            period += 1
            if draw(st.booleans()):
                add_subscription_event("updated")
            add_invoice("invoice.paid")
        elif action == "update":
            status = draw(st.sampled_from(["active", "active", "past_due", "unpaid", "trialing"]))
            quantity = draw(st.integers(1, 3))
            add_subscription_event("updated")
        elif action == "pause":
            resume = status == "paused"
            status = "active" if resume else "paused"
            add_subscription_event("resumed" if resume else "paused")
        elif status == "incomplete" and draw(st.booleans()):
            status = "incomplete_expired"
            add_subscription_event("updated")
            break
        else:
            status = "canceled"
            add_subscription_event("deleted")
            break
    return steps


def render(step: Step, sub: Subscription) -> dict[str, Any]:
    """The Stripe event of ``step`` for ``sub`` (same ids as any other rendering)."""
    built = Subscription(api_version=step.api_version, customer=sub.customer, sub_id=sub.sub_id)
    if step.kind.startswith("invoice."):
        return built.invoice(
            month(step.period),
            step.created,
            event_type=step.kind,
            billing_reason=step.billing_reason,
        )
    return built.event(
        f"customer.subscription.{step.kind}",
        step.status,
        month(step.period),
        step.created,
        start_date=JAN[0],
        quantity=step.quantity,
    )


def expected_state(steps: list[Step], now: datetime) -> tuple[str, str, int, str, str]:
    """What in-order delivery must end in: the last subscription event, the newest period."""
    last = [s for s in steps if not s.kind.startswith("invoice.")][-1]
    # A failed invoice moves nothing; a paid one and every subscription event may.
    newest = max(s.period for s in steps if s.kind != "invoice.payment_failed")
    if last.status in GRANTING:
        start, end = month(newest)
        plan, quota = "pro", 500 * last.quantity
    else:
        start = int(datetime(now.year, now.month, 1, tzinfo=UTC).timestamp())
        end = se.add_months(start, 1)
        plan, quota = "free", 10

    def iso(ts: int) -> str:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    return plan, last.status, quota, iso(start), iso(end)


# No shrinking: each example posts a score of events, so shrinking a failure runs into
# Hypothesis' five-minute cap per backend; histories are short enough to read unshrunk.
@settings(
    max_examples=25,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), steps=histories())
def test_every_arrival_order_converges_to_in_order_delivery(
    data: st.DataObject,
    steps: list[Step],
    client: FlaskClient,
    clock: Clock,
    post_event: Callable[..., TestResponse],
) -> None:
    """Deliver a history in order and shuffled with duplicates: the same usage results."""
    clock.set(utc(2025, 1, 20))
    in_order = Subscription()
    shuffled = Subscription()
    in_order_key, shuffled_key = new_api_key(), new_api_key()
    synced = sync_tenants(
        client,
        [
            {
                "tenant_id": "tnt_" + sub.customer[4:],
                "api_keys": [key],
                "stripe_customer_id": sub.customer,
            }
            for sub, key in ((in_order, in_order_key), (shuffled, shuffled_key))
        ],
    )
    assert synced.status_code == 200

    for step in steps:
        assert post_event(render(step, in_order)).status_code == 200
    expected = usage_of(client, in_order_key)
    del expected["tenant_id"]
    assert tuple(
        expected[k]
        for k in ("plan", "subscription_status", "scans_quota", "period_start", "quota_reset_date")
    ) == expected_state(steps, clock.now)

    events = [render(step, shuffled) for step in steps]
    order = data.draw(st.permutations(range(len(events))), label="order")
    copies = data.draw(st.lists(st.integers(0, len(events) - 1), max_size=3), label="duplicates")
    deliveries = list(order)
    for index in copies:
        position = data.draw(st.integers(0, len(deliveries)), label="at")
        deliveries.insert(position, index)
    outcomes = [outcome(post_event(events[i])) for i in deliveries]
    assert outcomes.count("duplicate") == len(copies)
    actual = usage_of(client, shuffled_key)
    del actual["tenant_id"]
    assert actual == expected
