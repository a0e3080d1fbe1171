"""Signed events whose text the databases cannot store (issue 11, item 4).

A NUL (PostgreSQL refuses it in text) or a lone UTF-16 surrogate (no UTF-8 encoding)
anywhere in a verified event is refused at parse time with 400 INVALID_PAYLOAD naming
the field, on both databases; before, it failed as an unrecorded 500 that Stripe would
retry for days. Every other text, escaped or not, is stored and read back exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import count_rows
from webhook_service.db import Database
from webhook_service.webhooks.events import parse_event


def refund(**extra: Any) -> dict[str, Any]:
    return se.event(
        "charge.refund.updated",
        {"id": se.new_id("re"), "object": "refund", **extra},
        created=1735689600,
        api_version=se.BASIL_API_VERSION,
    )


def escaped(event: dict[str, Any]) -> bytes:
    """``event`` as JSON with every non-ASCII character (NUL, surrogates) as a \\u escape."""
    return json.dumps(event, ensure_ascii=True).encode("ascii")


BAD_TEXT = {"nul": "\x00", "lone high surrogate": "\ud800", "lone low surrogate": "\udfff"}


def _put(event: dict[str, Any], path: str, text: str) -> None:
    """Append ``text`` to the string at dotted ``path`` (created if missing)."""
    *parents, last = path.split(".")
    node = event
    for name in parents:
        node = node.setdefault(name, {})
    node[last] = str(node.get(last, "x")) + text


@pytest.mark.parametrize("field", ["id", "type", "data.object.id", "data.object.metadata.note"])
@pytest.mark.parametrize("kind", list(BAD_TEXT))
def test_unstorable_text_is_refused_naming_the_field(
    post_event: Callable[..., TestResponse], database: Database, field: str, kind: str
) -> None:
    """Answer 400 INVALID_PAYLOAD naming the field; store nothing, on both databases."""
    event = refund()
    _put(event, field, BAD_TEXT[kind])
    response = post_event(escaped(event))
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.json
    assert body is not None
    assert body["error"] == "INVALID_PAYLOAD"
    assert body["field"] == field
    assert field in body["message"]
    assert count_rows(database, "stripe_events") == 0


def test_unstorable_key_is_refused(
    post_event: Callable[..., TestResponse], database: Database
) -> None:
    """Refuse a NUL in an object key too (the key path is shown up to the culprit)."""
    event = refund()
    event["data"]["object"]["metadata"] = {"a\x00b": "x"}
    response = post_event(escaped(event))
    assert response.status_code == 400
    assert response.json is not None
    assert response.json["field"] == "data.object.metadata.<key>"
    assert count_rows(database, "stripe_events") == 0


# Escaped and raw: astral characters (as a surrogate pair and as UTF-8), other control
# characters, separators JavaScript dislikes, a BOM, and text that only looks like a
# forbidden escape (a backslash followed by "u0000").
ODD_BUT_STORABLE = [
    "😀 caf\u00e9 \u2028\u2029 \ufeff",
    "\x01\x1f\x7f\t\r\n",
    "\\u0000 and \\ud800 are just text here",
    "\U0010ffff\U0001f600",
]


@pytest.mark.parametrize("ascii_only", [True, False], ids=["escaped", "raw-utf8"])
def test_stored_payload_round_trips_exactly(
    app: Flask, post_event: Callable[..., TestResponse], ascii_only: bool
) -> None:
    """Store every other text and read the very same payload back, on both databases."""
    event = refund(description=" | ".join(ODD_BUT_STORABLE), metadata={"k\u00e9y": "v\u00e4l"})
    raw = json.dumps(event, ensure_ascii=ascii_only).encode("utf-8")
    response = post_event(raw)
    assert response.status_code == 200, response.get_data(as_text=True)
    row = app.extensions["nat"].event_log.get(event["id"])
    assert row.payload == raw.decode("utf-8")
    assert parse_event(row.payload).object["description"] == event["data"]["object"]["description"]
