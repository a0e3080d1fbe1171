"""The service as it runs in production: gunicorn (the shared config), two workers, real HTTP.

One server for the module (SQLite file of its own, two secrets configured), started
once per pytest worker. The replay round trip, chunked bodies, redirects, metrics
across workers and the log stream are checked through it.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests import stripe_events as se
from tests.helpers import SECOND_SECRET, SYNC_KEY, WEBHOOK_SECRET, failing_event, wait_for
from tests.servers import http as http_request
from tests.servers import run_cli, running_service
from webhook_service.cli import cli
from webhook_service.db import Database
from webhook_service.migrate import upgrade

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
WEBHOOK = "/api/v1/billing/webhook"
MAX_BYTES = 65_536
# status, outcome or error code, event id, file, then the server's message on a non-2xx.
REPLAY_LINE = re.compile(r"^(\d{3}) (\S+)\s+(\S+) (\S+)(?:  .+)?$")


@dataclass(frozen=True)
class Service:
    base_url: str
    database: Database
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def log_text(self) -> str:
        return self.log_path.read_text("utf-8")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """gunicorn with two workers on a migrated SQLite database of its own."""
    directory = tmp_path_factory.mktemp("gunicorn")
    url = f"sqlite:///{directory / 'service.db'}"
    database = Database(url, pool=False)
    upgrade(database)
    env = {
        "DATABASE_URL": url,
        "STRIPE_WEBHOOK_SECRET": f"{WEBHOOK_SECRET},{SECOND_SECRET}",
        "NAT_APP_SYNC_KEY": SYNC_KEY,
        "MAX_WEBHOOK_BYTES": str(MAX_BYTES),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
    }
    log_path = directory / "stderr.log"
    with running_service(env, workers=2, log_path=log_path) as base_url:
        yield Service(base_url, database, log_path)
    database.dispose()


def post(
    service: Service, body: bytes, header: str | None, extra: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": "application/json; charset=utf-8", **(extra or {})}
    if header is not None:
        headers["Stripe-Signature"] = header
    status, response_headers, raw = http_request(
        "POST", service.base_url + WEBHOOK, body=body, headers=headers
    )
    return status, response_headers, json.loads(raw)


def replay(
    service: Service, *args: str, cwd: Path, subprocess: bool = False
) -> tuple[int, list[tuple[str, ...]], str]:
    """Run `webhook-service replay` against the service (the console script when
    ``subprocess``, else in-process); return (exit status, parsed lines, stderr)."""
    argv = ["replay", *args, "--url", service.base_url + WEBHOOK]
    if subprocess:
        process = run_cli(*argv, env={}, cwd=cwd, timeout=120)
        status, stdout, stderr = process.returncode, process.stdout, process.stderr
    else:
        result = CliRunner().invoke(cli, argv, env={})
        status, stdout, stderr = result.exit_code, result.stdout, result.stderr
    lines = []
    for line in stdout.splitlines():
        match = REPLAY_LINE.match(line)
        assert match, f"unexpected replay line: {line!r}"
        lines.append(match.groups())
    return status, lines, stderr


def outcome_of(service: Service, event_id: str) -> tuple[str, int] | None:
    with service.database.transaction() as conn:
        row = conn.exec_driver_sql(
            "SELECT outcome, attempts FROM stripe_events WHERE id = ?", (event_id,)
        ).one_or_none()
    return None if row is None else (row[0], row[1])


# --------------------------------------------------------------------------- replay


def test_replay_fixtures_round_trip(service: Service, tmp_path: Path) -> None:
    """Replay every fixture with 2xx and one line each, then again as duplicates."""
    files = sorted(FIXTURES.rglob("*.json"))
    assert len(files) == 26
    status, lines, stderr = replay(
        service, str(FIXTURES), "--secret", WEBHOOK_SECRET, cwd=tmp_path, subprocess=True
    )
    assert status == 0, stderr
    assert len(lines) == len(files)
    for (code, outcome, event_id, shown), path in zip(lines, files, strict=True):
        assert shown == str(path)
        assert event_id == json.loads(path.read_bytes())["id"]
        assert code == "200"
        expected = "ignored" if "payment_intent" in path.name else "processed"
        assert outcome == expected, (path.name, outcome)
        assert outcome_of(service, event_id) == (expected, 1)
    assert "26 sent, 26 acknowledged, 0 failed" in stderr

    status, lines, _ = replay(service, str(FIXTURES), "--secret", SECOND_SECRET, cwd=tmp_path)
    assert status == 0
    assert [(code, outcome) for code, outcome, _, _ in lines] == [("200", "duplicate")] * 26


def test_replay_with_a_bad_secret_fails(service: Service, tmp_path: Path) -> None:
    """Exit non-zero and show each 400 when the secret is not the service's."""
    folder = FIXTURES / "lifecycle-2024-06-20"
    files = sorted(folder.glob("*.json"))[:2]
    status, lines, stderr = replay(
        service, *map(str, files), "--secret", "whsec_not_the_right_one_0000000", cwd=tmp_path
    )
    assert status != 0
    assert [(code, detail) for code, detail, _, _ in lines] == [("400", "INVALID_SIGNATURE")] * 2
    assert "0 acknowledged, 2 failed" in stderr


def test_replay_new_ids_are_new_events(service: Service, tmp_path: Path) -> None:
    """Give every replayed event a fresh id: all acknowledged and logged under the new ids."""
    folder = FIXTURES / "lifecycle-2025-03-31.basil"
    originals = {json.loads(p.read_bytes())["id"] for p in folder.glob("*.json")}
    status, lines, stderr = replay(
        service, str(folder), "--secret", WEBHOOK_SECRET, "--new-ids", cwd=tmp_path
    )
    assert status == 0, stderr
    ids = [event_id for _, _, event_id, _ in lines]
    assert len(set(ids)) == len(ids) == len(originals)
    assert not set(ids) & originals
    assert all(code == "200" for code, _, _, _ in lines)
    assert all(outcome != "duplicate" for _, outcome, _, _ in lines)
    for event_id in ids:
        logged = outcome_of(service, event_id)
        assert logged is not None
        assert logged[1] == 1


# --------------------------------------------------------------------------- HTTP


def test_chunked_body_over_the_limit_is_413(service: Service) -> None:
    """Refuse a body sent chunked (no Content-Length) once it passes MAX_WEBHOOK_BYTES."""
    for size, expected in ((MAX_BYTES + 1, 413), (5 * MAX_BYTES, 413), (2_000, 400)):
        body = b"{" + b" " * (size - 2) + b"}"
        connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        try:
            connection.request(
                "POST",
                WEBHOOK,
                body=iter([body[i : i + 8192] for i in range(0, len(body), 8192)]),
                headers={"Stripe-Signature": se.sign_bytes(body, WEBHOOK_SECRET)},
                encode_chunked=True,
            )
            response = connection.getresponse()
            answer = json.loads(response.read())
        finally:
            connection.close()
        assert response.status == expected, (size, answer)
        assert answer["error"] == ("PAYLOAD_TOO_LARGE" if expected == 413 else "INVALID_PAYLOAD")


@pytest.mark.parametrize(
    "path",
    [
        WEBHOOK + "/",
        "/" + WEBHOOK,
        "/api/v1//billing/webhook",
        WEBHOOK + "//",
        "/api/v1/billing/./webhook",
        "/api/v1/billing/webhook?retry=1",
    ],
)
def test_no_url_spelling_is_redirected(service: Service, path: str) -> None:
    """Never answer 3xx, whatever the path looks like; errors are JSON."""
    event = se.event(
        "charge.refund.updated",
        {"id": se.new_id("re"), "object": "refund"},
        created=1735689600,
        api_version=se.BASIL_API_VERSION,
    )
    body = se.render(event)
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
    try:
        connection.request(
            "POST", path, body=body, headers={"Stripe-Signature": se.sign(body, WEBHOOK_SECRET)}
        )
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert not 300 <= response.status < 400
    assert response.getheader("Location") is None
    assert response.getheader("X-Request-ID")
    assert response.status in (200, 404)
    if response.status == 404:
        assert answer["error"] == "NOT_FOUND"


def test_metrics_add_up_across_workers(service: Service) -> None:
    """Count every event in /metrics whichever worker handled it and whichever answers."""
    event_type = f"test.workers_{secrets.token_hex(4)}"  # no handler: counted as "other"
    label = 'nat_webhook_events_total{outcome="ignored",type="other"} '

    def other_ignored() -> float:
        _, _, raw = http_request("GET", service.base_url + "/metrics")
        lines = [line for line in raw.decode("utf-8").splitlines() if line.startswith(label)]
        return float(lines[0][len(label) :]) if lines else 0.0

    before = other_ignored()
    for _ in range(12):
        event = se.event(
            event_type, {"id": "obj_1"}, created=1735689600, api_version=se.BASIL_API_VERSION
        )
        body = se.render(event)
        status, _, _ = post(service, body, se.sign(body, SECOND_SECRET))
        assert status == 200
    for _ in range(6):  # sync workers: consecutive scrapes land on either worker
        status, headers, raw = http_request("GET", service.base_url + "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        assert event_type not in raw.decode("utf-8")
        assert other_ignored() == before + 12


# --------------------------------------------------------------------------- logs


def test_log_stream_is_json_canonical_and_secret_free(service: Service) -> None:
    """Write JSON lines only, one canonical line per request, and no secret or payload."""
    marker = f"payload-marker-{secrets.token_hex(6)}"
    api_key = "nat_pk_" + secrets.token_hex(16)
    tenant = f"tnt_logs_{secrets.token_hex(3)}"

    def rid(name: str) -> str:
        return f"{name}-{secrets.token_hex(4)}"

    request_ids: dict[str, str] = {}

    # A processed event signed with the second secret, naming a tenant.
    customer = se.new_id("cus")
    checkout = se.checkout_completed_event(
        session_id=se.new_id("cs_test"),
        customer=customer,
        subscription=se.new_id("sub"),
        created=1735689600,
        api_version=se.BASIL_API_VERSION,
        client_reference_id=tenant,
        customer_email=f"{marker}@example.com",
    )
    body = se.render(checkout)
    request_ids["processed"] = rid("processed")
    status, headers, _ = post(
        service,
        body,
        se.sign(body, SECOND_SECRET),
        {"X-Request-ID": request_ids["processed"]},
    )
    assert status == 200
    assert headers["X-Request-ID"] == request_ids["processed"]
    # The same body with a forged signature, and a failing event.
    request_ids["forged"] = rid("forged")
    status, _, _ = post(
        service,
        body,
        se.sign(body, "whsec_forged_forged_forged_forged"),
        {"X-Request-ID": request_ids["forged"]},
    )
    assert status == 400
    # Failing: an unknown price decides the quota of the tenant that owns the customer.
    failing = failing_event(
        tenant, customer=customer, api_version=se.LEGACY_API_VERSION, note=marker
    )
    failing_body = se.render(failing)
    request_ids["failed"] = rid("failed")
    status, _, answer = post(
        service,
        failing_body,
        se.sign(failing_body, WEBHOOK_SECRET),
        {"X-Request-ID": request_ids["failed"]},
    )
    assert (status, answer["error"]) == (500, "PROCESSING_FAILED")
    # Tenant endpoints with the sync key and an API key, right and wrong.
    request_ids["sync"] = rid("sync")
    sync = json.dumps({"tenants": [{"tenant_id": tenant, "api_keys": [api_key]}]}).encode()
    status, _, _ = http_request(
        "POST",
        service.base_url + "/api/v1/tenants/sync",
        body=sync,
        headers={
            "Content-Type": "application/json",
            "X-Sync-Key": SYNC_KEY,
            "X-Request-ID": request_ids["sync"],
        },
    )
    assert status == 200
    # A key one character off (never the key itself, whatever its last character).
    bad_key = api_key[:-1] + ("1" if api_key.endswith("0") else "0")
    for name, key in (("usage", api_key), ("bad-key", bad_key)):
        request_ids[name] = rid(name)
        http_request(
            "GET",
            service.base_url + "/api/v1/usage",
            headers={"X-API-Key": key, "X-Request-ID": request_ids[name]},
        )
    request_ids["missing"] = rid("missing")
    http_request(
        "GET", service.base_url + "/nowhere", headers={"X-Request-ID": request_ids["missing"]}
    )

    def canonical() -> dict[str, dict[str, Any]]:
        lines = [json.loads(line) for line in service.log_text().splitlines() if line.strip()]
        return {
            line["request_id"]: line
            for line in lines
            if line.get("event") == "request" and line.get("request_id") in request_ids.values()
        }

    assert wait_for(lambda: len(canonical()) == len(request_ids), timeout=10)
    text = service.log_text()
    # Every line of the whole stream (startup, other tests, errors) is one JSON object.
    for line in text.splitlines():
        if line.strip():
            assert isinstance(json.loads(line), dict), line
    # Exactly one canonical line per request.
    for request_id in request_ids.values():
        assert (
            sum(
                1
                for line in text.splitlines()
                if f'"request_id": "{request_id}"' in line and '"event": "request"' in line
            )
            == 1
        )
    lines = canonical()
    for line in lines.values():
        assert {"request_id", "route", "status", "duration_ms", "level", "timestamp"} <= set(line)
        assert isinstance(line["duration_ms"], int | float)
    processed = lines[request_ids["processed"]]
    assert processed["route"] == WEBHOOK
    assert processed["status"] == 200
    assert processed["event_id"] == checkout["id"]
    assert processed["event_type"] == "checkout.session.completed"
    assert processed["outcome"] == "processed"
    assert processed["tenant_id"] == tenant
    assert processed["secret_index"] == 1
    forged = lines[request_ids["forged"]]
    assert (forged["status"], forged["signature_failure"]) == (400, "mismatch")
    assert "event_id" not in forged
    failed = lines[request_ids["failed"]]
    assert (failed["status"], failed["outcome"], failed["secret_index"]) == (500, "failed", 0)
    assert failed["event_id"] == failing["id"]
    assert lines[request_ids["usage"]]["status"] == 200
    assert lines[request_ids["bad-key"]]["status"] == 401
    assert lines[request_ids["missing"]]["status"] == 404
    # Nothing secret, and nothing of a payload, anywhere in the stream.
    for secret in (WEBHOOK_SECRET, SECOND_SECRET, SYNC_KEY, api_key, api_key[:-1] + "0", marker):
        assert secret not in text
    assert "whsec_" not in text
    assert "nat_pk_" not in text
    assert '"object": "event"' not in text
