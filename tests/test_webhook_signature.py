"""Stripe-Signature verification: every way a delivery can fail it, and the ways it passes.

A rejected delivery is a 400 ``INVALID_SIGNATURE`` whose message says what was wrong,
and leaves nothing in the event log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import SECOND_SECRET, WEBHOOK_SECRET, count_rows
from webhook_service.db import Database
from webhook_service.errors import InvalidSignature
from webhook_service.webhooks.signature import verify_signature

WEBHOOK = "/api/v1/billing/webhook"
OTHER_SECRET = "whsec_test_somebody_else_000000000000000"


def refund_event() -> dict[str, Any]:
    """A small event of a type nobody handles (logged as ignored when accepted)."""
    return se.event(
        "charge.refund.updated",
        {"id": se.new_id("re"), "object": "refund", "amount": 4900, "currency": "usd"},
        created=1735689600,
        api_version=se.BASIL_API_VERSION,
    )


def assert_rejected(response: TestResponse, database: Database, *fragments: str) -> None:
    """A 400 INVALID_SIGNATURE naming ``fragments``, with nothing logged."""
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.json
    assert body is not None
    assert set(body) == {"error", "message", "status"}
    assert body["error"] == "INVALID_SIGNATURE"
    assert body["status"] == 400
    for fragment in fragments:
        assert fragment in body["message"]
    assert count_rows(database, "stripe_events") == 0


def test_valid_signature_is_accepted(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Accept an event signed with the configured secret, as Stripe signs it."""
    event = refund_event()
    response = post_event(event)
    assert response.status_code == 200
    assert response.json == {"received": True, "event_id": event["id"], "outcome": "ignored"}
    assert count_rows(database, "stripe_events", "id = :id", id=event["id"]) == 1


def test_second_configured_secret_is_accepted(
    make_app: Callable[..., Flask], database: Database
) -> None:
    """Accept an event signed with the second of two configured secrets (secret rolling)."""
    app = make_app(STRIPE_WEBHOOK_SECRET=f" {WEBHOOK_SECRET} , {SECOND_SECRET} ")
    event = refund_event()
    body = se.render(event)
    response = app.test_client().post(
        WEBHOOK, data=body, headers={"Stripe-Signature": se.sign(body, SECOND_SECRET)}
    )
    assert response.status_code == 200
    assert response.json is not None
    assert response.json["outcome"] == "ignored"
    assert count_rows(database, "stripe_events", "id = :id", id=event["id"]) == 1


def test_header_of_a_rolled_secret_is_accepted(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Accept Stripe's header while it rolls a secret: one v1 per secret, one of them ours."""
    event = refund_event()
    body = se.render(event)
    response = post_event(body, header=se.sign_rolled(body, [OTHER_SECRET, WEBHOOK_SECRET]))
    assert response.status_code == 200
    assert count_rows(database, "stripe_events") == 1


def test_one_good_v1_among_bad_ones_is_accepted(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Accept a header whose matching v1 sits between non-matching ones."""
    body = se.render(refund_event())
    good = se.sign(body, WEBHOOK_SECRET)
    t, v1 = good.split(",", 1)
    header = f"{t},v1={'0' * 64},{v1},v0={'1' * 64},v1={'f' * 64}"
    response = post_event(body, header=header)
    assert response.status_code == 200
    assert count_rows(database, "stripe_events") == 1


@pytest.mark.parametrize(
    ("header", "fragments"),
    [
        pytest.param(None, ("No Stripe-Signature header",), id="missing"),
        pytest.param("", ("No Stripe-Signature header",), id="empty"),
        pytest.param("   ", ("No Stripe-Signature header",), id="blank"),
        pytest.param("garbage", ("Malformed", "key=value"), id="not-key-value"),
        pytest.param("v1=" + "a" * 64, ("Malformed", "no timestamp"), id="no-timestamp"),
        pytest.param("t=yesterday,v1=" + "a" * 64, ("Malformed", "t is not"), id="t-not-int"),
        pytest.param("t=\u00b2,v1=" + "a" * 64, ("Malformed", "t is not"), id="t-superscript"),
        pytest.param("t=" + "9" * 5000 + ",v1=ab", ("Malformed",), id="t-huge"),
        pytest.param("t=1,v1=" + "a" * 9000, ("Malformed", "too long"), id="too-long"),
        pytest.param("t=1735689600,,v1=ab", ("Malformed",), id="empty-item"),
        pytest.param("t=1735689600", ("No v1 signature", "none"), id="no-scheme"),
    ],
)
def test_malformed_or_missing_header_is_rejected(
    client: Any, database: Database, header: str | None, fragments: tuple[str, ...]
) -> None:
    """Refuse a delivery whose Stripe-Signature header is missing, empty or malformed."""
    headers = {} if header is None else {"Stripe-Signature": header}
    response = client.post(WEBHOOK, data=se.render(refund_event()), headers=headers)
    assert_rejected(response, database, *fragments)


def test_v0_only_header_is_rejected(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Refuse a header with only a legacy v0 signature, saying no v1 was found."""
    body = se.render(refund_event())
    t = se.sign(body, WEBHOOK_SECRET).split(",", 1)[0]
    response = post_event(body, header=f"{t},v0={'a' * 64}")
    assert_rejected(response, database, "No v1 signature", "'v0'")


def test_spaces_in_header_are_reported_as_no_v1(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Refuse a header with a space before v1 and show the odd scheme name in the message."""
    body = se.render(refund_event())
    header = se.sign(body, WEBHOOK_SECRET).replace(",", ", ")
    response = post_event(body, header=header)
    assert_rejected(response, database, "No v1 signature", "' v1'")


def test_wrong_secret_is_rejected(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Refuse an event signed with a secret that is not configured."""
    response = post_event(refund_event(), secret=OTHER_SECRET)
    assert_rejected(response, database, "No signature matches")


def test_one_changed_byte_is_rejected(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Refuse a body that differs from the signed one by a single byte."""
    body = se.render(refund_event())
    header = se.sign(body, WEBHOOK_SECRET)
    index = body.index(b'"amount": 4900') + len(b'"amount": 4')
    tampered = body[:index] + b"8" + body[index + 1 :]
    assert len(tampered) == len(body)
    assert tampered != body
    response = post_event(tampered, header=header)
    assert_rejected(response, database, "No signature matches")


def test_reserialised_body_is_rejected(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Refuse the same event re-serialised (same JSON, other bytes): Stripe signs bytes."""
    body = se.render(refund_event())
    header = se.sign(body, WEBHOOK_SECRET)
    reserialised = json.dumps(json.loads(body)).encode("utf-8")
    assert json.loads(reserialised) == json.loads(body)
    assert reserialised != body
    response = post_event(reserialised, header=header)
    assert_rejected(response, database, "No signature matches")


def test_non_utf8_body_without_signature_is_a_signature_failure(
    client: Any, database: Database
) -> None:
    """Refuse an unsigned non-UTF-8 body for its missing signature, not for its content."""
    response = client.post(WEBHOOK, data=b"\xff\xfe{}")
    assert_rejected(response, database, "No Stripe-Signature header")


@pytest.mark.parametrize(
    ("offset", "accepted", "fragment"),
    [
        pytest.param(-290, True, "", id="past-inside"),
        pytest.param(-310, False, "in the past", id="past-outside"),
        pytest.param(290, True, "", id="future-inside"),
        pytest.param(310, False, "in the future", id="future-outside"),
    ],
)
def test_timestamp_tolerance_applies_both_ways(
    post_event: Callable[..., TestResponse],
    database: Database,
    offset: int,
    accepted: bool,
    fragment: str,
) -> None:
    """Accept a timestamp within 300 s of now, either way; refuse one just beyond."""
    response = post_event(refund_event(), timestamp=int(time.time()) + offset)
    if accepted:
        assert response.status_code == 200
        assert count_rows(database, "stripe_events") == 1
    else:
        assert_rejected(response, database, "300 seconds", fragment)


def test_configured_tolerance_is_used(make_app: Callable[..., Flask], database: Database) -> None:
    """Refuse a 20 s old signature when STRIPE_WEBHOOK_TOLERANCE is 10."""
    client = make_app(STRIPE_WEBHOOK_TOLERANCE="10").test_client()
    body = se.render(refund_event())
    header = se.sign(body, WEBHOOK_SECRET, int(time.time()) - 20)
    response = client.post(WEBHOOK, data=body, headers={"Stripe-Signature": header})
    assert_rejected(response, database, "10 seconds", "in the past")


def test_signature_is_checked_before_the_timestamp(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Report a forged old delivery as a mismatch: only a genuine one has a meaningful age."""
    response = post_event(refund_event(), secret=OTHER_SECRET, timestamp=int(time.time()) - 3600)
    assert_rejected(response, database, "No signature matches")


@pytest.mark.parametrize(
    ("offset", "reason"),
    [(-300, None), (-301, "too_old"), (300, None), (301, "too_new")],
)
def test_tolerance_boundaries_are_exact(offset: int, reason: str | None) -> None:
    """Accept a timestamp exactly at the tolerance, refuse one a second beyond (both ways)."""
    now = 1_800_000_000
    payload = se.render(refund_event()).decode("utf-8")
    header = se.sign(payload.encode("utf-8"), WEBHOOK_SECRET, now + offset)
    if reason is None:
        verified = verify_signature(payload, header, [WEBHOOK_SECRET], 300, now=now)
        assert verified.timestamp == now + offset
        assert verified.secret_index == 0
    else:
        with pytest.raises(InvalidSignature) as caught:
            verify_signature(payload, header, [WEBHOOK_SECRET], 300, now=now)
        assert caught.value.reason == reason


def test_secret_index_names_the_matching_secret() -> None:
    """Report which configured secret matched, by position."""
    payload = se.render(refund_event()).decode("utf-8")
    header = se.sign(payload.encode("utf-8"), SECOND_SECRET)
    verified = verify_signature(payload, header, [WEBHOOK_SECRET, SECOND_SECRET], 300)
    assert verified.secret_index == 1


def test_missing_secret_answers_503_and_readyz_is_not_ready(
    make_app: Callable[..., Flask], database: Database
) -> None:
    """Refuse every delivery with 503 WEBHOOK_NOT_CONFIGURED when no secret is set."""
    client = make_app(STRIPE_WEBHOOK_SECRET=None).test_client()
    body = se.render(refund_event())
    response = client.post(
        WEBHOOK, data=body, headers={"Stripe-Signature": se.sign(body, WEBHOOK_SECRET)}
    )
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["error"] == "WEBHOOK_NOT_CONFIGURED"
    assert response.json["status"] == 503
    assert "STRIPE_WEBHOOK_SECRET" in response.json["message"]
    assert count_rows(database, "stripe_events") == 0
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json is not None
    assert "STRIPE_WEBHOOK_SECRET" in ready.json["checks"]["webhook_secret"]


def test_v1_that_is_not_a_hex_hmac_is_refused_before_any_hmac() -> None:
    """12.9: with 20 secrets and a 1 MB body, a v1 that cannot match costs no HMAC."""
    secrets = [f"whsec_{i:040d}" for i in range(20)]
    for v1 in ("deadbeef", "Z" * 64, "AB" * 32):
        with pytest.raises(InvalidSignature) as caught:
            verify_signature("x" * 1_000_000, f"t={int(time.time())},v1={v1}", secrets, 300)
        assert caught.value.reason == "malformed"
        assert caught.value.message == (
            "Malformed Stripe-Signature header: no v1 value is 64 hex digits."
        )
