"""`webhook-service catalog push` (issue 14.2): the catalog's products and prices in Stripe.

Against the local Stripe stand-in (tests/stripe_stub.py), which creates products and
prices, searches prices by lookup key and answers a repeated idempotency key as Stripe does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask

from tests.helpers import SYNC_KEY
from tests.stripe_stub import StripeStub
from webhook_service.cli import cli
from webhook_service.plans import PlanCatalogError, StripePrice, load_catalog, parse_catalog

STRIPE_KEY = "sk_test_stub_51NatCatalog"
API_KEY = "nat_pk_catalog_tenant_key_0001"


@pytest.fixture
def env(env: dict[str, str], stripe_stub: StripeStub) -> dict[str, str]:
    """The built-in catalog, a test-mode key and the stand-in's address."""
    return {**env, "STRIPE_API_KEY": STRIPE_KEY, "STRIPE_API_BASE": stripe_stub.base_url}


def posts(stub: StripeStub) -> list[str]:
    return [r.path for r in stub.requests if r.method == "POST"]


def test_dry_run_lists_what_would_be_created_and_creates_nothing(
    runner: CliRunner, stripe_stub: StripeStub
) -> None:
    """Print the product and both prices as `would create`; send no POST."""
    result = runner.invoke(cli, ["catalog", "push", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "product nat_pro (NAT Pro): would create",
        "price pro_monthly (4900 usd / month): would create",
        "price pro_yearly (49000 usd / year): would create",
    ]
    assert "test mode" in result.stderr
    assert "dry run: 3 to create, 0 already there, 0 differing" in result.stderr
    assert posts(stripe_stub) == []


def test_push_creates_products_and_prices_once(runner: CliRunner, stripe_stub: StripeStub) -> None:
    """Create the product and prices with their lookup keys; a second push creates nothing."""
    first = runner.invoke(cli, ["catalog", "push"])
    assert first.exit_code == 0, first.output
    assert posts(stripe_stub) == ["/v1/products", "/v1/prices", "/v1/prices"]
    assert stripe_stub.products["nat_pro"]["name"] == "NAT Pro"
    monthly = stripe_stub.price_objects["pro_monthly"]
    assert (monthly["unit_amount"], monthly["currency"], monthly["product"]) == (
        4900,
        "usd",
        "nat_pro",
    )
    assert monthly["recurring"]["interval"] == "month"
    assert stripe_stub.price_objects["pro_yearly"]["recurring"]["interval"] == "year"
    assert f"price pro_monthly (4900 usd / month): created {monthly['id']}" in first.stdout
    # Every create carries an idempotency key: a retried create makes one price.
    for request in stripe_stub.requests:
        if request.method == "POST":
            assert request.headers.get("Idempotency-Key", "").startswith("nat-catalog-")

    second = runner.invoke(cli, ["catalog", "push"])
    assert second.exit_code == 0, second.output
    assert posts(stripe_stub) == ["/v1/products", "/v1/prices", "/v1/prices"]
    assert second.stdout.splitlines() == [
        "product nat_pro (NAT Pro): exists",
        f"price pro_monthly (4900 usd / month): exists as {monthly['id']}",
        "price pro_yearly (49000 usd / year): exists as "
        f"{stripe_stub.price_objects['pro_yearly']['id']}",
    ]
    assert "0 created, 3 already there, 0 differing" in second.stderr


def test_a_price_with_other_terms_is_reported_and_left_alone(
    runner: CliRunner, stripe_stub: StripeStub
) -> None:
    """Exit 1 naming the differing price; create the rest, change nothing of Stripe's."""
    stripe_stub.products["nat_pro"] = {"id": "nat_pro", "object": "product", "name": "NAT Pro"}
    stripe_stub.price_objects["pro_monthly"] = {
        "id": "price_1OldMonthly",
        "object": "price",
        "active": True,
        "product": "nat_pro",
        "unit_amount": 3900,
        "currency": "usd",
        "lookup_key": "pro_monthly",
        "recurring": {"interval": "month", "interval_count": 1},
    }
    result = runner.invoke(cli, ["catalog", "push"])
    assert result.exit_code == 1
    [conflict] = [line for line in result.stdout.splitlines() if "price_1OldMonthly" in line]
    assert conflict.startswith("price pro_monthly (4900 usd / month): Stripe's price_1OldMonthly")
    assert "3900 usd" in conflict
    assert stripe_stub.price_objects["pro_monthly"]["unit_amount"] == 3900
    assert posts(stripe_stub) == ["/v1/prices"]  # pro_yearly only
    assert "1 created, 1 already there, 1 differing" in result.stderr


def test_live_key_needs_live_flag_and_missing_key_is_one_line(runner: CliRunner) -> None:
    """Refuse a live-mode key without --live, and a missing key, with one line each."""
    live = runner.invoke(cli, ["catalog", "push"], env={"STRIPE_API_KEY": "sk_live_x"})
    assert live.exit_code == 2
    assert live.stderr.strip().splitlines() == [
        "STRIPE_API_KEY is a live-mode key: push to a test-mode key first, then pass --live"
    ]
    unset = runner.invoke(cli, ["catalog", "push"], env={"STRIPE_API_KEY": ""})
    assert unset.exit_code == 2
    assert "STRIPE_API_KEY is not set" in unset.stderr


def test_checkout_with_a_lookup_key_uses_the_pushed_price(
    runner: CliRunner, stripe_stub: StripeStub, app: Flask
) -> None:
    """After a push, the README's checkout (price_id "pro_monthly") opens a session."""
    assert runner.invoke(cli, ["catalog", "push"]).exit_code == 0
    client = app.test_client()
    synced = client.post(
        "/api/v1/tenants/sync",
        json={"tenants": [{"tenant_id": "tnt_cat", "api_keys": [API_KEY]}]},
        headers={"X-Sync-Key": SYNC_KEY},
    )
    assert synced.status_code == 200
    response = client.post(
        "/api/v1/billing/checkout",
        json={
            "price_id": "pro_monthly",
            "success_url": "https://app.example/ok",
            "cancel_url": "https://app.example/plans",
        },
        headers={"X-API-Key": API_KEY},
    )
    assert response.status_code == 200, response.json
    [session] = stripe_stub.calls("POST", "/v1/checkout/sessions")
    assert session.params["line_items[0][price]"] == stripe_stub.price_objects["pro_monthly"]["id"]


# --------------------------------------------------------------------------- catalog format


def test_builtin_catalog_describes_its_stripe_prices() -> None:
    """Ship pro's monthly and yearly prices; their lookup keys are prices the plan sells."""
    pro = load_catalog(None).get("pro")
    assert pro is not None
    assert pro.product_name == "NAT Pro"
    assert pro.stripe_prices == (
        StripePrice("pro_monthly", 4900, "usd", "month"),
        StripePrice("pro_yearly", 49000, "usd", "year"),
    )
    assert {"pro_monthly", "pro_yearly"} <= set(pro.prices)


def test_stripe_price_lookup_keys_join_the_plans_prices() -> None:
    """Sell a lookup key defined only under stripe_prices (no need to repeat it in prices)."""
    catalog = parse_catalog(
        {
            "default_plan": "free",
            "plans": {
                "free": {"scans_per_month": 1},
                "team": {
                    "scans_per_month": 2000,
                    "stripe_prices": {
                        "team_quarterly": {
                            "unit_amount": 30000,
                            "currency": "eur",
                            "interval": "month",
                            "interval_count": 3,
                        }
                    },
                },
            },
        }
    )
    plan = catalog.plan_for_price(None, "team_quarterly")
    assert plan is not None
    assert plan.name == "team"


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ({"unit_amount": -1, "currency": "usd", "interval": "month"}, "unit_amount"),
        ({"unit_amount": 100, "currency": "USD", "interval": "month"}, "currency"),
        ({"unit_amount": 100, "currency": "usd", "interval": "monthly"}, "interval"),
        ({"unit_amount": 100, "currency": "usd", "interval": "week"}, "interval"),
        ({"unit_amount": 100, "currency": "usd", "interval": "day"}, "interval"),
        ({"unit_amount": 100, "currency": "usd", "interval": "month", "trial": 3}, "unknown"),
        (
            {"unit_amount": 100, "currency": "usd", "interval": "month", "interval_count": 0},
            "interval_count",
        ),
    ],
)
def test_malformed_stripe_prices_stop_start_up(price: dict[str, object], message: str) -> None:
    """Refuse a stripe_prices table that could not create a price, naming the key."""
    with pytest.raises(PlanCatalogError, match=message) as raised:
        parse_catalog(
            {
                "default_plan": "free",
                "plans": {
                    "free": {"scans_per_month": 1},
                    "pro": {"scans_per_month": 5, "stripe_prices": {"pro_m": price}},
                },
            }
        )
    assert "[plans.pro.stripe_prices.pro_m]" in str(raised.value)


def test_catalog_file_with_stripe_prices_round_trips(tmp_path: Path) -> None:
    """Read the documented TOML shape from a file (NAT_PLANS_FILE)."""
    path = tmp_path / "plans.toml"
    path.write_text(
        'default_plan = "free"\n[plans.free]\nscans_per_month = 10\n'
        '[plans.team]\nscans_per_month = 2000\nproduct_name = "NAT Team"\n'
        '[plans.team.stripe_prices.team_monthly]\nunit_amount = 9900\ncurrency = "usd"\n'
        'interval = "month"\n',
        encoding="utf-8",
    )
    team = load_catalog(str(path)).get("team")
    assert team is not None
    assert team.prices == ("team_monthly",)
    assert team.stripe_prices == (StripePrice("team_monthly", 9900, "usd", "month"),)
