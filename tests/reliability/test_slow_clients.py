"""Slow clients (slowloris): trickling requests neither delay others nor kill workers.

50 connections send their headers, or their body, one byte a second against a real
gunicorn instance while other requests (webhooks, GET /api/v1/usage) are timed. Each
trickler must get a 408 JSON or a closed connection within the read deadline; no worker
may be killed (the server log has no WORKER TIMEOUT and the worker pids stay the same).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.helpers import SYNC_KEY, new_api_key
from tests.reliability.support import (
    WEBHOOK_PATH,
    master_pid,
    signed,
    wait_for_workers,
    worker_pids,
)
from tests.reliability.test_outage import new_subscription
from tests.servers import http, running_service
from webhook_service.deadlines import REQUEST_READ_DEADLINE_S

pytestmark = pytest.mark.slow

TRICKLERS = 50
TRICKLE_FOR_S = 7.0
# The service's default on 2 cores (WEB_CONCURRENCY = 2 per core).
WORKERS = 4
# Generous: the deadline, plus a loaded machine's scheduling; far below the 30 s of
# gunicorn's worker timeout that answered before.
ANSWERED_WITHIN_S = REQUEST_READ_DEADLINE_S + 4.0
P99_LIMIT_S = 1.0


def _connect(base_url: str) -> socket.socket:
    parts = urlsplit(base_url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=5)


def _answer(sock: socket.socket, timeout: float) -> tuple[int, str, bytes]:
    """Read what the server sends until it closes: (status or 0, content type, body)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ]
            if sep and length and len(body) >= length[0]:
                break
    except ConnectionResetError:
        pass
    if not data:
        return 0, "", b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    content_type = next(
        (
            line.split(b":", 1)[1].strip().decode()
            for line in lines
            if line.lower().startswith(b"content-type:")
        ),
        "",
    )
    return int(lines[0].split()[1]), content_type, body


class Trickler:
    """Open a connection, send ``head`` (1 byte a second unless ``head_at_once``), then
    ``trickle`` 1 byte a second; note what the server answered and when; again, until
    stopped."""

    def __init__(self, base_url: str, head: bytes, trickle: bytes, head_at_once: bool) -> None:
        self.base_url = base_url
        self.head = head
        self.trickle = trickle
        self.head_at_once = head_at_once
        self.outcomes: list[tuple[int, str, float]] = []  # (status or 0, type, seconds)
        self.stop = threading.Event()
        self.sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                sock = _connect(self.base_url)
            except OSError:
                time.sleep(0.1)
                continue
            started = time.monotonic()
            self.sock = sock
            try:
                outcome = self._one(sock, started)
            finally:
                sock.close()
            if outcome is not None and not self.stop.is_set():
                self.outcomes.append(outcome)

    def _one(self, sock: socket.socket, started: float) -> tuple[int, str, float] | None:
        to_send = list(self.trickle)
        if self.head_at_once:
            sock.sendall(self.head)
        else:
            to_send = list(self.head) + to_send
        for byte in to_send:
            if self.stop.is_set():
                return None
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break  # closed by the server
            # Has the server answered (or closed) meanwhile?
            status, content_type, _ = _answer(sock, 1.0) if _readable(sock, 1.0) else (-1, "", b"")
            if status != -1:
                return status, content_type, time.monotonic() - started
        status, content_type, _ = _answer(sock, ANSWERED_WITHIN_S)
        return status, content_type, time.monotonic() - started


def _readable(sock: socket.socket, timeout: float) -> bool:
    import select

    ready, _, _ = select.select([sock], [], [], timeout)
    return bool(ready)


@contextmanager
def tricklers(base_url: str) -> Iterator[dict[str, list[Trickler]]]:
    """Half trickle their headers, half their (webhook) body."""
    slow_head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n"
        + "".join(f"X-Slow-{i}: {'x' * 20}\r\n" for i in range(20))
    ).encode()
    body = b'{"id": "evt_slow"}' + b" " * 1000
    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n"
        f"Stripe-Signature: t=1,v1=00\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    groups = {
        "headers": [
            Trickler(base_url, slow_head, b"", head_at_once=False) for _ in range(TRICKLERS // 2)
        ],
        "body": [Trickler(base_url, head, body, head_at_once=True) for _ in range(TRICKLERS // 2)],
    }
    crowd = [trickler for group in groups.values() for trickler in group]
    for trickler in crowd:
        trickler.thread.start()
    try:
        yield groups
    finally:
        for trickler in crowd:
            trickler.stop.set()
            if trickler.sock is not None:
                with suppress(OSError):
                    trickler.sock.shutdown(socket.SHUT_RDWR)
        for trickler in crowd:
            trickler.thread.join(timeout=ANSWERED_WITHIN_S + 5)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_trickling_clients_delay_no_one_and_are_cut_off(
    env: dict[str, str], tmp_path: Path
) -> None:
    log_path = tmp_path / "gunicorn.log"
    key = new_api_key()
    service_env = {**env, "RATE_LIMIT": "1000000/minute"}
    with running_service(service_env, workers=WORKERS, log_path=log_path) as base_url:
        status, _, raw = http(
            "POST",
            base_url + "/api/v1/tenants/sync",
            body=json.dumps({"tenants": [{"tenant_id": "tnt_slow", "api_keys": [key]}]}).encode(),
            headers={"X-Sync-Key": SYNC_KEY, "Content-Type": "application/json"},
        )
        assert status == 200, raw
        workers_before = wait_for_workers(master_pid(base_url), WORKERS)
        latencies: dict[str, list[float]] = {"webhook": [], "usage": []}
        statuses: Counter[int] = Counter()
        with tricklers(base_url) as groups:
            time.sleep(1.0)  # every trickler connected and sending
            ends = time.monotonic() + TRICKLE_FOR_S - 1.0
            while time.monotonic() < ends:
                body, headers = signed(new_subscription())
                started = time.monotonic()
                status, _, _ = http(
                    "POST", base_url + WEBHOOK_PATH, body=body, headers=headers, timeout=35
                )
                latencies["webhook"].append(time.monotonic() - started)
                statuses[status] += 1
                started = time.monotonic()
                status, _, _ = http(
                    "GET", base_url + "/api/v1/usage", headers={"X-API-Key": key}, timeout=35
                )
                latencies["usage"].append(time.monotonic() - started)
                statuses[status] += 1
        outcomes = {
            mode: [outcome for trickler in group for outcome in trickler.outcomes]
            for mode, group in groups.items()
        }
        assert worker_pids(master_pid(base_url)) == workers_before
    log_text = log_path.read_text("utf-8", "replace")
    print(
        f"{sum(statuses.values())} requests {dict(statuses)}, p99 webhook "
        f"{p99(latencies['webhook']) * 1000:.0f} ms, usage {p99(latencies['usage']) * 1000:.0f}"
        " ms; tricklers cut off: "
        + ", ".join(
            f"{mode} {dict(Counter((s, t) for s, t, _ in found))} slowest "
            f"{max((e for _, _, e in found), default=0):.1f}s"
            for mode, found in outcomes.items()
        )
    )
    assert "WORKER TIMEOUT" not in log_text
    assert set(statuses) == {200}, statuses
    for name, values in latencies.items():
        assert p99(values) < P99_LIMIT_S, (name, sorted(values)[-5:])
    # Every trickler was cut off at least once, each within the read deadline.
    for mode, found in outcomes.items():
        assert len(found) >= TRICKLERS // 2, mode
        for status, content_type, elapsed in found:
            assert elapsed < ANSWERED_WITHIN_S, (mode, status, elapsed)
            if mode == "body":
                assert (status, content_type) == (408, "application/json"), status
            else:
                assert status in (0, 408), status


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # read before any query
def test_a_body_shorter_than_its_length_then_held_answers_json(
    env: dict[str, str], tmp_path: Path
) -> None:
    """10 bytes of an announced 100, then nothing (the connection held) until the read
    deadline cuts the body: 408 REQUEST_TIMEOUT JSON, the same on the webhook's own
    endpoint and on a Flask one (which answered werkzeug's 400 for the short body)."""
    log_path = tmp_path / "gunicorn.log"
    with running_service(env, workers=2, log_path=log_path) as base_url:
        results: list[tuple[str, int, str, dict[str, Any], float]] = []
        socks = [_connect(base_url) for _ in range(2)]
        try:
            started = time.monotonic()
            for sock, path in zip(socks, (WEBHOOK_PATH, "/api/v1/tenants/sync"), strict=True):
                sock.sendall(
                    (
                        f"POST {path} HTTP/1.1\r\nHost: short\r\nContent-Type: application/json"
                        f"\r\nX-Sync-Key: {SYNC_KEY}\r\nStripe-Signature: t=1,v1=00\r\n"
                        "Content-Length: 100\r\n\r\n0123456789"
                    ).encode()
                )
            for sock, path in zip(socks, (WEBHOOK_PATH, "/api/v1/tenants/sync"), strict=True):
                status, content_type, body = _answer(sock, ANSWERED_WITHIN_S + 5)
                elapsed = time.monotonic() - started
                results.append((path, status, content_type, json.loads(body or b"{}"), elapsed))
        finally:
            for sock in socks:
                sock.close()
    assert "WORKER TIMEOUT" not in log_path.read_text("utf-8", "replace")
    for path, status, content_type, body, elapsed in results:
        assert status == 408, (path, status, body)
        assert content_type == "application/json", path
        assert body == {
            "error": "REQUEST_TIMEOUT",
            "message": "The request was not received in full in time.",
            "status": 408,
        }, path
        assert REQUEST_READ_DEADLINE_S - 0.5 < elapsed < ANSWERED_WITHIN_S, (path, elapsed)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # /healthz only
def test_the_read_deadline_starts_with_the_first_bytes_and_keep_alive_survives(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A connection opened, idle for a while (gthread's wait for a new connection's data),
    then sending a request within the read deadline is served, not cut off at a deadline
    counted from the accept; the kept-alive connection then serves the next request."""
    log_path = tmp_path / "gunicorn.log"
    idle_s = REQUEST_READ_DEADLINE_S - 1.0
    with running_service(env, workers=1, log_path=log_path) as base_url:
        sock = _connect(base_url)
        try:
            time.sleep(idle_s)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n")
            time.sleep(2.0)  # past a deadline counted from the accept, not from these bytes
            sock.sendall(b"\r\n")
            status, _, _ = _answer(sock, ANSWERED_WITHIN_S)
            assert status == 200
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
            status, _, _ = _answer(sock, ANSWERED_WITHIN_S)
            assert status == 200
        finally:
            sock.close()
    assert "WORKER TIMEOUT" not in log_path.read_text("utf-8", "replace")
