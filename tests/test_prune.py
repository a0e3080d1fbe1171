"""`events prune`: deletes in bounded batches, so deliveries keep being answered meanwhile."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask

from tests import stripe_events as se
from tests.helpers import SYNC_KEY, WEBHOOK_SECRET, count_rows
from webhook_service.cli import cli
from webhook_service.config import load_settings
from webhook_service.db import Database
from webhook_service.migrate import upgrade
from webhook_service.models import stripe_events
from webhook_service.services import build_router
from webhook_service.web.app import create_app
from webhook_service.webhooks.eventlog import EventLog


def store_events(
    database: Database, count: int, received_at: datetime, *, outcome: str = "processed"
) -> None:
    """Put ``count`` logged events received at ``received_at`` straight into the log."""
    prefix = se.new_id("evt")
    for first in range(0, count, 10_000):
        rows = [
            {
                "id": f"{prefix}_{index:07d}",
                "type": "invoice.paid",
                "api_version": se.BASIL_API_VERSION,
                "created": 1_735_689_600,
                "livemode": False,
                "received_at": received_at + timedelta(microseconds=index),
                "processed_at": received_at,
                "outcome": outcome,
                "attempts": 1,
                "last_error": None,
                "object_id": "in_pruned",
                "tenant_id": None,
                "payload": '{"object": "event", "data": {"object": {"id": "in_pruned"}}}',
            }
            for index in range(first, min(count, first + 10_000))
        ]
        with database.transaction(write=True) as conn:
            conn.execute(stripe_events.insert(), rows)


def test_prune_deletes_in_bounded_batches(database: Database) -> None:
    """Delete old events a batch at a time, keeping recent and failed ones."""
    now = datetime.now(UTC)
    store_events(database, 2_500, now - timedelta(days=120))
    store_events(database, 3, now - timedelta(days=100), outcome="failed")
    store_events(database, 7, now - timedelta(days=10))
    log = EventLog(database, build_router(), load_settings({}).catalog)
    batches: list[int] = []

    deleted = log.prune(now - timedelta(days=90), batch_rows=1_000, on_batch=batches.append)

    assert (deleted, batches) == (2_500, [1_000, 1_000, 500])
    assert count_rows(database, "stripe_events") == 10
    assert log.prune(now - timedelta(days=90), include_failed=True, batch_rows=2) == 3
    assert count_rows(database, "stripe_events") == 7
    assert log.prune(now - timedelta(days=90)) == 0


def test_prune_batches_take_equal_received_times_in_turn(database: Database) -> None:
    """Delete every old row even when a batch ends among rows received at one instant."""
    old = datetime.now(UTC) - timedelta(days=120)
    rows = [{"id": f"evt_same_{i}", "received_at": old} for i in range(5)]
    with database.transaction(write=True) as conn:
        conn.execute(
            stripe_events.insert(),
            [
                {
                    **row,
                    "type": "invoice.paid",
                    "created": 1,
                    "livemode": False,
                    "outcome": "processed",
                    "attempts": 1,
                    "payload": "{}",
                }
                for row in rows
            ],
        )
    log = EventLog(database, build_router(), load_settings({}).catalog)
    assert log.prune(datetime.now(UTC) - timedelta(days=90), batch_rows=2) == 5
    assert count_rows(database, "stripe_events") == 0


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'prune.db'}"
    database = Database(url, pool=False)
    upgrade(database)
    database.dispose()
    return {
        "DATABASE_URL": url,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "NAT_APP_SYNC_KEY": SYNC_KEY,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "warning",
    }


@pytest.fixture
def sqlite_app(sqlite_env: dict[str, str]) -> Iterator[Flask]:
    application = create_app(load_settings(sqlite_env))
    application.config["TESTING"] = True
    yield application
    application.extensions["nat"].database.dispose()


def test_webhooks_are_answered_during_a_large_sqlite_prune(
    sqlite_app: Flask, sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    """Answer deliveries 2xx between the batches of a 50k-event prune, never after it."""
    database: Database = sqlite_app.extensions["nat"].database
    store_events(database, 50_000, datetime.now(UTC) - timedelta(days=120))
    answered: list[tuple[float, float, int]] = []
    stop = threading.Event()

    def deliver() -> None:
        client = sqlite_app.test_client()
        while not stop.is_set():
            event = se.event(
                "charge.refund.updated",
                {"id": se.new_id("re"), "object": "refund"},
                created=int(time.time()),
                api_version=se.BASIL_API_VERSION,
            )
            body = se.render(event)
            started = time.monotonic()
            response = client.post(
                "/api/v1/billing/webhook",
                data=body,
                headers={
                    "Content-Type": "application/json; charset=utf-8",
                    "Stripe-Signature": se.sign(body, WEBHOOK_SECRET),
                },
            )
            answered.append((started, time.monotonic(), response.status_code))

    sender = threading.Thread(target=deliver, daemon=True)
    sender.start()
    try:
        time.sleep(0.2)
        runner = CliRunner(env=sqlite_env)
        prune_started = time.monotonic()
        result = runner.invoke(cli, ["events", "prune", "--older-than", "90d"])
        prune_ended = time.monotonic()
        time.sleep(0.1)
    finally:
        stop.set()
        sender.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert "deleted 50000 events received before" in result.output
    assert "in 50 batches" in result.output
    assert count_rows(database, "stripe_events", "object_id = 'in_pruned'") == 0

    assert answered
    assert {status for *_, status in answered} == {200}
    during = [a for a in answered if prune_started <= a[0] and a[1] <= prune_ended]
    # One DELETE holds the write lock throughout: at most one delivery could finish
    # inside it. Between batches they go through, each within a batch or two.
    assert len(during) >= 5, (len(during), prune_ended - prune_started)
    slowest = max(end - start for start, end, _ in answered)
    assert slowest < 2.0, slowest
