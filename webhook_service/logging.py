"""structlog set-up: JSON in production, colour for humans, stdlib logs in the same shape.

Configured before the Flask app exists. Request-scoped fields (request id, event id,
tenant) are bound with contextvars and merged into every line; the canonical request
line is written once per request by :mod:`webhook_service.web.requestlog`.

structlog's standard-library integration, as documented: structlog's processors build
the event dict and ``ProcessorFormatter.wrap_for_formatter`` hands it to a stdlib
logger, so every line, structlog's and the standard library's (gunicorn, alembic), goes
to the one handler on the root logger (and to any other handler a test or an operator
adds) and is rendered there by one ``ProcessorFormatter``. ``filter_by_level`` drops a
line below its stdlib logger's level before any other processor runs.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

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


def shared_processors() -> list[Processor]:
    """What every line gets, structlog's and (in the formatter) the standard library's."""
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]


def _render(log_format: str, colors: bool) -> list[Processor]:
    """The processors that turn an event dict into its line."""
    if log_format == "console":
        # Plain tracebacks even where rich is installed: rich's show frame locals.
        return [
            structlog.dev.ConsoleRenderer(
                colors=colors, exception_formatter=structlog.dev.plain_traceback
            )
        ]
    # Plain-text tracebacks: no frame locals (they could hold secrets or payloads).
    return [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]


def _formatter(render: list[Processor]) -> structlog.stdlib.ProcessorFormatter:
    return structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
        foreign_pre_chain=shared_processors(),
    )


def configure_logging(log_format: str = "json", log_level: str = "info") -> None:
    """Route structlog and the standard library (gunicorn, alembic) through one renderer."""
    level = getattr(logging, log_level.upper())
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(_render(log_format, colors=sys.stderr.isatty())))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Quieten libraries that log request details of their own.
    for noisy in ("werkzeug", "urllib3", "stripe", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def formatter_for_stdlib(log_format: str) -> logging.Formatter:
    """The formatter gunicorn's own handlers use, so its lines match ours."""
    render = _render(log_format, colors=False)
    if log_format == "console":
        render = [structlog.processors.format_exc_info, *render]
    return _formatter(render)
