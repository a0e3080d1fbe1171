"""Handlers keyed by Stripe's event type strings.

Event types stay plain strings: Stripe keeps adding new ones, and an unknown type is
simply logged as ``ignored``. A handler takes the event and an :class:`HandlerScope`
(the open transaction and the plan catalog), never Flask.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from sqlalchemy import Connection

from webhook_service.plans import PlanCatalog
from webhook_service.webhooks.events import StripeEvent

HandlerOutcome = Literal["processed", "ignored", "stale"]


class HandlerError(Exception):
    """A handler cannot apply an event (yet); the event is kept as ``failed`` and retried."""


@dataclass(frozen=True)
class HandlerScope:
    conn: Connection
    catalog: PlanCatalog
    now: datetime


@dataclass
class HandlerResult:
    outcome: HandlerOutcome = "processed"
    tenant_id: str | None = None
    notes: dict[str, str] = field(default_factory=dict)


Handler = Callable[[StripeEvent, HandlerScope], HandlerResult]


class Router:
    """A registry of handlers; routers can be merged."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, *event_types: str) -> Callable[[Handler], Handler]:
        def decorator(handler: Handler) -> Handler:
            for event_type in event_types:
                if event_type in self._handlers:
                    raise ValueError(f"a handler for {event_type!r} is already registered")
                self._handlers[event_type] = handler
            return handler

        return decorator

    def add(self, other: Router) -> None:
        for event_type, handler in other._handlers.items():
            self.register(event_type)(handler)

    def handler_for(self, event_type: str) -> Handler | None:
        return self._handlers.get(event_type)

    @property
    def event_types(self) -> frozenset[str]:
        return frozenset(self._handlers)
