"""`webhook-service events reconcile` against a local stand-in for Stripe's events API."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner, Result
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import count_rows
from tests.stripe_stub import StripeStub
from webhook_service.cli import cli
from webhook_service.db import Database
from webhook_service.services import build_router


@pytest.fixture
def env(env: dict[str, str], stripe_stub: StripeStub) -> dict[str, str]:
    return {
        **env,
        "STRIPE_API_KEY": "sk_test_stub_reconcile",
        "STRIPE_API_BASE": stripe_stub.base_url,
    }


def as_listed(event: dict[str, Any]) -> dict[str, Any]:
    """An event as the events API returns it (a JSON round trip of the webhook body)."""
    loaded: dict[str, Any] = json.loads(se.render(event))
    return loaded


def history(now: int) -> list[dict[str, Any]]:
    """A checkout, a subscription that will be logged already, one that fails, many invoices."""
    start, end = now - 3600, now + 30 * 86400
    api = se.BASIL_API_VERSION
    events = [
        se.checkout_completed_event(
            session_id="cs_rec_1",
            customer="cus_Rec1",
            subscription="sub_Rec1",
            client_reference_id="tnt_rec",
            created=now - 900,
            api_version=api,
        ),
        se.subscription_event(
            "customer.subscription.created",
            sub_id="sub_Rec1",
            customer="cus_Rec1",
            status="active",
            period_start=start,
            period_end=end,
            created=now - 800,
            api_version=api,
        ),
        se.subscription_event(
            "customer.subscription.updated",
            sub_id="sub_Rec2",
            customer="cus_Rec2",
            status="active",
            price_id="price_not_in_catalog",
            metadata={"tenant_id": "tnt_rec2"},
            period_start=start,
            period_end=end,
            created=now - 700,
            api_version=api,
        ),
    ]
    for index in range(230):
        events.append(
            se.invoice_event(
                "invoice.payment_failed",
                invoice_id=f"in_Rec{index:04d}",
                sub_id="sub_Rec1",
                customer="cus_Rec1",
                period_start=start,
                period_end=end,
                created=now - 600 + index,
                api_version=api,
            )
        )
    return [as_listed(e) for e in events]


def test_reconcile_applies_missed_events_once(
    runner: CliRunner,
    stripe_stub: StripeStub,
    database: Database,
    post_event: Callable[..., TestResponse],
) -> None:
    """Page through Stripe's events oldest first: new applied, logged ones duplicate."""
    now = int(time.time())
    events = history(now)
    assert post_event(events[1]).status_code == 200  # this one was delivered
    stripe_stub.events = list(reversed(events))  # Stripe lists newest first
    stripe_stub.events.insert(
        0,
        as_listed(
            se.event(
                "charge.succeeded",
                {"id": "ch_1", "object": "charge"},
                created=now - 10,
                api_version=se.BASIL_API_VERSION,
            )
        ),
    )

    result = runner.invoke(cli, ["events", "reconcile", "--since", "3d"])

    assert result.exit_code == 1, result.output
    assert "fetched 233, new 231, duplicate 1, failed 1 (231 processed)" in result.output
    assert "UNKNOWN_PRICE price_not_in_catalog" in result.output
    pages = stripe_stub.calls("GET", "/v1/events")
    assert len(pages) == 3
    asked_types = {v for k, v in pages[0].params.items() if k.startswith("types[")}
    assert asked_types == set(build_router().event_types)
    assert int(pages[0].params["created[gte]"]) == pytest.approx(now - 3 * 86400, abs=5)
    assert pages[1].params["starting_after"] == stripe_stub.events[100]["id"]
    assert count_rows(database, "stripe_events") == 233
    assert count_rows(database, "stripe_events", "outcome = 'failed'") == 1
    assert count_rows(database, "stripe_events", "attempts > 1") == 0
    assert (
        count_rows(database, "tenants", "id = 'tnt_rec' AND stripe_customer_id = 'cus_Rec1'") == 1
    )

    again = runner.invoke(cli, ["events", "reconcile", "--since", "3d"])
    assert again.exit_code == 1  # the failing event is still failing, and is run again
    assert "fetched 233, new 0, duplicate 232, failed 1" in again.output
    assert count_rows(database, "stripe_events") == 233


def test_reconcile_applies_in_created_order(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Apply an older subscription event before a newer one, so none ends up stale."""
    now = int(time.time())
    start, end = now - 3600, now + 30 * 86400
    older = se.subscription_event(
        "customer.subscription.created",
        sub_id="sub_Ord",
        customer="cus_Ord",
        status="incomplete",
        period_start=start,
        period_end=end,
        created=now - 100,
        api_version=se.LEGACY_API_VERSION,
    )
    newer = se.subscription_event(
        "customer.subscription.updated",
        sub_id="sub_Ord",
        customer="cus_Ord",
        status="active",
        period_start=start,
        period_end=end,
        created=now - 50,
        api_version=se.LEGACY_API_VERSION,
        previous={"status": "incomplete"},
    )
    stripe_stub.events = [as_listed(newer), as_listed(older)]
    result = runner.invoke(cli, ["events", "reconcile"])
    assert result.exit_code == 0, result.output
    assert "(2 processed)" in result.output
    assert count_rows(database, "subscriptions", "id = 'sub_Ord' AND status = 'active'") == 1


def test_reconcile_dry_run_changes_nothing(
    runner: CliRunner,
    stripe_stub: StripeStub,
    database: Database,
    post_event: Callable[..., TestResponse],
) -> None:
    """List what would be applied without logging or applying anything."""
    events = history(int(time.time()))[:3]
    assert post_event(events[1]).status_code == 200
    stripe_stub.events = list(reversed(events))
    result = runner.invoke(cli, ["events", "reconcile", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run: fetched 3, new 2, duplicate 1, failed 0" in result.output
    assert f"{events[0]['id']}  checkout.session.completed  would be applied" in result.output
    assert count_rows(database, "stripe_events") == 1
    assert count_rows(database, "tenants") == 0


def test_reconcile_warns_past_the_retention_window(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Warn that Stripe keeps events for 30 days when --since reaches further."""
    result = runner.invoke(cli, ["events", "reconcile", "--since", "45d"])
    assert result.exit_code == 0, result.output
    assert "reaches past Stripe's 30-day event retention" in result.output
    assert "fetched 0, new 0, duplicate 0, failed 0" in result.output


def test_reconcile_needs_an_api_key(
    runner: CliRunner, env: dict[str, str], database: Database
) -> None:
    """Refuse to run without STRIPE_API_KEY."""
    runner.env = {**env, "STRIPE_API_KEY": ""}
    result = runner.invoke(cli, ["events", "reconcile"])
    assert result.exit_code == 2
    assert "STRIPE_API_KEY is not set" in result.output


def test_reconcile_stops_cleanly_when_stripe_fails(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Exit non-zero with one clear line when Stripe's API is failing."""
    for _ in range(2):
        stripe_stub.respond(
            "GET", "/v1/events", 500, {"error": {"type": "api_error", "message": "boom"}}
        )
    result = runner.invoke(cli, ["events", "reconcile"])
    assert result.exit_code == 1
    assert (
        "reconciliation stopped: Stripe answered with a server error (HTTP 500). Retry later."
        in result.output
    )


# --------------------------------------------------------------------------- misbehaving API


def deleted_customer(created: int, event_id: str | None = None) -> dict[str, Any]:
    """A handled event that needs nothing else: a customer no tenant owns was deleted."""
    return as_listed(
        se.customer_deleted_event(
            customer=se.new_id("cus"),
            created=created,
            api_version=se.BASIL_API_VERSION,
            event_id=event_id,
        )
    )


def ended_cleanly(result: Result, code: int) -> None:
    """Exit with ``code`` and one summary line: no traceback, nothing raised past the CLI."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def summary_line(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if "fetched " in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_endless_listing_stops_at_max_pages_keeping_what_it_applied(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Stop after --max-pages of a has_more that never ends, each page applied as it came."""
    now = int(time.time())
    served: list[str] = []

    def endless(params: dict[str, str]) -> dict[str, Any]:
        page = [deleted_customer(now - 60 - len(served) - i) for i in range(10)]
        served.extend(e["id"] for e in page)
        return {"object": "list", "data": page, "has_more": True, "url": "/v1/events"}

    stripe_stub.events_pages = endless
    result = runner.invoke(cli, ["events", "reconcile", "--max-pages", "4"])

    ended_cleanly(result, 1)
    line = summary_line(result)
    assert line.startswith("fetched 40, new 40, duplicate 0, failed 0 (40 processed)")
    assert "4 pages" in line
    assert f"--max-pages) and Stripe lists more; continue with --starting-after {served[-1]}" in (
        line
    )
    assert len(stripe_stub.calls("GET", "/v1/events")) == 4
    assert count_rows(database, "stripe_events") == 40


def test_endless_listing_stops_at_max_seconds(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Stop asking for pages once --max-seconds have passed."""
    now = int(time.time())
    counter = iter(range(1_000_000))

    def slow_endless(params: dict[str, str]) -> dict[str, Any]:
        time.sleep(0.25)
        page = [deleted_customer(now - 60 - next(counter)) for _ in range(2)]
        return {"object": "list", "data": page, "has_more": True, "url": "/v1/events"}

    stripe_stub.events_pages = slow_endless
    started = time.monotonic()
    result = runner.invoke(cli, ["events", "reconcile", "--max-seconds", "1"])
    elapsed = time.monotonic() - started

    ended_cleanly(result, 1)
    assert "1 s spent (--max-seconds) and Stripe lists more" in summary_line(result)
    assert elapsed < 5, elapsed
    pages = len(stripe_stub.calls("GET", "/v1/events"))
    assert 2 <= pages <= 6, pages
    assert count_rows(database, "stripe_events") == 2 * pages


def test_listing_that_ignores_the_cursor_stops_on_repeated_ids(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Stop when the next page repeats events already listed (a cursor ignored)."""
    now = int(time.time())
    page = [deleted_customer(now - 60 - i) for i in range(3)]
    stripe_stub.events_pages = lambda params: {
        "object": "list",
        "data": page,
        "has_more": True,
        "url": "/v1/events",
    }
    result = runner.invoke(cli, ["events", "reconcile"])

    ended_cleanly(result, 1)
    line = summary_line(result)
    assert line.startswith("fetched 6, new 3, duplicate 0, failed 0 (3 processed); skipped 3")
    assert "repeated events it had already listed" in line
    assert len(stripe_stub.calls("GET", "/v1/events")) == 2
    assert count_rows(database, "stripe_events") == 3


def test_listing_with_more_but_no_items_stops(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Stop when a page says has_more but gives no cursor to continue from."""
    stripe_stub.events_pages = lambda params: {"object": "list", "data": [], "has_more": True}
    result = runner.invoke(cli, ["events", "reconcile"])
    ended_cleanly(result, 1)
    assert "its cursor did not advance" in summary_line(result)
    assert len(stripe_stub.calls("GET", "/v1/events")) == 1


@pytest.mark.parametrize(
    "body",
    [
        {"object": "list", "data": {}, "has_more": False},
        {"object": "list", "has_more": False},
        {"object": "list", "data": [], "has_more": "no"},
        {"error": "not a list at all"},
    ],
)
def test_page_without_a_data_list_is_a_failure(
    body: dict[str, Any], runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Exit 1 on a page whose data is not a list, never "fetched 0"."""
    stripe_stub.respond("GET", "/v1/events", 200, body)
    result = runner.invoke(cli, ["events", "reconcile"])
    ended_cleanly(result, 1)
    assert "page 1 of Stripe's listing has no data list or no has_more" in summary_line(result)


def test_malformed_items_count_as_failed_and_the_rest_apply(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Count an item with a non-integer created, without id or type, as failed."""
    now = int(time.time())
    good = [deleted_customer(now - 100), deleted_customer(now - 90)]
    yesterday = deleted_customer(now - 80)
    yesterday["created"] = "yesterday"
    no_type = deleted_customer(now - 75)
    del no_type["type"]
    no_id = deleted_customer(now - 70)
    del no_id["id"]
    stripe_stub.filter_events = False
    stripe_stub.events = [no_id, no_type, yesterday, "not an event", *good]  # type: ignore[list-item]
    result = runner.invoke(cli, ["events", "reconcile"])

    ended_cleanly(result, 1)
    line = summary_line(result)
    assert line.startswith("fetched 6, new 2, duplicate 0, failed 4 (2 processed)")
    assert f"{yesterday['id']}  malformed: created is not a Unix time" in result.stdout
    assert "?  malformed: no id" in result.stdout
    assert count_rows(database, "stripe_events") == 2


def test_progress_survives_a_failing_page(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Keep the first page applied when the second one fails, and say where to resume."""
    now = int(time.time())
    stripe_stub.events = [deleted_customer(now - 60 - i) for i in range(150)]
    last_of_first_page = stripe_stub.events[99]["id"]
    listing = stripe_stub._events_page

    def first_then_fail(params: dict[str, str]) -> dict[str, Any]:
        for _ in range(2):  # the next request and the SDK's one retry of it
            stripe_stub.respond(
                "GET", "/v1/events", 500, {"error": {"type": "api_error", "message": "boom"}}
            )
        return listing(params)

    stripe_stub.events_pages = first_then_fail
    result = runner.invoke(cli, ["events", "reconcile"])

    ended_cleanly(result, 1)
    line = summary_line(result)
    assert line.startswith("fetched 100, new 100, duplicate 0, failed 0 (100 processed)")
    assert "reconciliation stopped: " in line
    assert f"--starting-after {last_of_first_page}" in line
    assert count_rows(database, "stripe_events") == 100

    stripe_stub.events_pages = None
    again = runner.invoke(cli, ["events", "reconcile", "--starting-after", last_of_first_page])
    ended_cleanly(again, 0)
    assert summary_line(again).startswith("fetched 50, new 50, duplicate 0, failed 0")
    assert count_rows(database, "stripe_events") == 150


def test_rate_limit_is_retried_after_retry_after(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Wait Stripe's Retry-After on a 429 and carry on, a few times."""
    now = int(time.time())
    stripe_stub.events = [deleted_customer(now - 60 - i) for i in range(3)]
    for _ in range(2):
        stripe_stub.respond(
            "GET",
            "/v1/events",
            429,
            {"error": {"type": "invalid_request_error", "code": "rate_limit"}},
            headers={"Retry-After": "1"},
        )
    started = time.monotonic()
    result = runner.invoke(cli, ["events", "reconcile"])
    elapsed = time.monotonic() - started

    ended_cleanly(result, 0)
    assert summary_line(result).startswith("fetched 3, new 3, duplicate 0, failed 0")
    assert result.stdout.count("rate limited by Stripe; retrying in 1 s") == 2
    assert len(stripe_stub.calls("GET", "/v1/events")) == 3
    assert 2 <= elapsed < 10, elapsed
    assert count_rows(database, "stripe_events") == 3


def test_rate_limit_that_persists_stops_the_run(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Give up after a few 429s with one line and exit 1."""
    for _ in range(5):
        stripe_stub.respond(
            "GET",
            "/v1/events",
            429,
            {"error": {"type": "invalid_request_error", "code": "rate_limit"}},
            headers={"Retry-After": "0"},
        )
    result = runner.invoke(cli, ["events", "reconcile"])
    ended_cleanly(result, 1)
    assert "reconciliation stopped: Stripe kept answering 429 (rate limited)" in summary_line(
        result
    )
    assert len(stripe_stub.calls("GET", "/v1/events")) == 4


def test_filters_by_created_and_type_on_this_side(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Skip events older than --since and of types not handled, whatever the server sent."""
    now = int(time.time())
    recent = deleted_customer(now - 3600)
    too_old = deleted_customer(now - 5 * 86400)
    other_type = as_listed(
        se.event(
            "charge.succeeded",
            {"id": "ch_1", "object": "charge"},
            created=now - 60,
            api_version=se.BASIL_API_VERSION,
        )
    )
    stripe_stub.filter_events = False
    stripe_stub.events = [other_type, recent, too_old]
    result = runner.invoke(cli, ["events", "reconcile", "--since", "1d"])

    ended_cleanly(result, 0)
    assert summary_line(result).startswith(
        "fetched 3, new 1, duplicate 0, failed 0 (1 processed); skipped 2"
    )
    assert count_rows(database, "stripe_events") == 1
    assert count_rows(database, "stripe_events", "id = :id", id=recent["id"]) == 1


def test_dry_run_counts_an_event_listed_twice_once(
    runner: CliRunner, stripe_stub: StripeStub, database: Database
) -> None:
    """Count a duplicate id once in a dry run (and stop: the listing repeats itself)."""
    now = int(time.time())
    twice = deleted_customer(now - 60)
    stripe_stub.filter_events = False
    stripe_stub.events = [twice, deleted_customer(now - 70), twice]
    result = runner.invoke(cli, ["events", "reconcile", "--dry-run"])
    ended_cleanly(result, 1)
    line = summary_line(result)
    assert line.startswith("dry run: fetched 3, new 2, duplicate 0, failed 0; skipped 1")
    assert result.stdout.count(f"{twice['id']}  customer.deleted  would be applied") == 1
    assert count_rows(database, "stripe_events") == 0
