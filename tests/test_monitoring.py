"""The monitoring shipped in deploy/: Prometheus rules (promtool), the Grafana dashboard,
and the metrics both rely on, as a running instance exports them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import SYNC_KEY, WEBHOOK_SECRET, Subscription, unavailable, utc
from tests.servers import http, run_cli, running_service
from webhook_service.db import Database
from webhook_service.models import stripe_events

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
# Metric names of the service: nat_..., as opposed to PromQL functions and labels.
METRIC_NAME_RE = re.compile(r"\bnat_[a-z0-9_]+\b")
UNKNOWN_PRICE = "price_not_in_any_plan"


def promtool() -> str:
    """Debian's promtool (package `prometheus`): skipped locally, failed in CI without it."""
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool", FileNotFoundError("apt-get install prometheus"))
    assert path is not None
    return path


def run_promtool(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text("utf-8"))
    queries = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    queries += [
        variable["definition"]
        for variable in dashboard["templating"]["list"]
        if variable.get("type") == "query"
    ]
    return queries


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    """`promtool check rules` and `promtool test rules`, and the example config loads them."""
    assert "SUCCESS" in run_promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS_DIR)
    assert "SUCCESS" in run_promtool("test", "rules", "alerts.test.yml", cwd=PROMETHEUS_DIR)
    run_promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS_DIR)


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every panel's query parses (checked as recording rules, Grafana's variables filled)."""
    rules = [
        {
            "record": f"dashboard:query_{index}",
            "expr": query.replace("$__rate_interval", "5m").replace("$job", ".+"),
        }
        for index, query in enumerate(dashboard_queries())
        if not query.startswith("label_values(")
    ]
    assert len(rules) >= 10
    path = tmp_path / "dashboard-queries.yml"  # JSON is YAML
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}), "utf-8")
    assert f"SUCCESS: {len(rules)} rules found" in run_promtool(
        "check", "rules", str(path), cwd=tmp_path
    )


# --------------------------------------------------------------------------- exported names


def scrape(text: str) -> tuple[set[str], dict[str, float], set[str]]:
    """The sample names, the values of unlabelled samples, and the family names of ``text``."""
    names: set[str] = set()
    values: dict[str, float] = {}
    families: set[str] = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
            if not sample.labels:
                values[sample.name] = sample.value
    return names, values, families


def failing_subscription_event(customer: str) -> dict[str, Any]:
    """A granting subscription on a price no plan lists: the event fails (UNKNOWN_PRICE)."""
    sub = Subscription(customer=customer, price_id=UNKNOWN_PRICE)
    return sub.event(
        "customer.subscription.created",
        "active",
        (utc(2025, 1, 1), utc(2025, 2, 1)),
        utc(2025, 1, 1),
    )


def test_metrics_report_readiness_and_the_oldest_failed_event(
    client: FlaskClient,
    database: Database,
    make_tenant: Callable[..., str],
    post_event: Callable[..., TestResponse],
    make_app: Callable[..., Flask],
) -> None:
    """nat_ready, nat_webhook_failed_events and the oldest failed event's age, at scrape time."""
    _, values, _ = scrape(client.get("/metrics").get_data(as_text=True))
    assert values["nat_ready"] == 1
    assert values["nat_webhook_failed_events"] == 0
    assert values["nat_webhook_oldest_failed_event_age_seconds"] == 0

    make_tenant("tnt_metrics", customer="cus_metrics")
    assert post_event(failing_subscription_event("cus_metrics")).status_code == 500
    with database.transaction(write=True) as conn:
        conn.execute(update(stripe_events).values(received_at=datetime(2025, 1, 1, tzinfo=UTC)))
    _, values, _ = scrape(client.get("/metrics").get_data(as_text=True))
    assert values["nat_webhook_failed_events"] == 1
    age = (datetime.now(UTC) - datetime(2025, 1, 1, tzinfo=UTC)).total_seconds()
    assert age - 60 < values["nat_webhook_oldest_failed_event_age_seconds"] <= age + 60

    unready = make_app(STRIPE_WEBHOOK_SECRET=None).test_client()
    _, values, _ = scrape(unready.get("/metrics").get_data(as_text=True))
    assert values["nat_ready"] == 0


def exercise(base_url: str) -> None:
    """A few requests of every kind, so that every metric family has samples."""
    key = "nat_pk_monitoring_key_0001"

    def post(path: str, body: object, **headers: str) -> int:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **headers}
        return http("POST", base_url + path, body=data, headers=headers)[0]

    def signed(event: dict[str, Any]) -> tuple[bytes, str]:
        body = se.render(event)
        return body, se.sign(body, WEBHOOK_SECRET)

    tenant = {"tenant_id": "tnt_mon", "api_keys": [key], "stripe_customer_id": "cus_mon"}
    assert post("/api/v1/tenants/sync", {"tenants": [tenant]}, **{"X-Sync-Key": SYNC_KEY}) == 200
    assert http("GET", base_url + "/api/v1/usage", headers={"X-API-Key": key})[0] == 200
    assert post("/api/v1/usage/scans", {"count": 10}, **{"X-API-Key": key}) == 200
    assert post("/api/v1/usage/scans", {"count": 1}, **{"X-API-Key": key}) == 402
    refund = {"id": "re_mon", "object": "refund"}
    body, signature = signed(
        se.event(
            "charge.refund.updated",
            refund,
            created=utc(2025, 1, 1),
            api_version=se.BASIL_API_VERSION,
        )
    )
    assert post("/api/v1/billing/webhook", body, **{"Stripe-Signature": signature}) == 200
    assert post("/api/v1/billing/webhook", body, **{"Stripe-Signature": "t=1,v1=00"}) == 400
    body, signature = signed(failing_subscription_event("cus_mon"))
    assert post("/api/v1/billing/webhook", body, **{"Stripe-Signature": signature}) == 500


@pytest.mark.slow
def test_every_metric_of_the_rules_and_dashboard_is_exported(tmp_path: Path) -> None:
    """The names the alerts and panels query exist on /metrics of a running instance,
    and the dashboard shows every family the service exports."""
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'monitoring.db'}",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "NAT_APP_SYNC_KEY": SYNC_KEY,
        "LOG_LEVEL": "warning",
    }
    migrated = run_cli("db", "upgrade", env=env)
    assert migrated.returncode == 0, migrated.stderr
    with running_service(env) as base_url:
        exercise(base_url)
        status, _, body = http("GET", base_url + "/metrics")
    assert status == 200
    exported, _, families = scrape(body.decode("utf-8"))

    rules = (PROMETHEUS_DIR / "alerts.yml").read_text("utf-8")
    in_rules = set(METRIC_NAME_RE.findall(rules))
    in_dashboard = {name for query in dashboard_queries() for name in METRIC_NAME_RE.findall(query)}
    assert len(in_rules) >= 6
    assert len(in_dashboard) >= 10
    assert in_rules - exported == set(), "alerts.yml queries metrics that /metrics lacks"
    assert in_dashboard - exported == set(), "dashboard.json queries metrics that /metrics lacks"
    ours = {family for family in families if family.startswith("nat_")}
    not_shown = {f for f in ours if not any(n.startswith(f) for n in in_dashboard)}
    assert not_shown == set(), "exported families missing from the dashboard"
