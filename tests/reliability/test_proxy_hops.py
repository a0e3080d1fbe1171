"""TRUSTED_PROXY_HOPS: X-Forwarded-For names the client behind one trusted proxy, else not.

The client address shows in the request log line (``remote_addr``) and keys the rate
limit of requests without an API key. With one trusted hop it is the address the proxy
appended (the last X-Forwarded-For entry; earlier ones are the client's own claims);
with none, X-Forwarded-For is ignored and the socket's peer counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from webhook_service.config import load_settings
from webhook_service.web.app import create_app

PEER = "10.9.8.7"  # the load balancer, as the socket sees it
USAGE = "/api/v1/usage"
LIMIT = 3


@pytest.fixture(params=[0, 1], ids=["hops-0", "hops-1"])
def hops(request: pytest.FixtureRequest) -> int:
    """TRUSTED_PROXY_HOPS: 0 and 1."""
    return int(request.param)


@pytest.fixture
def proxied_app(env: dict[str, str], hops: int) -> Iterator[Flask]:
    """The app behind ``hops`` trusted proxies, with a small rate limit."""
    settings = load_settings(
        {**env, "TRUSTED_PROXY_HOPS": str(hops), "RATE_LIMIT": f"{LIMIT}/minute"}
    )
    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    application.extensions["nat"].database.dispose()


def get(client: FlaskClient, forwarded: str | None) -> int:
    """GET /api/v1/usage without an API key from the proxy's address; the status."""
    headers = {} if forwarded is None else {"X-Forwarded-For": forwarded}
    response = client.get(USAGE, headers=headers, environ_base={"REMOTE_ADDR": PEER})
    return response.status_code


def request_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The canonical request log lines captured so far."""
    return [
        record.msg
        for record in caplog.records
        if isinstance(record.msg, dict) and record.msg.get("event") == "request"
    ]


def test_forwarded_for_is_the_logged_client_address_only_when_trusted(
    proxied_app: Flask, hops: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Log the proxy-appended address with one trusted hop, the peer with none."""
    client = proxied_app.test_client()
    caplog.set_level("INFO", logger="webhook_service.request")
    get(client, "198.51.100.1, 203.0.113.5")
    get(client, None)
    addresses = [line["remote_addr"] for line in request_lines(caplog)]
    if hops:
        assert addresses == ["203.0.113.5", PEER]
    else:
        assert addresses == [PEER, PEER]


def test_forwarded_for_keys_the_rate_limit_only_when_trusted(proxied_app: Flask, hops: int) -> None:
    """Count keyless requests per forwarded client with one trusted hop, per peer with none."""
    client = proxied_app.test_client()
    first = [get(client, "203.0.113.5") for _ in range(LIMIT + 1)]
    assert first == [401] * LIMIT + [429]
    # Another client behind the same proxy; a spoofed first entry changes nothing.
    other = [get(client, "203.0.113.99"), get(client, "192.0.2.1, 203.0.113.99")]
    spoofed = get(client, "203.0.113.77, 203.0.113.5")
    if hops:
        assert other == [401, 401]
        assert spoofed == 429
    else:
        assert other == [429, 429]
        assert spoofed == 429
