"""No accepted spend falls outside every quota window, whatever the service's clock says.

Stripe stamps periods with its own clock; the service counts spends with its own. A
period that starts ahead of the service's clock (clock skew at renewal, Stripe test
clocks) must still count every spend it accepted, and no window may count more than
its quota.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from werkzeug.test import TestResponse

from tests.helpers import Clock, Subscription, spend, usage_of, utc
from webhook_service.db import Database
from webhook_service.models import scan_spends
from webhook_service.quotas.entitlements import Entitlement
from webhook_service.quotas.periods import Window, add_months, billing_window
from webhook_service.quotas.store import scans_used

QUOTA = 500


def at(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def applied(response: TestResponse) -> bool:
    return response.status_code == 200 and response.json["outcome"] == "processed"


def spends_of(database: Database, tenant_id: str) -> list[tuple[datetime, int]]:
    with database.transaction() as conn:
        rows = conn.execute(
            select(scan_spends.c.spent_at, scan_spends.c.count).where(
                scan_spends.c.tenant_id == tenant_id
            )
        ).all()
    return [(row.spent_at, row.count) for row in rows]


def counted_in(database: Database, tenant_id: str, window: Window) -> int:
    """What the service's own reading counts in ``window`` (spends in [start, end))."""
    ent = Entitlement("pro", "active", QUOTA, window)
    with database.transaction() as conn:
        return scans_used(conn, tenant_id, ent)


def test_spends_before_a_period_that_starts_ahead_count_in_it(
    client: FlaskClient,
    clock: Clock,
    database: Database,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
) -> None:
    """Count spends made while the period starts 600 s ahead, now and once it started."""
    now = utc(2025, 3, 10, 12)
    clock.set(now)
    sub = Subscription()
    key = make_tenant("tnt_ahead", customer=sub.customer)
    period = (now + 600, now + 600 + 30 * 86400)
    event = sub.event("customer.subscription.created", "active", period, now + 600)
    assert post_event(event).json["outcome"] == "processed"

    statuses = [spend(client, key, 400).status_code for _ in range(3)]
    assert statuses == [200, 402, 402]
    usage = usage_of(client, key)
    assert (usage["scans_used"], usage["scans_remaining"]) == (400, 100)

    clock.set(now + 601)
    usage = usage_of(client, key)
    assert (usage["scans_used"], usage["period_start"]) == (400, "2025-03-10T12:10:00Z")
    assert spend(client, key, 101).status_code == 402
    assert spend(client, key, 100).status_code == 200


def test_renewal_seen_early_does_not_charge_the_finished_period(
    client: FlaskClient,
    clock: Clock,
    database: Database,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
) -> None:
    """Keep a spend accepted against the next period out of the one that is ending."""
    sub = Subscription()
    key = make_tenant("tnt_early_renewal", customer=sub.customer)
    first = (utc(2025, 1, 1), utc(2025, 2, 1))
    second = (utc(2025, 2, 1), utc(2025, 3, 1))
    clock.set(utc(2025, 1, 20))
    assert applied(
        post_event(sub.event("customer.subscription.created", "active", first, first[0]))
    )
    assert spend(client, key, 500).status_code == 200

    clock.set(second[0] - 300)  # the service's clock is 5 minutes behind Stripe's
    assert applied(
        post_event(sub.event("customer.subscription.updated", "active", second, second[0]))
    )
    assert spend(client, key, 500).status_code == 200
    assert spend(client, key, 1).status_code == 402

    assert counted_in(database, "tnt_early_renewal", Window(at(first[0]), at(first[1]))) == 500
    assert counted_in(database, "tnt_early_renewal", Window(at(second[0]), at(second[1]))) == 500


# --------------------------------------------------------------------------- the property

# Period lengths: a month, a week, a 14-day trial, a 45-day prorated period, a 60-day trial.
LENGTHS = st.sampled_from(["month", 7, 14, 45, 60])
HOUR = 3600


@dataclass(frozen=True)
class Step:
    at: int  # the service's clock
    kind: str  # "event" | "spend"
    index: int  # the period (event) or the spend's number
    count: int = 0


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[tuple[int, int]], list[Step]]:
    """Periods back to back, each announced with the service's clock some hours off
    Stripe's, and spends at times around every period boundary."""
    start = utc(2025, 1, 1) + draw(st.integers(0, 400)) * 86400 + draw(st.integers(0, 86399))
    periods: list[tuple[int, int]] = []
    for _ in range(draw(st.integers(1, 3))):
        length = draw(LENGTHS)
        if length == "month":
            end = int(add_months(at(start), 1).timestamp())
        else:
            end = start + int(length) * 86400
        periods.append((start, end))
        start = end
    offsets = st.integers(-3 * HOUR, 3 * HOUR)
    steps = [
        Step(period[0] + draw(offsets), "event", index) for index, period in enumerate(periods)
    ]
    boundaries = [p[0] for p in periods] + [periods[-1][1]]
    spends = draw(
        st.lists(
            st.tuples(
                st.sampled_from(boundaries), offsets, st.sampled_from([1, 50, 200, 400, 500])
            ),
            min_size=1,
            max_size=8,
        )
    )
    steps += [Step(b + o, "spend", i, count) for i, (b, o, count) in enumerate(spends)]
    # In the service's clock order (events stay in Stripe's: periods are days apart, the
    # offsets hours). Spends before the first event are dropped: the tenant is on the
    # free plan then, with calendar-month windows of its own.
    steps.sort(key=lambda s: (s.at, s.kind != "event", s.index))
    first_event = next(i for i, s in enumerate(steps) if s.kind == "event")
    return periods, steps[first_event:]


def windows_of(periods: list[tuple[int, int]]) -> list[Window]:
    """Every quota window of the periods: each period cut the way the service cuts it."""
    windows: list[Window] = []
    for start, end in periods:
        cursor = at(start)
        while cursor < at(end):
            window = billing_window(at(start), at(end), cursor)
            windows.append(window)
            cursor = window.end
    return windows


# No shrinking: each example posts a few dozen requests on two databases.
@settings(
    max_examples=25,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories())
def test_no_accepted_spend_falls_outside_every_window_nor_past_a_quota(
    history: tuple[list[tuple[int, int]], list[Step]],
    client: FlaskClient,
    clock: Clock,
    database: Database,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
) -> None:
    """Whatever the clock's offset: every accepted spend counts in a window, none past quota.

    Every spend with a timestamp in a window counts in it, and the last window stays in
    force after its end, counting everything since its start.
    """
    periods, steps = history
    sub = Subscription()
    tenant_id = "tnt_" + sub.customer[4:]
    key = make_tenant(tenant_id, customer=sub.customer)
    accepted: list[int] = []
    for step in steps:
        clock.set(step.at)
        if step.kind == "event":
            kind = "created" if step.index == 0 else "updated"
            period = periods[step.index]
            event = sub.event(f"customer.subscription.{kind}", "active", period, period[0])
            assert applied(post_event(event))
            continue
        response = spend(client, key, step.count)
        assert response.status_code in (200, 402), response.json
        if response.status_code == 200:
            accepted.append(step.count)

    stored = spends_of(database, tenant_id)
    assert sorted(count for _, count in stored) == sorted(accepted)
    windows = windows_of(periods)
    for spent_at, count in stored:
        in_a_window = any(w.start <= spent_at < w.end for w in windows)
        assert in_a_window or spent_at >= windows[-1].start, (spent_at, count, windows)
    for window in windows:
        assert counted_in(database, tenant_id, window) <= QUOTA, window
    final = usage_of(client, key)
    assert final["scans_used"] <= final["scans_quota"] == QUOTA
    assert sum(accepted) <= QUOTA * len(windows)


@pytest.mark.parametrize("offset", [-3 * HOUR, -600, -1, 0, 1, 600, 3 * HOUR])
def test_renewal_at_any_clock_offset_keeps_both_periods_within_quota(
    offset: int,
    client: FlaskClient,
    clock: Clock,
    database: Database,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
) -> None:
    """Spend the full quota just before and just after a renewal seen ``offset`` s off."""
    sub = Subscription()
    tenant_id = f"tnt_offset_{offset + 100000}"
    key = make_tenant(tenant_id, customer=sub.customer)
    first = (utc(2025, 1, 1), utc(2025, 2, 1))
    second = (utc(2025, 2, 1), utc(2025, 3, 1))
    clock.set(first[0] + 60)
    assert applied(
        post_event(sub.event("customer.subscription.created", "active", first, first[0]))
    )
    clock.set(second[0] + offset - 1)
    first_spend = spend(client, key, 500).status_code
    clock.set(second[0] + offset)
    assert applied(
        post_event(sub.event("customer.subscription.updated", "active", second, second[0]))
    )
    after = [spend(client, key, 250).status_code for _ in range(3)]
    assert first_spend == 200
    assert after.count(200) <= 2
    for window in (Window(at(first[0]), at(first[1])), Window(at(second[0]), at(second[1]))):
        assert counted_in(database, tenant_id, window) <= QUOTA
    assert sum(c for _, c in spends_of(database, tenant_id)) == 500 + 250 * after.count(200)
