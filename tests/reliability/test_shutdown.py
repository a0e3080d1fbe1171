"""Graceful shutdown: SIGTERM to the gunicorn master lets an in-flight delivery finish."""

from __future__ import annotations

import ast
import os
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import webhook_service
from tests import stripe_events as se
from tests.helpers import count_rows
from tests.reliability.support import (
    WEBHOOK_PATH,
    decode,
    has_exited,
    master_pid,
    signed,
    wait_for_workers,
)
from tests.servers import running_service
from webhook_service.db import Database


def configured(name: str) -> int:
    """An integer setting of the production gunicorn config, read without importing it
    (importing it configures logging and the metrics directory of this process)."""
    source = (Path(webhook_service.__file__).parent / "web" / "gunicorn_config.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == name for target in node.targets
        ):
            value = ast.literal_eval(node.value)
            assert isinstance(value, int)
            return value
    raise LookupError(name)


graceful_timeout = configured("graceful_timeout")
PADDING = 600_000  # under MAX_WEBHOOK_BYTES (1 MiB), large enough to send slowly
SLOW_SEND_S = 2.0
CHUNKS = 20


def padded_event() -> dict[str, object]:
    """A subscription event with a large (allowed) body that creates its tenant."""
    now = int(time.time())
    event = se.subscription_event(
        "customer.subscription.created",
        sub_id=se.new_id("sub"),
        customer=se.new_id("cus"),
        status="active",
        period_start=now - 86400,
        period_end=se.add_months(now - 86400, 1),
        created=now,
        api_version=se.BASIL_API_VERSION,
        metadata={"tenant_id": "tnt_shutdown_" + se.new_id("x", 8)[2:]},
    )
    event["data"]["object"]["description"] = "x" * PADDING  # type: ignore[index]
    return event


@pytest.mark.slow
def test_sigterm_lets_the_in_flight_delivery_finish(
    env: dict[str, str], database: Database
) -> None:
    """Send a big body slowly, SIGTERM the master mid-body: 200, and gunicorn exits in time."""
    event = padded_event()
    body, headers = signed(event)
    with running_service(env, workers=2) as base_url:
        master = master_pid(base_url)
        assert len(wait_for_workers(master, 2)) == 2
        port = urlsplit(base_url).port
        assert port is not None
        head = (
            f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            + f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        step = len(body) // CHUNKS + 1
        with socket.create_connection(("127.0.0.1", port), timeout=graceful_timeout) as sock:
            sock.sendall(head + body[:step])
            time.sleep(0.3)  # a worker has taken the request and waits for the body
            os.kill(master, signal.SIGTERM)
            terminated = time.monotonic()
            for offset in range(step, len(body), step):
                time.sleep(SLOW_SEND_S / CHUNKS)
                sock.sendall(body[offset : offset + step])
            response = b""
            while chunk := sock.recv(65536):
                response += chunk
        status_line, _, rest = response.partition(b"\r\n")
        answer = decode(rest.partition(b"\r\n\r\n")[2])
        assert status_line.startswith(b"HTTP/1.1 200"), response[:500]
        assert answer == {"received": True, "event_id": event["id"], "outcome": "processed"}

        while not has_exited(master) and time.monotonic() - terminated < graceful_timeout + 5:
            time.sleep(0.05)
        took = time.monotonic() - terminated
        print(f"gunicorn exited {took:.1f}s after SIGTERM (graceful_timeout {graceful_timeout}s)")
        assert has_exited(master), "gunicorn still runs after graceful_timeout"
        assert took < graceful_timeout

    assert (
        count_rows(database, "stripe_events", "id = :id AND outcome = 'processed'", id=event["id"])
        == 1
    )
    assert count_rows(database, "tenant_changes", "event_id = :id", id=event["id"]) == 1
