"""The test-side Stripe event factory and the bundled fixtures it generates."""

from __future__ import annotations

import hashlib
import hmac
import importlib.util
import json
import re
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import stripe

try:
    from tests import stripe_events as se
except ImportError:  # tests/ is not a package here: pytest put tests/ itself on sys.path
    import stripe_events as se

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
SECRET = "whsec_test_factory_0123456789abcdef"

T0 = 1735689600  # 2025-01-01T00:00:00Z
P1 = se.add_months(T0, 1)  # 2025-02-01
P2 = se.add_months(T0, 2)  # 2025-03-01
SUB = "sub_TestFactory000000000001"
CUS = "cus_TestFactory001"
INV = "in_TestFactory0000000000001"
LEGACY, BASIL = se.LEGACY_API_VERSION, se.BASIL_API_VERSION


def _subscription(api_version: str, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "sub_id": SUB,
        "customer": CUS,
        "status": "active",
        "price_id": "price_pro_monthly",
        "lookup_key": "pro_monthly",
        "quantity": 3,
        "start_date": T0,
        "period_start": P1,
        "period_end": P2,
        "created": P1 + 10,
        "api_version": api_version,
        "metadata": {"tenant_id": "tnt_1"},
        **overrides,
    }
    event_type = kwargs.pop("event_type", "customer.subscription.updated")
    return se.subscription_event(event_type, **kwargs)


def _invoice(api_version: str, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "invoice_id": INV,
        "sub_id": SUB,
        "customer": CUS,
        "period_start": P1,
        "period_end": P2,
        "created": P1 + 3605,
        "api_version": api_version,
        "subscription_metadata": {"tenant_id": "tnt_1"},
        **overrides,
    }
    event_type = kwargs.pop("event_type", "invoice.paid")
    return se.invoice_event(event_type, **kwargs)


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fixtures_generate", FIXTURES / "generate.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fixtures_generate", module)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- versions


@pytest.mark.parametrize(
    ("api_version", "basil"),
    [
        ("2024-06-20", False),
        ("2024-12-18.acacia", False),
        ("2025-02-24.acacia", False),
        ("2025-03-31.basil", True),
        ("2025-08-27.basil", True),
        ("2025-09-30.clover", True),
    ],
)
def test_api_version_picks_the_shape(api_version: str, basil: bool) -> None:
    assert se.is_basil(api_version) is basil


def test_api_version_must_look_like_one() -> None:
    with pytest.raises(ValueError, match="not a Stripe API version"):
        se.is_basil("basil")


# --------------------------------------------------------------------------- subscriptions


def test_legacy_subscription_has_its_period_at_top_level() -> None:
    sub = _subscription(LEGACY)["data"]["object"]
    item = sub["items"]["data"][0]
    assert (sub["current_period_start"], sub["current_period_end"]) == (P1, P2)
    assert "current_period_start" not in item
    assert "current_period_end" not in item
    assert sub["discount"] is None
    assert item["price"]["recurring"]["aggregate_usage"] is None


def test_basil_subscription_has_its_period_only_on_items() -> None:
    sub = _subscription(BASIL)["data"]["object"]
    item = sub["items"]["data"][0]
    assert (item["current_period_start"], item["current_period_end"]) == (P1, P2)
    assert "current_period_start" not in sub
    assert "current_period_end" not in sub
    assert "discount" not in sub
    assert "aggregate_usage" not in item["price"]["recurring"]


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_subscription_carries_price_quantity_and_status(api_version: str) -> None:
    sub = _subscription(api_version, cancel_at_period_end=True)["data"]["object"]
    item = sub["items"]["data"][0]
    assert sub["object"] == "subscription"
    assert (sub["id"], sub["customer"], sub["status"]) == (SUB, CUS, "active")
    assert sub["metadata"] == {"tenant_id": "tnt_1"}
    assert item["id"].startswith("si_")
    assert item["quantity"] == 3
    assert sub["quantity"] == 3
    price = item["price"]
    assert price["id"] == "price_pro_monthly"
    assert price["lookup_key"] == "pro_monthly"
    assert price["recurring"]["interval"] == "month"
    assert price["product"].startswith("prod_")
    assert price["unit_amount"] == se.DEFAULT_UNIT_AMOUNT
    assert sub["cancel_at_period_end"] is True
    assert sub["cancel_at"] == P2
    assert sub["canceled_at"] == P1 + 10
    assert sub["ended_at"] is None


def test_deleted_subscription_is_canceled_and_ended_at_the_event() -> None:
    sub = _subscription(BASIL, event_type="customer.subscription.deleted", status="canceled")[
        "data"
    ]["object"]
    assert sub["canceled_at"] == sub["ended_at"] == P1 + 10
    assert sub["cancellation_details"]["reason"] == "cancellation_requested"


def test_item_ids_are_stable_across_events() -> None:
    first = _subscription(BASIL, quantity=1)["data"]["object"]["items"]["data"][0]["id"]
    later = _subscription(BASIL, quantity=2)["data"]["object"]["items"]["data"][0]["id"]
    assert first == later


def test_legacy_previous_attributes_report_the_period_at_top_level() -> None:
    previous = {"period_start": T0, "period_end": P1, "latest_invoice": "in_old"}
    ev = _subscription(LEGACY, latest_invoice=INV, previous=previous)
    assert ev["data"]["previous_attributes"] == {
        "current_period_end": P1,
        "current_period_start": T0,
        "latest_invoice": "in_old",
    }


def test_basil_previous_attributes_report_the_period_under_items() -> None:
    previous = {"period_start": T0, "period_end": P1, "latest_invoice": "in_old"}
    prev = _subscription(BASIL, latest_invoice=INV, previous=previous)["data"][
        "previous_attributes"
    ]
    assert set(prev) == {"items", "latest_invoice"}
    (old_item,) = prev["items"]["data"]
    assert (old_item["current_period_start"], old_item["current_period_end"]) == (T0, P1)


def test_previous_attributes_of_a_quantity_change() -> None:
    prev = _subscription(LEGACY, previous={"quantity": 1})["data"]["previous_attributes"]
    assert prev["quantity"] == 1
    assert prev["items"]["data"][0]["quantity"] == 1


def test_previous_attributes_only_on_updated_events() -> None:
    created = _subscription(BASIL, event_type="customer.subscription.created")
    assert "previous_attributes" not in created["data"]
    assert _subscription(BASIL)["data"]["previous_attributes"] == {}
    with pytest.raises(ValueError, match="no previous_attributes"):
        se.event(
            "customer.subscription.created",
            {},
            created=T0,
            api_version=BASIL,
            previous_attributes={},
        )
    with pytest.raises(TypeError, match="previous"):
        _subscription(BASIL, previous={"colour": "blue"})


# --------------------------------------------------------------------------- invoices


def test_legacy_invoice_names_its_subscription_at_top_level_and_on_the_line() -> None:
    invoice = _invoice(LEGACY)["data"]["object"]
    (line,) = invoice["lines"]["data"]
    item_id = _subscription(LEGACY)["data"]["object"]["items"]["data"][0]["id"]
    assert invoice["subscription"] == SUB
    assert invoice["subscription_details"] == {"metadata": {"tenant_id": "tnt_1"}}
    assert "parent" not in invoice
    assert line["subscription"] == SUB
    assert line["subscription_item"] == item_id
    assert line["type"] == "subscription"
    assert line["proration"] is False
    assert line["price"]["id"] == "price_pro_monthly"
    assert "parent" not in line
    assert "pricing" not in line
    assert invoice["paid"] is True


def test_basil_invoice_names_its_subscription_in_parent() -> None:
    invoice = _invoice(BASIL)["data"]["object"]
    (line,) = invoice["lines"]["data"]
    item_id = _subscription(BASIL)["data"]["object"]["items"]["data"][0]["id"]
    assert invoice["parent"] == {
        "quote_details": None,
        "subscription_details": {"metadata": {"tenant_id": "tnt_1"}, "subscription": SUB},
        "type": "subscription_details",
    }
    for removed in ("subscription", "subscription_details", "paid", "charge", "payment_intent"):
        assert removed not in invoice
    assert line["parent"]["type"] == "subscription_item_details"
    details = line["parent"]["subscription_item_details"]
    assert details["subscription"] == SUB
    assert details["subscription_item"] == item_id
    assert details["proration"] is False
    assert line["parent"]["invoice_item_details"] is None
    assert line["pricing"]["price_details"]["price"] == "price_pro_monthly"
    for removed in ("subscription", "subscription_item", "type", "price", "plan", "proration"):
        assert removed not in line


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_cycle_invoice_own_period_is_the_previous_one(api_version: str) -> None:
    invoice = _invoice(api_version)["data"]["object"]
    (line,) = invoice["lines"]["data"]
    assert line["period"] == {"end": P2, "start": P1}
    assert (invoice["period_start"], invoice["period_end"]) == (T0, P1)
    assert invoice["billing_reason"] == "subscription_cycle"
    assert invoice["created"] == P1
    assert invoice["status"] == "paid"


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_first_invoice_own_period_is_a_point(api_version: str) -> None:
    invoice = _invoice(
        api_version,
        billing_reason="subscription_create",
        period_start=T0,
        period_end=P1,
        created=T0 + 5,
    )["data"]["object"]
    (line,) = invoice["lines"]["data"]
    assert line["period"] == {"end": P1, "start": T0}
    assert invoice["period_start"] == invoice["period_end"] == invoice["created"]


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_failed_invoice_stays_open_with_a_retry(api_version: str) -> None:
    invoice = _invoice(api_version, event_type="invoice.payment_failed", quantity=2)["data"][
        "object"
    ]
    assert invoice["status"] == "open"
    assert invoice["amount_paid"] == 0
    assert invoice["amount_remaining"] == invoice["amount_due"] == 2 * se.DEFAULT_UNIT_AMOUNT
    assert invoice["next_payment_attempt"] == P1 + 3605 + 3 * 86400
    assert invoice["status_transitions"]["paid_at"] is None
    if not se.is_basil(api_version):
        assert invoice["paid"] is False


def test_unknown_invoice_event_type_is_refused() -> None:
    with pytest.raises(ValueError, match="invoice event type"):
        _invoice(BASIL, event_type="invoice.voided")


# --------------------------------------------------------------------------- others


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_checkout_session_completed(api_version: str) -> None:
    ev = se.checkout_completed_event(
        session_id="cs_test_a1xyz",
        customer=CUS,
        subscription=SUB,
        client_reference_id="tnt_1",
        metadata={"tenant_id": "tnt_1"},
        created=T0,
        api_version=api_version,
    )
    session = ev["data"]["object"]
    assert ev["type"] == "checkout.session.completed"
    assert session["object"] == "checkout.session"
    assert (session["mode"], session["status"], session["payment_status"]) == (
        "subscription",
        "complete",
        "paid",
    )
    assert (session["customer"], session["subscription"]) == (CUS, SUB)
    assert session["client_reference_id"] == "tnt_1"
    assert session["metadata"] == {"tenant_id": "tnt_1"}
    assert ("shipping_details" in session) is not se.is_basil(api_version)


def test_customer_deleted_carries_the_whole_customer() -> None:
    ev = se.customer_deleted_event(customer=CUS, created=T0, api_version=BASIL)
    customer = ev["data"]["object"]
    assert ev["type"] == "customer.deleted"
    assert (customer["id"], customer["object"]) == (CUS, "customer")
    assert "deleted" not in customer


def test_event_envelope() -> None:
    ev = se.event("ping.test", {"id": "x_1", "object": "thing"}, created=T0, api_version=LEGACY)
    assert list(ev) == [
        "id",
        "object",
        "api_version",
        "created",
        "data",
        "livemode",
        "pending_webhooks",
        "request",
        "type",
    ]
    assert re.fullmatch(r"evt_[A-Za-z0-9]{24}", ev["id"])
    assert ev["object"] == "event"
    assert ev["livemode"] is False
    assert ev["pending_webhooks"] == 1
    assert ev["request"] == {"id": None, "idempotency_key": None}
    assert ev["data"] == {"object": {"id": "x_1", "object": "thing"}}


# --------------------------------------------------------------------------- ids


def test_ids_look_like_stripe_ids() -> None:
    assert re.fullmatch(r"evt_[A-Za-z0-9]{24}", se.new_id("evt"))
    assert re.fullmatch(r"cus_[A-Za-z0-9]{14}", se.new_id("cus"))
    assert re.fullmatch(r"sub_[A-Za-z0-9]{24}", se.new_id("sub"))
    assert se.new_id("evt") != se.new_id("evt")
    assert se.stable_id("si", SUB) == se.stable_id("si", SUB)
    assert re.fullmatch(r"si_[A-Za-z0-9]{14}", se.stable_id("si", SUB))
    assert uuid.UUID(se.stable_uuid("x")).version == 4


# --------------------------------------------------------------------------- rendering


def test_render_is_stripes_pretty_json() -> None:
    body = se.render({"id": "x", "a": [], "b": {}, "c": "1 \u00d7 2", "d": [1, None]})
    assert body == (
        b'{\n  "id": "x",\n  "a": [\n\n  ],\n  "b": {\n  },\n'
        b'  "c": "1 \xc3\x97 2",\n  "d": [\n    1,\n    null\n  ]\n}'
    )


@pytest.mark.parametrize("api_version", se.API_VERSIONS)
def test_render_round_trips(api_version: str) -> None:
    ev = _invoice(api_version)
    body = se.render(ev)
    assert not body.endswith(b"\n")
    assert json.loads(body) == ev
    assert body.startswith(b'{\n  "id": "evt_')


# --------------------------------------------------------------------------- signing


def test_sign_verifies_with_the_stripe_sdk() -> None:
    body = se.render(_subscription(BASIL))
    header = se.sign(body, SECRET)
    assert stripe.WebhookSignature.verify_header(body, header, SECRET, tolerance=300)
    parsed = stripe.Webhook.construct_event(body, header, SECRET)
    assert parsed.type == "customer.subscription.updated"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body, header, "whsec_other", tolerance=300)


def test_sign_uses_the_given_timestamp() -> None:
    body = se.render(_invoice(LEGACY))
    header = se.sign(body, SECRET, timestamp=1_700_000_000)
    assert re.fullmatch(r"t=1700000000,v1=[0-9a-f]{64}", header)
    assert stripe.WebhookSignature.verify_header(body, header, SECRET, tolerance=None)
    with pytest.raises(stripe.SignatureVerificationError, match="tolerance"):
        stripe.WebhookSignature.verify_header(body, header, SECRET, tolerance=300)


def test_sign_rolled_carries_one_v1_per_secret() -> None:
    body = se.render(_invoice(BASIL))
    header = se.sign_rolled(body, [SECRET, "whsec_next_0123456789"])
    assert header.count("v1=") == 2
    for secret in (SECRET, "whsec_next_0123456789"):
        assert stripe.WebhookSignature.verify_header(body, header, secret, tolerance=300)


def test_sign_bytes_signs_raw_bytes() -> None:
    body = se.render(_invoice(BASIL))
    assert se.sign_bytes(body, SECRET, 1_700_000_000) == se.sign(body, SECRET, 1_700_000_000)
    latin1 = b'{"id": "evt_1", "name": "Caf\xe9"}'  # not UTF-8
    mac = hmac.new(SECRET.encode(), b"1700000000." + latin1, hashlib.sha256).hexdigest()
    assert se.sign_bytes(latin1, SECRET, 1_700_000_000) == f"t=1700000000,v1={mac}"


def test_delivery_headers() -> None:
    body = se.render(_invoice(BASIL))
    headers = se.delivery_headers(body, SECRET)
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert stripe.WebhookSignature.verify_header(
        body, headers["Stripe-Signature"], SECRET, tolerance=300
    )


# --------------------------------------------------------------------------- fixtures


FOLDERS = {"lifecycle-2024-06-20": LEGACY, "lifecycle-2025-03-31.basil": BASIL}


def test_fixture_folders() -> None:
    entries = {p.name for p in FIXTURES.iterdir() if p.name != "__pycache__"}
    assert entries == {*FOLDERS, "README.md", "generate.py"}


def test_fixtures_on_disk_are_what_the_generator_produces() -> None:
    generator = _load_generator()
    assert generator.on_disk() == generator.build(), "run: python fixtures/generate.py"


@pytest.mark.parametrize(("folder", "api_version"), FOLDERS.items())
def test_fixture_lifecycle_replays_in_order(folder: str, api_version: str) -> None:
    files = sorted((FIXTURES / folder).glob("*.json"))
    assert len(files) == 13
    created = []
    for n, path in enumerate(files, start=1):
        body = path.read_bytes()
        ev = json.loads(body)
        assert path.name == f"{n:02d}_{ev['type']}.json"
        assert ev["api_version"] == api_version
        assert se.render(ev) == body
        created.append(ev["created"])
        parsed = stripe.Webhook.construct_event(body, se.sign(body, SECRET), SECRET)
        assert parsed.id == ev["id"]
    assert created == sorted(set(created)), "created must strictly increase"


@pytest.mark.parametrize(("folder", "api_version"), FOLDERS.items())
def test_fixture_shapes(folder: str, api_version: str) -> None:
    basil = se.is_basil(api_version)
    for path in sorted((FIXTURES / folder).glob("*.json")):
        obj = json.loads(path.read_bytes())["data"]["object"]
        if obj["object"] == "subscription":
            item = obj["items"]["data"][0]
            assert ("current_period_end" in obj) is not basil, path.name
            assert ("current_period_end" in item) is basil, path.name
            assert obj["metadata"]["tenant_id"].startswith("tnt_demo_")
        if obj["object"] == "invoice":
            (line,) = obj["lines"]["data"]
            assert ("subscription" in obj) is not basil, path.name
            assert ("parent" in obj) is basil, path.name
            assert ("subscription" in line) is not basil, path.name
            assert ("parent" in line) is basil, path.name


def test_fixture_lifecycles_use_distinct_ids() -> None:
    seen: dict[str, set[str]] = {}
    for folder in FOLDERS:
        ids: set[str] = set()
        for path in (FIXTURES / folder).glob("*.json"):
            ev = json.loads(path.read_bytes())
            ids.add(ev["id"])
            obj = ev["data"]["object"]
            ids.update(v for k in ("id", "customer", "subscription") if (v := obj.get(k)))
        seen[folder] = ids
    legacy, basil = seen.values()
    assert not legacy & basil
