"""Idempotency-Key: the same key with a different request is refused (issue 11, item 1).

Stripe answers 400 ``idempotency_error`` here, the IETF Idempotency-Key draft 422; the
service follows the draft (422 ``IDEMPOTENCY_KEY_REUSED``): the request is well formed
(so not a 400 INVALID_REQUEST), it only cannot be processed with this key. Nothing is
spent. One length rule (1-255 printable ASCII characters) holds for every endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.helpers import spend, usage_of
from tests.stripe_stub import StripeStub

URLS = {"success_url": "https://app.nat.test/ok", "cancel_url": "https://app.nat.test/cancel"}


@pytest.fixture
def env(env: dict[str, str], stripe_stub: StripeStub, tmp_path: Path) -> dict[str, str]:
    plans = tmp_path / "plans.toml"
    plans.write_text(
        'default_plan = "free"\n'
        "[plans.free]\nscans_per_month = 10\n"
        "[plans.pro]\nscans_per_month = 500\n"
        'prices = ["price_pro_monthly", "price_pro_2", "pro_monthly"]\n',
        encoding="utf-8",
    )
    return {
        **env,
        "STRIPE_API_KEY": "sk_test_stub_idempotency",
        "STRIPE_API_BASE": stripe_stub.base_url,
        "NAT_PLANS_FILE": str(plans),
    }


def assert_reused(response: TestResponse) -> None:
    assert response.status_code == 422, response.get_data(as_text=True)
    body = response.json
    assert body is not None
    assert body["error"] == "IDEMPOTENCY_KEY_REUSED"
    assert body["status"] == 422
    assert "Idempotency-Key" in body["message"]


def test_spend_key_reused_with_another_count_is_refused(
    client: FlaskClient, make_tenant: Callable[..., str]
) -> None:
    """Refuse count 5 under the key of a count-1 spend with 422; spend nothing more."""
    key = make_tenant("tnt_idem")
    first = spend(client, key, 1, idempotency_key="scan-42")
    assert first.status_code == 200
    assert_reused(spend(client, key, 5, idempotency_key="scan-42"))
    assert usage_of(client, key)["scans_used"] == 1
    again = spend(client, key, 1, idempotency_key="scan-42")
    assert (again.status_code, again.json) == (200, first.json)
    # The same request however spelled: no body means count 1.
    assert spend(client, key, None, idempotency_key="scan-42").json == first.json
    assert usage_of(client, key)["scans_used"] == 1


def test_spend_key_is_per_tenant(client: FlaskClient, make_tenant: Callable[..., str]) -> None:
    """Let another tenant use the same key string for its own request."""
    one, two = make_tenant("tnt_idem_1"), make_tenant("tnt_idem_2")
    assert spend(client, one, 1, idempotency_key="k").status_code == 200
    assert spend(client, two, 3, idempotency_key="k").status_code == 200
    assert usage_of(client, two)["scans_used"] == 3


def checkout(client: FlaskClient, api_key: str, body: dict[str, Any], key: str) -> TestResponse:
    return client.post(
        "/api/v1/billing/checkout",
        json=body,
        headers={"X-API-Key": api_key, "Idempotency-Key": key},
    )


def test_checkout_key_reused_with_another_request_is_refused(
    client: FlaskClient, make_tenant: Callable[..., str], stripe_stub: StripeStub
) -> None:
    """Answer Stripe's idempotency_error as 422 IDEMPOTENCY_KEY_REUSED: one session only."""
    api_key = make_tenant("tnt_idem_checkout")
    body = {"price_id": "price_pro_monthly", **URLS}
    first = checkout(client, api_key, body, "upgrade-7")
    assert first.status_code == 200, first.json
    assert checkout(client, api_key, body, "upgrade-7").json == first.json
    assert_reused(checkout(client, api_key, {**body, "price_id": "price_pro_2"}, "upgrade-7"))
    other_url = {**body, "success_url": "https://app.nat.test/elsewhere"}
    assert_reused(checkout(client, api_key, other_url, "upgrade-7"))
    # Stripe saw the key once with these parameters, and opened one session.
    assert len(stripe_stub.idempotent) == 1
    assert stripe_stub.next_id("cs_test") == "cs_test_stub00000002"


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("k" * 255, True),
        ("a b-c_d.e:f/1", True),
        ("k" * 256, False),
        ("", False),
        ("caf\u00e9", False),
    ],
)
def test_one_idempotency_key_rule_for_every_endpoint(
    client: FlaskClient, make_tenant: Callable[..., str], key: str, valid: bool
) -> None:
    """Apply the same 1-255 printable ASCII rule to spends and checkouts."""
    api_key = make_tenant("tnt_idem_rule")
    spent = client.post(
        "/api/v1/usage/scans",
        json={"count": 1},
        headers={"X-API-Key": api_key, "Idempotency-Key": key},
    )
    opened = checkout(client, api_key, {"price_id": "price_pro_monthly", **URLS}, key)
    for response in (spent, opened):
        if valid:
            assert response.status_code == 200, response.json
        else:
            assert response.status_code == 400, response.json
            assert response.json is not None
            assert response.json["error"] == "INVALID_REQUEST"
            assert "Idempotency-Key" in response.json["message"]


def test_a_malformed_checkout_key_is_refused_before_any_call_to_stripe(
    client: FlaskClient, make_tenant: Callable[..., str], stripe_stub: StripeStub
) -> None:
    """Refuse a bad Idempotency-Key with 400 before resolving a lookup key at Stripe."""
    api_key = make_tenant("tnt_idem_first")
    response = checkout(client, api_key, {"price_id": "pro_monthly", **URLS}, "x" * 256)
    assert response.status_code == 400, response.json
    assert response.json is not None
    assert "Idempotency-Key" in response.json["message"]
    assert stripe_stub.requests == []
