"""Out-of-order delivery: any arrival order, with duplicates, ends in the in-order quota.

Stripe delivers in no particular order and ``created`` has one-second resolution. For
random histories of one subscription (statuses, quantities, periods, events on the same
second, invoices, both payload shapes), the quota the tenant sees after a shuffled
delivery with repeated copies must equal the quota after in-order delivery.

Histories are what Stripe can produce: at most one event per (second, rank) (two events
of equal rank on the same second are told apart only by arrival, by contract), periods
that never go back, ``deleted`` carrying ``canceled`` and ending the subscription, and a
terminal status (``canceled``, ``incomplete_expired``) that never changes again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import Clock, Subscription, usage_of, utc

# The clock is 2025-01-01T12:00Z: P0 is over (it stays in force until Stripe reports
# the next), P1 is the current month, P2 is ahead.
PERIODS = (
    (utc(2024, 12, 1), utc(2025, 1, 1)),
    (utc(2025, 1, 1), utc(2025, 2, 1)),
    (utc(2025, 2, 1), utc(2025, 3, 1)),
)
T0 = utc(2024, 12, 1, 0, 5)
NON_TERMINAL = ("incomplete", "trialing", "active", "past_due", "unpaid", "paused")
TERMINAL = ("canceled", "incomplete_expired")
RANKED_TYPES = {
    0: ("customer.subscription.created",),
    1: (
        "customer.subscription.updated",
        "customer.subscription.paused",
        "customer.subscription.resumed",
    ),
    2: ("customer.subscription.deleted",),
}


@dataclass(frozen=True)
class Step:
    """One event of a history, independent of the subscription's ids."""

    event_type: str
    created: int
    status: str = ""
    quantity: int = 1
    period: int = 0
    cancel_at_period_end: bool = False

    def render(self, sub: Subscription) -> dict[str, Any]:
        """This step as an event of ``sub`` (a fresh event id)."""
        if self.event_type == "invoice.paid":
            return sub.invoice(PERIODS[self.period], self.created)
        return sub.event(
            self.event_type,
            self.status,
            PERIODS[self.period],
            self.created,
            quantity=self.quantity,
            cancel_at_period_end=self.cancel_at_period_end,
            start_date=PERIODS[0][0],
        )


@st.composite
def histories(draw: st.DrawFn) -> list[Step]:
    """A plausible history of one subscription, in Stripe's order."""
    steps: list[Step] = []
    created, rank, period, status = T0, -1, 0, ""
    for _ in range(draw(st.integers(1, 5))):
        gap = draw(st.sampled_from([0, 0, 0, 1, 60, 86400]))
        if gap == 0 and rank >= 1 and draw(st.booleans()):
            gap = 1  # the same second again only half the time it would force a deletion
        if gap:
            created, rank = created + gap, -1
        if draw(st.integers(0, 4)) == 0:  # an invoice.paid for this or the next period
            period = min(2, period + draw(st.integers(0, 1)))
            steps.append(Step("invoice.paid", created, period=period))
            continue
        if status == "deleted":
            break
        if not status:  # mostly the creation first (else it was missed or came late)
            new_rank = draw(st.sampled_from([0, 0, 0, 1]))
        else:  # mostly updates; a deletion ends the subscription
            new_rank = draw(st.sampled_from([r for r in (1, 1, 1, 1, 2) if r > rank]))
        event_type = draw(st.sampled_from(RANKED_TYPES[new_rank]))
        if event_type == "customer.subscription.deleted" or status in TERMINAL:
            new_status = "canceled" if status not in TERMINAL else status
        elif new_rank == 0:  # what a new subscription can be
            new_status = draw(st.sampled_from(["incomplete", "trialing", "active"]))
        else:  # a terminal status (which ends all change) one time in seven
            new_status = draw(st.sampled_from([*NON_TERMINAL, *NON_TERMINAL, *TERMINAL]))
        period = min(2, period + draw(st.integers(0, 1)))
        steps.append(
            Step(
                event_type,
                created,
                new_status,
                quantity=draw(st.integers(1, 3)),
                period=period,
                cancel_at_period_end=draw(st.booleans()),
            )
        )
        rank = new_rank
        status = "deleted" if new_rank == 2 else new_status
    return steps


Case = tuple[list[Step], str, list[int]]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A history, its payload shape, and a shuffled delivery order with repeated copies."""
    history = draw(histories())
    copies = draw(st.lists(st.integers(0, len(history) - 1), max_size=3))
    order = draw(st.permutations([*range(len(history)), *copies]))
    return history, draw(st.sampled_from(se.API_VERSIONS)), order


CREATED, UPDATED = "customer.subscription.created", "customer.subscription.updated"
# Histories whose outcome hangs on one rule, always tried first.
KNOWN_CASES: list[Case] = [
    # created and updated on the same second: the update wins whatever arrives last.
    (
        [Step(CREATED, T0, "incomplete"), Step(UPDATED, T0, "active", quantity=2)],
        se.BASIL_API_VERSION,
        [1, 0, 1],
    ),
    # the renewal's invoice before the update of the old period: periods only move on.
    (
        [Step(UPDATED, T0, "active", period=1), Step("invoice.paid", T0 + 60, period=2)],
        se.LEGACY_API_VERSION,
        [1, 0, 0],
    ),
    # a newer update, then an older one on another second: the older is stale.
    (
        [
            Step(CREATED, T0, "trialing"),
            Step(UPDATED, T0 + 1, "active", quantity=3),
            Step(UPDATED, T0 + 2, "past_due", quantity=2),
        ],
        se.BASIL_API_VERSION,
        [2, 1, 0],
    ),
]


def quota_view(client: FlaskClient, key: str) -> dict[str, Any]:
    """The tenant's usage body without its tenant id."""
    body = usage_of(client, key)
    body.pop("tenant_id")
    return body


@pytest.mark.slow
def test_any_delivery_order_with_duplicates_converges(
    client: FlaskClient,
    post_event: Callable[..., TestResponse],
    make_tenant: Callable[..., str],
    clock: Clock,
) -> None:
    """Deliver random histories in order and shuffled with copies; the quotas are equal."""

    def linked(api_version: str) -> tuple[Subscription, str]:
        sub = Subscription(api_version=api_version)
        return sub, make_tenant("tnt_" + sub.customer[4:], customer=sub.customer)

    @settings(
        max_examples=20,
        deadline=None,
        database=None,
        # No shrinking: a failure is reported at once (unshrunk), so the test stays bounded.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(case=cases())
    def converge(case: Case) -> None:
        history, api_version, shuffled = case
        reference, reference_key = linked(api_version)
        for step in history:
            response = post_event(step.render(reference))
            assert response.status_code == 200, response.json
        expected = quota_view(client, reference_key)

        # The reverse order flips every pair, those on the same second included.
        for order in (shuffled, list(reversed(range(len(history))))):
            sub, key = linked(api_version)
            events = [step.render(sub) for step in history]
            seen: set[int] = set()
            for index in order:
                response = post_event(events[index])
                assert response.status_code == 200, response.json
                outcome = response.json["outcome"]
                assert (outcome == "duplicate") == (index in seen), (index, outcome)
                seen.add(index)
            assert quota_view(client, key) == expected, (history, order)

    for known in KNOWN_CASES:
        converge = example(case=known)(converge)
    converge()
