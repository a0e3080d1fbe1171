"""The log stream of a real gunicorn: JSON lines only, a request id on every request line,
and no secret anywhere, failures included."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests import stripe_events as se
from tests.helpers import SYNC_KEY, WEBHOOK_SECRET, new_api_key
from tests.reliability.support import WEBHOOK_PATH, signed
from tests.servers import closed_port, http, running_service
from webhook_service.db import Database

STRIPE_KEY = "sk_test_reliability_0f9e8d7c6b5a4f3e2d1c"
DB_PASSWORD = "pg-password-never-logged-5e6f"
PAYLOAD_MARKER = "payload-body-never-logged-7a8b"
NOW = int(time.time())


def subscription(status: str, price_id: str) -> dict[str, Any]:
    """A subscription event carrying a marker that must never reach the log."""
    return se.subscription_event(
        "customer.subscription.updated",
        sub_id=se.new_id("sub"),
        customer=se.new_id("cus"),
        status=status,
        period_start=NOW - 86400,
        period_end=se.add_months(NOW - 86400, 1),
        created=NOW,
        api_version=se.BASIL_API_VERSION,
        price_id=price_id,
        metadata={"tenant_id": "tnt_logs_" + se.new_id("x", 8)[2:], "note": PAYLOAD_MARKER},
    )


@pytest.mark.slow
def test_every_line_is_json_with_request_ids_and_no_secrets(
    env: dict[str, str], database: Database, tmp_path: Path
) -> None:
    """Drive successes and failures through gunicorn; check every stderr line."""
    url = make_url(env["DATABASE_URL"])
    if url.get_backend_name() == "postgresql":  # trust auth accepts (and ignores) a password
        env = {**env, "DATABASE_URL": url.set(password=DB_PASSWORD).render_as_string(False)}
    env = {
        **env,
        "LOG_FORMAT": "json",
        "STRIPE_API_KEY": STRIPE_KEY,
        "STRIPE_API_BASE": f"http://127.0.0.1:{closed_port()}",
        # Small enough to reach: the rate_limit_exceeded line is scanned too.
        "RATE_LIMIT": "20/minute",
    }
    api_key = new_api_key()
    customer = se.new_id("cus")
    secrets = {
        "webhook secret": WEBHOOK_SECRET,
        "sync key": SYNC_KEY,
        "API key": api_key,
        "API key without its prefix": api_key[len("nat_pk_") :],
        "Stripe key": STRIPE_KEY,
        "database password": DB_PASSWORD,
        "payload": PAYLOAD_MARKER,
        # The hash the database stores (and sync accepts as api_key_sha256).
        "API key SHA-256": hashlib.sha256(api_key.encode()).hexdigest(),
    }
    log_path = tmp_path / "gunicorn.log"
    expected: dict[str, int] = {}

    with running_service(env, workers=1, log_path=log_path) as base_url:

        def call(
            name: str,
            method: str,
            path: str,
            status: int,
            body: bytes | None = None,
            headers: dict[str, str] | None = None,
        ) -> None:
            request_id = f"rel-logs-{name}"
            got, answer_headers, raw = http(
                method,
                base_url + path,
                body=body,
                headers={"X-Request-ID": request_id, **(headers or {})},
                timeout=30,
            )
            assert got == status, (name, raw[:300])
            assert answer_headers.get("X-Request-ID") == request_id
            expected[request_id] = status

        sync = json.dumps(
            {
                "tenants": [
                    {"tenant_id": "tnt_logs", "api_keys": [api_key], "stripe_customer_id": customer}
                ]
            }
        ).encode()
        json_type = {"Content-Type": "application/json"}
        call(
            "sync", "POST", "/api/v1/tenants/sync", 200, sync, {**json_type, "X-Sync-Key": SYNC_KEY}
        )
        call(
            "sync-bad-key", "POST", "/api/v1/tenants/sync", 401, sync, {"X-Sync-Key": SYNC_KEY[:-1]}
        )
        call("usage", "GET", "/api/v1/usage", 200, headers={"X-API-Key": api_key})
        call("usage-bad-key", "GET", "/api/v1/usage", 401, headers={"X-API-Key": api_key + "x"})
        call(
            "usage-bearer",
            "GET",
            "/api/v1/usage",
            401,
            headers={"Authorization": f"Bearer {api_key}"},
        )
        call("spend", "POST", "/api/v1/usage/scans", 200, b'{"count": 1}', {"X-API-Key": api_key})
        checkout = json.dumps(
            {
                "price_id": "price_pro_monthly",
                "success_url": "https://app.example.com/ok",
                "cancel_url": "https://app.example.com/no",
            }
        ).encode()
        call(
            "checkout-stripe-down",
            "POST",
            "/api/v1/billing/checkout",
            503,
            checkout,
            {"X-API-Key": api_key},
        )
        portal = b'{"return_url": "https://app.example.com/billing"}'
        call(
            "portal-stripe-down",
            "POST",
            "/api/v1/billing/portal",
            503,
            portal,
            {"X-API-Key": api_key},
        )
        body, headers = signed(subscription("active", se.DEFAULT_PRICE_ID))
        call("webhook", "POST", WEBHOOK_PATH, 200, body, headers)
        call(
            "webhook-bad-signature",
            "POST",
            WEBHOOK_PATH,
            400,
            body,
            {**headers, "Stripe-Signature": headers["Stripe-Signature"].replace("v1=", "v1=f")},
        )
        body, headers = signed(subscription("active", "price_not_in_any_plan"))
        call("webhook-handler-fails", "POST", WEBHOOK_PATH, 500, body, headers)
        call("webhook-not-json", "POST", WEBHOOK_PATH, 400, *signed(b"{" + PAYLOAD_MARKER.encode()))
        # A handler error about a field carrying the sender's text.
        odd = subscription("active", se.DEFAULT_PRICE_ID)
        odd["data"]["object"]["items"]["data"][0]["quantity"] = PAYLOAD_MARKER
        call("webhook-odd-quantity", "POST", WEBHOOK_PATH, 500, *signed(odd))
        # One worker: the key's 21st request in the minute is refused and logged.
        for n in range(16):
            call(f"usage-{n}", "GET", "/api/v1/usage", 200, headers={"X-API-Key": api_key})
        call("usage-limited", "GET", "/api/v1/usage", 429, headers={"X-API-Key": api_key})
        call("unknown-path", "GET", f"/nope?sync={SYNC_KEY}&key={api_key}", 404)
        call("readyz", "GET", "/readyz", 200)

    lines = log_path.read_text("utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"line {number} is not JSON: {line[:300]}")
        assert isinstance(record, dict), line
        records.append(record)
        for what, secret in secrets.items():
            assert secret not in line, f"the {what} is in line {number}: {line[:300]}"

    request_lines = [record for record in records if record.get("event") == "request"]
    for record in request_lines:
        assert isinstance(record.get("request_id"), str), record
        assert record["request_id"], record
    seen = {record["request_id"]: record["status"] for record in request_lines}
    assert {rid: seen.get(rid) for rid in expected} == expected
    failed = next(r for r in request_lines if r["request_id"] == "rel-logs-webhook-handler-fails")
    assert failed["outcome"] == "failed"
    assert any(record.get("logger", "").startswith("gunicorn") for record in records)
    assert any(record.get("event") == "rate_limit_exceeded" for record in records)
