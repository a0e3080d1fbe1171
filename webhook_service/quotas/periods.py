"""Quota windows: calendar months, billing periods, and monthly windows of longer periods."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True)
class Window:
    """``[start, end)``: the spends counted against one quota."""

    start: datetime
    end: datetime


def add_months(anchor: datetime, months: int) -> datetime:
    """``anchor`` plus ``months`` calendar months, the day clamped to the month's length."""
    index = anchor.month - 1 + months
    year, month = anchor.year + index // 12, index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def calendar_month(now: datetime) -> Window:
    """The UTC calendar month that contains ``now``."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return Window(start, add_months(start, 1))


def monthly_window(period_start: datetime, period_end: datetime, now: datetime) -> Window:
    """The monthly window of a long (e.g. yearly) period that holds ``now``.

    Windows are anchored at the period start (each the same day of the month, clamped
    to the month's length, counted from the anchor so the 31st stays the 31st where the
    month has one); the last is clipped at the period end. Before the period the first
    window applies; after it, the last stays in force until Stripe reports a new period.
    """
    months = 0
    start = period_start
    while True:
        following = add_months(period_start, months + 1)
        if following >= period_end or following > now:
            return Window(start, min(following, period_end))
        months += 1
        start = following


# The longest calendar month. A period no longer than this is one window: a monthly
# price anchored on the 31st bills Feb 28 -> Mar 31, which is one month, not one and a bit.
LONGEST_MONTH = timedelta(days=31)


def billing_window(period_start: datetime, period_end: datetime, now: datetime) -> Window:
    """The window of a granting subscription's period that applies at ``now``.

    A period longer than a month (:data:`LONGEST_MONTH`) is cut into monthly windows
    anchored at its start (:func:`monthly_window`), whatever the price's interval: a
    yearly price, a long trial on a monthly one, a long prorated first period. Any
    shorter period is a single window.
    """
    if period_end - period_start > LONGEST_MONTH:
        return monthly_window(period_start, period_end, now)
    return Window(period_start, period_end)
