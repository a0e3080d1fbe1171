"""Tables (SQLAlchemy Core). The schema itself is created by the Alembic migrations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)


def utcnow() -> datetime:
    """The current time as an aware UTC datetime (the default clock of the services)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both engines (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# The durable log: one row per verified Stripe event, keyed by its evt_ id.
stripe_events = Table(
    "stripe_events",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("type", String(255), nullable=False),
    Column("api_version", String(64)),
    Column("created", BigInteger, nullable=False),
    Column("livemode", Boolean, nullable=False),
    Column("received_at", UTCDateTime, nullable=False),
    Column("processed_at", UTCDateTime),
    # processed | ignored | stale | failed
    Column("outcome", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("object_id", String(255)),
    Column("tenant_id", String(64)),
    Column("payload", Text, nullable=False),
    Index("ix_stripe_events_received_at", "received_at"),
    # Partial: only the rows the lookups want, so a processed event touches neither.
    Index(
        "ix_stripe_events_failed",
        "received_at",
        sqlite_where=text("outcome = 'failed'"),
        postgresql_where=text("outcome = 'failed'"),
    ),
    Index(
        "ix_stripe_events_customer_deleted",
        "object_id",
        sqlite_where=text("type = 'customer.deleted'"),
        postgresql_where=text("type = 'customer.deleted'"),
    ),
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("stripe_customer_id", String(255), unique=True),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)

# Only SHA-256 hashes of API keys are ever stored.
api_keys = Table(
    "api_keys",
    metadata,
    Column("key_sha256", String(64), primary_key=True),
    Column(
        "tenant_id",
        String(64),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("created_at", UTCDateTime, nullable=False),
)

# Mirror of each Stripe subscription, as of the newest event that described it.
subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", String(255), primary_key=True),
    Column("customer_id", String(255), index=True),
    Column("metadata_tenant_id", String(64)),
    # NULL until a subscription event arrives (an invoice may come first).
    Column("status", String(32)),
    Column("price_id", String(255)),
    Column("price_lookup_key", String(255)),
    Column("price_interval", String(16)),
    Column("price_interval_count", Integer),
    Column("quantity", Integer),
    Column("cancel_at_period_end", Boolean, nullable=False, default=False),
    Column("current_period_start", UTCDateTime),
    Column("current_period_end", UTCDateTime),
    # Ordering guard: the (created, rank) of the event whose state this row mirrors.
    Column("state_created", BigInteger),
    Column("state_rank", Integer),
    Column("state_event_id", String(255)),
    Column("updated_at", UTCDateTime, nullable=False),
)

scan_spends = Table(
    "scan_spends",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "tenant_id",
        String(64),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("count", Integer, nullable=False),
    Column("spent_at", UTCDateTime, nullable=False),
    Column("idempotency_key", String(255)),
    # SHA-256 of the canonical request the key was first used with (NULL before 0004).
    Column("request_sha256", String(64)),
    Column("response", Text),
    Index("ix_scan_spends_tenant_id_spent_at", "tenant_id", "spent_at"),
    UniqueConstraint("tenant_id", "idempotency_key"),
)

# Every change of a tenant's plan, status or period, with the event that caused it.
tenant_changes = Table(
    "tenant_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", String(64), nullable=False, index=True),
    # webhook (with event_id) | sync | cli
    Column("source", String(16), nullable=False),
    Column("event_id", String(255)),
    Column("changed_at", UTCDateTime, nullable=False),
    Column("plan", String(64), nullable=False),
    Column("subscription_status", String(32)),
    Column("scans_quota", Integer, nullable=False),
    Column("period_start", UTCDateTime, nullable=False),
    Column("quota_reset_date", UTCDateTime, nullable=False),
    # What decided the quota (quota = plan scans x quantity) and the event's type.
    Column("event_type", String(255)),
    Column("price_id", String(255)),
    Column("price_lookup_key", String(255)),
    Column("quantity", Integer),
)

# Customers a customer.deleted event was applied to. Stripe never reuses a customer's
# id, so a late event of such a customer (its subscriptions' cancellations, a slow
# checkout) links it to no tenant again.
deleted_customers = Table(
    "deleted_customers",
    metadata,
    Column("customer_id", String(255), primary_key=True),
    # The customer.deleted event that recorded it, and when it was applied.
    Column("event_id", String(255), nullable=False),
    Column("deleted_at", UTCDateTime, nullable=False),
)
