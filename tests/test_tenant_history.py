"""`tenants show` explains each quota change (issue 14.6): event type, price and quantity."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from click.testing import CliRunner
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import Subscription, new_api_key
from webhook_service.cli import cli

DAY = 86400


def test_each_history_line_names_event_type_price_and_quantity(
    runner: CliRunner, post_event: Callable[..., TestResponse]
) -> None:
    """Explain 1000 = 2 x 500 on the line of the event that doubled the quantity."""
    now = int(datetime.now(UTC).timestamp())
    period = (now - 5 * DAY, now + 25 * DAY)
    sub = Subscription()
    added = runner.invoke(
        cli, ["tenants", "add", "tnt_hist", "--api-key", new_api_key(), "--customer", sub.customer]
    )
    assert added.exit_code == 0
    created = sub.event(
        "customer.subscription.created", "active", period, now - 120, lookup_key="pro_monthly"
    )
    doubled = sub.event(
        "customer.subscription.updated",
        "active",
        period,
        now - 60,
        quantity=2,
        lookup_key="pro_monthly",
    )
    ended = sub.event("customer.subscription.deleted", "canceled", period, now - 30)
    for event in (created, doubled, ended):
        assert post_event(event).json["outcome"] == "processed"

    shown = runner.invoke(cli, ["tenants", "show", "tnt_hist"])
    assert shown.exit_code == 0, shown.output
    history = shown.stdout.split("history:\n", 1)[1].splitlines()
    assert len(history) == 4
    cli_line, created_line, doubled_line, ended_line = history
    assert " cli " in cli_line
    assert "price=" not in cli_line
    price = f"price={se.DEFAULT_PRICE_ID} (pro_monthly)"
    assert created["id"] in created_line
    assert " customer.subscription.created " in created_line
    assert f"quota=500 {price} quantity=1 (500 = 1 x 500)" in created_line
    assert doubled["id"] in doubled_line
    assert " customer.subscription.updated " in doubled_line
    assert f"quota=1000 {price} quantity=2 (1000 = 2 x 500)" in doubled_line
    # Back on the default plan: no subscription decides the quota any more.
    assert " customer.subscription.deleted " in ended_line
    assert "plan=free status=canceled quota=10 period=" in ended_line


def test_history_of_a_sync_names_its_source(runner: CliRunner) -> None:
    """Name the source (cli, sync) where no event caused the change."""
    runner.invoke(cli, ["tenants", "add", "tnt_src", "--api-key", new_api_key()])
    shown = runner.invoke(cli, ["tenants", "show", "tnt_src"])
    [line] = shown.stdout.split("history:\n", 1)[1].splitlines()
    assert line.split()[1:3] == ["cli", "cli"]
