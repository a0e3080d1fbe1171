"""Events (and other syncs) wait for a sync holding the lock on all customers (PostgreSQL).

A sync holds the lock on all customers exclusively for its whole transaction, and the
largest request (10,000 tenants) holds it for seconds on a busy machine: longer than the
server's lock_timeout (2 s), after which an event waiting for it used to answer 503. Now
the wait goes on, one lock_timeout at a time, for up to ``ALL_CUSTOMERS_WAIT_S``; past
that it answers 503 as before, and a server that stops answering meanwhile still makes
it answer 503 at the answer deadline. Here a plain connection plays the sync.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.engine import make_url
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import (
    WEBHOOK_SECRET,
    Subscription,
    count_rows,
    sync_tenants,
    utc,
    wait_for,
)
from tests.tcp_proxy import TcpProxy
from webhook_service import db
from webhook_service.config import load_settings
from webhook_service.db import Database
from webhook_service.quotas import store
from webhook_service.web.app import create_app

LOCK_TIMEOUT_S = db.PG_LOCK_TIMEOUT_MS / 1000
# Past the server's lock_timeout, well within the wait's budget.
HOLD_S = LOCK_TIMEOUT_S + 1.5
JAN = (utc(2025, 1, 1), utc(2025, 2, 1))

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def _connect(database: Database) -> psycopg.Connection[tuple[Any, ...]]:
    url = make_url(database.url).set(drivername="postgresql")
    return psycopg.connect(url.render_as_string(hide_password=False))


@contextmanager
def sync_holding_the_lock(
    database: Database, hold_s: float = HOLD_S, *, shared: bool = False
) -> Iterator[None]:
    """Hold the lock on all customers (exclusively, as a sync does) for ``hold_s``."""
    holder = _connect(database)
    mode = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    holder.execute(f"SELECT {mode}(%s)", (store.ALL_CUSTOMERS_KEY,))
    timer = threading.Timer(hold_s, holder.commit)
    timer.start()
    try:
        yield
    finally:
        timer.join()
        holder.close()


def _advisory(key: int) -> tuple[int, int]:
    """``key`` as pg_locks shows an advisory lock: (classid, objid)."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    return unsigned >> 32, unsigned & 0xFFFF_FFFF


def _advisory_locks(database: Database) -> list[tuple[int, str, bool, tuple[int, int]]]:
    """Every advisory lock of another backend: (pid, mode, granted, key)."""
    with _connect(database) as admin:
        rows = admin.execute(
            "SELECT pid, mode, granted, classid::bigint, objid::bigint FROM pg_locks "
            "WHERE locktype = 'advisory' AND pid <> pg_backend_pid()"
        ).fetchall()
    return [(pid, mode, granted, (classid, objid)) for pid, mode, granted, classid, objid in rows]


def _waiting_for_all_customers(database: Database) -> list[int]:
    """The backends waiting for the shared lock on all customers."""
    key = _advisory(store.ALL_CUSTOMERS_KEY)
    return [
        pid
        for pid, mode, granted, locked in _advisory_locks(database)
        if locked == key and mode == "ShareLock" and not granted
    ]


def _in_thread(call: Callable[[], TestResponse]) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []

    def run() -> None:
        started = time.monotonic()
        answers.append(call())
        answers.append(time.monotonic() - started)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, answers


def test_an_event_waits_for_a_sync_that_holds_the_lock_past_the_lock_timeout(
    database: Database, post_event: Callable[..., TestResponse]
) -> None:
    """Answered 200 once the sync ends (it used to be 503 after lock_timeout's 2 s)."""
    sub = Subscription()
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0])
    with sync_holding_the_lock(database):
        started = time.monotonic()
        response = post_event(created)
        elapsed = time.monotonic() - started
    assert response.status_code == 200, response.json
    assert response.json["outcome"] == "processed"
    assert elapsed > LOCK_TIMEOUT_S  # it did wait, past one lock_timeout
    assert count_rows(database, "subscriptions", "customer_id = :c", c=sub.customer) == 1


def test_an_event_waiting_for_a_sync_holds_no_customer_lock(
    database: Database, post_event: Callable[..., TestResponse]
) -> None:
    """The lock order stands: while it waits for the lock on all customers, the event
    holds no customer's lock (a sync that takes them all could never wait for it)."""
    created = Subscription().event("customer.subscription.created", "active", JAN, JAN[0])
    with sync_holding_the_lock(database):
        thread, answers = _in_thread(lambda: post_event(created))
        try:
            assert wait_for(lambda: bool(_waiting_for_all_customers(database)), timeout=5)
            (waiting,) = _waiting_for_all_customers(database)
            held = [lock for lock in _advisory_locks(database) if lock[0] == waiting]
            assert [(mode, granted) for _pid, mode, granted, _key in held] == [("ShareLock", False)]
        finally:
            thread.join(timeout=30)
    assert answers[0].status_code == 200, answers[0].json


def test_the_wait_for_a_sync_is_bounded(
    database: Database,
    post_event: Callable[..., TestResponse],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sync that holds the lock past the budget: 503 once the budget is spent (the
    attempt under way ends at its lock_timeout), nothing recorded; Stripe's retry, once
    the sync is over, is processed."""
    budget = LOCK_TIMEOUT_S + 0.5  # two attempts
    monkeypatch.setattr(store, "ALL_CUSTOMERS_WAIT_S", budget)
    created = Subscription().event("customer.subscription.created", "active", JAN, JAN[0])
    with sync_holding_the_lock(database, hold_s=budget + LOCK_TIMEOUT_S + 2.0):
        started = time.monotonic()
        response = post_event(created)
        elapsed = time.monotonic() - started
    assert (response.status_code, response.json["error"]) == (503, "SERVICE_UNAVAILABLE")
    assert budget < elapsed < budget + LOCK_TIMEOUT_S + 1.0
    assert count_rows(database, "stripe_events", "outcome IS NOT NULL") == 0
    retried = post_event(created)
    assert (retried.status_code, retried.json["outcome"]) == (200, "processed")


def test_a_sync_waits_for_another_holder_past_the_lock_timeout(
    database: Database, client: FlaskClient
) -> None:
    """A sync waits for another sync (or a slow event) the same way."""
    with sync_holding_the_lock(database, shared=True):
        response = sync_tenants(client, [{"tenant_id": "tnt_waits", "stripe_customer_id": "cus_W"}])
    assert response.status_code == 200, response.json
    assert count_rows(database, "tenants", "id = 'tnt_waits'") == 1


def test_a_server_that_stops_answering_during_the_wait_still_answers_503_soon(
    database: Database, env: dict[str, str]
) -> None:
    """The wait is made of ordinary statements: a stall in the middle of it answers 503
    at the answer deadline of the attempt under way, not at the end of the budget."""
    url = make_url(database.url)
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        via_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
        app: Flask = create_app(load_settings({**env, "DATABASE_URL": via_proxy}))
        app.config["TESTING"] = True
        client = app.test_client()
        created = Subscription().event("customer.subscription.created", "active", JAN, JAN[0])
        body = se.render(created)
        try:
            with sync_holding_the_lock(database, hold_s=3 * LOCK_TIMEOUT_S):
                thread, answers = _in_thread(
                    lambda: client.post(
                        "/api/v1/billing/webhook",
                        data=body,
                        headers=se.delivery_headers(body, WEBHOOK_SECRET),
                    )
                )
                assert wait_for(lambda: bool(_waiting_for_all_customers(database)), timeout=5)
                time.sleep(LOCK_TIMEOUT_S + 0.5)  # into the second attempt
                proxy.stall()
                stalled = time.monotonic()
                thread.join(timeout=30)
                answered_after = time.monotonic() - stalled
                proxy.restore()
        finally:
            app.extensions["nat"].database.dispose()
    response = answers[0]
    assert (response.status_code, response.json["error"]) == (503, "SERVICE_UNAVAILABLE")
    assert answered_after < db.PG_ANSWER_DEADLINE_S + 1.0
