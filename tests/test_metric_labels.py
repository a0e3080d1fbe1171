"""/metrics labels come from bounded sets, whatever a client sends (issue 11, item 3).

Each label value is a new series in every worker's file and in every scrape, and
/metrics needs no authentication: made-up methods, paths, event types and signature
headers must not add series.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests import stripe_events as se
from tests.helpers import SECOND_SECRET, WEBHOOK_SECRET
from tests.test_ops import metric_value
from webhook_service.services import build_router

# RFC 9110's methods and PATCH (RFC 5789).
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

SERIES_RE = re.compile(r"^(nat_[a-z_]+)\{(.*)\} \S+$")


def label_values(text: str, metric: str, label: str) -> set[str]:
    """Every value of ``label`` in the samples of ``metric``."""
    values = set()
    for line in text.splitlines():
        match = SERIES_RE.match(line)
        if match and match.group(1) == metric:
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2)))
            if label in found:
                values.add(found[label])
    return values


def test_made_up_methods_and_paths_add_no_series(client: FlaskClient) -> None:
    """Count requests with a method outside the standard set as method="other"."""
    before = client.get("/metrics").get_data(as_text=True)
    for n in range(60):
        response = client.open(f"/made-up-{n}", method=f"FOO{n}")
        assert response.status_code in (404, 405)
        client.open("/api/v1/usage", method=f"BAR{n}")
    client.open("/healthz", method="BREW")
    text = client.get("/metrics").get_data(as_text=True)
    methods = label_values(text, "nat_http_requests_total", "method")
    assert methods <= HTTP_METHODS | {"other"}, methods - HTTP_METHODS
    routes = label_values(text, "nat_http_requests_total", "route")
    assert not any(route.startswith("/made-up") for route in routes), routes
    unmatched = {"route": "<unmatched>", "method": "other", "status": "404"}
    assert metric_value(text, "nat_http_requests_total", **unmatched) >= (
        metric_value(before, "nat_http_requests_total", **unmatched) + 60
    )


def test_event_types_without_a_handler_are_counted_as_other(
    client: FlaskClient, post_event: Callable[..., TestResponse]
) -> None:
    """Keep the event type label to the handled types plus "other"."""
    handled = build_router().event_types
    for n in range(20):
        event = se.event(
            f"made.up_{n}_{se.new_id('x', 8)[2:].lower()}",
            {"id": f"obj_{n}", "object": "thing"},
            created=1735689600,
            api_version=se.BASIL_API_VERSION,
        )
        assert post_event(event).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    types = label_values(text, "nat_webhook_events_total", "type")
    assert "other" in types
    assert types <= handled | {"other"}, types - handled


def test_signature_reasons_and_secret_indexes_stay_bounded(
    client: FlaskClient, post_event: Callable[..., TestResponse]
) -> None:
    """Label signature failures by a fixed set of reasons and matches by configured position."""
    event = se.event(
        "made.up",
        {"id": "obj_1", "object": "thing"},
        created=1735689600,
        api_version=se.BASIL_API_VERSION,
    )
    headers = ["", "t=1", "t=x,v1=ab", "garbage", "t=1,v0=ab", f"t=1,v{'9' * 50}=ab"]
    for header in headers:
        assert post_event(event, header=header).status_code == 400
    assert post_event(event, secret="whsec_not_configured_at_all").status_code == 400
    assert post_event(event, secret=SECOND_SECRET).status_code in (200, 400)
    assert post_event(event, secret=WEBHOOK_SECRET).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    reasons = label_values(text, "nat_webhook_signature_failures_total", "reason")
    assert reasons <= {"missing", "malformed", "no_v1", "mismatch", "too_old", "too_new"}
    indexes = label_values(text, "nat_webhook_secret_matches_total", "index")
    assert indexes <= {"0", "1"}
