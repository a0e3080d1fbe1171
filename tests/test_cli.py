"""`webhook-service`: events list/show/reprocess/prune, db upgrade, replay's signing, config errors.

Commands run in-process with click's CliRunner (the environment is the app's), except
where the process itself matters (exit status of the console script, ``serve``).
Replay against a real gunicorn is in ``test_webhook_gunicorn``.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import stripe
from click.testing import CliRunner, Result
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import WEBHOOK_SECRET, count_rows, failing_event
from tests.servers import APP, GUNICORN, WEBHOOK_SERVICE, clean_environ, free_port
from webhook_service.cli import cli
from webhook_service.config import load_settings
from webhook_service.db import Database
from webhook_service.migrate import current_revision, head_revision
from webhook_service.services import build_router
from webhook_service.webhooks.eventlog import EventFailed, EventLog
from webhook_service.webhooks.events import parse_event

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
JAN_1 = 1735689600


def invoke(runner: CliRunner, *args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(cli, list(args), env=env, catch_exceptions=False)


def refund_event(created: int = JAN_1) -> dict[str, Any]:
    return se.event(
        "charge.refund.updated",
        {"id": se.new_id("re"), "object": "refund"},
        created=created,
        api_version=se.BASIL_API_VERSION,
    )


def checkout_event(tenant_id: str) -> dict[str, Any]:
    return se.checkout_completed_event(
        session_id=se.new_id("cs_test"),
        customer=se.new_id("cus"),
        subscription=se.new_id("sub"),
        created=JAN_1 + 5,
        api_version=se.LEGACY_API_VERSION,
        client_reference_id=tenant_id,
    )


def catalog_selling(path: Path, price_id: str) -> str:
    path.write_text(
        'default_plan = "free"\n[plans.free]\nscans_per_month = 10\n'
        f'[plans.team]\nscans_per_month = 2000\nprices = ["{price_id}"]\n',
        encoding="utf-8",
    )
    return str(path)


# --------------------------------------------------------------------------- events


@pytest.fixture
def logged(post_event: Callable[..., TestResponse]) -> dict[str, dict[str, Any]]:
    """Three events in the log: one processed, one ignored, one failed (in that order)."""
    events = {
        "processed": checkout_event("tnt_cli"),
        "ignored": refund_event(),
        "failed": failing_event("tnt_cli_failed"),
    }
    for event in events.values():
        post_event(event)
        time.sleep(0.002)  # distinct received_at, so "newest first" is well defined
    return events


def test_events_list_shows_newest_first(
    runner: CliRunner, logged: dict[str, dict[str, Any]]
) -> None:
    """List one line per event, newest first, with outcome, attempts, tenant and error."""
    result = invoke(runner, "events", "list")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        logged["failed"]["id"],
        logged["ignored"]["id"],
        logged["processed"]["id"],
    ]
    failed, ignored, processed = lines
    assert "customer.subscription.updated" in failed
    assert " failed " in failed
    assert "attempts=1" in failed
    assert "UNKNOWN_PRICE price_x" in failed
    assert " ignored " in ignored
    assert "tenant=-" in ignored
    assert " processed " in processed
    assert "tenant=tnt_cli" in processed


def test_events_list_filters(runner: CliRunner, logged: dict[str, dict[str, Any]]) -> None:
    """Filter by --outcome and --type and cut at --limit."""
    failed = invoke(runner, "events", "list", "--outcome", "failed")
    assert [line.split()[0] for line in failed.stdout.splitlines()] == [logged["failed"]["id"]]
    by_type = invoke(runner, "events", "list", "--type", "checkout.session.completed")
    assert [line.split()[0] for line in by_type.stdout.splitlines()] == [logged["processed"]["id"]]
    limited = invoke(runner, "events", "list", "--limit", "2")
    assert len(limited.stdout.splitlines()) == 2
    nothing = invoke(runner, "events", "list", "--type", "no.such.type")
    assert nothing.exit_code == 0
    assert nothing.stdout == ""
    assert "no events" in nothing.stderr
    assert invoke(runner, "events", "list", "--outcome", "bogus").exit_code == 2


def test_events_show_prints_the_record_and_the_payload(
    runner: CliRunner, logged: dict[str, dict[str, Any]]
) -> None:
    """Show every stored field of one event, then its exact payload."""
    event = logged["failed"]
    result = invoke(runner, "events", "show", event["id"])
    assert result.exit_code == 0
    fields = dict(line.split(":", 1) for line in result.stdout.splitlines()[:11] if ":" in line)
    assert fields["id"].strip() == event["id"]
    assert fields["type"].strip() == "customer.subscription.updated"
    assert fields["api_version"].strip() == se.BASIL_API_VERSION
    assert fields["created"].strip() == "2025-01-01T00:01:00Z"
    assert fields["outcome"].strip() == "failed"
    assert fields["attempts"].strip() == "1"
    assert fields["processed_at"].strip() == "-"
    assert fields["last_error"].strip() == "UNKNOWN_PRICE price_x"
    assert se.render(event).decode("utf-8") in result.stdout
    short = invoke(runner, "events", "show", event["id"], "--no-payload")
    assert '"object": "event"' not in short.stdout
    missing = invoke(runner, "events", "show", "evt_not_there")
    assert missing.exit_code == 1
    assert "no event evt_not_there" in missing.stderr


def test_events_reprocess_applies_a_fixed_event(
    runner: CliRunner,
    env: dict[str, str],
    logged: dict[str, dict[str, Any]],
    database: Database,
    tmp_path: Path,
) -> None:
    """Re-run a failed event once the catalog sells its price; a processed one is a duplicate."""
    failed_id, processed_id = logged["failed"]["id"], logged["processed"]["id"]
    still = invoke(runner, "events", "reprocess", failed_id)
    assert still.exit_code == 1
    assert f"{failed_id}  failed: UNKNOWN_PRICE price_x" in still.stdout
    assert "1 failed" in still.stderr

    fixed_env = {**env, "NAT_PLANS_FILE": catalog_selling(tmp_path / "plans.toml", "price_x")}
    result = invoke(runner, "events", "reprocess", failed_id, processed_id, env=fixed_env)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == [f"{failed_id}  processed", f"{processed_id}  duplicate"]
    assert "1 processed, 1 duplicate" in result.stderr
    assert (
        count_rows(
            database,
            "stripe_events",
            "id = :id AND outcome = 'processed' AND attempts = 3",
            id=failed_id,
        )
        == 1
    )
    assert count_rows(database, "tenant_changes", "tenant_id = 'tnt_cli_failed'") == 1

    unknown = invoke(runner, "events", "reprocess", "evt_not_there")
    assert unknown.exit_code == 1
    assert "evt_not_there  not in the log" in unknown.stdout


def test_events_reprocess_failed_runs_every_failed_event(
    runner: CliRunner,
    env: dict[str, str],
    post_event: Callable[..., TestResponse],
    database: Database,
    tmp_path: Path,
) -> None:
    """Re-run all failed events with --failed, summarise, and exit 0 once all pass."""
    events = [failing_event(f"tnt_f{i}", "price_team") for i in range(3)]
    for event in events:
        assert post_event(event).status_code == 500
    assert post_event(refund_event()).status_code == 200

    still = invoke(runner, "events", "reprocess", "--failed")
    assert still.exit_code == 1
    assert "3 failed" in still.stderr

    fixed_env = {**env, "NAT_PLANS_FILE": catalog_selling(tmp_path / "plans.toml", "price_team")}
    result = invoke(runner, "events", "reprocess", "--failed", env=fixed_env)
    assert result.exit_code == 0
    assert sorted(result.stdout.splitlines()) == sorted(f"{e['id']}  processed" for e in events)
    assert result.stderr.strip() == "3 processed"
    assert count_rows(database, "stripe_events", "outcome = 'failed'") == 0

    again = invoke(runner, "events", "reprocess", "--failed", env=fixed_env)
    assert again.exit_code == 0
    assert again.stdout == ""
    assert "nothing to do" in again.stderr

    neither = invoke(runner, "events", "reprocess")
    assert neither.exit_code == 2
    assert "--failed" in neither.stderr


def test_events_prune_keeps_recent_and_failed_events(
    runner: CliRunner, env: dict[str, str], database: Database
) -> None:
    """Delete events older than --older-than; keep failed ones unless --include-failed."""
    catalog = load_settings(env).catalog
    ages = {"old": timedelta(days=120), "recent": timedelta(days=10)}
    ids: dict[str, str] = {}
    for age_name, age in ages.items():
        when = datetime.now(UTC) - age
        log = EventLog(database, build_router(), catalog, clock=lambda when=when: when)
        ok = refund_event()
        log.receive(parse_event(se.render(ok).decode("utf-8")))
        ids[f"{age_name}-ok"] = ok["id"]
        bad = failing_event(f"tnt_prune_{age_name}")
        with pytest.raises(EventFailed):
            log.receive(parse_event(se.render(bad).decode("utf-8")))
        ids[f"{age_name}-failed"] = bad["id"]

    def remaining() -> set[str]:
        return {
            name
            for name, event_id in ids.items()
            if count_rows(database, "stripe_events", "id = :id", id=event_id)
        }

    result = invoke(runner, "events", "prune", "--older-than", "90d")
    assert result.exit_code == 0
    assert result.stdout.startswith("deleted 1 events received before ")
    assert remaining() == {"old-failed", "recent-ok", "recent-failed"}

    result = invoke(runner, "events", "prune", "--older-than", "90d", "--include-failed")
    assert result.stdout.startswith("deleted 1 events")
    assert remaining() == {"recent-ok", "recent-failed"}

    bad = invoke(runner, "events", "prune", "--older-than", "ninety days")
    assert bad.exit_code == 2
    assert "90d" in bad.stderr
    assert remaining() == {"recent-ok", "recent-failed"}


# --------------------------------------------------------------------------- db upgrade


def test_db_upgrade_is_idempotent(
    runner: CliRunner, env: dict[str, str], database: Database
) -> None:
    """Upgrade an up-to-date database again without error or change."""
    for _ in range(2):
        result = invoke(runner, "db", "upgrade")
        assert result.exit_code == 0, result.output
        assert "is at head" in result.stdout
    with database.transaction() as conn:
        assert current_revision(conn) == head_revision()


def test_db_upgrade_creates_the_schema(runner: CliRunner, empty_database_url: str) -> None:
    """Create the schema in an empty database, then find nothing to do."""
    env = {"DATABASE_URL": empty_database_url}
    for _ in range(2):
        result = invoke(runner, "db", "upgrade", env=env)
        assert result.exit_code == 0, result.output
    fresh = Database(empty_database_url, pool=False)
    try:
        with fresh.transaction() as conn:
            assert current_revision(conn) == head_revision()
        assert count_rows(fresh, "stripe_events") == 0
    finally:
        fresh.dispose()


@pytest.mark.parametrize(
    "command", [("events", "list"), ("events", "reprocess", "--failed"), ("db", "upgrade")]
)
def test_unreachable_database_is_one_line_without_password(
    command: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End with exit 1 and one line naming the database (password hidden), no traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "db").mkdir()
    for url in (
        f"postgresql://nat:hunter2_in_url@127.0.0.1:{free_port()}/nat",
        f"sqlite:///{tmp_path / 'db'}",
    ):
        result = CliRunner().invoke(cli, list(command), env={"DATABASE_URL": url})
        assert result.exit_code == 1, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("database error: OperationalError: ")
        assert "hunter2_in_url" not in result.output
        assert "Traceback" not in result.output
    assert (
        "127.0.0.1"
        in CliRunner()
        .invoke(
            cli, list(command), env={"DATABASE_URL": f"postgresql://nat@127.0.0.1:{free_port()}/x"}
        )
        .stderr
    )


def test_unmigrated_database_points_to_db_upgrade(
    runner: CliRunner, empty_database_url: str
) -> None:
    """Tell the operator to run `db upgrade` when the schema does not exist yet."""
    result = invoke(runner, "events", "list", env={"DATABASE_URL": empty_database_url})
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "stripe_events" in lines[0]
    assert lines[0].endswith("run `webhook-service db upgrade`")


# --------------------------------------------------------------------------- config errors


CONFIG_ERRORS = [
    pytest.param({"STRIPE_WEBHOOK_TOLERANCE": "0"}, "STRIPE_WEBHOOK_TOLERANCE", id="tolerance"),
    pytest.param({"DATABASE_URL": "nonsense"}, "DATABASE_URL", id="database-url"),
    pytest.param({"NAT_PLANS_FILE": "/nonexistent/plans.toml"}, "NAT_PLANS_FILE", id="plans"),
]


@pytest.mark.parametrize(("bad", "variable"), CONFIG_ERRORS)
@pytest.mark.parametrize("command", [("events", "list"), ("db", "upgrade"), ("tenants", "list")])
def test_config_error_is_one_line_naming_the_variable(
    bad: dict[str, str],
    variable: str,
    command: tuple[str, ...],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stop with exit 2 and one line on stderr that names the bad variable."""
    monkeypatch.chdir(tmp_path)
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    result = CliRunner().invoke(cli, list(command), env={**env, **bad})
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("configuration error: ")
    assert variable in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "x.db").exists()


@pytest.mark.parametrize(("bad", "variable"), CONFIG_ERRORS)
def test_serve_with_bad_config_stops_before_gunicorn(
    bad: dict[str, str], variable: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stop `serve` with one line naming the variable, before gunicorn is started."""

    def never(*args: Any) -> None:  # a guard: reaching it would replace pytest itself
        raise AssertionError(f"serve started gunicorn despite {bad}")

    monkeypatch.setattr(os, "execv", never)
    monkeypatch.chdir(tmp_path)
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", **bad}
    result = CliRunner().invoke(cli, ["serve"], env=env)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("configuration error: ")
    assert variable in result.stderr


@pytest.mark.slow
def test_processes_with_bad_config_start_nothing(tmp_path: Path) -> None:
    """Exit != 0 with one line from `webhook-service serve` and gunicorn; nothing listens."""
    port = free_port()
    base = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
    }
    runs = [
        ([WEBHOOK_SERVICE, "serve"], {"STRIPE_WEBHOOK_TOLERANCE": "0"}, "STRIPE_WEBHOOK_TOLERANCE"),
        (
            [GUNICORN, "-c", "python:webhook_service.web.gunicorn_config", APP],
            {"DATABASE_URL": "nonsense"},
            "DATABASE_URL",
        ),
    ]
    started = time.monotonic()
    processes = [
        (
            variable,
            subprocess.Popen(
                argv,
                env=clean_environ({**base, **bad}),
                cwd=tmp_path,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for argv, bad, variable in runs
    ]
    for variable, process in processes:
        try:
            stdout, stderr = process.communicate(timeout=30)
        finally:
            process.kill()
        assert process.returncode not in (0, None), variable
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr
        assert lines[0].startswith("configuration error: ")
        assert variable in lines[0]
        assert "Booting worker" not in stdout + stderr
    assert time.monotonic() - started < 25
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # nothing ever listened
    assert not (tmp_path / "x.db").exists()


# --------------------------------------------------------------------------- replay signing


class _Capture(http.server.BaseHTTPRequestHandler):
    """Records each POST and answers as the webhook does."""

    received: list[tuple[str, dict[str, str], bytes]]
    status = 200

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        self.received.append((self.path, dict(self.headers.items()), body))
        event_id = json.loads(body).get("id", "-")
        answer = json.dumps(
            {"received": True, "event_id": event_id, "outcome": "processed"}
            if self.status == 200
            else {"error": "INVALID_SIGNATURE", "message": "no", "status": self.status}
        ).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def capture_server() -> Iterator[tuple[str, type[_Capture]]]:
    """A local HTTP server on 127.0.0.1 that records what replay sends."""
    handler = type("Capture", (_Capture,), {"received": [], "status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_replay_signs_the_file_bytes_as_stripe_does(
    capture_server: tuple[str, type[_Capture]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Send each file's exact bytes with a header the stripe SDK verifies, stamped now."""
    url, handler = capture_server
    monkeypatch.chdir(tmp_path)
    files = sorted((FIXTURES / "lifecycle-2025-03-31.basil").glob("*.json"))[:3]
    before = int(time.time())
    result = CliRunner().invoke(
        cli, ["replay", *map(str, files), "--url", url, "--secret", WEBHOOK_SECRET], env={}
    )
    after = int(time.time())
    assert result.exit_code == 0, result.output
    assert len(handler.received) == len(files)
    for path, (request_path, headers, body) in zip(files, handler.received, strict=True):
        assert request_path == "/hook"
        assert body == path.read_bytes()
        header = headers["Stripe-Signature"]
        assert stripe.WebhookSignature.verify_header(
            body.decode("utf-8"), header, WEBHOOK_SECRET, tolerance=300
        )
        timestamp = int(header.split(",")[0].removeprefix("t="))
        assert before <= timestamp <= after
        assert headers["Content-Type"].startswith("application/json")
    lines = result.stdout.splitlines()
    assert len(lines) == len(files)
    for line, path in zip(lines, files, strict=True):
        status, outcome, event_id, shown = line.split()
        assert (status, outcome) == ("200", "processed")
        assert event_id == json.loads(path.read_bytes())["id"]
        assert shown == str(path)


def test_replay_new_ids_change_only_the_id(
    capture_server: tuple[str, type[_Capture]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Give each replayed event a fresh evt_ id, signed over the new bytes."""
    url, handler = capture_server
    monkeypatch.chdir(tmp_path)
    path = FIXTURES / "lifecycle-2024-06-20" / "04_customer.subscription.updated.json"
    for _ in range(2):
        result = CliRunner().invoke(
            cli, ["replay", str(path), "--url", url, "--secret", WEBHOOK_SECRET, "--new-ids"]
        )
        assert result.exit_code == 0, result.output
    original = json.loads(path.read_bytes())
    ids = set()
    for _, headers, body in handler.received:
        assert stripe.WebhookSignature.verify_header(
            body.decode("utf-8"), headers["Stripe-Signature"], WEBHOOK_SECRET, tolerance=300
        )
        sent = json.loads(body)
        assert sent["id"].startswith("evt_")
        assert sent["id"] != original["id"]
        assert {**sent, "id": original["id"]} == original
        ids.add(sent["id"])
    assert len(ids) == 2


def test_replay_exits_non_zero_when_a_delivery_is_refused(
    capture_server: tuple[str, type[_Capture]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Report each refused delivery with its status and exit 1."""
    url, handler = capture_server
    handler.status = 400
    monkeypatch.chdir(tmp_path)
    path = FIXTURES / "lifecycle-2024-06-20" / "01_checkout.session.completed.json"
    result = CliRunner().invoke(cli, ["replay", str(path), "--url", url, "--secret", "whsec_x"])
    assert result.exit_code == 1
    assert result.stdout.split()[:2] == ["400", "INVALID_SIGNATURE"]
    assert "1 failed" in result.stderr


def test_replay_reports_an_unreachable_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exit 1 with one line naming the URL when nothing listens at --url."""
    monkeypatch.chdir(tmp_path)
    path = FIXTURES / "lifecycle-2024-06-20" / "01_checkout.session.completed.json"
    url = f"http://127.0.0.1:{free_port()}/api/v1/billing/webhook"
    result = CliRunner().invoke(
        cli, ["replay", str(path), "--url", url, "--secret", WEBHOOK_SECRET, "--timeout", "3"]
    )
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"cannot reach {url}: connection refused" in result.stderr


def test_replay_without_any_secret_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse to sign without --secret or STRIPE_WEBHOOK_SECRET."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    result = CliRunner().invoke(
        cli,
        ["replay", str(FIXTURES), "--url", "http://127.0.0.1:9/x"],
        env={"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"},
    )
    assert result.exit_code == 2
    assert "--secret" in result.stderr
