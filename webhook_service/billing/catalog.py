"""Make the plan catalog exist in a Stripe account: a product per plan, a price per lookup key.

``webhook-service catalog push`` runs :func:`push_catalog`. It is idempotent: a product
is found by its id (``nat_<plan>``, chosen by us), a price by its lookup key, and only
what is missing is created (with an idempotency key, so a retried create makes one
price, not two). A price that exists with other terms is reported, never changed:
Stripe prices are immutable, and moving a lookup key to a new price changes what
customers pay, a decision for a person (``transfer_lookup_key`` in the Dashboard or API).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import stripe

from webhook_service.plans import Plan, PlanCatalog, StripePrice


@dataclass
class PushSummary:
    created: int = 0
    unchanged: int = 0
    conflicts: list[str] = field(default_factory=list)

    def line(self, dry_run: bool) -> str:
        verb = "to create" if dry_run else "created"
        return (
            f"{self.created} {verb}, {self.unchanged} already there, "
            f"{len(self.conflicts)} differing"
        )


def product_id(plan: Plan) -> str:
    return f"nat_{plan.name}"


def describe(price: StripePrice) -> str:
    every = (
        price.interval if price.interval_count == 1 else f"{price.interval_count} {price.interval}s"
    )
    return f"{price.unit_amount} {price.currency} / {every}"


def _terms(price: dict[str, Any]) -> tuple[Any, ...]:
    recurring = price.get("recurring") or {}
    product = price.get("product")
    product = product.get("id") if isinstance(product, dict) else product
    return (
        price.get("unit_amount"),
        price.get("currency"),
        recurring.get("interval"),
        recurring.get("interval_count"),
        product,
        price.get("active"),
    )


def _idempotency_key(product: str, price: StripePrice) -> str:
    terms = f"{product}|{price.lookup_key}|{describe(price)}"
    return "nat-catalog-" + hashlib.sha256(terms.encode("utf-8")).hexdigest()[:32]


def push_catalog(
    client: stripe.StripeClient,
    catalog: PlanCatalog,
    *,
    dry_run: bool,
    report: Callable[[str], None],
) -> PushSummary:
    """Create what the catalog describes and Stripe lacks; report one line per object."""
    summary = PushSummary()
    for plan in catalog.plans:
        if not plan.stripe_prices:
            continue
        prod = product_id(plan)
        name = plan.product_name or f"NAT {plan.name}"
        try:
            client.v1.products.retrieve(prod)
        except stripe.InvalidRequestError as exc:
            if exc.code != "resource_missing":
                raise
            if not dry_run:
                client.v1.products.create(
                    params={"id": prod, "name": name, "metadata": {"nat_plan": plan.name}},
                    options={"idempotency_key": f"nat-catalog-product-{prod}"},
                )
            summary.created += 1
            report(f"product {prod} ({name}): {'would create' if dry_run else 'created'}")
        else:
            summary.unchanged += 1
            report(f"product {prod} ({name}): exists")
        for price in plan.stripe_prices:
            _push_price(client, prod, price, dry_run, report, summary)
    return summary


def _push_price(
    client: stripe.StripeClient,
    prod: str,
    price: StripePrice,
    dry_run: bool,
    report: Callable[[str], None],
    summary: PushSummary,
) -> None:
    label = f"price {price.lookup_key} ({describe(price)})"
    found = client.v1.prices.list(params={"lookup_keys": [price.lookup_key], "limit": 1}).data
    if found:
        existing = found[0].to_dict()
        wanted = (
            price.unit_amount,
            price.currency,
            price.interval,
            price.interval_count,
            prod,
            True,
        )
        if _terms(existing) == wanted:
            summary.unchanged += 1
            report(f"{label}: exists as {existing['id']}")
            return
        amount, currency, interval, count, product, active = _terms(existing)
        conflict = (
            f"{label}: Stripe's {existing['id']} with this lookup key is {amount} {currency} / "
            f"{count} {interval} of product {product}{'' if active else ', inactive'}; "
            "left as it is (give the new terms a new lookup key, or move this one in Stripe)"
        )
        summary.conflicts.append(conflict)
        report(conflict)
        return
    if dry_run:
        summary.created += 1
        report(f"{label}: would create")
        return
    created = client.v1.prices.create(
        params={
            "product": prod,
            "unit_amount": price.unit_amount,
            "currency": price.currency,
            "recurring": {"interval": price.interval, "interval_count": price.interval_count},
            "lookup_key": price.lookup_key,
            "metadata": {"nat_lookup_key": price.lookup_key},
        },
        options={"idempotency_key": _idempotency_key(prod, price)},
    )
    summary.created += 1
    report(f"{label}: created {created.id}")
