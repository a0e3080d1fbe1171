"""The lines the configured handler writes (``webhook_service.logging.configure_logging``).

structlog's lines go through the standard library to the one handler on the root logger,
and to any other handler listening (pytest's ``caplog``, the capture of ``test_logging``):
every handler with the service's formatter writes the same text, filtered by the same
level. pytest adds handlers of its own to the root logger during a test: ``sole_handler``
removes them for a while, so that what the configured handler writes alone is seen.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import re
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import structlog
from flask import Flask

from tests.test_logging import capture
from webhook_service.logging import configure_logging


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Logging as the app configures it (before pytest adds its handlers), and afterwards."""
    configure_logging("json", "info")
    yield
    structlog.contextvars.clear_contextvars()
    configure_logging("json", "info")


@contextmanager
def sole_handler() -> Iterator[io.StringIO]:
    """The configured handler alone on the root logger, writing to a string."""
    root = logging.getLogger()
    saved = root.handlers[:]
    ours = saved[0]  # configure_logging's; pytest appends its own
    assert isinstance(ours, logging.StreamHandler)
    assert isinstance(ours.formatter, structlog.stdlib.ProcessorFormatter)
    stream = io.StringIO()
    previous = ours.setStream(stream)
    root.handlers[:] = [ours]
    try:
        yield stream
    finally:
        root.handlers[:] = saved
        ours.setStream(previous or sys.stderr)


def log_some_lines(log: Any) -> None:
    """An info line, a warning with a secret, and an error with a traceback."""
    structlog.contextvars.bind_contextvars(request_id="req-1", tenant_id="tnt_1")
    log.info("request", method="GET", route="/x", status=200, duration_ms=1.5, when=object)
    log.warning("oops", api_key="nat_pk_leaked", detail={"nested": [1, 2.5, None, True]})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("crashed", error="ValueError")
    structlog.contextvars.clear_contextvars()


def without_timestamps(text: str) -> str:
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", "<ts>", text)


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_every_handler_writes_the_same_lines(log_format: str) -> None:
    """Write the same text alone as beside another handler with the same formatter."""
    configure_logging(log_format, "info")
    log = structlog.get_logger("tests.fast_path")
    with sole_handler() as direct:
        log_some_lines(log)
    with sole_handler() as beside_another, capture() as second:
        log_some_lines(log)
    assert without_timestamps(direct.getvalue()) == without_timestamps(beside_another.getvalue())
    assert beside_another.getvalue() == second.text
    text = direct.getvalue()
    assert "nat_pk_leaked" not in text
    assert "Traceback" in text
    assert "ValueError: boom" in text
    if log_format == "json":
        info, warning, error = (json.loads(line) for line in text.splitlines())
        assert info == {
            "method": "GET",
            "route": "/x",
            "status": 200,
            "duration_ms": 1.5,
            "when": repr(object),
            "event": "request",
            "request_id": "req-1",
            "tenant_id": "tnt_1",
            "level": "info",
            "logger": "tests.fast_path",
            "timestamp": info["timestamp"],
        }
        assert warning["api_key"] == "[redacted]"
        assert warning["detail"] == {"nested": [1, 2.5, None, True]}
        assert warning["level"] == "warning"
        assert error["level"] == "error"
        assert error["exception"].startswith("Traceback")
    else:
        assert "request" in text.splitlines()[0]
        with pytest.raises(json.JSONDecodeError):
            json.loads(text.splitlines()[0])


def test_configured_handler_writes_to_stderr() -> None:
    """Write to the process's stderr, alone on the root logger."""
    configure_logging("json", "info")
    root = logging.getLogger()
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    assert handler.stream is sys.stderr


@pytest.mark.parametrize("sole", [True, False], ids=["alone", "beside-another"])
def test_lines_below_the_level_are_not_written(sole: bool) -> None:
    """At LOG_LEVEL=warning, write warnings and not info lines, either way."""
    configure_logging("json", "warning")
    log = structlog.get_logger("webhook_service.request")
    with sole_handler() as stream:
        if sole:
            log.info("request", status=200)
            log.warning("slow", status=200)
        else:
            with capture():
                log.info("request", status=200)
                log.warning("slow", status=200)
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["slow"]


def test_record_names_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    """Give other handlers (caplog) the event dict and the caller's file and line."""
    caplog.set_level(logging.INFO)
    structlog.get_logger("tests.fast_path").info("hello", n=1)
    structlog.get_logger("tests.fast_path").error("bad", n=2)
    info, error = caplog.records
    assert info.msg == {
        "n": 1,
        "event": "hello",
        "level": "info",
        "logger": "tests.fast_path",
        "timestamp": info.msg["timestamp"],  # type: ignore[index]
    }
    assert (info.levelno, error.levelno) == (logging.INFO, logging.ERROR)
    assert info.pathname == error.pathname == __file__
    assert info.funcName == "test_record_names_the_caller"
    assert error.lineno == info.lineno + 1


def test_a_failing_stream_is_handled_as_logging_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pass a write error to Handler.handleError, with the record it would have had."""
    configure_logging("json", "info")
    handled: list[logging.LogRecord] = []

    class Broken(io.StringIO):
        def write(self, _text: str) -> int:
            raise OSError("disk full")

    with sole_handler():
        handler = logging.getLogger().handlers[0]
        handler.setStream(Broken())
        monkeypatch.setattr(handler, "handleError", handled.append)
        structlog.get_logger("tests.fast_path").info("lost", n=1)
    [record] = handled
    assert isinstance(record.msg, dict)
    assert record.msg["event"] == "lost"
    assert record.pathname == __file__


def test_timestamp_is_iso_utc() -> None:
    """Stamp every line, structlog's and the standard library's, with ISO 8601 UTC time."""
    with sole_handler() as stream:
        before = datetime.datetime.now(datetime.UTC)
        structlog.get_logger("tests.fast_path").info("stamped")
        logging.getLogger("tests.stdlib").warning("stamped too")
        after = datetime.datetime.now(datetime.UTC)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    for line in lines:
        stamp = json.loads(line)["timestamp"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", stamp), stamp
        assert before <= datetime.datetime.fromisoformat(stamp) <= after


def test_lines_carry_the_bound_context_until_cleared() -> None:
    """Add the bound variables after the line's own keys (which win), in structlog's
    order (that of its context variables, not always the binding order)."""
    log = structlog.get_logger("tests.fast_path")
    structlog.contextvars.bind_contextvars(b=1, a="x", c=None, gone=3)
    structlog.contextvars.unbind_contextvars("gone")
    in_structlog_order = [key for key in structlog.contextvars.get_contextvars() if key != "a"]
    assert sorted(in_structlog_order) == ["b", "c"]
    with sole_handler() as stream:
        log.info("bound", a="kept")
        structlog.contextvars.clear_contextvars()
        log.info("cleared")
    bound, cleared = (json.loads(line) for line in stream.getvalue().splitlines())
    assert list(bound) == ["a", "event", *in_structlog_order, "level", "logger", "timestamp"]
    assert (bound["a"], bound["b"], bound["c"]) == ("kept", 1, None)
    assert list(cleared) == ["event", "level", "logger", "timestamp"]


def request_lines(text: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in text.splitlines()]
    return [line for line in lines if line.get("event") == "request"]


def test_request_line(app: Flask) -> None:
    """Write the canonical line of a request to the handler alone, /healthz excepted."""
    client = app.test_client()
    with sole_handler() as stream:
        client.get("/readyz", headers={"X-Request-ID": "fast-1"})
        client.get("/healthz", headers={"X-Request-ID": "fast-2"})
        client.get("/nowhere", headers={"X-Request-ID": "bad id!"})
    ready, missing = request_lines(stream.getvalue())
    assert ready == {
        "request_id": "fast-1",
        "method": "GET",
        "route": "/readyz",
        "status": 200,
        "duration_ms": ready["duration_ms"],
        "remote_addr": "127.0.0.1",
        "event": "request",
        "level": "info",
        "logger": "webhook_service.request",
        "timestamp": ready["timestamp"],
    }
    assert list(ready) == [
        "request_id",
        "method",
        "route",
        "status",
        "duration_ms",
        "remote_addr",
        "event",
        "level",
        "logger",
        "timestamp",
    ]
    assert isinstance(ready["duration_ms"], float)
    assert (missing["route"], missing["status"]) == ("<unmatched>", 404)
    assert missing["request_id"] != "bad id!"
    assert structlog.contextvars.get_contextvars() == {}  # nothing left for the next request


def test_request_line_is_not_written_at_warning(make_app: Callable[..., Flask]) -> None:
    """Write no request line at LOG_LEVEL=warning."""
    client = make_app(LOG_LEVEL="warning").test_client()
    with sole_handler() as stream:
        assert client.get("/readyz").status_code == 200
    assert request_lines(stream.getvalue()) == []


def test_generated_request_id_is_a_uuid4(client: Any) -> None:
    """Answer a request without a usable X-Request-ID with a new uuid4, in hex."""
    ids = {client.get("/readyz").headers["X-Request-ID"] for _ in range(20)}
    assert len(ids) == 20
    for request_id in ids:
        assert uuid.UUID(hex=request_id).hex == request_id
        assert uuid.UUID(hex=request_id).version == 4
        assert uuid.UUID(hex=request_id).variant == uuid.RFC_4122
