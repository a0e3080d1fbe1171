"""`webhook-service tenants add|list|show`: quota, usage and change history from the shell."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import SYNC_KEY, Subscription, new_api_key, spend, usage_of
from webhook_service.cli import cli

DAY = 86400


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_add_creates_then_adds_keys(runner: CliRunner, client: FlaskClient) -> None:
    """Create a tenant with a key, then add a second key to it; both keys work."""
    first, second = new_api_key(), new_api_key()
    created = runner.invoke(cli, ["tenants", "add", "tnt_cli", "--api-key", first])
    assert (created.exit_code, created.stdout) == (0, "created tenant tnt_cli\n")
    updated = runner.invoke(
        cli, ["tenants", "add", "tnt_cli", "--api-key", second, "--customer", "cus_Cli0000000001"]
    )
    assert (updated.exit_code, updated.stdout) == (0, "updated tenant tnt_cli\n")
    assert usage_of(client, first)["tenant_id"] == "tnt_cli"
    assert usage_of(client, second)["tenant_id"] == "tnt_cli"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad id", "--api-key", "nat_pk_0123456789"], "TENANT must be"),
        (["tnt_ok", "--api-key", "sk_test_123456789"], "--api-key must be nat_pk_"),
        (["tnt_ok", "--api-key", "nat_pk_short"], "--api-key must be nat_pk_"),
        (["tnt_ok", "--api-key", "nat_pk_0123456789\n"], "--api-key must be nat_pk_"),
        (
            ["tnt_ok", "--api-key", "nat_pk_0123456789", "--customer", "acct_1"],
            "--customer must be a cus_ id",
        ),
    ],
)
def test_add_refuses_bad_input(runner: CliRunner, args: list[str], message: str) -> None:
    """Exit 2 with a one-line reason, creating nothing."""
    result = runner.invoke(cli, ["tenants", "add", *args])
    assert result.exit_code == 2
    assert message in result.stderr
    listed = runner.invoke(cli, ["tenants", "list"])
    assert (listed.exit_code, listed.stdout) == (0, "")
    assert "no tenants" in listed.stderr


def test_list_and_show_print_quota_usage_and_history(
    runner: CliRunner,
    client: FlaskClient,
    post_event: Callable[..., TestResponse],
) -> None:
    """Show plan, usage, period and every change with the event that caused it."""
    now = int(datetime.now(UTC).timestamp())
    period = (now - 5 * DAY, now + 25 * DAY)
    sub = Subscription()
    key = new_api_key()
    assert (
        runner.invoke(
            cli, ["tenants", "add", "tnt_show", "--api-key", key, "--customer", sub.customer]
        ).exit_code
        == 0
    )
    created = sub.event("customer.subscription.created", "active", period, now - 120)
    upgraded = sub.event("customer.subscription.updated", "active", period, now - 60, quantity=2)
    for event in (created, upgraded):
        assert post_event(event).json["outcome"] == "processed"
    assert spend(client, key, 3).status_code == 200

    listed = runner.invoke(cli, ["tenants", "list"])
    assert listed.exit_code == 0
    assert listed.stdout.splitlines() == [
        f"tnt_show                 active   customer={sub.customer:<20} keys=1 plan=pro "
        f"status=active used=3/1000 resets={iso(period[1])}"
    ]

    shown = runner.invoke(cli, ["tenants", "show", "tnt_show"])
    assert shown.exit_code == 0
    lines = shown.stdout.splitlines()
    assert lines[:9] == [
        "tenant:             tnt_show (active)",
        f"stripe customer:    {sub.customer}",
        "api keys:           1",
        "plan:               pro",
        "subscription:       active",
        "scans:              3 used of 1000, 997 left",
        f"period:             {iso(period[0])} .. {iso(period[1])}",
        f"decided by:         price={se.DEFAULT_PRICE_ID} quantity=2 (1000 = 2 x 500)",
        "history:",
    ]
    history = lines[9:]
    assert len(history) == 3
    assert re.search(r"\bcli\b.*plan=free status=- quota=10 ", history[0])
    assert created["id"] in history[1]
    assert "plan=pro status=active quota=500" in history[1]
    assert f"period={iso(period[0])}..{iso(period[1])}" in history[1]
    assert upgraded["id"] in history[2]
    assert "quota=1000" in history[2]


def test_show_unknown_tenant_fails(runner: CliRunner) -> None:
    """Exit 1 naming the tenant that does not exist."""
    result = runner.invoke(cli, ["tenants", "show", "tnt_nobody"])
    assert result.exit_code == 1
    assert "no tenant tnt_nobody" in result.stderr


def test_show_and_list_mark_inactive_tenants(runner: CliRunner, client: FlaskClient) -> None:
    """Print an inactive tenant (synced active: false) with no keys left."""
    response = client.post(
        "/api/v1/tenants/sync",
        json={"tenants": [{"tenant_id": "tnt_off", "active": False}]},
        headers={"X-Sync-Key": SYNC_KEY},
    )
    assert response.status_code == 200
    shown = runner.invoke(cli, ["tenants", "show", "tnt_off"])
    assert shown.exit_code == 0
    assert "tenant:             tnt_off (inactive)" in shown.stdout
    assert "api keys:           0" in shown.stdout
    assert "plan:               free" in shown.stdout
    listed = runner.invoke(cli, ["tenants", "list"])
    assert "inactive" in listed.stdout
    assert "keys=0" in listed.stdout
