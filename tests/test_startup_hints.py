"""Silent start-up problems (issue 14.5): a missing secret, a never-migrated database, CI=false."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import stripe_events as se
from tests.helpers import WEBHOOK_SECRET, env_flag
from tests.servers import clean_environ, run_cli
from tests.test_logging import capture
from webhook_service.web.app import create_app

ROOT = Path(__file__).resolve().parent.parent
MIGRATE = "run `webhook-service db upgrade`"


def test_serve_without_a_webhook_secret_warns_in_one_line(tmp_path: Path) -> None:
    """Say at start, in one line, that no secret is set (before anything else fails)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        # The busy port stops serve right after its start-up checks: no server is started.
        result = run_cli(
            "serve", env={"PORT": str(port), "BIND_HOST": "127.0.0.1"}, cwd=tmp_path, timeout=30
        )
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0] == (
        "warning: STRIPE_WEBHOOK_SECRET is not set: the webhook answers 503 "
        "WEBHOOK_NOT_CONFIGURED and /readyz 503 until it is (`webhook-service init-env` "
        "writes a local one)"
    )
    assert lines[1].startswith(f"port {port} is already in use")


def test_never_migrated_database_tells_the_operator_to_migrate(empty_database_url: str) -> None:
    """Say "run `webhook-service db upgrade`" in /readyz and in the webhook 503's log line."""
    app = create_app({"DATABASE_URL": empty_database_url, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET})
    try:
        client = app.test_client()
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert MIGRATE in ready.json["checks"]["migrations"]
        assert MIGRATE in ready.json["message"]
        event = se.render(
            se.customer_deleted_event(
                customer=se.new_id("cus"), created=1735689600, api_version=se.BASIL_API_VERSION
            )
        )
        with capture() as logs:
            answer = client.post(
                "/api/v1/billing/webhook",
                data=event,
                headers={"Stripe-Signature": se.sign(event, WEBHOOK_SECRET)},
            )
        assert (answer.status_code, answer.json["error"]) == (503, "SERVICE_UNAVAILABLE")
        [line] = [line for line in logs.lines() if line["event"] == "database_not_migrated"]
        assert line["hint"] == MIGRATE
        assert line["level"] == "warning"
    finally:
        app.extensions["nat"].database.dispose()


@pytest.mark.parametrize(
    ("value", "on"),
    [
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("", False),
        ("true", True),
        ("1", True),
        ("yes", True),
    ],
)
def test_ci_false_is_not_ci(value: str, on: bool) -> None:
    """Treat CI=false like an unset CI (skip a missing backend locally, fail only in CI)."""
    assert env_flag(value) is on
    code = "import tests.helpers as c; print(c.IN_CI)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_environ({"CI": value}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == str(on)
