"""The fleet behind a real load balancer: nginx in front of two instances.

nginx runs the repository's own site file (``deploy/nginx-webhook-service.conf.template``,
shown in the README) in front of two real instances (``webhook-service serve``, two
gunicorn workers each) on one PostgreSQL database, counting rate limits in Redis, each
with TRUSTED_PROXY_HOPS=1. nginx's access log says which instances each request was
sent to and what each answered. When ``CI`` is set a missing nginx fails these tests.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from http.client import HTTPConnection
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import text

from tests import stripe_events as se
from tests.helpers import (
    REDIS_URL,
    SYNC_KEY,
    WEBHOOK_SECRET,
    new_api_key,
    unavailable,
    wait_for,
)
from tests.load_balancer import SITE_TEMPLATE, Fleet, load_balanced, nginx_binary
from tests.reliability.support import NO_ANSWER_ERRORS, WEBHOOK_PATH, decode, signed
from tests.servers import http
from tests.tcp_proxy import TcpProxy
from webhook_service.db import Database

README = SITE_TEMPLATE.parent.parent / "README.md"
USAGE = "/api/v1/usage"
# The site file's fail_timeout: how long an instance stays out of rotation after a failure.
FAIL_TIMEOUT_S = 5.0
on_postgresql = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


@pytest.fixture
def nginx() -> str:
    """The nginx binary; missing, the test is skipped (failed in CI)."""
    binary = nginx_binary()
    if binary is None:
        unavailable("nginx", FileNotFoundError("no nginx executable on PATH or in /usr/sbin"))
    assert binary is not None
    return binary


@pytest.fixture
def fleet_env(database: Database, redis_db: redis.Redis) -> dict[str, str]:
    """An instance's environment: PostgreSQL, limits in Redis, one trusted proxy hop."""
    return {
        "DATABASE_URL": database.url,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "NAT_APP_SYNC_KEY": SYNC_KEY,
        "RATELIMIT_STORAGE_URI": REDIS_URL,
        "TRUSTED_PROXY_HOPS": "1",
        "LOG_FORMAT": "json",
    }


def request_id() -> str:
    return uuid.uuid4().hex


def loopback_address(taken: set[str]) -> str:
    """A random 127/8 address other than 127.0.0.1 (Linux answers all of them on lo), so
    that a test's client is told apart from nginx (which connects from 127.0.0.1) and
    its per-address rate-limit counters are its own."""
    while True:
        address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        if address not in taken:
            taken.add(address)
            return address


def get_from(source: str, url: str, headers: Mapping[str, str]) -> int:
    """GET ``url`` from the local address ``source``; the status."""
    parts = urlsplit(url)
    connection = HTTPConnection(
        parts.hostname or "", parts.port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request("GET", parts.path, headers=dict(headers))
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def sync_tenant(fleet: Fleet, tenant_id: str, api_key: str) -> None:
    body = json.dumps({"tenants": [{"tenant_id": tenant_id, "api_keys": [api_key]}]}).encode()
    status, _, raw = http(
        "POST",
        fleet.url + "/api/v1/tenants/sync",
        body=body,
        headers={"X-Sync-Key": SYNC_KEY, "Content-Type": "application/json"},
    )
    assert status == 200, raw


def served_by(fleet: Fleet, entry: Mapping[str, Any]) -> list[int]:
    """The instances (by index) nginx sent an access-log entry's request to, in order."""
    by_address = {instance.address: i for i, instance in enumerate(fleet.instances)}
    return [by_address[a.strip()] for a in str(entry["upstream_addr"]).split(",") if a.strip()]


def subscription_created(tenant_id: str) -> dict[str, Any]:
    """A new subscription (pro) whose metadata names a tenant the service does not know yet."""
    now = int(time.time())
    return se.subscription_event(
        "customer.subscription.created",
        sub_id=se.new_id("sub"),
        customer=se.new_id("cus"),
        status="active",
        period_start=now - 60,
        period_end=se.add_months(now - 60, 1),
        created=now,
        api_version=se.BASIL_API_VERSION,
        metadata={"tenant_id": tenant_id},
    )


def test_the_readme_shows_the_tested_nginx_configuration() -> None:
    """Quote the very site file the tests run in the README's deployment section."""
    assert SITE_TEMPLATE.read_text().strip() in README.read_text()


@pytest.mark.slow
@on_postgresql
def test_the_client_address_is_the_one_nginx_saw(nginx: str, fleet_env: dict[str, str]) -> None:
    """Log and rate-limit the address nginx saw; X-Forwarded-For hops the client sent are
    ignored, and nginx's own address (127.0.0.1) is never taken for the client's."""
    env = {**fleet_env, "RATE_LIMIT": "3/minute"}
    taken: set[str] = set()
    client, neighbour = loopback_address(taken), loopback_address(taken)
    with load_balanced(nginx, [env, env]) as fleet:
        ids, statuses = [], []
        for hop in range(1, 5):
            ids.append(request_id())
            # Every request claims other clients in front of it: were they trusted, each
            # would be counted apart and none refused.
            spoofed = f"203.0.113.{hop}, 198.51.100.{hop}"
            headers = {"X-Forwarded-For": spoofed, "X-Request-ID": ids[-1]}
            statuses.append(get_from(client, fleet.url + USAGE, headers))
        # Requests without an API key count per client address: 3 allowed, then 429.
        assert statuses == [401, 401, 401, 429]
        # Another client behind the same nginx has a count of its own.
        ids.append(request_id())
        assert get_from(neighbour, fleet.url + USAGE, {"X-Request-ID": ids[-1]}) == 401

        lines = [line for instance in fleet.instances for line in instance.log_lines()]
        logged = {line["request_id"]: line for line in lines if line.get("event") == "request"}
        assert [logged[i]["remote_addr"] for i in ids] == [client] * 4 + [neighbour]
        # Both instances answered this client, counting it in the same Redis window.
        entries = fleet.nginx.entries(ids[:4])
        assert {i for e in entries for i in served_by(fleet, e)} == {0, 1}


@pytest.mark.slow
@on_postgresql
def test_the_redis_rate_limit_is_exact_across_instances(
    nginx: str, fleet_env: dict[str, str]
) -> None:
    """Let exactly N of 2N simultaneous requests with one API key through two instances."""
    limit = 10
    env = {**fleet_env, "RATE_LIMIT": f"{limit}/minute"}
    key = new_api_key()
    with load_balanced(nginx, [env, env]) as fleet:
        sync_tenant(fleet, "tnt_lb_limit", key)
        ids = [request_id() for _ in range(2 * limit)]
        barrier = threading.Barrier(len(ids))

        def fetch(rid: str) -> tuple[int, dict[str, Any]]:
            barrier.wait(timeout=10)
            headers = {"X-API-Key": key, "X-Request-ID": rid}
            status, _, raw = http("GET", fleet.url + USAGE, headers=headers, timeout=30)
            return status, decode(raw)

        with ThreadPoolExecutor(len(ids)) as pool:
            answers = list(pool.map(fetch, ids))
        assert Counter(status for status, _ in answers) == {200: limit, 429: limit}
        assert {body["error"] for status, body in answers if status == 429} == {"RATE_LIMITED"}
        entries = fleet.nginx.entries(ids)
        per_instance = Counter(i for e in entries for i in served_by(fleet, e))
        assert set(per_instance) == {0, 1}, per_instance  # the load was spread over both


def unhealthy(env: dict[str, str], how: str, proxy: TcpProxy) -> dict[str, str]:
    """``env`` for an instance whose /readyz fails: its database is unreachable (through
    ``proxy``, cut by the test) or its webhook secret is missing."""
    if how == "database-unreachable":
        url = env["DATABASE_URL"].replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
        assert url != env["DATABASE_URL"]
        return {**env, "DATABASE_URL": url}
    return {k: v for k, v in env.items() if k != "STRIPE_WEBHOOK_SECRET"}


@pytest.mark.slow
@on_postgresql
@pytest.mark.parametrize("how", ["database-unreachable", "webhook-secret-missing"])
def test_an_instance_whose_readyz_fails_leaves_rotation(
    nginx: str, fleet_env: dict[str, str], how: str
) -> None:
    """Answer every webhook and usage request 2xx while one instance answers 503: nginx
    retries its 503 on the other instance and sends it nothing for fail_timeout; once it
    can serve again it gets requests again."""
    key = new_api_key()
    with TcpProxy(("127.0.0.1", 5432)) as proxy:
        bad_env = unhealthy(fleet_env, how, proxy)
        with load_balanced(nginx, [bad_env, fleet_env]) as fleet:
            sync_tenant(fleet, "tnt_lb_rotation", key)  # before its database goes away
            proxy.cut()
            bad = fleet.instances[0]
            status, _, raw = http("GET", bad.url + "/readyz")
            assert status == 503, raw

            # A POST other than the webhook is not sent again once it reached an instance:
            # a failing instance's 503 goes back to the client (nothing was spent).
            spends, statuses = [request_id(), request_id()], []
            for rid in spends:
                headers = {"X-API-Key": key, "X-Request-ID": rid, "Idempotency-Key": rid}
                headers["Content-Type"] = "application/json"
                url = fleet.url + "/api/v1/usage/scans"
                statuses.append(http("POST", url, body=b'{"count": 1}', headers=headers)[0])
            spent = fleet.nginx.entries(spends)
            if how == "database-unreachable":
                assert sorted(statuses) == [200, 503]
                refused = [e for e in spent if e["status"] == 503]
                assert [served_by(fleet, e) for e in refused] == [[0]]
            else:  # without its webhook secret an instance serves the tenant API
                assert statuses == [200, 200]
                refused = []

            ids = []
            for number in range(8):
                # Two webhooks and a GET a round: round robin sends each kind to both.
                for copy in range(2):
                    ids.append(request_id())
                    event = subscription_created(f"tnt_lb_rotation_{number}_{copy}")
                    body, headers = signed(event)
                    headers["X-Request-ID"] = ids[-1]
                    status, _, raw = http(
                        "POST", fleet.url + WEBHOOK_PATH, body=body, headers=headers
                    )
                    assert (status, decode(raw).get("outcome")) == (200, "processed"), raw
                ids.append(request_id())
                headers = {"X-API-Key": key, "X-Request-ID": ids[-1]}
                status, _, raw = http("GET", fleet.url + USAGE, headers=headers)
                assert status == 200, raw

            entries = fleet.nginx.entries(ids)
            tried = [e for e in entries if 0 in served_by(fleet, e)]
            failed = [e for e in tried if e["upstream_status"].startswith("503")]
            assert failed, "nginx never sent the unhealthy instance a request it failed"
            for entry in failed:  # it answered 503, and the other instance answered instead
                assert served_by(fleet, entry) == [0, 1], entry
                assert entry["upstream_status"].replace(" ", "") == "503,200", entry
            if how == "database-unreachable":
                assert failed == tried  # it could serve nothing
            # Out of rotation: after a 503 it is not tried again for fail_timeout (nginx's
            # clock counts whole seconds; msec is when the retried request ended).
            for entry in failed:
                after = [float(e["msec"]) - float(entry["msec"]) for e in tried]
                assert not [gap for gap in after if 0 < gap < FAIL_TIMEOUT_S - 1], after

            # That 503 to a POST counted as no failure: it was tried again at once.
            for entry in refused:
                after = [float(e["msec"]) - float(entry["msec"]) for e in tried]
                assert min(after) < FAIL_TIMEOUT_S - 1, after

            # It can serve again: nginx sends it requests again after fail_timeout.
            if how == "database-unreachable":
                proxy.restore()
            else:
                bad.terminate()
                bad.start(fleet_env)
                bad.wait_healthy()
            # (Its first request may still meet a pooled connection the cut had reset.)
            assert wait_for(lambda: http("GET", bad.url + "/readyz")[0] == 200, timeout=10)
            assert back_in_rotation(fleet, 0), "the instance did not come back into rotation"


def padded(tenant_id: str, size: int) -> tuple[bytes, dict[str, str]]:
    """A signed delivery whose body is about ``size`` bytes."""
    event = subscription_created(tenant_id)
    event["data"]["object"]["description"] = "x" * size
    return signed(event)


@pytest.mark.slow
@on_postgresql
def test_big_bodies_and_no_instance_left_get_the_services_json(
    nginx: str, fleet_env: dict[str, str]
) -> None:
    """Pass a big webhook through; answer a too big one, and any request when every
    instance is down, with the service's JSON errors rather than nginx's HTML pages."""
    with load_balanced(nginx, [fleet_env, fleet_env]) as fleet:
        # nginx keeps bodies over 16 KiB in a temporary file before passing them on.
        answers, ids = [], []
        for size in (600_000, 1_500_000, 3_000_000):  # allowed, over MAX_WEBHOOK_BYTES, over 2m
            body, headers = padded(f"tnt_lb_big_{size}", size)
            ids.append(request_id())
            headers["X-Request-ID"] = ids[-1]
            status, response_headers, raw = http(
                "POST", fleet.url + WEBHOOK_PATH, body=body, headers=headers
            )
            assert response_headers["Content-Type"] == "application/json", raw[:200]
            answers.append((status, decode(raw).get("outcome") or decode(raw)["error"]))
        too_large = (413, "PAYLOAD_TOO_LARGE")
        assert answers == [(200, "processed"), too_large, too_large]
        # The service refused the second; nginx the third, without passing it on.
        assert [bool(e["upstream_addr"]) for e in fleet.nginx.entries(ids)] == [True, True, False]

        for instance in fleet.instances:
            instance.terminate()
        body, headers = signed(subscription_created("tnt_lb_nobody"))
        status, response_headers, raw = http(
            "POST", fleet.url + WEBHOOK_PATH, body=body, headers=headers
        )
    assert status == 503
    assert response_headers["Content-Type"] == "application/json"
    assert response_headers["Retry-After"] == "5"
    assert decode(raw)["error"] == "SERVICE_UNAVAILABLE"


def back_in_rotation(fleet: Fleet, index: int) -> bool:
    """Whether nginx sends the instance ``index`` a request (a GET /readyz) again within
    a few fail_timeouts (it may be out of rotation for one after a refused connection)."""
    deadline = time.monotonic() + 3 * FAIL_TIMEOUT_S
    while time.monotonic() < deadline:
        rid = request_id()
        assert http("GET", fleet.url + "/readyz", headers={"X-Request-ID": rid})[0] == 200
        if served_by(fleet, fleet.nginx.entries([rid])[0]) == [index]:
            return True
        time.sleep(0.1)
    return False


BURST = 500
SENDERS = 8
RETRY_FOR_S = 60.0  # Stripe retries for days; this client gives up after a minute


def deliver_like_stripe(url: str, event: dict[str, Any]) -> list[int | str]:
    """POST ``event`` (signed anew each time) until a 2xx, backing off between attempts
    as Stripe does; the status of every attempt (an exception's name for no answer)."""
    attempts: list[int | str] = []
    deadline = time.monotonic() + RETRY_FOR_S
    delay = 0.05
    while True:
        body, headers = signed(event)
        try:
            status: int | str = http("POST", url + WEBHOOK_PATH, body=body, headers=headers)[0]
        except NO_ANSWER_ERRORS as exc:
            status = type(exc).__name__
        attempts.append(status)
        if isinstance(status, int) and 200 <= status < 300:
            return attempts
        if time.monotonic() + delay > deadline:
            return attempts
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


@pytest.mark.slow
@on_postgresql
def test_a_rolling_restart_during_a_burst_applies_every_event_once(
    nginx: str, fleet_env: dict[str, str], database: Database
) -> None:
    """Restart one instance (SIGTERM, start again) while 500 webhooks arrive through nginx:
    every event is acknowledged and applied exactly once, none failed."""
    events = [subscription_created(f"tnt_lb_burst_{n:03d}") for n in range(BURST)]
    first, rest = events[: BURST * 7 // 10], events[BURST * 7 // 10 :]
    acknowledged: list[float] = []  # when each delivery was acknowledged
    lock = threading.Lock()

    def send(event: dict[str, Any]) -> list[int | str]:
        attempts = deliver_like_stripe(fleet.url, event)
        with lock:
            acknowledged.append(time.monotonic())
        return attempts

    with load_balanced(nginx, [fleet_env, fleet_env]) as fleet, ThreadPoolExecutor(SENDERS) as pool:
        restarted = fleet.instances[0]
        futures: list[Future[list[int | str]]] = [pool.submit(send, e) for e in first]
        deadline = time.monotonic() + 60
        while len(acknowledged) < BURST // 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        stopped_at = time.monotonic()
        took = restarted.terminate()
        restarted.start()
        restarted.wait_healthy()
        back_at = time.monotonic()
        futures += [pool.submit(send, e) for e in rest]
        attempts = [future.result(timeout=2 * RETRY_FOR_S) for future in futures]
        entries = fleet.nginx.access_log()
        assert back_in_rotation(fleet, 0), "the restarted instance gets no request"

    answers = Counter(status for tries in attempts for status in tries)
    during = sum(stopped_at <= t <= back_at for t in acknowledged)
    print(
        f"stopped in {took:.1f}s, back after {back_at - stopped_at:.1f}s; "
        f"{during} deliveries acknowledged meanwhile; answers seen by the client {answers}; "
        f"nginx retried {sum(',' in e['upstream_addr'] for e in entries)} requests"
    )
    assert during > 0  # the burst went on while the instance was away
    assert all(tries[-1] == 200 for tries in attempts), answers  # every one acknowledged
    with database.transaction() as conn:
        rows = conn.execute(
            text("SELECT outcome, attempts, count(*) FROM stripe_events GROUP BY 1, 2")
        ).all()
        changes = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT event_id), min(scans_quota), max(scans_quota)"
                " FROM tenant_changes WHERE tenant_id LIKE 'tnt_lb_burst_%'"
            )
        ).one()
        subscriptions = conn.execute(
            text("SELECT status, count(*) FROM subscriptions GROUP BY 1")
        ).all()
    assert [tuple(row) for row in rows] == [("processed", 1, BURST)]  # each applied once
    assert tuple(changes) == (BURST, BURST, 500, 500)  # one change per event: pro, 500 scans
    assert [tuple(row) for row in subscriptions] == [("active", BURST)]
    # nginx sent the deliveries that met the closing instance to the other one (without
    # non_idempotent the sender gets a 503 for each and retries it later).
    assert answers == {200: BURST}, answers
