"""The plan catalog: parsing, validation and price lookup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from webhook_service.config import ConfigError, load_settings
from webhook_service.plans import PlanCatalog, PlanCatalogError, load_catalog, parse_catalog


@pytest.fixture
def catalog() -> PlanCatalog:
    return parse_catalog(
        {
            "default_plan": "free",
            "plans": {
                "free": {"scans_per_month": 10},
                "pro": {"scans_per_month": 500, "prices": ["price_pro_monthly", "pro_yearly"]},
                "team": {"scans_per_month": 2000, "prices": ["price_team", "team_monthly"]},
            },
        }
    )


def test_builtin_catalog_ships_free_and_pro() -> None:
    """Load the built-in catalog: free by default, pro at 500 scans for its prices."""
    catalog = load_catalog(None)
    assert catalog.default_plan.name == "free"
    assert catalog.default_plan.scans_per_month == 10
    pro = catalog.get("pro")
    assert pro is not None
    assert pro.scans_per_month == 500
    for price in ("price_pro_monthly", "pro_monthly", "price_pro_yearly", "pro_yearly"):
        assert catalog.plan_for_price(price) == pro
    assert catalog.get("enterprise") is None


def test_price_id_then_lookup_key(catalog: PlanCatalog) -> None:
    """Find a plan by price id, else by lookup key; the price id decides when both match."""
    assert catalog.plan_for_price("price_team") == catalog.get("team")
    assert catalog.plan_for_price("price_unknown", "team_monthly") == catalog.get("team")
    assert catalog.plan_for_price("price_pro_monthly", "team_monthly") == catalog.get("pro")
    assert catalog.plan_for_price(None, "pro_yearly") == catalog.get("pro")
    assert catalog.plan_for_price("price_unknown", "unknown_key") is None
    assert catalog.plan_for_price(None, None) is None
    assert catalog.plan_for_price("", "") is None
    assert catalog.sells("price_team")
    assert not catalog.sells("price_unknown")


def test_default_plan_sells_nothing_unless_told(catalog: PlanCatalog) -> None:
    """Grant the default plan to no price that is not listed for it."""
    assert catalog.default_plan.prices == ()
    assert catalog.plan_for_price("free") is None


BAD_CATALOGS: list[tuple[dict[str, Any], str]] = [
    ({"default_plan": "free"}, "needs at least one [plans.NAME] table"),
    ({"default_plan": "free", "plans": {}}, "needs at least one [plans.NAME] table"),
    ({"default_plan": "free", "plans": {"free": 10}}, "[plans.free] must be a table"),
    (
        {"default_plan": "free", "plans": {"free": {}}},
        "[plans.free] scans_per_month must be a non-negative integer",
    ),
    (
        {"default_plan": "free", "plans": {"free": {"scans_per_month": -1}}},
        "[plans.free] scans_per_month must be a non-negative integer",
    ),
    (
        {"default_plan": "free", "plans": {"free": {"scans_per_month": True}}},
        "[plans.free] scans_per_month must be a non-negative integer",
    ),
    (
        {"default_plan": "free", "plans": {"free": {"scans_per_month": 10.5}}},
        "[plans.free] scans_per_month must be a non-negative integer",
    ),
    (
        {"default_plan": "free", "plans": {"free": {"scans_per_month": 1, "prices": "p"}}},
        "[plans.free] prices must be a list of non-empty strings",
    ),
    (
        {"default_plan": "free", "plans": {"free": {"scans_per_month": 1, "prices": [""]}}},
        "[plans.free] prices must be a list of non-empty strings",
    ),
    (
        {
            "default_plan": "free",
            "plans": {
                "free": {"scans_per_month": 1, "prices": ["price_x"]},
                "pro": {"scans_per_month": 2, "prices": ["price_x"]},
            },
        },
        "price 'price_x' is in both [plans.free] and [plans.pro]",
    ),
    (
        {"default_plan": "free", "plans": {"free": {"scans_per_month": 1, "scans": 2}}},
        "[plans.free] has unknown keys: scans",
    ),
    ({"plans": {"free": {"scans_per_month": 1}}}, "default_plan must name one of the plans"),
    (
        {"default_plan": "basic", "plans": {"free": {"scans_per_month": 1}}},
        "default_plan 'basic' is not one of the plans",
    ),
    (
        {
            "default_plan": "free",
            "plans": {"free": {"scans_per_month": 1}},
            "plan": {"team": {"scans_per_month": 2000}},
        },
        "unknown top-level keys: plan",
    ),
]


@pytest.mark.parametrize(("data", "message"), BAD_CATALOGS)
def test_malformed_catalog_is_refused_with_a_clear_message(
    data: dict[str, Any], message: str
) -> None:
    """Refuse every malformed catalog, naming what is wrong."""
    with pytest.raises(PlanCatalogError) as caught:
        parse_catalog(data)
    assert str(caught.value) == message


def test_zero_scans_is_a_valid_plan() -> None:
    """Accept a plan that grants nothing (a suspended tier)."""
    catalog = parse_catalog(
        {"default_plan": "none", "plans": {"none": {"scans_per_month": 0, "prices": []}}}
    )
    assert catalog.default_plan.scans_per_month == 0


def test_plan_file_is_read_from_disk(tmp_path: Path) -> None:
    """Load NAT_PLANS_FILE, and refuse one that is missing or not TOML."""
    good = tmp_path / "plans.toml"
    good.write_text(
        'default_plan = "free"\n[plans.free]\nscans_per_month = 5\n'
        '[plans.pro]\nscans_per_month = 500\nprices = ["pro_yearly"]\n',
        encoding="utf-8",
    )
    catalog = load_catalog(str(good))
    assert catalog.default_plan.scans_per_month == 5
    assert catalog.plan_for_price(None, "pro_yearly") == catalog.get("pro")

    with pytest.raises(PlanCatalogError, match=r"cannot read .*missing\.toml"):
        load_catalog(str(tmp_path / "missing.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("default_plan = \n", encoding="utf-8")
    with pytest.raises(PlanCatalogError, match=r"broken\.toml is not valid TOML"):
        load_catalog(str(broken))


def test_bad_plan_file_stops_start_up_naming_the_variable(tmp_path: Path) -> None:
    """Name NAT_PLANS_FILE in the one-line configuration error."""
    path = tmp_path / "plans.toml"
    path.write_text('default_plan = "gold"\n[plans.free]\nscans_per_month = 1\n', "utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings({"NAT_PLANS_FILE": str(path)})
    assert str(caught.value) == "NAT_PLANS_FILE: default_plan 'gold' is not one of the plans"
    assert "\n" not in str(caught.value)
