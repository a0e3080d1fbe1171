"""Spends from two real gunicorn instances on one database never overshoot the quota."""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
from sqlalchemy import text

from tests.helpers import SYNC_KEY, new_api_key
from tests.servers import http, running_services
from webhook_service.db import Database

pytestmark = pytest.mark.slow

SPENDS_PER_INSTANCE = 12


def test_two_instances_never_overshoot_the_quota(env: dict[str, str], database: Database) -> None:
    """Race 24 spends across two instances (two workers each): exactly the quota succeeds."""
    key = new_api_key()
    with running_services(env, 2, workers=2) as bases:
        status, _, body = http(
            "POST",
            bases[0] + "/api/v1/tenants/sync",
            body=json.dumps({"tenants": [{"tenant_id": "tnt_fleet", "api_keys": [key]}]}).encode(),
            headers={"X-Sync-Key": SYNC_KEY, "Content-Type": "application/json"},
        )
        assert status == 200, body

        targets = [base for base in bases for _ in range(SPENDS_PER_INSTANCE)]
        barrier = threading.Barrier(len(targets))
        results: list[tuple[int, dict[str, object]]] = []
        lock = threading.Lock()

        def spend(base: str) -> None:
            barrier.wait()
            status, _, raw = http(
                "POST",
                base + "/api/v1/usage/scans",
                body=b'{"count": 1}',
                headers={"X-API-Key": key, "Content-Type": "application/json"},
                timeout=30,
            )
            with lock:
                results.append((status, json.loads(raw)))

        threads = [threading.Thread(target=spend, args=(base,)) for base in targets]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)

        assert Counter(status for status, _ in results) == {200: 10, 402: 14}
        used = sorted(int(str(body["scans_used"])) for status, body in results if status == 200)
        assert used == list(range(1, 11))
        refused = {json.dumps(body, sort_keys=True) for status, body in results if status == 402}
        assert len(refused) == 1  # every refusal is the same exact 402 body

        status, _, raw = http("GET", bases[1] + "/api/v1/usage", headers={"X-API-Key": key})
        assert status == 200
        assert json.loads(raw)["scans_remaining"] == 0

    with database.transaction() as conn:
        total = conn.execute(
            text("SELECT sum(count) FROM scan_spends WHERE tenant_id = 'tnt_fleet'")
        ).scalar_one()
    assert total == 10
