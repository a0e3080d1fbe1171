"""The set-based sync against a model of its entry-by-entry semantics.

Random sequences of sync requests over a small universe of tenants, keys and customers
(two customers have a pro subscription) are applied through the endpoint and to a
model that applies each entry in turn, as the service did before the sync was
rewritten in set-based statements (quotas/sync.py). After every request the tenants,
their links, their keys, the created/updated counts and the history rows written must
be the model's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from werkzeug.test import TestResponse

from tests.helpers import Clock, Subscription, sync_tenants, utc
from webhook_service.db import Database
from webhook_service.models import api_keys, tenant_changes, tenants

TENANTS = [f"tnt_m{i}" for i in range(5)]
KEYS = [f"nat_pk_model_key_{i:04d}" for i in range(6)]
CUSTOMERS = [f"cus_Model{i:08d}" for i in range(4)]
PRO_CUSTOMERS = frozenset(CUSTOMERS[:2])
JAN = (utc(2025, 1, 1), utc(2025, 2, 1))


@dataclass
class Model:
    """Tenants (customer, active) and keys (hash -> tenant), applied entry by entry."""

    tenants: dict[str, tuple[str | None, bool]] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    def plan(self, customer: str | None) -> str:
        return "pro" if customer in PRO_CUSTOMERS else "free"

    def sync(self, entries: list[dict[str, Any]]) -> tuple[dict[str, int], list[tuple[str, str]]]:
        """Apply a request; its counts and the (tenant, plan) history rows it writes."""
        owner_of = {c: t for t, (c, _) in self.tenants.items() if c}
        # History watches the entries' tenants, then the owners of their customers.
        watched: dict[str, str | None] = {}
        for entry in entries:
            tenant_id = entry["tenant_id"]
            watched[tenant_id] = (
                self.plan(self.tenants[tenant_id][0]) if tenant_id in self.tenants else None
            )
        for entry in entries:
            owner = owner_of.get(entry.get("stripe_customer_id") or "")
            if owner is not None and owner not in watched:
                watched[owner] = self.plan(self.tenants[owner][0])
        created = 0
        for entry in entries:
            tenant_id = entry["tenant_id"]
            if tenant_id not in self.tenants:
                created += 1
                self.tenants[tenant_id] = (None, True)
            customer, _ = self.tenants[tenant_id]
            active = entry.get("active", True)
            self.tenants[tenant_id] = (customer, active)
            hashes = None
            if "api_keys" in entry:
                hashes = {hashlib.sha256(k.encode()).hexdigest() for k in entry["api_keys"]}
            if not active:
                hashes = set()
            if hashes is not None:
                self.keys = {
                    h: t for h, t in self.keys.items() if t != tenant_id and h not in hashes
                }
                self.keys.update(dict.fromkeys(hashes, tenant_id))
            given = entry.get("stripe_customer_id")
            if given:
                for other, (other_customer, other_active) in list(self.tenants.items()):
                    if other != tenant_id and other_customer == given:
                        self.tenants[other] = (None, other_active)
                self.tenants[tenant_id] = (given, active)
        changes = [
            (t, self.plan(self.tenants[t][0]))
            for t, before in watched.items()
            if before is None or before != self.plan(self.tenants[t][0])
        ]
        return {"synced": len(entries), "created": created, "updated": len(entries) - created}, [
            (t, p) for t, p in changes
        ]


@st.composite
def requests(draw: st.DrawFn) -> list[dict[str, Any]]:
    """A valid sync request: distinct tenants, keys and customers across its entries."""
    chosen = draw(st.lists(st.sampled_from(TENANTS), unique=True, max_size=5))
    free_keys, free_customers = list(KEYS), list(CUSTOMERS)
    entries = []
    for tenant_id in chosen:
        entry: dict[str, Any] = {"tenant_id": tenant_id}
        if draw(st.booleans()):
            count = draw(st.integers(0, min(2, len(free_keys))))
            picked = draw(st.permutations(free_keys))[:count]
            free_keys = [k for k in free_keys if k not in picked]
            entry["api_keys"] = picked
        customer = draw(st.sampled_from([None, "omit", *free_customers]))
        if customer is None:
            entry["stripe_customer_id"] = None
        elif customer != "omit":
            free_customers.remove(customer)
            entry["stripe_customer_id"] = customer
        if draw(st.integers(0, 4)) == 0:
            entry["active"] = False
        entries.append(entry)
    return entries


def test_sync_matches_the_entry_by_entry_model(
    client: FlaskClient,
    database: Database,
    clock: Clock,
    post_event: Callable[..., TestResponse],
) -> None:
    """Apply random request sequences; the database always equals the model."""
    for customer in PRO_CUSTOMERS:
        created = Subscription(customer=customer).event(
            "customer.subscription.created", "active", JAN, JAN[0]
        )
        assert post_event(created).json["outcome"] == "processed"
    clock.set(utc(2025, 1, 10))

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(sequence=st.lists(requests(), min_size=1, max_size=4))
    def matches(sequence: list[list[dict[str, Any]]]) -> None:
        with database.transaction(write=True) as conn:
            for table in (tenant_changes, api_keys, tenants):
                conn.execute(table.delete())
        model = Model()
        for entries in sequence:
            with database.transaction() as conn:
                last = conn.execute(
                    select(tenant_changes.c.id).order_by(tenant_changes.c.id.desc())
                ).first()
            since = last[0] if last else 0
            counts, changes = model.sync(entries)
            response = sync_tenants(client, entries)
            assert (response.status_code, response.json) == (200, counts), entries
            with database.transaction() as conn:
                rows = conn.execute(
                    select(tenants.c.id, tenants.c.stripe_customer_id, tenants.c.active)
                ).all()
                keys = dict(conn.execute(select(api_keys.c.key_sha256, api_keys.c.tenant_id)).all())
                written = conn.execute(
                    select(tenant_changes.c.tenant_id, tenant_changes.c.plan)
                    .where(tenant_changes.c.id > since)
                    .order_by(tenant_changes.c.id)
                ).all()
            assert {r.id: (r.stripe_customer_id, r.active) for r in rows} == model.tenants, sequence
            assert keys == model.keys, sequence
            assert sorted(tuple(w) for w in written) == sorted(changes), sequence

    matches()
