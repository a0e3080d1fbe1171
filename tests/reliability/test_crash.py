"""A worker killed with SIGKILL mid-stream: nothing acknowledged is lost, nothing half-applied."""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import text

from tests import stripe_events as se
from tests.reliability.support import NO_ANSWER_ERRORS, deliver, master_pid, wait_for_workers
from tests.servers import running_service
from webhook_service.db import Database

EVENTS = 48
SENDERS = 4
WORKERS = 2
# SIGKILL a worker when this many deliveries have been answered (two kills, two workers).
KILL_AFTER = (8, 24)
NOW = int(time.time())
PERIOD = (NOW - 86400, se.add_months(NOW - 86400, 1))
NO_ANSWER = 0


def new_subscription(index: int) -> dict[str, Any]:
    """A customer.subscription.created that creates its tenant through metadata.tenant_id."""
    return se.subscription_event(
        "customer.subscription.created",
        sub_id=se.new_id("sub"),
        customer=se.new_id("cus"),
        status=("active", "trialing", "past_due")[index % 3],
        period_start=PERIOD[0],
        period_end=PERIOD[1],
        created=NOW,
        api_version=se.API_VERSIONS[index % 2],
        quantity=1 + index % 4,
        metadata={"tenant_id": f"tnt_crash_{index}_{se.new_id('x', 8)[2:]}"},
    )


def stream(
    base_url: str, events: list[dict[str, Any]], master: int
) -> tuple[dict[str, int], list[int]]:
    """Post ``events`` from several threads, SIGKILLing a worker twice mid-run.

    Returns each event's status (``NO_ANSWER`` when the connection died) and the pids killed.
    """
    todo: queue.Queue[dict[str, Any]] = queue.Queue()
    for event in events:
        todo.put(event)
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    answered = threading.Semaphore(0)

    def sender() -> None:
        while True:
            try:
                event = todo.get_nowait()
            except queue.Empty:
                return
            try:
                status, _ = deliver(base_url, event, timeout=20)
            except NO_ANSWER_ERRORS:  # the dying worker's: no answer, Stripe would retry
                status = NO_ANSWER
            with lock:
                statuses[event["id"]] = status
            answered.release()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    killed: list[int] = []
    done = 0
    for threshold in KILL_AFTER:
        while done < threshold:
            assert answered.acquire(timeout=30), "deliveries stopped being answered"
            done += 1
        workers = wait_for_workers(master, WORKERS)
        victim = next(pid for pid in workers if pid not in killed)
        os.kill(victim, signal.SIGKILL)
        killed.append(victim)
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    return statuses, killed


def log_rows(database: Database, ids: list[str]) -> dict[str, tuple[str, int]]:
    """(outcome, attempts) of each logged subscription event among ``ids``."""
    with database.transaction() as conn:
        rows = conn.execute(
            text(
                "SELECT id, outcome, attempts FROM stripe_events "
                "WHERE type = 'customer.subscription.created'"
            )
        ).all()
    return {row.id: (row.outcome, row.attempts) for row in rows if row.id in ids}


def effects(database: Database) -> dict[str, tuple[str, str | None, int | None]]:
    """Per subscription: (state_event_id, status, quantity), and the tenant it linked."""
    with database.transaction() as conn:
        rows = conn.execute(
            text("SELECT id, state_event_id, status, quantity FROM subscriptions")
        ).all()
    return {row.state_event_id: (row.id, row.status, row.quantity) for row in rows}


def changes_per_event(database: Database) -> Counter[str]:
    """How many tenant_changes rows each event id caused."""
    with database.transaction() as conn:
        return Counter(conn.scalars(text("SELECT event_id FROM tenant_changes")).all())


def assert_consistent(database: Database, events: list[dict[str, Any]]) -> None:
    """Every logged event has its effects and every effect has its logged event, once."""
    by_id = {event["id"]: event for event in events}
    logged = log_rows(database, list(by_id))
    applied = effects(database)
    changes = changes_per_event(database)
    assert set(applied) == set(logged), "an effect without its log row, or the reverse"
    for event_id, (outcome, attempts) in logged.items():
        obj = by_id[event_id]["data"]["object"]
        assert (outcome, attempts) == ("processed", 1), event_id
        assert applied[event_id] == (obj["id"], obj["status"], obj["items"]["data"][0]["quantity"])
        assert changes[event_id] == 1, event_id
    assert sum(changes.values()) == len(logged)
    with database.transaction() as conn:
        tenants = conn.scalar(
            text("SELECT count(*) FROM tenants WHERE stripe_customer_id IS NOT NULL")
        )
    assert tenants == len(logged)


@pytest.mark.slow
def test_sigkilled_worker_loses_no_acknowledged_event(
    env: dict[str, str], database: Database
) -> None:
    """Stream events, SIGKILL a worker twice; every 2xx is applied, the rest apply on retry."""
    events = [new_subscription(index) for index in range(EVENTS)]
    with running_service(env, workers=WORKERS) as base_url:
        master = master_pid(base_url)
        statuses, killed = stream(base_url, events, master)
        assert len(wait_for_workers(master, WORKERS)) == WORKERS, "gunicorn did not respawn"

        acknowledged = [event_id for event_id, status in statuses.items() if 200 <= status < 300]
        unanswered = [event for event in events if statuses[event["id"]] == NO_ANSWER]
        server_errors = [status for status in statuses.values() if status >= 500]
        logged_before_retry = log_rows(database, list(statuses))
        print(  # the figures of the issue, shown with -rP
            f"sent {len(events)}, acknowledged {len(acknowledged)}, no answer {len(unanswered)}, "
            f"5xx {len(server_errors)}, in the log {len(logged_before_retry)}, killed {killed}"
        )
        assert len(statuses) == EVENTS
        assert not server_errors, Counter(statuses.values())
        assert set(acknowledged) <= set(logged_before_retry), "an acknowledged event is not logged"
        assert_consistent(database, events)

        retried = Counter()
        for event in unanswered:
            status, answer = deliver(base_url, event)
            assert status == 200, answer
            retried[answer["outcome"]] += 1
        print(f"re-sent {len(unanswered)}: {dict(retried)}")
        assert set(retried) <= {"processed", "duplicate"}

    assert len(log_rows(database, list(statuses))) == EVENTS
    assert_consistent(database, events)
