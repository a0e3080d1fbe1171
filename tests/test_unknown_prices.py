"""Unknown prices (issue 14.1, SPEC §8): a price matters only where it decides a quota.

``stripe trigger customer.subscription.created`` makes a throwaway price and customer.
No tenant owns that customer, so the event is stored and acknowledged. If a tenant takes
the customer later, the subscription grants nothing (the default plan stands) until the
catalog sells its price, and the operator sees why: a warning in ``tenants show`` and
``tenants list``, and a ``subscription_price_not_in_catalog`` log line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.helpers import (
    Clock,
    Subscription,
    count_rows,
    new_api_key,
    sync_tenants,
    usage_of,
    utc,
)
from tests.test_logging import capture
from webhook_service.cli import cli
from webhook_service.db import Database

JAN = (utc(2025, 1, 1), utc(2025, 2, 1))
THROWAWAY = "price_1TriggerThrowaway0001"


def catalog_selling(path: Path, price: str) -> str:
    path.write_text(
        'default_plan = "free"\n[plans.free]\nscans_per_month = 10\n'
        f'[plans.team]\nscans_per_month = 2000\nprices = ["{price}"]\n',
        encoding="utf-8",
    )
    return str(path)


def test_unowned_customer_on_an_unknown_price_is_stored_and_acknowledged(
    post_event: Callable[..., TestResponse], database: Database, clock: Clock
) -> None:
    """Answer 200 processed for a granting subscription no tenant owns, whatever its price."""
    sub = Subscription(price_id=THROWAWAY)
    for event in (
        sub.event("customer.subscription.created", "active", JAN, JAN[0]),
        sub.event("customer.subscription.updated", "active", JAN, JAN[0] + 5, quantity=3),
    ):
        response = post_event(event)
        assert response.status_code == 200, response.json
        assert response.json["outcome"] == "processed"
    assert count_rows(database, "stripe_events", "outcome = 'failed'") == 0
    # Mirrored all the same, so a later link or a fixed catalog needs no replay.
    assert (
        count_rows(
            database,
            "subscriptions",
            "id = :id AND price_id = :price AND quantity = 3",
            id=sub.sub_id,
            price=THROWAWAY,
        )
        == 1
    )


def test_a_tenant_taking_the_customer_later_gets_the_default_plan_and_a_warning(
    app: Flask,
    client: FlaskClient,
    post_event: Callable[..., TestResponse],
    runner: CliRunner,
    clock: Clock,
    make_app: Callable[..., Flask],
    tmp_path: Path,
) -> None:
    """Grant nothing on the unknown price after the link; say so; grant once it is sold."""
    sub = Subscription(price_id=THROWAWAY)
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0])
    assert post_event(created).json["outcome"] == "processed"

    key = new_api_key()
    with capture() as logs:
        response = sync_tenants(
            client,
            [{"tenant_id": "tnt_later", "api_keys": [key], "stripe_customer_id": sub.customer}],
        )
        assert response.status_code == 200
        usage = usage_of(client, key)
    # Never granted silently: the default plan's quota, not a guess.
    assert (usage["plan"], usage["scans_quota"]) == ("free", 10)
    warnings = [
        line for line in logs.lines() if line["event"] == "subscription_price_not_in_catalog"
    ]
    assert warnings
    assert warnings[0]["subscription_id"] == sub.sub_id
    assert warnings[0]["price"] == THROWAWAY
    assert warnings[0]["level"] == "warning"

    shown = runner.invoke(cli, ["tenants", "show", "tnt_later"])
    assert shown.exit_code == 0, shown.output
    assert (
        f"warning:            subscription {sub.sub_id} (active) is on price {THROWAWAY}, "
        "which no plan sells: it grants nothing until the plan catalog (NAT_PLANS_FILE) "
        "lists it"
    ) in shown.stdout.splitlines()
    listed = runner.invoke(cli, ["tenants", "list"])
    assert f"UNKNOWN_PRICE={THROWAWAY}" in listed.stdout

    # Now the tenant's quota depends on the price: a change on it fails until it is sold.
    updated = sub.event("customer.subscription.updated", "active", JAN, JAN[0] + 10, quantity=2)
    failed = post_event(updated)
    assert failed.status_code == 500
    assert f"UNKNOWN_PRICE {THROWAWAY}" in failed.json["message"]

    # The operator adds the price: the mirrored subscription grants with no replay.
    fixed = make_app(NAT_PLANS_FILE=catalog_selling(tmp_path / "plans.toml", THROWAWAY))
    fixed.extensions["nat"].quotas.clock = clock
    usage = usage_of(fixed.test_client(), key)
    assert (usage["plan"], usage["scans_quota"], usage["subscription_status"]) == (
        "team",
        2000,
        "active",
    )
    fixed_env = {**runner.env, "NAT_PLANS_FILE": str(tmp_path / "plans.toml")}
    shown = runner.invoke(cli, ["tenants", "show", "tnt_later"], env=fixed_env)
    assert "warning:" not in shown.stdout


def test_checkout_linking_the_customer_later_is_processed(
    client: FlaskClient, post_event: Callable[..., TestResponse], clock: Clock
) -> None:
    """Link through checkout.session.completed without failing it; the quota stays default."""
    sub = Subscription(price_id=THROWAWAY)
    assert post_event(sub.event("customer.subscription.created", "trialing", JAN, JAN[0])).json[
        "outcome"
    ] == ("processed")
    key = new_api_key()
    assert sync_tenants(client, [{"tenant_id": "tnt_checkout", "api_keys": [key]}]).status_code == (
        200
    )
    linked = post_event(sub.checkout("tnt_checkout", JAN[0] + 30))
    assert (linked.status_code, linked.json["outcome"]) == (200, "processed")
    usage = usage_of(client, key)
    assert (usage["plan"], usage["scans_quota"]) == ("free", 10)
