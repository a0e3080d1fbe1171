"""bench/floor_app.py, the benchmark's floor: it takes the benchmark's workload, both
payload shapes, and refuses what a receiver must refuse."""

from __future__ import annotations

import importlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from werkzeug.test import Client

from bench import workload
from tests import stripe_events as se

SECRET = "whsec_floor_test_secret"


@pytest.fixture
def floor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'floor.db'}")
    module = importlib.reload(importlib.import_module("bench.floor_app"))
    conn = module.connect()
    for statement in module.SCHEMA:
        conn.execute(statement)
    conn.close()
    yield module
    while not module.idle_connections.empty():
        module.idle_connections.get_nowait().close()


def _post(client: Client, body: bytes, secret: str = SECRET) -> int:
    header = se.sign(body, secret, int(time.time()))
    response = client.post(workload.WEBHOOK_PATH, data=body, headers={"Stripe-Signature": header})
    return response.status_code


def test_the_floor_takes_the_benchmark_workload_in_both_shapes(floor: ModuleType) -> None:
    now = int(time.time())
    tenants = workload.bench_tenants(2, now)
    stream = workload.EventStream(tenants, now, processes=1)
    bodies = stream.creations(now - 60) + stream.batch(40, now)
    versions = {json.loads(b)["api_version"] for b in bodies}
    types = {json.loads(b)["type"] for b in bodies}
    client = Client(floor.app)

    statuses = [_post(client, body) for body in bodies]
    again = _post(client, bodies[-1])  # a redelivery: logged once

    assert statuses == [200] * len(bodies)
    assert again == 200
    assert versions == set(se.API_VERSIONS)
    assert types == {
        "customer.subscription.created",
        "customer.subscription.updated",
        "invoice.paid",
    }
    db = sqlite3.connect(floor.DATABASE_URL.split(":///", 1)[1])
    assert db.execute("SELECT COUNT(*) FROM floor_events").fetchone() == (len(bodies),)
    rows = db.execute("SELECT id, status, price_id, period_end FROM floor_subscriptions").fetchall()
    assert sorted(r[0] for r in rows) == sorted(t.subscription_id for t in tenants)
    assert all(r[1] == "active" and r[2] == workload.BENCH_PRICE_ID and r[3] for r in rows)


def test_the_floor_refuses_a_bad_signature_and_a_body_that_is_no_event(floor: ModuleType) -> None:
    client = Client(floor.app)

    assert _post(client, b'{"id": "evt_1", "type": "x", "created": 1}', "whsec_other") == 400
    assert _post(client, b"[1, 2]") == 400
    assert _post(client, b"not json") == 400
    assert client.get(workload.WEBHOOK_PATH).status_code == 405
    assert client.get("/healthz").status_code == 200
