"""structlog set-up: JSON in production, colour for humans, stdlib logs in the same shape.

Configured before the Flask app exists. Request-scoped fields (request id, event id,
tenant) are bound with contextvars and merged into every line; the canonical request
line is written once per request by :mod:`webhook_service.app`.
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
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]


def configure_logging(log_format: str = "json", log_level: str = "info") -> None:
    """Route structlog and the standard library (gunicorn, alembic) through one renderer."""
    renderer: Processor
    if log_format == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        exc_processors: list[Processor] = []
    else:
        renderer = structlog.processors.JSONRenderer()
        # Plain-text tracebacks: no frame locals (they could hold secrets or payloads).
        exc_processors = [structlog.processors.format_exc_info]
    level = getattr(logging, log_level.upper())

    structlog.configure(
        processors=[
            *shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *exc_processors,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Quieten libraries that log request details of their own.
    for noisy in ("werkzeug", "urllib3", "stripe", "alembic"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def formatter_for_stdlib(log_format: str) -> logging.Formatter:
    """The formatter gunicorn's own handlers use, so its lines match ours."""
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if log_format == "console"
        else structlog.processors.JSONRenderer()
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
