"""The plan catalog: which Stripe price grants how many scans a month."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any


class PlanCatalogError(Exception):
    """The plan catalog cannot be read or does not make sense."""


@dataclass(frozen=True)
class StripePrice:
    """A recurring price that ``webhook-service catalog push`` makes exist in Stripe."""

    lookup_key: str
    unit_amount: int  # in the currency's smallest unit (cents)
    currency: str
    interval: str
    interval_count: int = 1


@dataclass(frozen=True)
class Plan:
    name: str
    scans_per_month: int
    prices: tuple[str, ...] = ()
    # The Stripe product `catalog push` creates for the plan, and its prices.
    product_name: str | None = None
    stripe_prices: tuple[StripePrice, ...] = ()


@dataclass(frozen=True)
class PlanCatalog:
    default_plan: Plan
    plans: tuple[Plan, ...]

    def plan_for_price(self, price_id: str | None, lookup_key: str | None = None) -> Plan | None:
        """Find the plan that sells ``price_id`` (or, failing that, its ``lookup_key``)."""
        for candidate in (price_id, lookup_key):
            if not candidate:
                continue
            for plan in self.plans:
                if candidate in plan.prices:
                    return plan
        return None

    def get(self, name: str) -> Plan | None:
        return next((plan for plan in self.plans if plan.name == name), None)

    def sells(self, price_id: str | None, lookup_key: str | None = None) -> bool:
        return self.plan_for_price(price_id, lookup_key) is not None


def parse_catalog(data: dict[str, Any]) -> PlanCatalog:
    """Validate a decoded TOML document and build the catalog."""
    unknown_top = set(data) - {"default_plan", "plans"}
    if unknown_top:
        # A typo such as [plan.team] must stop start-up, not silently drop a plan.
        raise PlanCatalogError(f"unknown top-level keys: {', '.join(sorted(unknown_top))}")
    raw_plans = data.get("plans")
    if not isinstance(raw_plans, dict) or not raw_plans:
        raise PlanCatalogError("needs at least one [plans.NAME] table")
    plans: list[Plan] = []
    seen_prices: dict[str, str] = {}
    for name, body in raw_plans.items():
        if not isinstance(body, dict):
            raise PlanCatalogError(f"[plans.{name}] must be a table")
        scans = body.get("scans_per_month")
        if not isinstance(scans, int) or isinstance(scans, bool) or scans < 0:
            raise PlanCatalogError(f"[plans.{name}] scans_per_month must be a non-negative integer")
        prices = body.get("prices", [])
        if not isinstance(prices, list) or not all(isinstance(p, str) and p for p in prices):
            raise PlanCatalogError(f"[plans.{name}] prices must be a list of non-empty strings")
        stripe_prices = _stripe_prices(name, body.get("stripe_prices", {}))
        # A price the catalog creates is one the plan sells, by its lookup key.
        prices = prices + [p.lookup_key for p in stripe_prices if p.lookup_key not in prices]
        product_name = body.get("product_name")
        if product_name is not None and (not isinstance(product_name, str) or not product_name):
            raise PlanCatalogError(f"[plans.{name}] product_name must be a non-empty string")
        for price in prices:
            if price in seen_prices:
                raise PlanCatalogError(
                    f"price {price!r} is in both [plans.{seen_prices[price]}] and [plans.{name}]"
                )
            seen_prices[price] = name
        unknown = set(body) - {"scans_per_month", "prices", "product_name", "stripe_prices"}
        if unknown:
            raise PlanCatalogError(f"[plans.{name}] has unknown keys: {', '.join(sorted(unknown))}")
        plans.append(
            Plan(
                name=name,
                scans_per_month=scans,
                prices=tuple(prices),
                product_name=product_name,
                stripe_prices=stripe_prices,
            )
        )
    default_name = data.get("default_plan")
    if not isinstance(default_name, str):
        raise PlanCatalogError("default_plan must name one of the plans")
    default = next((p for p in plans if p.name == default_name), None)
    if default is None:
        raise PlanCatalogError(f"default_plan {default_name!r} is not one of the plans")
    return PlanCatalog(default_plan=default, plans=tuple(plans))


# A plan grants scans per month: a price billed by the day or week would grant a month's
# scans every period (a period of a month or less is one quota window).
INTERVALS = ("month", "year")
_CURRENCY_RE = re.compile(r"^[a-z]{3}\Z")
_LOOKUP_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}\Z")


def _stripe_prices(plan: str, raw: object) -> tuple[StripePrice, ...]:
    """``[plans.NAME.stripe_prices.LOOKUP_KEY]`` tables: what `catalog push` creates."""
    if not isinstance(raw, dict):
        raise PlanCatalogError(f"[plans.{plan}] stripe_prices must be a table of lookup keys")
    found = []
    for key, body in raw.items():
        where = f"[plans.{plan}.stripe_prices.{key}]"
        if not _LOOKUP_KEY_RE.match(key):
            raise PlanCatalogError(f"{where}: a lookup key is 1-200 printable characters")
        if not isinstance(body, dict):
            raise PlanCatalogError(f"{where} must be a table")
        unknown = set(body) - {"unit_amount", "currency", "interval", "interval_count"}
        if unknown:
            raise PlanCatalogError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
        amount = body.get("unit_amount")
        if not isinstance(amount, int) or isinstance(amount, bool) or amount < 0:
            raise PlanCatalogError(
                f"{where} unit_amount must be a non-negative integer (the currency's "
                "smallest unit, e.g. 4900 for USD 49.00)"
            )
        currency = body.get("currency")
        if not isinstance(currency, str) or not _CURRENCY_RE.match(currency):
            raise PlanCatalogError(f"{where} currency must be a lowercase ISO code such as usd")
        interval = body.get("interval")
        if interval not in INTERVALS:
            raise PlanCatalogError(f"{where} interval must be one of {', '.join(INTERVALS)}")
        count = body.get("interval_count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= 12:
            raise PlanCatalogError(f"{where} interval_count must be an integer from 1 to 12")
        found.append(StripePrice(key, amount, currency, str(interval), count))
    return tuple(found)


def load_catalog(path: str | None) -> PlanCatalog:
    """Load the catalog from ``path``, or the built-in one when ``path`` is None."""
    try:
        if path is None:
            text = resources.files("webhook_service").joinpath("plans.toml").read_text("utf-8")
        else:
            text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise PlanCatalogError(f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PlanCatalogError(f"{path or 'built-in catalog'} is not valid TOML: {exc}") from None
    return parse_catalog(data)
