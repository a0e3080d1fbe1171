"""Quota windows: calendar months, billing periods and monthly windows of yearly periods."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import Clock, Subscription, spend, usage_of, utc
from webhook_service.quotas.periods import (
    Window,
    add_months,
    billing_window,
    calendar_month,
    monthly_window,
)


def d(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def naive(year: int) -> datetime:
    """Jan 1 of ``year`` without a zone: hypothesis bounds are naive, zones come apart."""
    return datetime(year, 1, 1, tzinfo=UTC).replace(tzinfo=None)


# --------------------------------------------------------------------------- add_months


@pytest.mark.parametrize(
    ("anchor", "months", "expected"),
    [
        (d(2025, 1, 31), 1, d(2025, 2, 28)),
        (d(2024, 1, 31), 1, d(2024, 2, 29)),
        (d(2025, 1, 31), 2, d(2025, 3, 31)),  # counted from the anchor, not chained
        (d(2025, 1, 31), 3, d(2025, 4, 30)),
        (d(2025, 11, 15, 9, 30), 3, d(2026, 2, 15, 9, 30)),
        (d(2025, 3, 31), -1, d(2025, 2, 28)),
        (d(2025, 1, 15), -1, d(2024, 12, 15)),
        (d(2024, 2, 29), 12, d(2025, 2, 28)),
        (d(2025, 6, 30), 0, d(2025, 6, 30)),
    ],
)
def test_add_months_clamps_the_day(anchor: datetime, months: int, expected: datetime) -> None:
    """Move by calendar months, clamping the day to the target month's length."""
    assert add_months(anchor, months) == expected


# --------------------------------------------------------------------------- calendar months


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (d(2025, 1, 15, 12), d(2025, 1, 1), d(2025, 2, 1)),
        (d(2025, 2, 1), d(2025, 2, 1), d(2025, 3, 1)),
        (d(2025, 1, 31, 23, 59), d(2025, 1, 1), d(2025, 2, 1)),
        (d(2025, 12, 31, 23, 59), d(2025, 12, 1), d(2026, 1, 1)),
        (d(2024, 2, 29, 12), d(2024, 2, 1), d(2024, 3, 1)),
    ],
)
def test_calendar_month_is_the_utc_month(now: datetime, start: datetime, end: datetime) -> None:
    """Return the UTC month around ``now``, from the 1st 00:00Z to the next 1st."""
    assert calendar_month(now) == Window(start, end)


def test_calendar_month_converts_to_utc_first() -> None:
    """Use UTC even when ``now`` carries another offset."""
    paris_new_year = datetime(2025, 2, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))
    assert calendar_month(paris_new_year) == Window(d(2025, 1, 1), d(2025, 2, 1))


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=naive(2000), max_value=naive(2100), timezones=st.just(UTC)))
def test_calendar_month_contains_now(now: datetime) -> None:
    """Contain ``now`` in a window from one 1st-of-month midnight to the next."""
    window = calendar_month(now)
    assert window.start <= now < window.end
    assert (window.start.day, window.start.hour, window.start.minute) == (1, 0, 0)
    assert (window.end.day, window.end.hour) == (1, 0)
    assert 28 <= (window.end - window.start).days <= 31


# --------------------------------------------------------------------------- monthly windows

YEAR_FROM_JAN_31 = [
    (d(2025, 1, 31), d(2025, 2, 28)),
    (d(2025, 2, 28), d(2025, 3, 31)),
    (d(2025, 3, 31), d(2025, 4, 30)),
    (d(2025, 4, 30), d(2025, 5, 31)),
    (d(2025, 5, 31), d(2025, 6, 30)),
    (d(2025, 6, 30), d(2025, 7, 31)),
    (d(2025, 7, 31), d(2025, 8, 31)),
    (d(2025, 8, 31), d(2025, 9, 30)),
    (d(2025, 9, 30), d(2025, 10, 31)),
    (d(2025, 10, 31), d(2025, 11, 30)),
    (d(2025, 11, 30), d(2025, 12, 31)),
    (d(2025, 12, 31), d(2026, 1, 31)),
]


@pytest.mark.parametrize(("start", "end"), YEAR_FROM_JAN_31)
def test_yearly_period_from_jan_31_has_month_end_windows(start: datetime, end: datetime) -> None:
    """Cut a year from Jan 31 into windows ending Feb 28, Mar 31, Apr 30, ..."""
    period = (d(2025, 1, 31), d(2026, 1, 31))
    for now in (start, start + (end - start) / 2, end - timedelta(seconds=1)):
        assert monthly_window(*period, now) == Window(start, end)


def test_leap_year_window_ends_feb_29() -> None:
    """End the first window of a year anchored Jan 31 2024 on Feb 29."""
    period = (d(2024, 1, 31), d(2025, 1, 31))
    assert monthly_window(*period, d(2024, 2, 10)) == Window(d(2024, 1, 31), d(2024, 2, 29))
    assert monthly_window(*period, d(2024, 2, 29)) == Window(d(2024, 2, 29), d(2024, 3, 31))


def test_last_window_is_clipped_at_the_period_end() -> None:
    """Clip the last window at a period end that is not a whole number of months away."""
    period = (d(2025, 1, 31), d(2026, 1, 15))
    assert monthly_window(*period, d(2026, 1, 10)) == Window(d(2025, 12, 31), d(2026, 1, 15))
    assert monthly_window(*period, d(2025, 12, 30)) == Window(d(2025, 11, 30), d(2025, 12, 31))


def test_outside_the_period_the_nearest_window_applies() -> None:
    """Use the first window before the period, and keep the last one after it."""
    period = (d(2025, 1, 31), d(2026, 1, 31))
    assert monthly_window(*period, d(2025, 1, 1)) == Window(d(2025, 1, 31), d(2025, 2, 28))
    assert monthly_window(*period, d(2026, 3, 1)) == Window(d(2025, 12, 31), d(2026, 1, 31))


def test_windows_keep_the_time_of_day_of_the_anchor() -> None:
    """Anchor windows at the period start's time of day, not at midnight."""
    period = (d(2025, 3, 10, 14, 30), d(2026, 3, 10, 14, 30))
    assert monthly_window(*period, d(2025, 4, 10, 14, 29)) == Window(
        d(2025, 3, 10, 14, 30), d(2025, 4, 10, 14, 30)
    )
    assert monthly_window(*period, d(2025, 4, 10, 14, 30)).start == d(2025, 4, 10, 14, 30)


@settings(max_examples=150, deadline=None)
@given(
    start=st.datetimes(min_value=naive(2020), max_value=naive(2030), timezones=st.just(UTC)).map(
        lambda t: t.replace(microsecond=0)
    ),
    years=st.integers(1, 2),
    millionths=st.integers(0, 999_999),
)
def test_monthly_windows_tile_a_long_period(start: datetime, years: int, millionths: int) -> None:
    """Tile the period with windows that start on anchor months and contain ``now``."""
    end = add_months(start, 12 * years)
    tiles: list[Window] = []
    cursor = start
    while cursor < end:
        window = monthly_window(start, end, cursor)
        assert window.start == cursor
        tiles.append(window)
        cursor = window.end
    assert len(tiles) == 12 * years
    assert [t.start for t in tiles] == [add_months(start, k) for k in range(12 * years)]
    assert tiles[-1].end == end
    assert all(27 <= (t.end - t.start).days <= 31 for t in tiles)

    now = start + (end - start) * millionths // 1_000_000
    window = monthly_window(start, end, now)
    assert window.start <= now < window.end
    assert window in tiles


# --------------------------------------------------------------------------- billing windows


@pytest.mark.parametrize(
    ("period", "now", "expected"),
    [
        # A yearly period: monthly windows.
        ((d(2025, 1, 31), d(2026, 1, 31)), d(2025, 4, 15), Window(d(2025, 3, 31), d(2025, 4, 30))),
        # A 60-day trial (on any price): two months, then the day left.
        ((d(2025, 1, 10), d(2025, 3, 11)), d(2025, 1, 20), Window(d(2025, 1, 10), d(2025, 2, 10))),
        ((d(2025, 1, 10), d(2025, 3, 11)), d(2025, 2, 10), Window(d(2025, 2, 10), d(2025, 3, 10))),
        ((d(2025, 1, 10), d(2025, 3, 11)), d(2025, 3, 10), Window(d(2025, 3, 10), d(2025, 3, 11))),
        # Six months of a monthly price (e.g. a billing anchor far ahead): six windows.
        ((d(2025, 1, 31), d(2025, 7, 31)), d(2025, 4, 15), Window(d(2025, 3, 31), d(2025, 4, 30))),
        # 26 weeks: monthly windows, the last clipped at the period end.
        ((d(2025, 1, 1), d(2025, 7, 2)), d(2025, 7, 1, 12), Window(d(2025, 7, 1), d(2025, 7, 2))),
        # 32 days: a month, then one day.
        ((d(2025, 3, 1), d(2025, 4, 2)), d(2025, 4, 1, 12), Window(d(2025, 4, 1), d(2025, 4, 2))),
        # A monthly price anchored on the 31st: Feb 28 -> Mar 31 is one month (31 days).
        ((d(2025, 2, 28), d(2025, 3, 31)), d(2025, 3, 30), Window(d(2025, 2, 28), d(2025, 3, 31))),
        ((d(2025, 1, 31), d(2025, 2, 28)), d(2025, 2, 1), Window(d(2025, 1, 31), d(2025, 2, 28))),
        # A week, a 7-day trial, one day: the period itself.
        ((d(2025, 5, 5), d(2025, 5, 12)), d(2025, 5, 6), Window(d(2025, 5, 5), d(2025, 5, 12))),
        ((d(2025, 5, 5), d(2025, 5, 6)), d(2025, 5, 5, 1), Window(d(2025, 5, 5), d(2025, 5, 6))),
    ],
)
def test_billing_window_cuts_periods_longer_than_a_month(
    period: tuple[datetime, datetime], now: datetime, expected: Window
) -> None:
    """Cut by the period's length, whatever the price: longer than 31 days into months."""
    assert billing_window(*period, now) == expected


@settings(max_examples=200, deadline=None)
@given(
    start=st.datetimes(min_value=naive(2020), max_value=naive(2030), timezones=st.just(UTC)).map(
        lambda t: t.replace(microsecond=0)
    ),
    seconds=st.integers(1, 800 * 86400),
)
def test_billing_windows_of_any_period_tile_it_a_month_at_most_each(
    start: datetime, seconds: int
) -> None:
    """Tile any period with windows of at most a month, anchored at its start."""
    end = start + timedelta(seconds=seconds)
    tiles: list[Window] = []
    cursor = start
    while cursor < end:
        window = billing_window(start, end, cursor)
        assert window.start == cursor < window.end <= end
        tiles.append(window)
        cursor = window.end
    assert tiles[-1].end == end
    assert all(t.end - t.start <= timedelta(days=31) for t in tiles)
    if end - start <= timedelta(days=31):
        assert tiles == [Window(start, end)]
    else:
        assert [t.start for t in tiles] == [add_months(start, k) for k in range(len(tiles))]


# --------------------------------------------------------------------------- through the API

YEAR = (utc(2025, 1, 31), utc(2026, 1, 31))


@pytest.fixture
def env(env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """A catalog whose pro plan is sold yearly under the lookup key pro_yearly."""
    plans = tmp_path / "plans.toml"
    plans.write_text(
        'default_plan = "free"\n'
        "[plans.free]\nscans_per_month = 10\n"
        '[plans.pro]\nscans_per_month = 500\nprices = ["price_pro_monthly", "pro_yearly"]\n',
        encoding="utf-8",
    )
    return {**env, "NAT_PLANS_FILE": str(plans)}


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_yearly_subscription_resets_monthly_on_month_ends(
    api_version: str,
    client: FlaskClient,
    clock: Clock,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
) -> None:
    """Report monthly windows of a yearly price anchored Jan 31, each starting at zero."""
    sub = Subscription(api_version=api_version, price_id="price_1YearlyPro0000", interval="year")
    key = make_tenant("tnt_yearly", customer=sub.customer)
    event = sub.event(
        "customer.subscription.created", "active", YEAR, YEAR[0] + 5, lookup_key="pro_yearly"
    )
    assert post_event(event).json["outcome"] == "processed"

    clock.set(utc(2025, 2, 10))
    usage = usage_of(client, key)
    assert (usage["plan"], usage["scans_quota"]) == ("pro", 500)
    assert (usage["period_start"], usage["quota_reset_date"]) == (
        "2025-01-31T00:00:00Z",
        "2025-02-28T00:00:00Z",
    )
    assert spend(client, key, 7).json["scans_used"] == 7

    clock.set(utc(2025, 2, 28))
    usage = usage_of(client, key)
    assert (usage["period_start"], usage["quota_reset_date"], usage["scans_used"]) == (
        "2025-02-28T00:00:00Z",
        "2025-03-31T00:00:00Z",
        0,
    )
    clock.set(utc(2025, 4, 29, 23, 59))
    usage = usage_of(client, key)
    assert (usage["period_start"], usage["quota_reset_date"]) == (
        "2025-03-31T00:00:00Z",
        "2025-04-30T00:00:00Z",
    )
    clock.set(utc(2026, 1, 30))
    usage = usage_of(client, key)
    assert (usage["period_start"], usage["quota_reset_date"]) == (
        "2025-12-31T00:00:00Z",
        "2026-01-31T00:00:00Z",
    )


def test_yearly_window_is_clipped_when_the_period_is_cut_short(
    client: FlaskClient,
    clock: Clock,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
) -> None:
    """End the last monthly window at the period end when that comes first."""
    sub = Subscription(price_id="price_pro_monthly", interval="year")
    key = make_tenant("tnt_clipped", customer=sub.customer)
    period = (utc(2025, 1, 31), utc(2026, 1, 15))
    event = sub.event("customer.subscription.updated", "active", period, period[0] + 60)
    assert post_event(event).json["outcome"] == "processed"
    clock.set(utc(2026, 1, 10))
    usage = usage_of(client, key)
    assert (usage["period_start"], usage["quota_reset_date"]) == (
        "2025-12-31T00:00:00Z",
        "2026-01-15T00:00:00Z",
    )


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_long_trial_on_a_monthly_price_gets_a_quota_a_month(
    api_version: str,
    client: FlaskClient,
    clock: Clock,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
) -> None:
    """Cut a 60-day trial on a monthly price into months (the last clipped), each a quota."""
    sub = Subscription(api_version=api_version, interval="month")
    key = make_tenant("tnt_long_trial", customer=sub.customer)
    trial = (utc(2025, 1, 10), utc(2025, 3, 11))
    event = sub.event(
        "customer.subscription.created",
        "trialing",
        trial,
        trial[0],
        trial_start=trial[0],
        trial_end=trial[1],
    )
    assert post_event(event).json["outcome"] == "processed"

    clock.set(utc(2025, 1, 20))
    usage = usage_of(client, key)
    assert (usage["subscription_status"], usage["scans_quota"]) == ("trialing", 500)
    assert (usage["period_start"], usage["quota_reset_date"]) == (
        "2025-01-10T00:00:00Z",
        "2025-02-10T00:00:00Z",
    )
    assert spend(client, key, 500).status_code == 200
    assert spend(client, key, 1).status_code == 402

    clock.set(utc(2025, 2, 10, 0, 0, 1))
    usage = usage_of(client, key)
    assert (usage["period_start"], usage["quota_reset_date"], usage["scans_used"]) == (
        "2025-02-10T00:00:00Z",
        "2025-03-10T00:00:00Z",
        0,
    )
    assert spend(client, key, 500).status_code == 200
    assert spend(client, key, 1).status_code == 402

    clock.set(utc(2025, 3, 10, 12))
    usage = usage_of(client, key)
    assert (usage["period_start"], usage["quota_reset_date"], usage["scans_used"]) == (
        "2025-03-10T00:00:00Z",
        "2025-03-11T00:00:00Z",
        0,
    )


@pytest.mark.parametrize(
    ("period", "at", "window"),
    [
        # A 45-day prorated first period: a month, then 15 days.
        ((utc(2025, 1, 5), utc(2025, 2, 19)), utc(2025, 2, 6), ("2025-02-05", "2025-02-19")),
        # A monthly price anchored on the 31st: Feb 28 -> Mar 31 is one window.
        ((utc(2025, 2, 28), utc(2025, 3, 31)), utc(2025, 3, 29), ("2025-02-28", "2025-03-31")),
        # A 14-day trial: one window.
        ((utc(2025, 3, 1), utc(2025, 3, 15)), utc(2025, 3, 14), ("2025-03-01", "2025-03-15")),
    ],
)
def test_periods_of_unusual_length_through_the_api(
    period: tuple[int, int],
    at: int,
    window: tuple[str, str],
    client: FlaskClient,
    clock: Clock,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
) -> None:
    """Report the window a period of any length gives at a time inside it."""
    sub = Subscription(interval="month")
    key = make_tenant("tnt_unusual", customer=sub.customer)
    event = sub.event("customer.subscription.updated", "active", period, period[0] + 60)
    assert post_event(event).json["outcome"] == "processed"
    clock.set(at)
    usage = usage_of(client, key)
    assert (usage["period_start"], usage["quota_reset_date"]) == (
        f"{window[0]}T00:00:00Z",
        f"{window[1]}T00:00:00Z",
    )
