"""Parse a verified body into a Stripe v1 event, refusing anything else."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from webhook_service.errors import InvalidPayload

# What the log's columns hold: ids and types up to 255 characters, and a `created` that
# is a real date (year 9999 at most; a BIGINT and datetime.fromtimestamp() take it).
MAX_ID_LENGTH = 255
MAX_CREATED = 253_402_300_799  # 9999-12-31T23:59:59Z
# Text neither database stores as sent: NUL (PostgreSQL refuses it in text) and lone
# surrogates (no UTF-8 encoding: both refuse them). JSON can only carry either as a
# \u escape, so a body without "\u0000" or "\ud..." (any case) needs no walk at all.
_UNSTORABLE_RE = re.compile(r"[\x00\ud800-\udfff]")
_UNSTORABLE_ESCAPE_RE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
MAX_PATH_LENGTH = 120


@dataclass(frozen=True)
class StripeEvent:
    """The fields of a Stripe v1 event the service relies on, plus the raw body."""

    id: str
    type: str
    created: int
    api_version: str | None
    livemode: bool
    data: dict[str, Any]
    payload: str

    @property
    def object(self) -> dict[str, Any]:
        obj = self.data.get("object")
        return obj if isinstance(obj, dict) else {}

    @property
    def object_id(self) -> str | None:
        value = self.object.get("id")
        return value if isinstance(value, str) and len(value) <= MAX_ID_LENGTH else None


def _unstorable_field(value: Any, path: str) -> str | None:
    """The path of the first key or string under ``value`` the databases cannot store."""
    if isinstance(value, str):
        return path if _UNSTORABLE_RE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            if _UNSTORABLE_RE.search(key):
                return f"{path}.<key>" if path else "<key>"
            found = _unstorable_field(item, f"{path}.{key}" if path else key)
            if found is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = _unstorable_field(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def check_storable(payload: str, body: dict[str, Any]) -> None:
    """Refuse an event carrying NUL or a lone surrogate anywhere, naming the field.

    Such text cannot be stored as sent (PostgreSQL refuses NUL in text; neither
    database encodes a lone surrogate), so it would otherwise fail as a 500 after
    verification, unrecorded, and Stripe would retry it for days.
    """
    if not _UNSTORABLE_ESCAPE_RE.search(payload):
        return
    path = _unstorable_field(body, "")
    if path is not None:
        # The path is the sender's text too: shown bounded, with the culprit escaped.
        shown = ascii(path[:MAX_PATH_LENGTH])[1:-1]
        raise InvalidPayload(
            f"The field {shown} contains text that cannot be stored "
            "(a NUL character or a lone UTF-16 surrogate).",
            field=shown,
        )


def parse_event(payload: str) -> StripeEvent:
    """Decode ``payload`` (already verified) into a :class:`StripeEvent`."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise InvalidPayload("The body is not JSON.") from None
    if not isinstance(body, dict):
        raise InvalidPayload("The body is not a Stripe event object.")
    check_storable(payload, body)
    if body.get("object") == "v2.core.event" or "related_object" in body:
        raise InvalidPayload(
            "Thin (v2) event notifications are not accepted; "
            "configure this endpoint for snapshot (v1) events."
        )
    event_id, event_type, created = body.get("id"), body.get("type"), body.get("created")
    if (
        not isinstance(event_id, str)
        or not event_id.startswith("evt_")
        or len(event_id) > MAX_ID_LENGTH
    ):
        raise InvalidPayload("The event has no valid 'id' (evt_...).")
    if not isinstance(event_type, str) or not event_type or len(event_type) > MAX_ID_LENGTH:
        raise InvalidPayload("The event has no 'type'.")
    if not isinstance(created, int) or isinstance(created, bool) or not 0 <= created <= MAX_CREATED:
        raise InvalidPayload("The event has no valid 'created' timestamp.")
    if body.get("object", "event") != "event":
        raise InvalidPayload("The body is not a Stripe event object.")
    data = body.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise InvalidPayload("The event has no 'data.object'.")
    api_version = body.get("api_version")
    if api_version is not None and (not isinstance(api_version, str) or len(api_version) > 64):
        raise InvalidPayload("The event's 'api_version' is not a string.")
    return StripeEvent(
        id=event_id,
        type=event_type,
        created=created,
        api_version=api_version,
        livemode=bool(body.get("livemode", False)),
        data=data,
        payload=payload,
    )
