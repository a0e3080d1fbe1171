"""GET /api/v1/usage and POST /api/v1/usage/scans: quotas, spends, idempotency, races."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import (
    WEBHOOK_SECRET,
    Clock,
    Subscription,
    count_rows,
    spend,
    usage_of,
    utc,
)
from webhook_service.db import Database
from webhook_service.web.app import create_app

JAN = (utc(2025, 1, 1), utc(2025, 2, 1))


def spent(database: Database, tenant_id: str) -> int:
    with database.transaction() as conn:
        return int(
            conn.execute(
                text("SELECT coalesce(sum(count), 0) FROM scan_spends WHERE tenant_id = :t"),
                {"t": tenant_id},
            ).scalar_one()
        )


# --------------------------------------------------------------------------- 402


def test_exhausted_quota_answers_the_exact_402_and_spends_nothing(
    client: FlaskClient, clock: Clock, make_tenant: Callable[..., str], database: Database
) -> None:
    """Refuse a spend the quota cannot cover with the exact body; keep usage as it was."""
    clock.set(utc(2025, 1, 15, 12))
    key = make_tenant("tnt_402")
    assert spend(client, key, 8).json["scans_remaining"] == 2

    refused = spend(client, key, 3)
    assert refused.status_code == 402
    assert refused.json == {
        "error": "QUOTA_EXCEEDED",
        "message": "Monthly scan quota exhausted. Quota resets on 2025-02-01.",
        "quota_reset_date": "2025-02-01T00:00:00Z",
        "status": 402,
    }
    assert spent(database, "tnt_402") == 8
    assert usage_of(client, key)["scans_used"] == 8

    exact = spend(client, key, 2)
    assert exact.status_code == 200
    assert (exact.json["scans_used"], exact.json["scans_remaining"]) == (10, 0)
    assert spend(client, key).status_code == 402
    assert spent(database, "tnt_402") == 10


def test_402_names_the_billing_period_reset(
    client: FlaskClient,
    clock: Clock,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
) -> None:
    """Give the subscription's period end as the reset date, not the calendar month's."""
    sub = Subscription()
    key = make_tenant("tnt_402_pro", customer=sub.customer)
    period = (utc(2025, 1, 10, 8), utc(2025, 2, 10, 8))
    event = sub.event("customer.subscription.created", "active", period, period[0], quantity=1)
    assert post_event(event).json["outcome"] == "processed"
    clock.set(utc(2025, 1, 20))
    assert spend(client, key, 500).status_code == 200
    refused = spend(client, key)
    assert refused.status_code == 402
    assert refused.json == {
        "error": "QUOTA_EXCEEDED",
        "message": "Monthly scan quota exhausted. Quota resets on 2025-02-10.",
        "quota_reset_date": "2025-02-10T08:00:00Z",
        "status": 402,
    }


# --------------------------------------------------------------------------- validation


INVALID_SPEND_BODIES = [
    b'{"count": 0}',
    b'{"count": -1}',
    b'{"count": 1001}',
    b'{"count": 1.5}',
    b'{"count": 1.0}',
    b'{"count": "1"}',
    b'{"count": true}',
    b'{"count": null}',
    b'{"count": [1]}',
    b"[1]",
    b"null",
    b"not json",
    b'{"count": 1',
]


def test_invalid_count_is_400_and_spends_nothing(
    client: FlaskClient, make_tenant: Callable[..., str], database: Database
) -> None:
    """Refuse counts that are not integers from 1 to 1000, and bodies that are not objects."""
    key = make_tenant("tnt_count")
    for payload in INVALID_SPEND_BODIES:
        response = client.post(
            "/api/v1/usage/scans",
            data=payload,
            headers={"X-API-Key": key, "Content-Type": "application/json"},
        )
        assert response.status_code == 400, payload
        assert (response.json["error"], response.json["status"]) == ("INVALID_REQUEST", 400)
        assert isinstance(response.json["message"], str)
        assert response.json["message"]
    assert spent(database, "tnt_count") == 0


def test_count_defaults_to_one_and_accepts_the_maximum(
    client: FlaskClient, make_tenant: Callable[..., str], database: Database
) -> None:
    """Spend one scan without a body; accept count 1000 when the quota covers it."""
    key = make_tenant("tnt_default_count")
    no_body = client.post("/api/v1/usage/scans", headers={"X-API-Key": key})
    assert no_body.status_code == 200
    assert no_body.json["scans_used"] == 1
    empty_object = spend(client, key, None)
    assert empty_object.json["scans_used"] == 2
    # 1000 is a valid count; the free plan cannot cover it: 402, not 400.
    assert spend(client, key, 1000).status_code == 402
    assert spent(database, "tnt_default_count") == 2


# --------------------------------------------------------------------------- idempotency


def test_idempotency_key_repeat_returns_the_first_answer(
    client: FlaskClient, clock: Clock, make_tenant: Callable[..., str], database: Database
) -> None:
    """Answer a repeated Idempotency-Key with the first body and spend nothing more."""
    key = make_tenant("tnt_idem")
    first = spend(client, key, 3, idempotency_key="scan-42")
    assert first.status_code == 200
    assert first.json["scans_used"] == 3
    assert spend(client, key, 1, idempotency_key="scan-43").json["scans_used"] == 4

    again = spend(client, key, 3, idempotency_key="scan-42")
    assert again.status_code == 200
    assert again.json == first.json
    assert spent(database, "tnt_idem") == 4

    # Still the first answer once the quota is gone.
    assert spend(client, key, 6).status_code == 200
    assert spend(client, key, 3, idempotency_key="scan-42").json == first.json
    assert spend(client, key, 1, idempotency_key="scan-44").status_code == 402
    assert spent(database, "tnt_idem") == 10


def test_idempotency_keys_belong_to_one_tenant(
    client: FlaskClient, make_tenant: Callable[..., str], database: Database
) -> None:
    """Let two tenants use the same Idempotency-Key independently."""
    one, two = make_tenant("tnt_idem_a"), make_tenant("tnt_idem_b")
    assert spend(client, one, 2, idempotency_key="same").json["tenant_id"] == "tnt_idem_a"
    assert spend(client, two, 5, idempotency_key="same").json["tenant_id"] == "tnt_idem_b"
    assert (spent(database, "tnt_idem_a"), spent(database, "tnt_idem_b")) == (2, 5)


def test_idempotency_key_length_is_checked(
    client: FlaskClient, make_tenant: Callable[..., str], database: Database
) -> None:
    """Refuse an Idempotency-Key longer than 255 characters; accept 255."""
    key = make_tenant("tnt_idem_len")
    assert spend(client, key, idempotency_key="k" * 256).status_code == 400
    assert spend(client, key, idempotency_key="k" * 255).status_code == 200
    assert spent(database, "tnt_idem_len") == 1


def test_concurrent_repeats_of_one_idempotency_key_spend_once(
    app: Flask, make_tenant: Callable[..., str], database: Database
) -> None:
    """Spend once when eight copies of one request race each other."""
    key = make_tenant("tnt_idem_race")
    bodies = run_concurrently(app, key, 8, idempotency_key="race-1")
    assert [status for status, _ in bodies] == [200] * 8
    assert len({repr(body) for _, body in bodies}) == 1
    assert spent(database, "tnt_idem_race") == 1


# --------------------------------------------------------------------------- races


def run_concurrently(
    app: Flask, api_key: str, threads: int, *, idempotency_key: str | None = None
) -> list[tuple[int, dict[str, object]]]:
    """Spend one scan from ``threads`` threads released at the same moment."""
    barrier = threading.Barrier(threads)
    results: list[tuple[int, dict[str, object]]] = []
    lock = threading.Lock()

    def worker() -> None:
        client = app.test_client()
        barrier.wait()
        response = spend(client, api_key, 1, idempotency_key=idempotency_key)
        with lock:
            results.append((response.status_code, response.json))

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
    assert len(results) == threads
    return results


def test_sixteen_concurrent_spends_never_overshoot(
    app: Flask, make_tenant: Callable[..., str], database: Database
) -> None:
    """Let exactly the quota's worth of 16 simultaneous spends succeed."""
    key = make_tenant("tnt_race")
    results = run_concurrently(app, key, 16)
    assert Counter(status for status, _ in results) == {200: 10, 402: 6}
    assert sorted(body["scans_used"] for status, body in results if status == 200) == list(
        range(1, 11)
    )
    assert spent(database, "tnt_race") == 10
    assert usage_of(app.test_client(), key)["scans_remaining"] == 0


# --------------------------------------------------------------------------- plans


def test_largest_granting_subscription_wins_and_reports_its_status(
    client: FlaskClient,
    clock: Clock,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
) -> None:
    """Grant the largest quota among granting subscriptions, with that one's status."""
    small = Subscription()
    large = Subscription(customer=small.customer, api_version=se.LEGACY_API_VERSION)
    idle = Subscription(customer=small.customer)
    key = make_tenant("tnt_many", customer=small.customer)
    clock.set(utc(2025, 1, 20))
    later = (utc(2025, 1, 5), utc(2025, 2, 5))
    events = [
        small.event("customer.subscription.created", "active", JAN, JAN[0] + 1),
        large.event("customer.subscription.created", "past_due", later, later[0], quantity=3),
        idle.event("customer.subscription.created", "unpaid", JAN, JAN[0] + 2, quantity=9),
    ]
    for event in events:
        assert post_event(event).json["outcome"] == "processed"
    usage = usage_of(client, key)
    assert (usage["plan"], usage["subscription_status"], usage["scans_quota"]) == (
        "pro",
        "past_due",
        1500,
    )
    assert (usage["period_start"], usage["quota_reset_date"]) == (
        "2025-01-05T00:00:00Z",
        "2025-02-05T00:00:00Z",
    )

    ended = large.event("customer.subscription.deleted", "canceled", later, later[0] + 60)
    assert post_event(ended).json["outcome"] == "processed"
    usage = usage_of(client, key)
    assert (usage["plan"], usage["subscription_status"], usage["scans_quota"]) == (
        "pro",
        "active",
        500,
    )
    assert usage["period_start"] == "2025-01-01T00:00:00Z"


def processing_failed(response: TestResponse, event_id: str, price: str) -> None:
    assert response.status_code == 500
    assert response.json["error"] == "PROCESSING_FAILED"
    assert response.json["status"] == 500
    assert response.json["event_id"] == event_id
    assert f"UNKNOWN_PRICE {price}" in response.json["message"]


def test_unknown_price_fails_a_granting_event_until_the_catalog_knows_it(
    client: FlaskClient,
    clock: Clock,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    database: Database,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Fail an active subscription on an unknown price; apply it once the catalog sells it."""
    sub = Subscription(price_id="price_team_monthly")
    key = make_tenant("tnt_unknown_price", customer=sub.customer)

    # Not granting: the price does not matter.
    incomplete = sub.event("customer.subscription.created", "incomplete", JAN, JAN[0])
    assert post_event(incomplete).json["outcome"] == "processed"
    assert usage_of(client, key)["subscription_status"] == "incomplete"

    active = sub.event("customer.subscription.updated", "active", JAN, JAN[0] + 5)
    processing_failed(post_event(active), active["id"], "price_team_monthly")
    assert (
        count_rows(
            database,
            "stripe_events",
            "id = :id AND outcome = 'failed' AND last_error LIKE :e",
            id=active["id"],
            e="%UNKNOWN_PRICE price_team_monthly%",
        )
        == 1
    )
    usage = usage_of(client, key)
    assert (usage["plan"], usage["subscription_status"]) == ("free", "incomplete")
    # Stripe's retry on the same catalog fails again.
    processing_failed(post_event(active), active["id"], "price_team_monthly")

    # The operator adds the price and restarts: Stripe's next retry applies the event.
    plans = tmp_path / "plans.toml"
    plans.write_text(
        'default_plan = "free"\n[plans.free]\nscans_per_month = 10\n'
        '[plans.team]\nscans_per_month = 2000\nprices = ["price_team_monthly"]\n',
        encoding="utf-8",
    )
    fixed = create_app({**env, "NAT_PLANS_FILE": str(plans)})
    try:
        fixed.extensions["nat"].quotas.clock = clock
        fixed.extensions["nat"].event_log.clock = clock
        retry = fixed.test_client().post(
            "/api/v1/billing/webhook",
            data=se.render(active),
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Stripe-Signature": se.sign(se.render(active), WEBHOOK_SECRET),
            },
        )
        assert retry.status_code == 200
        assert retry.json["outcome"] == "processed"
        usage = usage_of(fixed.test_client(), key)
        assert (usage["plan"], usage["subscription_status"], usage["scans_quota"]) == (
            "team",
            "active",
            2000,
        )
    finally:
        fixed.extensions["nat"].database.dispose()


def test_unknown_lookup_key_is_named_when_there_is_no_price_id(
    post_event: Callable[..., TestResponse], make_tenant: Callable[..., str]
) -> None:
    """Name the unknown price id in the failure (UNKNOWN_PRICE price_...)."""
    sub = Subscription(price_id="price_1Unlisted000000")
    make_tenant("tnt_unlisted", customer=sub.customer)
    event = sub.event(
        "customer.subscription.created", "trialing", JAN, JAN[0], lookup_key="not_in_catalog"
    )
    processing_failed(post_event(event), event["id"], "price_1Unlisted000000")
