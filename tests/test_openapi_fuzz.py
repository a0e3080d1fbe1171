"""Schemathesis against a live instance: no 5xx and no answer outside the OpenAPI document.

A real gunicorn (the production config) on a free port with SQLite, a tenant with a key
and a Stripe customer, the sync key set, and Stripe's API stood in for by the local stub
(so checkout and portal reach a 200). Schemathesis reads the document (the one
``GET /openapi.json`` serves) and sends generated valid and invalid requests to every
operation, bounded in examples and time.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import SYNC_KEY, WEBHOOK_SECRET
from tests.openapi_check import document
from tests.servers import BIN, clean_environ, run_cli, running_service
from tests.stripe_stub import running_stripe_stub

SCHEMATHESIS = str(BIN / "schemathesis")
DOCUMENT = Path(__file__).resolve().parent.parent / "webhook_service" / "openapi.json"
API_KEY = "nat_pk_schemathesis_fuzz_key_0001"
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "unsupported_method",
        "missing_required_header",
    )
)
# Per operation and phase; about a minute in all on two cores (the timeout is the bound).
MAX_EXAMPLES = 25
RUN_TIMEOUT_S = 150


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path: Path) -> None:
    with running_stripe_stub() as stripe:
        stripe.prices["pro_monthly"] = "price_stub_pro_monthly"
        env = {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'fuzz.db'}",
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "NAT_APP_SYNC_KEY": SYNC_KEY,
            "STRIPE_API_KEY": "sk_test_schemathesis",
            "STRIPE_API_BASE": stripe.base_url,
            "RATE_LIMIT": "1000000/minute",
            "LOG_LEVEL": "warning",
        }
        for command in (
            ("db", "upgrade"),
            ("tenants", "add", "tnt_fuzz", "--api-key", API_KEY, "--customer", "cus_fuzz"),
        ):
            done = run_cli(*command, env=env)
            assert done.returncode == 0, done.stderr
        with running_service(env, log_path=tmp_path / "gunicorn.log") as base_url:
            result = subprocess.run(
                [
                    SCHEMATHESIS,
                    "run",
                    str(DOCUMENT),  # what GET /openapi.json serves (a URL would skip itself)
                    "--url",
                    base_url,
                    "--checks",
                    CHECKS,
                    "--header",
                    f"X-API-Key: {API_KEY}",
                    "--header",
                    f"X-Sync-Key: {SYNC_KEY}",
                    "--max-examples",
                    str(MAX_EXAMPLES),
                    "--seed",
                    "14",
                    "--workers",
                    "2",
                    "--request-timeout",
                    "10",
                    "--suppress-health-check",
                    "all",
                    "--output-truncate",
                    "false",
                ],
                env=clean_environ({"SCHEMATHESIS_TELEMETRY": "false"}),
                cwd=tmp_path,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_S,
                check=False,
            )
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-12000:]
    operations = sum(len(methods) for methods in document()["paths"].values())
    assert f"Tested: {operations}\n" in report, report[-4000:]
