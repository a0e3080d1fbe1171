"""Signup races: whole bursts of a new customer's first events, in parallel, on a fleet.

Stripe sends ``checkout.session.completed``, ``customer.subscription.created``,
``invoice.paid`` and ``customer.subscription.updated`` of a new customer within
milliseconds; they land on different workers of different instances. Two instances
with two gunicorn workers each share the database (SQLite file or PostgreSQL): every
answer must be 2xx, no event failed, and every tenant ends with the right quota and a
history of real changes only (see tests/signup_bursts.py).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests import stripe_events as se
from tests.helpers import SYNC_KEY, WEBHOOK_SECRET
from tests.servers import running_services
from tests.signup_bursts import Burst, check_bursts, fire, sync
from webhook_service.db import Database

pytestmark = pytest.mark.slow

ROUNDS = 3
TENANTS_PER_ROUND = 8


@pytest.fixture
def fleet(database: Database) -> Iterator[list[str]]:
    """Two instances, two workers each, on the test's database."""
    env = {
        "DATABASE_URL": database.url,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "NAT_APP_SYNC_KEY": SYNC_KEY,
    }
    with running_services(env, 2, workers=2) as bases:
        yield bases


def test_parallel_signup_bursts_all_apply(fleet: list[str], database: Database) -> None:
    """Fire whole signup bursts at once across the fleet: all 2xx, none failed, quotas right."""
    rng = random.Random(20251203)
    for round_ in range(ROUNDS):
        bursts = [
            Burst(
                f"tnt_race_{round_}_{i}",
                se.API_VERSIONS[i % 2],
                by_reference=i % 4 < 2,
                known=i % 3 == 0,
            )
            for i in range(TENANTS_PER_ROUND)
        ]
        known = [{"tenant_id": b.tenant_id} for b in bursts if b.known]
        if known:
            sync(fleet[0], known)
        deliveries = [
            (fleet[rng.randrange(len(fleet))], event) for b in bursts for event in b.events
        ]
        rng.shuffle(deliveries)
        results = fire(deliveries)
        assert all(200 <= status < 300 for status, _ in results), results
        check_bursts(fleet[0], database, bursts)


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[bool, bool, str, list[int], list[int], list[float]]:
    """A burst's shape, arrival order, instance of each event and the gap before each."""
    known = draw(st.booleans())
    by_reference = draw(st.booleans())
    api_version = draw(st.sampled_from(se.API_VERSIONS))
    order = draw(st.permutations(range(4)))
    instances = draw(st.lists(st.integers(0, 1), min_size=4, max_size=4))
    gaps = draw(st.lists(st.sampled_from([0.0, 0.0, 0.001, 0.005]), min_size=4, max_size=4))
    return known, by_reference, api_version, list(order), instances, gaps


def test_any_arrival_order_and_instance(fleet: list[str], database: Database) -> None:
    """Permute the order and the instance of one burst's events (sent in parallel)."""
    counter = iter(range(10_000))

    @settings(
        max_examples=12,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(case=arrivals())
    def burst_in_any_order(case: tuple[bool, bool, str, list[int], list[int], list[float]]) -> None:
        known, by_reference, api_version, order, instances, gaps = case
        # Two bursts at once (the second in reverse order) so both shapes meet.
        bursts = [
            Burst(f"tnt_perm_{next(counter)}", api_version, by_reference=by_reference, known=known)
            for _ in range(2)
        ]
        if known:
            sync(fleet[0], [{"tenant_id": b.tenant_id} for b in bursts])
        deliveries, stagger = [], []
        for burst, sequence in ((bursts[0], order), (bursts[1], order[::-1])):
            elapsed = 0.0
            for position, index in enumerate(sequence):
                elapsed += gaps[position]
                deliveries.append((fleet[instances[index] % len(fleet)], burst.events[index]))
                stagger.append(elapsed)
        results = fire(deliveries, stagger)
        assert all(200 <= status < 300 for status, _ in results), (case, results)
        check_bursts(fleet[0], database, bursts)

    burst_in_any_order()
