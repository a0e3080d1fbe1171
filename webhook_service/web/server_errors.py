"""The errors gunicorn answers itself, as JSON like every other error of the service.

gunicorn refuses some requests before the application sees them (a malformed request
line or header: 400; a request line over ``limit_request_line``: 414; headers over
``limit_request_fields``/``limit_request_field_size``: 431) and answers 500 when a worker
is aborted mid-request (its timeout). It writes those pages with ``gunicorn.util.
write_error``, as text/html, and has no setting to change them: every worker class
calls that one function from ``Worker.handle_error``. :func:`install` replaces it, in
the master before any worker forks (the ``on_starting`` hook), with one that writes the
service's JSON error body. The message is fixed per status: gunicorn's own text echoes
the request line or header that was refused, which is the client's text.
"""

from __future__ import annotations

import socket
from typing import Any

from gunicorn import util

from webhook_service.web.errors import HttpError, answer, encode_json
from webhook_service.web.requestlog import new_request_id

_MESSAGES = {
    400: "The request line or a header is malformed.",
    403: "The request is forbidden.",
    414: "The request line is longer than the server accepts.",
    417: "The Expect header cannot be met.",
    431: "The request headers are larger than the server accepts.",
    501: "The request uses a transfer coding the server does not support.",
}


def error_page(status: int, reason: str) -> bytes:
    """The whole HTTP response gunicorn sends for ``status``, in the service's JSON shape."""
    default = "An internal error occurred." if status >= 500 else reason
    body = encode_json(answer(HttpError(status, _MESSAGES.get(status, default))).body)
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-ID: {new_request_id()}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """``gunicorn.util.write_error``'s signature; ``mesg`` (the client's text) is not sent."""
    util.write_nonblock(sock, error_page(status_int, reason))


def install() -> None:
    """Make gunicorn write its own error answers as JSON (in this process and its forks)."""
    patched: Any = util
    patched.write_error = write_json_error
