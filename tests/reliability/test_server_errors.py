"""Errors gunicorn answers itself are JSON too (issue 11, item 7).

A malformed request line or header (400), a request line over the limit (414), too
many or too large headers (431) and a worker aborted mid-request by its timeout (500)
never reach the application; gunicorn wrote them as text/html pages. They now carry the
service's error body, ``{"error", "message", "status"}``, and an X-Request-ID, and
echo none of the client's text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers import SYNC_KEY
from tests.reliability.test_hostile_input import MALFORMED, _raw_exchange
from tests.servers import http, running_service
from tests.stripe_stub import StripeStub, running_stripe_stub
from webhook_service.db import Database

HOST = b"Host: 127.0.0.1\r\n"
REFUSED_BY_GUNICORN = {
    "bad-request-line": (b"G E T /healthz HTTP/1.1\r\n" + HOST + b"\r\n", 400, "BAD_REQUEST"),
    "request-line-too-long": (
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
        414,
        "URI_TOO_LONG",
    ),
    "too-many-headers": (
        b"GET /readyz HTTP/1.1\r\n"
        + HOST
        + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
        + b"\r\n",
        431,
        "HEADERS_TOO_LARGE",
    ),
    "header-too-large": (
        b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-Big: " + b"b" * 9000 + b"\r\n\r\n",
        431,
        "HEADERS_TOO_LARGE",
    ),
}


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def assert_json_error(raw: bytes, status: int, code: str | None = None) -> dict[str, Any]:
    got, headers, body = parse_answer(raw)
    assert got == status, raw[:300]
    assert headers.get("content-type") == "application/json", raw[:300]
    assert headers.get("x-request-id"), raw[:300]
    assert int(headers["content-length"]) == len(body)
    answer = json.loads(body)
    assert answer["status"] == status
    assert isinstance(answer["message"], str)
    assert answer["message"]
    if code is not None:
        assert answer["error"] == code
    return dict(answer)


@pytest.mark.slow
def test_requests_gunicorn_refuses_get_json_errors(env: dict[str, str], database: Database) -> None:
    """Answer 400, 414 and 431 from gunicorn itself with the service's JSON error body."""
    with running_service(env, workers=1) as base_url:
        port = int(base_url.rsplit(":", 1)[1])
        for name, (data, status, code) in REFUSED_BY_GUNICORN.items():
            raw = _raw_exchange(port, data)
            answer = assert_json_error(raw, status, code)
            for echoed in (b"G E T", b"aaaa", b"bbbb"):
                assert echoed not in raw, name
            assert set(answer) == {"error", "message", "status"}
        # Whatever else gunicorn refuses (the hostile-input corpus) is JSON as well.
        for name, (data, wait) in MALFORMED.items():
            if not wait:
                continue
            raw = _raw_exchange(port, data)
            if raw.startswith(b"HTTP/") and parse_answer(raw)[0] >= 400:
                assert b"text/html" not in raw, (name, raw[:300])
                assert_json_error(raw, parse_answer(raw)[0])


@pytest.fixture
def stalling_stripe() -> Iterator[StripeStub]:
    with running_stripe_stub() as stub:
        yield stub


@pytest.mark.slow
def test_a_worker_aborted_by_its_timeout_answers_json(
    env: dict[str, str], database: Database, stalling_stripe: StripeStub
) -> None:
    """Answer the request a sync worker was killed in (its timeout) with a JSON 500."""
    stalling_stripe.respond("POST", "/v1/billing_portal/sessions", 200, {"url": "x"}, delay=6.0)
    env = {
        **env,
        "STRIPE_API_KEY": "sk_test_stub_timeout",
        "STRIPE_API_BASE": stalling_stripe.base_url,
        # The sync worker, killed after 2 s: the case gunicorn answers with its own 500.
        # One thread, or gunicorn runs its threaded worker instead of the sync one.
        "GUNICORN_CMD_ARGS": "--timeout 2 --worker-class sync --threads 1",
    }
    api_key = "nat_pk_worker_timeout_0001"
    with running_service(env, workers=1) as base_url:
        sync = json.dumps(
            {
                "tenants": [
                    {"tenant_id": "tnt_to", "api_keys": [api_key], "stripe_customer_id": "cus_to1"}
                ]
            }
        ).encode()
        status, _, _ = http(
            "POST",
            base_url + "/api/v1/tenants/sync",
            body=sync,
            headers={"X-Sync-Key": SYNC_KEY, "Content-Type": "application/json"},
        )
        assert status == 200
        started = time.monotonic()
        status, headers, body = http(
            "POST",
            base_url + "/api/v1/billing/portal",
            body=b'{"return_url": "https://app.example/back"}',
            headers={"X-API-Key": api_key, "Content-Type": "application/json"},
            timeout=30,
        )
        assert time.monotonic() - started < 15
        assert status == 500, body[:300]
        assert headers.get("Content-Type") == "application/json", body[:300]
        assert json.loads(body) == {
            "error": "INTERNAL_ERROR",
            "message": "An internal error occurred.",
            "status": 500,
        }
