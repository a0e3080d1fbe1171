"""A body read short: 408 REQUEST_TIMEOUT when the read deadline cut it, else 400, on the
webhook's WSGI endpoint and on Flask's alike, with the environ gunicorn gives (its
``wsgi.input_terminated``; ``gunicorn.socket``, whose read deadline may have passed).

The real thing, a gunicorn worker's deadline shutting a held connection, is in
``tests/reliability/test_slow_clients.py``.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from gunicorn.http.errors import NoMoreData

from tests import stripe_events as se
from tests.helpers import SYNC_KEY, WEBHOOK_SECRET, wait_for
from webhook_service.deadlines import request_reads

WEBHOOK = "/api/v1/billing/webhook"
SYNC = "/api/v1/tenants/sync"
BODY = b'{"tenants": []}'
TIMEOUT = {
    "error": "REQUEST_TIMEOUT",
    "message": "The request was not received in full in time.",
    "status": 408,
}

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class CutStream:
    """A chunked body cut short: gunicorn's body (``read`` only) raises at the cut."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int | None = -1) -> bytes:
        data = self._data.read(size)
        if size is None or size < 0 or len(data) < size:
            raise NoMoreData(data)
        return data


@pytest.fixture
def gunicorn_socket() -> Iterator[socket.socket]:
    """A request's socket, as gunicorn's worker watches it (webhook_service.web.worker)."""
    ours, theirs = socket.socketpair()
    request_reads.watch(ours, ours.fileno(), 60.0)
    try:
        yield ours
    finally:
        request_reads.forget(ours)
        ours.close()
        theirs.close()


def _expire(sock: socket.socket) -> None:
    request_reads.watch(sock, sock.fileno(), 0.0)
    assert wait_for(lambda: request_reads.expired(sock), timeout=5)


def _post(app: Flask, path: str, sock: socket.socket, *, chunked: bool) -> tuple[int, Any]:
    """POST the first 5 bytes of BODY (announcing all of it, unless ``chunked``)."""
    sent = BODY[:5]
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": CutStream(sent) if chunked else io.BytesIO(sent),
        "wsgi.input_terminated": True,
        "gunicorn.socket": sock,
        "CONTENT_TYPE": "application/json",
        "HTTP_X_SYNC_KEY": SYNC_KEY,
        "HTTP_STRIPE_SIGNATURE": se.sign_bytes(BODY, WEBHOOK_SECRET),
    }
    if not chunked:
        environ["CONTENT_LENGTH"] = str(len(BODY))
    statuses: list[str] = []
    chunks = app.wsgi_app(environ, lambda status, headers, *exc: statuses.append(status))
    return int(statuses[0].split()[0]), json.loads(b"".join(chunks))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("path", [WEBHOOK, SYNC])
def test_a_body_cut_by_the_read_deadline_is_a_408(
    app: Flask, gunicorn_socket: socket.socket, path: str, chunked: bool
) -> None:
    _expire(gunicorn_socket)
    assert _post(app, path, gunicorn_socket, chunked=chunked) == (408, TIMEOUT)


@pytest.mark.parametrize("path", [WEBHOOK, SYNC])
def test_a_body_cut_short_before_the_deadline_is_a_400(
    app: Flask, gunicorn_socket: socket.socket, path: str
) -> None:
    """The client went away: malformed (not the truncated JSON's INVALID_REQUEST)."""
    status, body = _post(app, path, gunicorn_socket, chunked=False)
    assert (status, body["error"], body["status"]) == (400, "BAD_REQUEST", 400)
