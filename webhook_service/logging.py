"""structlog set-up: JSON in production, colour for humans, stdlib logs in the same shape.

Configured before the Flask app exists. Request-scoped fields (request id, event id,
tenant) are bound with contextvars and merged into every line; the canonical request
line is written once per request by :mod:`webhook_service.web.app`.

One handler on the root logger writes every line to stderr, structlog's and the
standard library's (gunicorn, alembic), rendered by one ``ProcessorFormatter``.
structlog's lines take a short way there, as the request line is written on every
request: :class:`BoundLogger` drops a line below the level before processing it and
hands the others to the handler without the standard library's generic machinery,
writing them straight to the stream when that handler is the only one listening.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor

# Keys whose values never reach a log line, whatever a caller passes.
_REDACTED_KEYS = frozenset(
    {
        "secret",
        "webhook_secret",
        "api_key",
        "sync_key",
        "authorization",
        "x-api-key",
        "x-sync-key",
        "stripe-signature",
        "payload",
        "body",
        "password",
    }
)


def _redact(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    for key in _REDACTED_KEYS.intersection(event_dict):
        event_dict[key] = "[redacted]"
    return event_dict


_second: tuple[int, str] = (-1, "")  # the last second formatted, and its text


def _timestamp(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    """``TimeStamper(fmt="iso", utc=True)``, same text: ``2025-01-02T03:04:05.678901Z``.

    The date and the time of day are formatted once a second rather than once a line.
    """
    global _second
    seconds, micros = divmod(time.time_ns() // 1000, 1_000_000)
    second, prefix = _second
    if seconds != second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second = (seconds, prefix)
    # Like datetime.isoformat(): no fraction when it is zero.
    event_dict["timestamp"] = f"{prefix}.{micros:06d}Z" if micros else f"{prefix}Z"
    return event_dict


_PREFIX = structlog.contextvars.STRUCTLOG_KEY_PREFIX
_PREFIX_LEN = len(_PREFIX)


def _merge_contextvars(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
    """``structlog.contextvars.merge_contextvars``: the same keys, in the same order.

    Unbound variables (set to ``...``) are skipped before their name is looked at.
    """
    for var, value in contextvars.copy_context().items():
        if value is not Ellipsis and var.name.startswith(_PREFIX):
            event_dict.setdefault(var.name[_PREFIX_LEN:], value)
    return event_dict


def clear_contextvars() -> None:
    """``structlog.contextvars.clear_contextvars``, touching only the variables still bound."""
    for var, value in contextvars.copy_context().items():
        if value is not Ellipsis and var.name.startswith(_PREFIX):
            var.set(Ellipsis)


def shared_processors() -> list[Processor]:
    return [
        _merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _timestamp,
        _redact,
    ]


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """``ProcessorFormatter``, with a short path for the lines of :class:`BoundLogger`.

    Their event dict is complete: only ``render`` (the traceback, the renderer) is left
    to run, on a copy as other handlers may format the same record. That is what
    ``ProcessorFormatter.format`` does to them, less copying the record and passing the
    text through ``logging.Formatter.format``. ``dumps`` renders a line that has no
    traceback to render, without copying it (JSON changes nothing in the dict). Records
    of the standard library take the full path, ``foreign_pre_chain`` included.
    """

    def __init__(
        self,
        render: list[Processor],
        dumps: Callable[[EventDict], str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
            **kwargs,
        )
        self._render = render
        self._dumps = dumps

    def render_event(self, logger: Any, method_name: str, event_dict: EventDict) -> str:
        """The text of a line from :class:`BoundLogger` (``event_dict`` is not changed)."""
        if self._dumps is not None and "exc_info" not in event_dict:
            return self._dumps(event_dict)
        if self.logger is not None:
            logger = self.logger
        rendered: Any = dict(event_dict)
        for processor in self._render:
            rendered = processor(logger, method_name, rendered)
        return cast(str, rendered)

    def format(self, record: logging.LogRecord) -> str:
        method_name = record.__dict__.get("_name")
        if method_name is None or type(record.msg) is not dict:
            return super().format(record)
        return self.render_event(record.__dict__.get("_logger"), method_name, record.msg)


class _StreamHandler(logging.StreamHandler[TextIO]):
    """The root logger's handler; :class:`BoundLogger` writes to it without a record."""

    def write_event(
        self,
        logger: logging.Logger,
        levelno: int,
        method_name: str,
        event_dict: EventDict,
        frame: FrameType,
    ) -> None:
        """What ``handle(record)`` does, the record built only if ``handleError`` needs it."""
        try:
            line = cast(_Formatter, self.formatter).render_event(logger, method_name, event_dict)
            with self.lock:  # type: ignore[union-attr]  # a StreamHandler always has one
                self.stream.write(line + self.terminator)
                self.flush()
        except RecursionError:  # as logging.StreamHandler.emit
            raise
        except Exception:
            self.handleError(_record(logger, levelno, method_name, event_dict, frame))


def _sole_handler(logger: logging.Logger, levelno: int) -> _StreamHandler | None:
    """Our handler, if a record of ``logger`` would reach it and no other, unfiltered."""
    if logger.filters:
        return None
    found: logging.Handler | None = None
    current: logging.Logger | None = logger
    while current is not None:
        handlers = current.handlers
        if handlers:
            if found is not None or len(handlers) > 1:
                return None
            found = handlers[0]
        if not current.propagate:
            break
        current = current.parent
    if (
        type(found) is not _StreamHandler
        or type(found.formatter) is not _Formatter
        or found.filters
        or levelno < found.level
    ):
        return None
    return found


# The frames between a caller and BoundLogger._proxy_to_logger: structlog's methods.
_WRAPPER_FILES = frozenset({structlog.stdlib.__file__})


def _record(
    logger: logging.Logger, levelno: int, method_name: str, event_dict: EventDict, frame: FrameType
) -> logging.LogRecord:
    """The record ``logger.info(*wrap_for_formatter(...))`` makes, caller included."""
    while frame.f_code.co_filename in _WRAPPER_FILES and frame.f_back is not None:
        frame = frame.f_back
    code = frame.f_code
    record = logging.LogRecord(
        logger.name, levelno, code.co_filename, frame.f_lineno, event_dict, (), None, code.co_name
    )
    record._logger = logger
    record._name = method_name
    return record


_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


class BoundLogger(structlog.stdlib.BoundLogger):
    """structlog's stdlib logger, the same lines for the same handlers, at a fraction of the cost.

    A call below the stdlib logger's level returns before any processor runs. A line
    that is written is, for the handlers, what ``logging.Logger.info`` made of
    :meth:`~structlog.stdlib.ProcessorFormatter.wrap_for_formatter`'s output: a
    :class:`logging.LogRecord` whose ``msg`` is the processed event dict, with
    ``_logger`` and ``_name`` set (so a ``ProcessorFormatter``, or pytest's ``caplog``,
    sees what it saw), and the caller's file and line without ``findCaller``'s walk. When
    the only handler it would reach is the one :func:`configure_logging` installed, with
    its formatter, the line is rendered and written without building that record.

    The processors must leave an event dict (``configure_logging``'s do): rendering
    is the formatter's.
    """

    def _proxy_to_logger(
        self, method_name: str, event: str | None = None, *event_args: Any, **event_kw: Any
    ) -> None:
        logger: logging.Logger = self._logger
        levelno = _METHOD_LEVELS.get(method_name, logging.NOTSET)
        if logger.isEnabledFor(levelno):
            self._write(logger, levelno, method_name, event, event_args, event_kw)

    def _write(
        self,
        logger: logging.Logger,
        levelno: int,
        method_name: str,
        event: str | None,
        event_args: tuple[Any, ...],
        event_kw: dict[str, Any],
    ) -> None:
        # BoundLoggerBase._process_event, inline.
        if event_args:
            event_kw["positional_args"] = event_args
        event_dict: Any = self._context.copy()
        event_dict.update(event_kw)
        if event is not None:
            event_dict["event"] = event
        try:
            for processor in self._processors:
                event_dict = processor(logger, method_name, event_dict)
        except structlog.DropEvent:
            return
        handler = _sole_handler(logger, levelno)
        if handler is not None:
            handler.write_event(logger, levelno, method_name, event_dict, sys._getframe(2))
        else:
            logger.handle(_record(logger, levelno, method_name, event_dict, sys._getframe(2)))

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> None:
        """Log at info level (one call less than structlog's: the request line's)."""
        logger: logging.Logger = self._logger
        if logger.isEnabledFor(logging.INFO):
            self._write(logger, logging.INFO, "info", event, args, kw)


def _json_fallback(obj: Any) -> Any:
    """structlog's JSON fallback: an object's ``__structlog__()``, else its ``repr``."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


# json.dumps(obj, default=...) builds an encoder on every call; this one is built once.
_encode_json: Callable[[Any], str] = json.JSONEncoder(default=_json_fallback).encode


def _json_dumps(obj: Any, **_kwargs: Any) -> str:
    return _encode_json(obj)


def _render(log_format: str, colors: bool) -> tuple[list[Processor], Callable[[Any], str] | None]:
    """The processors that turn an event dict into its line, and the short path of JSON."""
    if log_format == "console":
        # Plain tracebacks even where rich is installed: rich's show frame locals.
        renderer = structlog.dev.ConsoleRenderer(
            colors=colors, exception_formatter=structlog.dev.plain_traceback
        )
        return [renderer], None
    # Plain-text tracebacks: no frame locals (they could hold secrets or payloads).
    return [
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(serializer=_json_dumps),
    ], _encode_json


def configure_logging(log_format: str = "json", log_level: str = "info") -> None:
    """Route structlog and the standard library (gunicorn, alembic) through one renderer."""
    render, dumps = _render(log_format, colors=sys.stderr.isatty())
    level = getattr(logging, log_level.upper())

    structlog.configure(
        processors=shared_processors(),
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = _Formatter(render, dumps, foreign_pre_chain=shared_processors())
    handler = _StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Quieten libraries that log request details of their own.
    for noisy in ("werkzeug", "urllib3", "stripe", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def formatter_for_stdlib(log_format: str) -> logging.Formatter:
    """The formatter gunicorn's own handlers use, so its lines match ours."""
    render, dumps = _render(log_format, colors=False)
    if log_format == "console":
        render = [structlog.processors.format_exc_info, *render]
    return _Formatter(render, dumps, foreign_pre_chain=shared_processors())
