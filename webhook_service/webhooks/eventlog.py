"""The durable event log and the exactly-once processing pipeline.

One transaction per delivery: the log row is inserted (or found and locked), the
handler runs in the same transaction, and the row's outcome is written beside the
handler's effects. Nothing is acknowledged before that transaction commits. A handler
that raises rolls the whole transaction back; a second one records the event as failed.

Duplicates: the row is keyed by the event id. On PostgreSQL a concurrent copy blocks
on the primary key (``ON CONFLICT DO NOTHING``) and then on ``SELECT ... FOR UPDATE``
until the first copy commits, and so sees it as done; on SQLite ``BEGIN IMMEDIATE``
serialises the two. A copy of a ``failed`` event runs the handler again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from sqlalchemy import Connection, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError, OperationalError

from webhook_service.db import Database
from webhook_service.models import stripe_events, utcnow
from webhook_service.plans import PlanCatalog
from webhook_service.sql import Prepared, run
from webhook_service.webhooks.events import StripeEvent, parse_event
from webhook_service.webhooks.registry import HandlerError, HandlerResult, HandlerScope, Router

log = structlog.get_logger(__name__)

DONE_OUTCOMES = ("processed", "ignored", "stale")
ReceiptOutcome = Literal["processed", "duplicate", "ignored", "stale"]
MAX_ERROR_LENGTH = 2000
# events prune: rows deleted per transaction (SQLite: a few ms of write lock), and the
# least pause between SQLite batches (at least as long as the batch took), so queued
# deliveries take the lock in turn and the job never holds it more than half the time.
PRUNE_BATCH_ROWS_SQLITE = 1_000
PRUNE_BATCH_ROWS_POSTGRES = 20_000
PRUNE_PAUSE_S = 0.005
_INSERT_COLUMNS = (
    "id",
    "type",
    "api_version",
    "created",
    "livemode",
    "received_at",
    "processed_at",
    "outcome",
    "attempts",
    "last_error",
    "object_id",
    "tenant_id",
    "payload",
)


_CUSTOMER_DELETION_APPLIED = (
    select(stripe_events.c.id)
    .where(
        stripe_events.c.type == "customer.deleted",
        stripe_events.c.object_id == bindparam("b_customer"),
        stripe_events.c.outcome == "processed",
    )
    .limit(1)
)


def customer_deletion_applied(conn: Connection, customer_id: str) -> bool:
    """Is a ``customer.deleted`` event of ``customer_id`` logged as processed?

    Transitional. The quota domain records deleted customers itself since migration
    0006, which copied the deletions logged before it; this finds the ones that an
    instance of the release before applied after the migration ran (during the rolling
    deploy, or after a rollback). It goes with the contract step, in the release after:
    a migration that copies those deletions too, then nothing asks this any more.
    """
    found = conn.execute(_CUSTOMER_DELETION_APPLIED, {"b_customer": customer_id}).first()
    return found is not None


@dataclass(frozen=True)
class Receipt:
    event_id: str
    event_type: str
    outcome: ReceiptOutcome
    tenant_id: str | None = None
    duration_s: float = 0.0


class _HandlerFailed(Exception):
    """Carries a handler's exception out of the delivery's transaction (rolling it back)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class EventFailed(Exception):
    """A handler failed; the event is stored as ``failed`` with ``error``."""

    def __init__(self, event: StripeEvent, error: str) -> None:
        super().__init__(error)
        self.event = event
        self.error = error


def describe_error(exc: BaseException) -> str:
    """The message kept in ``last_error``: a handler's own words, or the exception's class.

    A database error is named by the driver's class and the first line of its message:
    SQLAlchemy's full text carries the statement and its parameters (payload values),
    which must reach neither the log, nor the answer to Stripe, nor the event log.
    """
    if isinstance(exc, HandlerError):
        text = str(exc)
    elif isinstance(exc, DBAPIError):
        first_line = (str(exc.orig).strip().splitlines() or [""])[0]
        text = f"{type(exc.orig).__name__}: {first_line}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_LENGTH]


class EventLog:
    """Receives verified events and owns every query on the event log."""

    def __init__(
        self,
        database: Database,
        router: Router,
        catalog: PlanCatalog,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.database = database
        self.router = router
        self.catalog = catalog
        self.clock = clock
        # Built once: statements on the hot path are executed with parameters only.
        dialect_insert = sqlite_insert if database.is_sqlite else pg_insert
        # RETURNING tells whether this delivery inserted the row (psycopg's rowcount
        # for ON CONFLICT DO NOTHING is not reliable through SQLAlchemy).
        self._insert = Prepared(
            dialect_insert(stripe_events)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(stripe_events.c.id),
            column_keys=_INSERT_COLUMNS,
        )
        lookup = select(stripe_events.c.outcome, stripe_events.c.tenant_id).where(
            stripe_events.c.id == bindparam("b_id")
        )
        self._lookup = Prepared(lookup if database.is_sqlite else lookup.with_for_update())
        self._finish = Prepared(
            update(stripe_events)
            .where(stripe_events.c.id == bindparam("b_id"))
            .values(
                attempts=stripe_events.c.attempts + 1,
                outcome=bindparam("b_outcome"),
                processed_at=bindparam("b_processed_at"),
                last_error=bindparam("b_last_error"),
                tenant_id=bindparam("b_tenant_id"),
            ),
            column_keys=(),
        )

    # -- processing -------------------------------------------------------

    def receive(self, event: StripeEvent) -> Receipt:
        """:meth:`receive_once`, once more on a new connection if the database one was lost.

        A connection that died while idle in the pool (a server restart, a failover) is
        found out by the first statement; SQLAlchemy then drops it and every older one.
        Nothing was committed, or, if the loss came at COMMIT, the second try finds the
        event done: either way it is applied once, and Stripe is not made to wait for
        its next retry.
        """
        try:
            return self.receive_once(event)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            log.warning("database_connection_lost_retrying", event_id=event.id)
            return self.receive_once(event)

    def receive_once(self, event: StripeEvent) -> Receipt:
        """Log ``event`` once and apply it; raise :class:`EventFailed` if its handler fails.

        The handler runs in the delivery's transaction. If it raises, that whole
        transaction rolls back (no savepoint on the happy path) and a second one records
        the event as ``failed``, unless a concurrent copy has processed it meanwhile.
        """
        started = time.perf_counter()
        try:
            with self.database.transaction(write=True) as conn:
                now = self.clock()
                outcome = self._claim(conn, event, now)
                if outcome is not None:
                    return Receipt(event.id, event.type, "duplicate", outcome[1])
                handler = self.router.handler_for(event.type)
                if handler is None:
                    result = HandlerResult("ignored")
                else:
                    try:
                        result = handler(event, HandlerScope(conn, self.catalog, now))
                    except OperationalError:
                        raise  # the database itself is failing: nothing is recorded, 503
                    except Exception as exc:
                        raise _HandlerFailed(exc) from exc
                self._finish_row(conn, event.id, result.outcome, now, None, result.tenant_id)
        except _HandlerFailed as failed:
            cause = failed.cause
            failure = describe_error(cause)
            if not isinstance(cause, HandlerError):
                log.error(
                    "handler_crashed",
                    event_id=event.id,
                    event_type=event.type,
                    error=type(cause).__name__,
                    exc_info=cause,
                )
            self._record_failure(event, failure)
            raise EventFailed(event, failure) from None
        return Receipt(
            event.id, event.type, result.outcome, result.tenant_id, time.perf_counter() - started
        )

    def _finish_row(
        self,
        conn: Connection,
        event_id: str,
        outcome: str,
        processed_at: datetime | None,
        error: str | None,
        tenant_id: str | None,
    ) -> None:
        run(
            conn,
            self._finish,
            {
                "b_id": event_id,
                "b_outcome": outcome,
                "b_processed_at": processed_at,
                "b_last_error": error,
                "b_tenant_id": tenant_id,
            },
        )

    def _record_failure(self, event: StripeEvent, failure: str) -> None:
        """Keep the event as ``failed`` with its error (a copy that succeeded meanwhile wins)."""
        with self.database.transaction(write=True) as conn:
            if self._claim(conn, event, self.clock()) is None:
                self._finish_row(conn, event.id, "failed", None, failure, None)

    def _claim(
        self, conn: Connection, event: StripeEvent, now: datetime
    ) -> tuple[str, str | None] | None:
        """Insert or lock the event's row; return (outcome, tenant) if it is already done."""
        inserted = run(
            conn,
            self._insert,
            {
                "id": event.id,
                "type": event.type,
                "api_version": event.api_version,
                "created": event.created,
                "livemode": event.livemode,
                "received_at": now,
                "processed_at": None,
                "outcome": "pending",
                "attempts": 0,
                "last_error": None,
                "object_id": event.object_id,
                "tenant_id": None,
                "payload": event.payload,
            },
        )
        if inserted.first() is not None:
            return None
        row = run(conn, self._lookup, {"b_id": event.id}).one()
        if row.outcome in DONE_OUTCOMES:
            return row.outcome, row.tenant_id
        return None

    def reprocess(self, event_id: str) -> Receipt:
        """Run a logged event through the pipeline again (a failed one is re-applied)."""
        row = self.get(event_id)
        if row is None:
            raise KeyError(event_id)
        return self.receive(parse_event(row.payload))

    # -- queries ------------------------------------------------------------

    def get(self, event_id: str) -> Any:
        with self.database.transaction() as conn:
            return conn.execute(
                select(stripe_events).where(stripe_events.c.id == event_id)
            ).one_or_none()

    def recent(
        self, *, outcome: str | None = None, event_type: str | None = None, limit: int = 50
    ) -> Sequence[Any]:
        query = select(
            stripe_events.c.id,
            stripe_events.c.type,
            stripe_events.c.created,
            stripe_events.c.received_at,
            stripe_events.c.outcome,
            stripe_events.c.attempts,
            stripe_events.c.tenant_id,
            stripe_events.c.last_error,
        ).order_by(stripe_events.c.received_at.desc(), stripe_events.c.id.desc())
        if outcome:
            query = query.where(stripe_events.c.outcome == outcome)
        if event_type:
            query = query.where(stripe_events.c.type == event_type)
        with self.database.transaction() as conn:
            return conn.execute(query.limit(limit)).all()

    def failed_ids(self) -> list[str]:
        with self.database.transaction() as conn:
            return list(
                conn.scalars(
                    select(stripe_events.c.id)
                    .where(stripe_events.c.outcome == "failed")
                    .order_by(stripe_events.c.created, stripe_events.c.received_at)
                )
            )

    def failed_summary(self, conn: Connection) -> tuple[int, datetime | None]:
        """How many events are failed, and when the oldest of them arrived."""
        row = conn.execute(
            select(func.count(), func.min(stripe_events.c.received_at)).where(
                stripe_events.c.outcome == "failed"
            )
        ).one()
        oldest = row[1]
        if isinstance(oldest, str):  # SQLite aggregates bypass the column type
            oldest = datetime.fromisoformat(oldest).replace(tzinfo=UTC)
        return int(row[0]), oldest

    def prune(
        self,
        older_than: datetime,
        *,
        include_failed: bool = False,
        batch_rows: int | None = None,
        on_batch: Callable[[int], None] = lambda _deleted: None,
    ) -> int:
        """Delete events received before ``older_than``; failed ones stay unless asked.

        In batches of about ``batch_rows`` events, oldest first, each its own short
        transaction, so a delivery waits at most one batch for the write lock (SQLite's
        lock is the whole file's: one DELETE of 500k rows held it ~15 s). On SQLite the
        job pauses between batches as long as the batch took, so queued writers get the
        lock in turn and deliveries keep at least half the write capacity. A batch ends
        at the received time of its ``batch_rows``-th event, so events received in the
        same microsecond go together. ``on_batch`` is told each batch's count. Always
        ends: it moves forward in received time, and new events arrive after the cutoff.
        """
        rows = batch_rows or (
            PRUNE_BATCH_ROWS_SQLITE if self.database.is_sqlite else PRUNE_BATCH_ROWS_POSTGRES
        )
        received_at = stripe_events.c.received_at
        condition = received_at < older_than
        if not include_failed:
            condition = condition & (stripe_events.c.outcome != "failed")
        after = bindparam("b_after", type_=received_at.type)
        # A batch is a range of received_at, from just after the last one to the time of
        # its rows-th event: the index is never walked over rows (or, on PostgreSQL,
        # dead entries) of batches already deleted, and the DELETE is a range scan.
        batch_end = (
            select(received_at)
            .where(received_at < older_than, received_at > after)
            .order_by(received_at)
            .offset(rows - 1)
            .limit(1)
        )
        last_batch = stripe_events.delete().where(condition, received_at > after)
        one_batch = last_batch.where(received_at <= bindparam("b_end", type_=received_at.type))
        position = datetime.min.replace(tzinfo=UTC)
        deleted = 0
        while True:
            started = time.monotonic()
            with self.database.transaction(write=True) as conn:
                if not self.database.is_sqlite:
                    # Walk the received_at index in order, whatever the statistics say:
                    # stale ones (a table just loaded or pruned) make the planner sort
                    # every old row for each batch's end instead.
                    conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
                    conn.exec_driver_sql("SET LOCAL enable_sort = off")
                end = conn.execute(batch_end, {"b_after": position}).scalar_one_or_none()
                if end is None:
                    count = conn.execute(last_batch, {"b_after": position}).rowcount
                else:
                    count = conn.execute(one_batch, {"b_after": position, "b_end": end}).rowcount
            if count:
                deleted += count
                on_batch(count)
            if end is None:
                return deleted
            position = end
            if self.database.is_sqlite:
                time.sleep(max(PRUNE_PAUSE_S, time.monotonic() - started))
