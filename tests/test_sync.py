"""POST /api/v1/tenants/sync: the NAT app pushes tenants, keys and customer links."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from tests.helpers import SYNC_KEY, Subscription, count_rows, new_api_key, sync_tenants, utc
from webhook_service.db import Database
from webhook_service.models import api_keys, tenants
from webhook_service.web.app import create_app

INVALID_SYNC_KEY = {
    "error": "INVALID_SYNC_KEY",
    "message": "The sync key provided is invalid.",
    "status": 401,
}
JAN = (utc(2025, 1, 1), utc(2025, 2, 1))


def status_of(client: FlaskClient, key: str) -> int:
    return client.get("/api/v1/usage", headers={"X-API-Key": key}).status_code


def tenant_rows(database: Database) -> list[tuple[str, str | None, bool]]:
    with database.transaction() as conn:
        rows = conn.execute(
            select(tenants.c.id, tenants.c.stripe_customer_id, tenants.c.active).order_by(
                tenants.c.id
            )
        ).all()
    return [(r.id, r.stripe_customer_id, r.active) for r in rows]


def key_count(database: Database) -> int:
    with database.transaction() as conn:
        return len(conn.execute(select(api_keys.c.key_sha256)).all())


# --------------------------------------------------------------------------- access


@pytest.mark.parametrize("configured", ["", "   "])
def test_sync_without_a_configured_key_is_503(env: dict[str, str], configured: str) -> None:
    """Answer the exact SYNC_NOT_CONFIGURED body when NAT_APP_SYNC_KEY is unset or blank."""
    app = create_app({**env, "NAT_APP_SYNC_KEY": configured})
    try:
        response = app.test_client().post(
            "/api/v1/tenants/sync",
            json={"tenants": []},
            headers={"X-Sync-Key": SYNC_KEY},
        )
    finally:
        app.extensions["nat"].database.dispose()
    assert response.status_code == 503
    assert response.json == {
        "error": "SYNC_NOT_CONFIGURED",
        "message": "NAT_APP_SYNC_KEY is not configured. "
        "Set this environment variable to enable tenant synchronization.",
        "status": 503,
    }


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"X-Sync-Key": ""},
        {"X-Sync-Key": "wrong"},
        {"X-Sync-Key": SYNC_KEY[:-1]},
        {"X-Sync-Key": SYNC_KEY + "x"},
        {"X-Sync-Key": SYNC_KEY.upper()},
        {"Authorization": f"Bearer {SYNC_KEY}"},
        {"X-API-Key": SYNC_KEY},
    ],
)
def test_wrong_or_missing_sync_key_is_401_and_applies_nothing(
    headers: dict[str, str], client: FlaskClient, database: Database
) -> None:
    """Refuse any sync without the exact key, before reading the body."""
    response = client.post(
        "/api/v1/tenants/sync",
        json={"tenants": [{"tenant_id": "tnt_sneaky", "api_keys": [new_api_key()]}]},
        headers=headers,
    )
    assert response.status_code == 401
    assert response.json == INVALID_SYNC_KEY
    assert tenant_rows(database) == []


# --------------------------------------------------------------------------- upsert


def test_upsert_counts_created_and_updated(client: FlaskClient, database: Database) -> None:
    """Create new tenants, update known ones, and say how many of each."""
    first = sync_tenants(
        client,
        [
            {"tenant_id": "tnt_a", "api_keys": [new_api_key()]},
            {"tenant_id": "tnt_b", "api_keys": [], "stripe_customer_id": "cus_SyncB000000001"},
        ],
    )
    assert (first.status_code, first.json) == (200, {"synced": 2, "created": 2, "updated": 0})
    second = sync_tenants(
        client,
        [{"tenant_id": "tnt_b"}, {"tenant_id": "tnt_c", "active": False}],
    )
    assert second.json == {"synced": 2, "created": 1, "updated": 1}
    assert tenant_rows(database) == [
        ("tnt_a", None, True),
        ("tnt_b", "cus_SyncB000000001", True),
        ("tnt_c", None, False),
    ]
    assert sync_tenants(client, []).json == {"synced": 0, "created": 0, "updated": 0}


def test_api_keys_replace_the_whole_key_set(client: FlaskClient) -> None:
    """Revoke omitted keys, accept the new ones, keep keys when api_keys is omitted."""
    old, kept, new = new_api_key(), new_api_key(), new_api_key()
    assert sync_tenants(client, [{"tenant_id": "tnt_keys", "api_keys": [old, kept]}]).json
    assert (status_of(client, old), status_of(client, kept)) == (200, 200)

    sync_tenants(client, [{"tenant_id": "tnt_keys", "api_keys": [kept, new]}])
    assert (status_of(client, old), status_of(client, kept), status_of(client, new)) == (
        401,
        200,
        200,
    )
    # api_keys omitted: the key set stays as it is.
    sync_tenants(client, [{"tenant_id": "tnt_keys", "stripe_customer_id": None}])
    assert (status_of(client, kept), status_of(client, new)) == (200, 200)
    # An empty list revokes every key.
    sync_tenants(client, [{"tenant_id": "tnt_keys", "api_keys": []}])
    assert (status_of(client, kept), status_of(client, new)) == (401, 401)


def test_inactive_revokes_all_keys_until_reactivated(
    client: FlaskClient, database: Database
) -> None:
    """Revoke every key of a tenant synced as inactive; new keys work once it is active."""
    key = new_api_key()
    sync_tenants(client, [{"tenant_id": "tnt_off", "api_keys": [key]}])
    sync_tenants(client, [{"tenant_id": "tnt_off", "api_keys": [key], "active": False}])
    assert status_of(client, key) == 401
    assert key_count(database) == 0
    sync_tenants(client, [{"tenant_id": "tnt_off", "active": True, "api_keys": [key]}])
    assert status_of(client, key) == 200


def test_key_hashes_are_accepted_instead_of_keys(client: FlaskClient, database: Database) -> None:
    """Accept SHA-256 hex digests of keys; the keys they hash then work."""
    key, raw = new_api_key(), new_api_key()
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
    response = sync_tenants(
        client, [{"tenant_id": "tnt_hashes", "api_key_sha256": [digest], "api_keys": [raw]}]
    )
    assert response.status_code == 200
    assert (status_of(client, key), status_of(client, raw)) == (200, 200)
    assert key_count(database) == 2
    sync_tenants(client, [{"tenant_id": "tnt_hashes", "api_key_sha256": [digest]}])
    assert (status_of(client, key), status_of(client, raw)) == (200, 401)


def test_a_key_moves_to_the_tenant_that_was_last_given_it(client: FlaskClient) -> None:
    """Move a key between tenants when a later sync gives it to another one."""
    key = new_api_key()
    sync_tenants(client, [{"tenant_id": "tnt_first", "api_keys": [key]}])
    sync_tenants(client, [{"tenant_id": "tnt_second", "api_keys": [key]}])
    usage = client.get("/api/v1/usage", headers={"X-API-Key": key})
    assert usage.json["tenant_id"] == "tnt_second"


def test_null_or_omitted_customer_keeps_a_webhook_made_link(
    client: FlaskClient,
    post_event: Callable[..., TestResponse],
    database: Database,
) -> None:
    """Leave a link made by a checkout when a sync sends no customer; a given one replaces it."""
    key = new_api_key()
    sync_tenants(client, [{"tenant_id": "tnt_link", "api_keys": [key]}])
    sub = Subscription()
    assert post_event(sub.checkout("tnt_link", JAN[0])).json["outcome"] == "processed"
    created = sub.event("customer.subscription.created", "active", JAN, JAN[0] + 1)
    assert post_event(created).json["outcome"] == "processed"
    for entry in (
        {"tenant_id": "tnt_link", "stripe_customer_id": None},
        {"tenant_id": "tnt_link"},
        {"tenant_id": "tnt_link", "api_keys": [key], "stripe_customer_id": None},
    ):
        assert sync_tenants(client, [entry]).status_code == 200
        assert tenant_rows(database) == [("tnt_link", sub.customer, True)]
    assert client.get("/api/v1/usage", headers={"X-API-Key": key}).json["plan"] == "pro"

    sync_tenants(client, [{"tenant_id": "tnt_link", "stripe_customer_id": "cus_Other000000001"}])
    assert tenant_rows(database) == [("tnt_link", "cus_Other000000001", True)]
    assert client.get("/api/v1/usage", headers={"X-API-Key": key}).json["plan"] == "free"


def test_sync_can_swap_customers_between_tenants(client: FlaskClient, database: Database) -> None:
    """Apply a swap of two tenants' customers in one request."""
    sync_tenants(
        client,
        [
            {"tenant_id": "tnt_x", "stripe_customer_id": "cus_Swap000000001"},
            {"tenant_id": "tnt_y", "stripe_customer_id": "cus_Swap000000002"},
        ],
    )
    swapped = sync_tenants(
        client,
        [
            {"tenant_id": "tnt_x", "stripe_customer_id": "cus_Swap000000002"},
            {"tenant_id": "tnt_y", "stripe_customer_id": "cus_Swap000000001"},
        ],
    )
    assert swapped.status_code == 200
    assert tenant_rows(database) == [
        ("tnt_x", "cus_Swap000000002", True),
        ("tnt_y", "cus_Swap000000001", True),
    ]


# --------------------------------------------------------------------------- validation

GOOD = {"tenant_id": "tnt_good", "api_keys": ["nat_pk_good_key_0001"]}
SHARED_KEY = "nat_pk_shared_key_001"

BAD_ENTRIES: list[tuple[Any, str]] = [
    ({"tenant_id": ""}, "tenant_id"),
    ({"tenant_id": "has space"}, "tenant_id"),
    ({"tenant_id": "tnt_newline\n"}, "tenant_id"),
    ({"tenant_id": "x" * 65}, "tenant_id"),
    ({"tenant_id": 42}, "tenant_id"),
    ({"api_keys": []}, "tenant_id"),
    ({"tenant_id": "tnt_good"}, "tenant_id"),  # twice in one request
    ({"tenant_id": "tnt_bad", "api_keys": "nat_pk_not_a_list"}, "api_keys"),
    ({"tenant_id": "tnt_bad", "api_keys": [7]}, "api_keys"),
    ({"tenant_id": "tnt_bad", "api_keys": ["sk_live_something"]}, "api_keys"),
    ({"tenant_id": "tnt_bad", "api_keys": ["nat_pk_short"]}, "api_keys"),
    ({"tenant_id": "tnt_bad", "api_keys": ["nat_pk_with space_inside"]}, "api_keys"),
    ({"tenant_id": "tnt_bad", "api_keys": ["nat_pk_trailing_newline\n"]}, "api_keys"),
    ({"tenant_id": "tnt_bad", "api_key_sha256": ["ab" * 31]}, "api_key_sha256"),
    ({"tenant_id": "tnt_bad", "api_key_sha256": ["AB" * 32]}, "api_key_sha256"),
    ({"tenant_id": "tnt_bad", "api_key_sha256": ["ab" * 32 + "\n"]}, "api_key_sha256"),
    ({"tenant_id": "tnt_bad", "api_key_sha256": "ab" * 32}, "api_key_sha256"),
    ({"tenant_id": "tnt_bad", "stripe_customer_id": "acct_123"}, "stripe_customer_id"),
    ({"tenant_id": "tnt_bad", "stripe_customer_id": "cus_1\n"}, "stripe_customer_id"),
    ({"tenant_id": "tnt_bad", "stripe_customer_id": 5}, "stripe_customer_id"),
    ({"tenant_id": "tnt_bad", "active": "yes"}, "active"),
    ({"tenant_id": "tnt_bad", "active": None}, "active"),
    ({"tenant_id": "tnt_bad", "api_key": ["nat_pk_typo_field_01"]}, "api_key"),
    ({"tenant_id": "tnt_bad", "api_keys": [GOOD["api_keys"][0]]}, "api_keys"),  # GOOD's key
    ({"tenant_id": "tnt_bad", "stripe_customer_id": "cus_Good000000001"}, "stripe_customer_id"),
    ("tnt_bad", ""),
    (None, ""),
]


def test_one_invalid_entry_rejects_the_whole_request(
    client: FlaskClient, database: Database
) -> None:
    """Answer 400 INVALID_REQUEST naming the entry and field; apply nothing at all."""
    existing = new_api_key()
    sync_tenants(client, [{"tenant_id": "tnt_existing", "api_keys": [existing]}])
    good = {**GOOD, "stripe_customer_id": "cus_Good000000001"}
    replaced = {"tenant_id": "tnt_existing", "api_keys": [new_api_key()], "active": False}
    for bad, field in BAD_ENTRIES:
        response = sync_tenants(client, [good, replaced, bad])
        assert response.status_code == 400, bad
        body = response.json
        assert (body["error"], body["status"]) == ("INVALID_REQUEST", 400)
        assert "nothing was applied" in body["message"]
        assert [(d["index"], d["field"]) for d in body["details"]] == [(2, field)], bad
        assert all(isinstance(d["message"], str) and d["message"] for d in body["details"])
        # Nothing applied: no new tenant, the existing one keeps its key and stays active.
        assert tenant_rows(database) == [("tnt_existing", None, True)], bad
        assert status_of(client, existing) == 200, bad


def test_every_problem_is_listed(client: FlaskClient, database: Database) -> None:
    """List each invalid entry in details, with its tenant id when it has one."""
    response = sync_tenants(
        client,
        [
            {"tenant_id": "tnt_1", "api_keys": ["bad"]},
            GOOD,
            {"tenant_id": "tnt_3", "active": 1},
        ],
    )
    assert response.status_code == 400
    assert [(d["index"], d["tenant_id"], d["field"]) for d in response.json["details"]] == [
        (0, "tnt_1", "api_keys"),
        (2, "tnt_3", "active"),
    ]
    assert tenant_rows(database) == []


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"not json", "application/json"),
        (b'{"tenants": [', "application/json"),
        (b"[]", "application/json"),
        (b"{}", "application/json"),
        (b'{"tenants": {"tenant_id": "tnt_1"}}', "application/json"),
        (b'{"tenants": "tnt_1"}', "application/json"),
        (b'{"tenants": null}', "application/json"),
        (b"", "application/json"),
        (b"tenants=tnt_1", "application/x-www-form-urlencoded"),
    ],
)
def test_malformed_bodies_are_400(
    data: bytes, content_type: str, client: FlaskClient, database: Database
) -> None:
    """Refuse bodies that are not a JSON object with a tenants list."""
    response = client.post(
        "/api/v1/tenants/sync",
        data=data,
        headers={"X-Sync-Key": SYNC_KEY, "Content-Type": content_type},
    )
    assert response.status_code == 400
    assert (response.json["error"], response.json["status"]) == ("INVALID_REQUEST", 400)
    assert response.json["details"] == [{"field": "tenants", "message": "required list"}]
    assert tenant_rows(database) == []


def test_error_details_are_bounded(client: FlaskClient, database: Database) -> None:
    """List the first 20 problems and count them all; echo no malformed tenant id."""
    junk = "x" * 600  # not a tenant id: never echoed back
    tenants = [{"tenant_id": f"{junk}{n}", "api_keys": ["nope"]} for n in range(3000)]
    tenants.append({"tenant_id": "tnt_ok", "y" * 5000: 1})
    response = client.post(
        "/api/v1/tenants/sync", json={"tenants": tenants}, headers={"X-Sync-Key": SYNC_KEY}
    )
    assert response.status_code == 400
    body = response.json
    assert body is not None
    assert body["error"] == "INVALID_REQUEST"
    assert body["problem_count"] == 3000 * 2 + 1
    assert len(body["details"]) == 20
    assert [d["index"] for d in body["details"]] == sorted(n // 2 for n in range(20))
    assert "6001 problem(s)" in body["message"]
    assert len(response.get_data()) < 8 * 1024
    assert junk not in response.get_data(as_text=True)
    assert count_rows(database, "tenants") == 0


def test_unknown_field_names_are_bounded(client: FlaskClient) -> None:
    """Name an unknown field shortened, not as sent."""
    response = client.post(
        "/api/v1/tenants/sync",
        json={"tenants": [{"tenant_id": "tnt_ok", "z" * 5000: 1}]},
        headers={"X-Sync-Key": SYNC_KEY},
    )
    assert response.status_code == 400
    assert response.json is not None
    [problem] = response.json["details"]
    assert problem["tenant_id"] == "tnt_ok"
    assert len(problem["field"]) <= 70
    assert response.json["problem_count"] == 1
