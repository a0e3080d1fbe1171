"""Tenant history: each tenant's entitlement before and after a change, and the rows kept.

A handler (or the CLI) watches the tenants a change may move, with their entitlement
before it; once the change is written it hands their entitlement after it to
:meth:`History.record`, which writes a ``tenant_changes`` row for each tenant whose plan,
status, quota or window moved, and for each tenant the change created.
:class:`Entitlements` computes those entitlements, reading each customer's subscriptions
once and keeping what it read in step with what the caller writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection

from webhook_service.plans import PlanCatalog
from webhook_service.quotas import store
from webhook_service.quotas.entitlements import Entitlement, Subscription, after_write, entitlement
from webhook_service.quotas.store import TenantChange


class Entitlements:
    """What each customer's subscriptions grant at ``now``, each customer's read once."""

    def __init__(self, conn: Connection, catalog: PlanCatalog, now: datetime) -> None:
        self.conn = conn
        self.catalog = catalog
        self.now = now
        self._subscriptions: dict[str, list[Subscription]] = {}

    def subscriptions(self, customer_id: str | None) -> list[Subscription]:
        if not customer_id:
            return []
        found = self._subscriptions.get(customer_id)
        if found is None:
            found = self._subscriptions[customer_id] = store.customer_subscriptions(
                self.conn, customer_id
            )
        return found

    def of(self, customer_id: str | None) -> Entitlement:
        """The entitlement of a tenant linked to ``customer_id`` (None: no customer)."""
        return entitlement(self.subscriptions(customer_id), self.catalog, self.now)

    def written(self, sub: Subscription) -> None:
        """``sub`` was just stored: the subscriptions read already include it as it is now."""
        for customer_id, subs in self._subscriptions.items():
            self._subscriptions[customer_id] = after_write(subs, customer_id, sub)


@dataclass
class History:
    """Entitlements before a change; :meth:`record` writes a row for each tenant that moved."""

    source: str  # webhook | sync | cli
    now: datetime
    event_id: str | None = None
    event_type: str | None = None
    _before: dict[str, Entitlement | None] = field(default_factory=dict)

    def watch(self, tenant_id: str, before: Entitlement | None) -> None:
        """Keep ``tenant_id``'s entitlement before the change (None: the change creates it).

        A tenant watched twice keeps the first.
        """
        self._before.setdefault(tenant_id, before)

    def changes(self, after: Mapping[str, Entitlement]) -> list[TenantChange]:
        """The rows to write, given every watched tenant's entitlement after the change."""
        rows = []
        for tenant_id, before in self._before.items():
            now = after[tenant_id]
            if before is not None and before.key() == now.key():
                continue
            rows.append(
                TenantChange(
                    tenant_id=tenant_id,
                    source=self.source,
                    event_id=self.event_id,
                    changed_at=self.now,
                    plan=now.plan,
                    subscription_status=now.subscription_status,
                    scans_quota=now.scans_quota,
                    period_start=now.window.start,
                    quota_reset_date=now.window.end,
                    event_type=self.event_type,
                    price_id=now.price_id,
                    price_lookup_key=now.price_lookup_key,
                    quantity=now.quantity,
                )
            )
        return rows

    def record(self, conn: Connection, after: Mapping[str, Entitlement]) -> list[str]:
        """Write the rows of :meth:`changes`; return the tenants that changed."""
        rows = self.changes(after)
        store.record_changes(conn, rows)
        return [row.tenant_id for row in rows]
