"""Hostile input: fuzzed requests never get a 5xx; malformed HTTP leaves gunicorn healthy.

The fuzz goes through the Flask test client against every route (and unknown ones) with
every method, random headers and random bodies, once per backend. The service is
configured with a webhook secret and a sync key but without ``STRIPE_API_KEY``, so the
only 5xx answers the contract allows are:

* 503 ``BILLING_NOT_CONFIGURED`` from checkout and portal (that is the configured
  situation: billing is off);
* 500 ``PROCESSING_FAILED`` from the webhook for a body that carries a *valid*
  signature (only Stripe can sign): a verified event its handler cannot apply is kept
  as ``failed`` and retried, by contract. Even then the handler must have refused the
  event in its own words; a message naming a Python or database exception class is a
  crash and fails the test.

Every answer of 400 or more is a JSON object with ``error``, ``message`` and ``status``.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests import stripe_events as se
from tests.helpers import SYNC_KEY, WEBHOOK_SECRET
from tests.reliability.support import deliver, master_pid, wait_for_workers, worker_pids
from tests.servers import http, running_service
from webhook_service.db import Database

ROUTES = (
    "/api/v1/billing/webhook",
    "/api/v1/usage",
    "/api/v1/usage/scans",
    "/api/v1/tenants/sync",
    "/api/v1/billing/checkout",
    "/api/v1/billing/portal",
    "/healthz",
    "/readyz",
    "/metrics",
)
BILLING_ROUTES = ("/api/v1/billing/checkout", "/api/v1/billing/portal")
WEBHOOK = ROUTES[0]
API_KEY = "nat_pk_fuzz_" + "0123456789abcdef"
CRASH_MESSAGE = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Violation)\b")

# ---------------------------------------------------------------------------- strategies

# What an HTTP server hands the application as a header value: latin-1, no CR/LF/NUL.
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=80,
)
method = st.one_of(
    st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=10),
)
path_segment = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x2FF, exclude_characters="?#"), max_size=20
)
path = st.one_of(
    st.sampled_from(ROUTES),
    st.builds(lambda route, extra: route + "/" + extra, st.sampled_from(ROUTES), path_segment),
    st.builds(lambda route: route.upper(), st.sampled_from(ROUTES)),
    st.builds(lambda route: route.replace("/", "//"), st.sampled_from(ROUTES)),
    st.builds(lambda segment: "/" + segment, path_segment),
)
query = st.one_of(st.just(""), st.builds(lambda q: "?" + q, path_segment))

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
)
json_value = st.recursive(
    json_scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=12,
)
HANDLED_TYPES = (
    "checkout.session.completed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "invoice.paid",
    "invoice.payment_failed",
    "customer.deleted",
)
stripe_id = st.one_of(
    st.builds(lambda p: se.new_id(p), st.sampled_from(["sub", "cus", "price", "in"])),
    st.text(max_size=20),
    st.integers(),
    st.none(),
)
# Objects shaped like what the handlers read, with any field replaced by junk.
stripe_object = st.fixed_dictionaries(
    {},
    optional={
        "id": stripe_id,
        "object": st.sampled_from(["subscription", "invoice", "checkout.session", "customer"]),
        "customer": st.one_of(stripe_id, st.dictionaries(st.just("id"), stripe_id)),
        "status": st.one_of(st.sampled_from(["active", "canceled", "trialing"]), json_value),
        "mode": st.one_of(st.just("subscription"), json_value),
        "client_reference_id": st.one_of(st.just("tnt_fuzz"), stripe_id, json_value),
        "metadata": st.one_of(st.fixed_dictionaries({"tenant_id": stripe_id}), json_value),
        "items": st.one_of(
            st.fixed_dictionaries(
                {"data": st.lists(st.dictionaries(st.text(max_size=20), json_value), max_size=2)}
            ),
            json_value,
        ),
        "current_period_start": st.one_of(st.integers(-(2**40), 2**40), json_value),
        "current_period_end": st.one_of(st.integers(-(2**40), 2**40), json_value),
        "billing_reason": st.one_of(st.just("subscription_cycle"), json_value),
        "subscription": stripe_id,
        "lines": st.one_of(
            st.fixed_dictionaries(
                {"data": st.lists(st.dictionaries(st.text(max_size=20), json_value), max_size=2)}
            ),
            json_value,
        ),
        "parent": json_value,
        "quantity": json_value,
        "cancel_at_period_end": json_value,
    },
)


def mostly(good: st.SearchStrategy[Any], junk: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` three times in four, else ``junk``."""
    return st.one_of(good, good, good, junk)


event_envelope = st.fixed_dictionaries(
    {
        "id": mostly(st.builds(lambda: se.new_id("evt")), st.text(max_size=30).map("evt_".__add__)),
        "object": st.just("event"),
        "type": mostly(st.sampled_from(HANDLED_TYPES), st.text(max_size=30)),
        "created": mostly(st.integers(0, 2**40), json_value),
        "data": mostly(st.fixed_dictionaries({"object": stripe_object}), json_value),
    },
    optional={
        "api_version": mostly(st.sampled_from(se.API_VERSIONS), json_value),
        "livemode": json_value,
    },
)
NASTY_BODIES = (
    b"[" * 100_000,
    b'{"a":' * 50_000,
    b'{"count": 1e999}',
    b'{"count": 1' + b"0" * 5000 + b"}",
    b'{"count": NaN}',
    b"\xef\xbb\xbf{}",
    b"\xff\xfe\x00{",
    b"null",
    b'"\\ud800"',
    b'{"tenants": [{"tenant_id": "tnt_\\u0000"}]}',
    b'{"tenants": "x"}',
    b'{"return_url": "http://[::1"}',
    b'{"price_id": "price_pro_monthly", "success_url": "http://a", "cancel_url": "javascript:x"}',
)
ROUTE_METHODS = {
    "/api/v1/billing/webhook": "POST",
    "/api/v1/usage": "GET",
    "/api/v1/usage/scans": "POST",
    "/api/v1/tenants/sync": "POST",
    "/api/v1/billing/checkout": "POST",
    "/api/v1/billing/portal": "POST",
    "/healthz": "GET",
    "/readyz": "GET",
    "/metrics": "GET",
}
url_like = st.one_of(
    st.sampled_from(
        [
            "https://app.example.com/billing",
            "http://[::1",
            "http://[::1]:80/x",
            "http://[zz]/",
            "javascript:alert(1)",
            "http://",
            "//app.example.com",
            "https://app.example.com/" + "x" * 3000,
            "https://app.example.com:99999/",
        ]
    ),
    st.text(max_size=40),
    json_value,
)
# Bodies shaped like each route's, with any field replaced by junk.
ROUTE_BODIES = {
    "/api/v1/usage/scans": st.fixed_dictionaries(
        {}, optional={"count": st.one_of(st.integers(-(2**70), 2**70), json_value)}
    ),
    "/api/v1/tenants/sync": st.fixed_dictionaries(
        {},
        optional={
            "tenants": st.one_of(
                st.lists(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "tenant_id": st.one_of(
                                st.sampled_from(["tnt_other", "tnt_other2"]), st.text(max_size=70)
                            ),
                            "api_keys": st.one_of(
                                st.lists(st.text(max_size=40).map("nat_pk_".__add__), max_size=3),
                                json_value,
                            ),
                            "api_key_sha256": st.one_of(
                                st.lists(st.text("0123456789abcdef", max_size=64), max_size=2),
                                json_value,
                            ),
                            "stripe_customer_id": st.one_of(
                                st.none(), st.text(max_size=300).map("cus_".__add__), json_value
                            ),
                            "active": json_value,
                        },
                    ),
                    max_size=3,
                ),
                json_value,
            )
        },
    ),
    "/api/v1/billing/checkout": st.fixed_dictionaries(
        {},
        optional={
            "price_id": st.one_of(
                st.sampled_from(["price_pro_monthly", "pro_yearly", "price_nope"]), json_value
            ),
            "success_url": url_like,
            "cancel_url": url_like,
        },
    ),
    "/api/v1/billing/portal": st.fixed_dictionaries({}, optional={"return_url": url_like}),
    "/api/v1/billing/webhook": event_envelope,
}
# The routes with the most code behind them come up more often.
WEIGHTED_ROUTES = (*ROUTES, *(WEBHOOK,) * 4, *ROUTES[1:6])
generic_body = st.one_of(
    st.just(b""),
    st.binary(max_size=512),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.sampled_from(NASTY_BODIES),
)


@st.composite
def headers_for(draw: st.DrawFn, payload: bytes) -> tuple[dict[str, str], bool]:
    """Random headers; often valid credentials and a valid signature of ``payload``."""
    chosen: dict[str, str] = {}
    signed = False
    signature = draw(st.integers(0, 4))
    if signature >= 2:
        chosen["Stripe-Signature"] = se.sign_bytes(payload, WEBHOOK_SECRET)
        signed = True
    elif signature == 1:
        chosen["Stripe-Signature"] = draw(
            st.one_of(
                header_text,
                st.builds(lambda t: f"t={t},v1={'0' * 64}", st.integers(-(2**70), 2**70)),
            )
        )
    for name, credential in (("X-API-Key", API_KEY), ("X-Sync-Key", SYNC_KEY)):
        choice = draw(st.integers(0, 3))
        if choice >= 2:
            chosen[name] = credential
        elif choice == 1:
            chosen[name] = draw(header_text)
    extra = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "Content-Type",
                    "Content-Encoding",
                    "Authorization",
                    "Idempotency-Key",
                    "X-Request-ID",
                    "X-Forwarded-For",
                    "Accept",
                    "Cookie",
                    "Expect",
                    "X-Junk",
                ]
            ),
            st.one_of(
                header_text,
                st.sampled_from(
                    [
                        "application/json; charset=utf-16",
                        "application/json; charset=nope",
                        "multipart/form-data; boundary=x",
                        "application/x-www-form-urlencoded",
                        "gzip",
                        "Bearer " + API_KEY,
                    ]
                ),
            ),
            max_size=4,
        )
    )
    chosen.update(extra)
    return chosen, signed


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes, bool]:
    """A request: mostly a real route with its own method and a body shaped for it."""
    if draw(st.integers(0, 5)):
        route = draw(st.sampled_from(WEIGHTED_ROUTES))
        verb = ROUTE_METHODS[route] if draw(st.integers(0, 4)) else draw(method)
    else:
        route, verb = draw(path), draw(method)
    shaped = ROUTE_BODIES.get(route)
    if shaped is not None and draw(st.integers(0, 3)):
        payload = json.dumps(draw(shaped)).encode()
    else:
        payload = draw(generic_body)
    headers, signed = draw(headers_for(payload))
    return verb, route + draw(query), headers, payload, signed


# ---------------------------------------------------------------------------- the fuzz


@pytest.fixture
def env(env: dict[str, str]) -> dict[str, str]:
    """The fuzz's configuration: billing off, rate limits out of the way."""
    return {**env, "RATE_LIMIT": "1000000/minute"}


def check_answer(
    request: tuple[str, str, dict[str, str], bytes, bool], status: int, response: Any
) -> None:
    """No 5xx but the allowed ones; a JSON error body for every 4xx/5xx."""
    verb, target, _, _, signed = request
    route = target.split("?", 1)[0]
    assert response.headers.get("X-Request-ID"), "no X-Request-ID"
    if status < 400:
        return
    if verb == "HEAD":
        assert status < 500
        return
    assert response.mimetype == "application/json", response.get_data()[:300]
    answer = response.get_json()
    assert isinstance(answer, dict), answer
    assert isinstance(answer.get("error"), str)
    assert answer["error"]
    assert isinstance(answer.get("message"), str)
    assert answer["message"]
    assert answer.get("status") == status
    if status < 500:
        return
    allowed = (status, answer["error"]) == (
        503,
        "BILLING_NOT_CONFIGURED",
    ) and route in BILLING_ROUTES
    if (status, answer["error"]) == (500, "PROCESSING_FAILED") and route == WEBHOOK and signed:
        assert not CRASH_MESSAGE.search(answer["message"]), answer["message"]
        allowed = True
    assert allowed, (request[:2], status, answer)


@pytest.mark.slow
def test_fuzzed_requests_never_get_an_unexpected_5xx(client: FlaskClient) -> None:
    """Send random methods, paths, headers and bodies; only contract answers come back."""
    synced = client.post(
        "/api/v1/tenants/sync",
        json={"tenants": [{"tenant_id": "tnt_fuzz", "api_keys": [API_KEY]}]},
        headers={"X-Sync-Key": SYNC_KEY},
    )
    assert synced.status_code == 200

    @settings(
        max_examples=300,
        deadline=None,
        database=None,
        # No shrinking: a failure is reported at once (unshrunk), so the test stays bounded.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(requests())
    def fuzz(request: tuple[str, str, dict[str, str], bytes, bool]) -> None:
        verb, target, headers, payload, _ = request
        response = client.open(target, method=verb, headers=headers, data=payload)
        check_answer(request, response.status_code, response)

    fuzz()


@pytest.mark.parametrize("route", [r for r in ROUTES if r.startswith("/api/")])
def test_nasty_bodies_with_valid_credentials_get_no_unexpected_5xx(
    route: str, client: FlaskClient, make_tenant: Callable[..., str]
) -> None:
    """POST each nasty body to each API route with valid credentials and signature."""
    key = make_tenant("tnt_nasty")
    for payload in NASTY_BODIES:
        headers = {
            "X-API-Key": key,
            "X-Sync-Key": SYNC_KEY,
            "Content-Type": "application/json",
            "Stripe-Signature": se.sign_bytes(payload, WEBHOOK_SECRET),
        }
        response = client.post(route, headers=headers, data=payload)
        check_answer(("POST", route, headers, payload, True), response.status_code, response)


# ---------------------------------------------------------------------------- raw HTTP

RAW_TIMEOUT_S = 5.0


def _raw_exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection, stop writing, and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=RAW_TIMEOUT_S) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return received


def _abort(port: int, data: bytes) -> None:
    """Send ``data``, keep a worker waiting for the rest a moment, and go away."""
    with socket.create_connection(("127.0.0.1", port), timeout=RAW_TIMEOUT_S) as sock:
        sock.sendall(data)
        time.sleep(0.5)


HOST = b"Host: 127.0.0.1\r\n"
MALFORMED: dict[str, tuple[bytes, bool]] = {
    # name: (bytes sent, whether the client then waits for an answer)
    "content-length-longer-than-body": (
        b"POST /api/v1/billing/webhook HTTP/1.1\r\n" + HOST + b"Content-Length: 5000\r\n"
        b'Content-Type: application/json\r\nStripe-Signature: t=1,v1=00\r\n\r\n{"id":',
        True,
    ),
    "content-length-longer-then-abort": (
        b"POST /api/v1/usage/scans HTTP/1.1\r\n" + HOST + b"Content-Length: 100000\r\n"
        b"X-API-Key: " + API_KEY.encode() + b'\r\n\r\n{"count":',
        False,
    ),
    "negative-content-length": (
        b"POST /api/v1/billing/webhook HTTP/1.1\r\n" + HOST + b"Content-Length: -10\r\n\r\nabc",
        True,
    ),
    "garbage-content-length": (
        b"POST /api/v1/billing/webhook HTTP/1.1\r\n" + HOST + b"Content-Length: 12abc\r\n\r\nabc",
        True,
    ),
    "two-content-lengths": (
        b"POST /api/v1/billing/webhook HTTP/1.1\r\n"
        + HOST
        + b"Content-Length: 3\r\nContent-Length: 40\r\n\r\nabc",
        True,
    ),
    "bad-chunk-size": (
        b"POST /api/v1/billing/webhook HTTP/1.1\r\n"
        + HOST
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        True,
    ),
    "chunk-longer-than-announced": (
        b"POST /api/v1/tenants/sync HTTP/1.1\r\n"
        + HOST
        + b"X-Sync-Key: "
        + SYNC_KEY.encode()
        + b"\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcdefgh\r\n0\r\n\r\n",
        True,
    ),
    "truncated-chunked-body": (
        b"POST /api/v1/billing/webhook HTTP/1.1\r\n"
        + HOST
        + b'Transfer-Encoding: chunked\r\n\r\nff\r\n{"id": "evt_',
        True,
    ),
    "chunked-and-content-length": (
        b"POST /api/v1/billing/webhook HTTP/1.1\r\n"
        + HOST
        + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        True,
    ),
    "garbage-request-line": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", True),
    "binary-noise": (bytes(range(256)) * 4, True),
    "huge-header": (
        b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        True,
    ),
    "too-many-headers": (
        b"GET /readyz HTTP/1.1\r\n"
        + HOST
        + b"".join(b"X-H%d: v\r\n" % i for i in range(300))
        + b"\r\n",
        True,
    ),
    "huge-request-line": (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n" + HOST + b"\r\n", True),
    "header-without-colon": (
        b"GET /api/v1/usage HTTP/1.1\r\n" + HOST + b"X-API-Key nat_pk_nope\r\n\r\n",
        True,
    ),
    "header-with-nul": (b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n", True),
    "obsolete-line-folding": (
        b"GET /healthz HTTP/1.1\r\n" + HOST + b"X-A: a\r\n  folded\r\n\r\n",
        True,
    ),
    "http-0.9": (b"GET /healthz\r\n", True),
    "http-version-garbage": (b"GET /healthz HTTP/9.7\r\n" + HOST + b"\r\n", True),
    "bare-lf-line-endings": (b"GET /healthz HTTP/1.1\nHost: x\n\n", True),
    "method-with-spaces": (b"G E T /healthz HTTP/1.1\r\n" + HOST + b"\r\n", True),
    "absolute-uri-elsewhere": (
        b"GET http://example.com/healthz HTTP/1.1\r\n" + HOST + b"\r\n",
        True,
    ),
    "slowloris-then-close": (
        b"POST /api/v1/billing/webhook HTTP/1.1\r\n" + HOST + b"Content-Le",
        False,
    ),
    "empty-connection": (b"", True),
}


@pytest.mark.slow
def test_malformed_http_leaves_gunicorn_healthy(env: dict[str, str], database: Database) -> None:
    """Send malformed requests over raw sockets; the server still serves and processes events."""
    with running_service(env, workers=2) as base_url:
        check_raw_http(base_url)


def check_raw_http(base_url: str) -> None:
    """Run every malformed exchange against ``base_url``, then a valid delivery."""
    port = int(base_url.rsplit(":", 1)[1])
    master = master_pid(base_url)
    workers = wait_for_workers(master, 2)
    assert len(workers) == 2
    answers: dict[str, bytes] = {}
    for name, (data, wait) in MALFORMED.items():
        if wait:
            answers[name] = _raw_exchange(port, data)
        else:
            _abort(port, data)
        status, _, _ = http("GET", base_url + "/healthz", timeout=RAW_TIMEOUT_S)
        assert status == 200, f"/healthz after {name}: {status}"
    # Nothing a client sends makes the server answer 5xx (the app's or gunicorn's own).
    for name, answer in answers.items():
        assert not re.match(rb"HTTP/1\.[01] 5\d\d", answer), (name, answer[:200])

    event = se.event(
        "charge.refund.updated",
        {"id": se.new_id("re"), "object": "refund"},
        created=int(time.time()),
        api_version=se.BASIL_API_VERSION,
    )
    assert deliver(base_url, event) == (
        200,
        {"received": True, "event_id": event["id"], "outcome": "ignored"},
    )
    assert worker_pids(master) == workers, "a worker died or was replaced"
