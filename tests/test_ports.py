"""Ports (issue 14.4): PORT from .env, replay's URL and errors, a busy port, the bind address."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.helpers import WEBHOOK_SECRET
from tests.servers import clean_environ, free_port, run_cli
from webhook_service.cli import cli

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
ONE_EVENT = FIXTURES / "lifecycle-2024-06-20" / "01_checkout.session.completed.json"
SIGNATURE_MESSAGE = "No signature matches the payload for any configured webhook secret."


class _Webhook(http.server.BaseHTTPRequestHandler):
    """Answers every POST with ``status`` and a JSON body, recording the paths."""

    paths: list[str]
    status = 200

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.paths.append(self.path)
        ok = self.status == 200
        answer = json.dumps(
            {"received": True, "event_id": "evt_x", "outcome": "processed"}
            if ok
            else {"error": "INVALID_SIGNATURE", "message": SIGNATURE_MESSAGE, "status": 400}
        ).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[int, type[_Webhook]]]:
    handler = type("Webhook", (_Webhook,), {"paths": [], "status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def write_env(directory: Path, **values: str) -> None:
    text = "".join(f"{name}={value}\n" for name, value in values.items())
    (directory / ".env").write_text(text, encoding="utf-8")


def test_replay_default_url_uses_port_from_dotenv_and_names_it(
    webhook: tuple[int, type[_Webhook]], tmp_path: Path
) -> None:
    """Send to 127.0.0.1:$PORT (PORT from .env) and say so before sending."""
    port, handler = webhook
    write_env(tmp_path, PORT=str(port), STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
    result = run_cli("replay", str(ONE_EVENT), env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    url = f"http://127.0.0.1:{port}/api/v1/billing/webhook"
    assert result.stderr.splitlines()[0] == f"replaying 1 events to {url}"
    assert handler.paths == ["/api/v1/billing/webhook"]


def test_replay_stops_at_the_first_refused_connection(tmp_path: Path) -> None:
    """Print one line naming the URL and PORT, send nothing more, exit 1."""
    port = free_port()
    write_env(tmp_path, PORT=str(port), STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
    result = run_cli("replay", str(FIXTURES), env={}, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    url = f"http://127.0.0.1:{port}/api/v1/billing/webhook"
    assert result.stderr.splitlines() == [
        f"replaying 26 events to {url}",
        f"cannot reach {url}: connection refused (is the server running? `make run` serves "
        f"on PORT={port}); 0 sent before",
    ]


def test_replay_prints_the_servers_error_message(
    webhook: tuple[int, type[_Webhook]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Show the error body's message on a non-2xx line, not just its code."""
    port, handler = webhook
    handler.status = 400
    monkeypatch.chdir(tmp_path)
    url = f"http://127.0.0.1:{port}/api/v1/billing/webhook"
    result = CliRunner().invoke(
        cli, ["replay", str(ONE_EVENT), "--url", url, "--secret", WEBHOOK_SECRET]
    )
    assert result.exit_code == 1
    [line] = result.stdout.splitlines()
    assert line.split()[:3] == ["400", "INVALID_SIGNATURE", "-"]
    assert line.endswith(f"{ONE_EVENT}  {SIGNATURE_MESSAGE}")


def test_serve_on_a_busy_port_says_so_in_one_line(tmp_path: Path) -> None:
    """Name PORT (from .env) and the fix in one line instead of gunicorn's retries."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        write_env(tmp_path, PORT=str(port), STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET)
        result = run_cli("serve", env={"BIND_HOST": "127.0.0.1"}, cwd=tmp_path, timeout=30)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"port {port} is already in use (PORT={port}): stop the server holding it "
        "(`ss -ltnp`, `lsof -i`) or set PORT to a free port in .env or the environment"
    ]


def test_init_env_writes_port_and_stripe_api_key_and_hints_the_real_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Use $PORT in the hint's `stripe listen` line; list PORT and STRIPE_API_KEY in .env."""
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["init-env"], env={"PORT": "9321"})
    assert result.exit_code == 0, result.output
    assert "--forward-to localhost:9321/api/v1/billing/webhook" in result.stderr
    assert "8080" not in result.stderr
    written = (tmp_path / ".env").read_text("utf-8").splitlines()
    assert "PORT=9321" in written
    assert "STRIPE_API_KEY=" in written


def gunicorn_bind(env: dict[str, str]) -> list[str]:
    code = "from webhook_service.web import gunicorn_config as g; print(','.join(g.bind))"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=clean_environ(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip().split(",")


def test_production_binds_every_interface_and_make_run_binds_loopback() -> None:
    """Bind 0.0.0.0:$PORT by default, BIND_HOST when set; `make run` sets 127.0.0.1."""
    assert gunicorn_bind({"PORT": "9001"}) == ["0.0.0.0:9001"]
    assert gunicorn_bind({"PORT": "9002", "BIND_HOST": "127.0.0.1"}) == ["127.0.0.1:9002"]
    assert gunicorn_bind({"BIND_HOST": "::1"}) == ["[::1]:8080"]
    dry_run = subprocess.run(
        ["make", "-n", "run"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    [serve_line] = [line for line in dry_run.stdout.splitlines() if line.endswith(" serve")]
    assert serve_line.startswith("BIND_HOST=127.0.0.1 ")
