"""The floor: the least a complete webhook receiver does, the yardstick of the service's layers.

Plain WSGI, no framework. The Stripe-Signature is checked by the stripe SDK
(``stripe.WebhookSignature.verify_header``, what ``stripe.Webhook.construct_event`` runs),
the body parsed with ``json.loads``, and ONE transaction logs the event (``ON CONFLICT (id)
DO NOTHING``: a redelivery changes nothing) and, when the event is new and names a
subscription, upserts that subscription's row (an older event never overwrites a newer
one). Nothing else: no tenants, quotas, metrics, request logs, rate limits or error
mapping. The benchmark runs it under the service's gunicorn settings on the service's
backend (``DATABASE_URL``: SQLite in WAL mode, or PostgreSQL with psycopg) and reports
the service's figures as multiples of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sqlite3
from collections.abc import Iterable
from typing import Any
from wsgiref.types import StartResponse, WSGIEnvironment

import psycopg
import stripe

SECRET = os.environ["STRIPE_WEBHOOK_SECRET"].split(",")[0].strip()
TOLERANCE = int(os.environ.get("STRIPE_WEBHOOK_TOLERANCE", "300"))
DATABASE_URL = os.environ["DATABASE_URL"]  # sqlite:///PATH or postgresql[+psycopg]://...
SQLITE = DATABASE_URL.startswith("sqlite:")
# How the benchmark tells its PostgreSQL backends apart (bench/databases.py).
APPLICATION_NAME = "nat-bench-floor"
WEBHOOK_PATH = "/api/v1/billing/webhook"
MAX_BODY = 1 << 20

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS floor_events (id VARCHAR(255) PRIMARY KEY, "
    "type VARCHAR(255) NOT NULL, created BIGINT NOT NULL, payload TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS floor_subscriptions (id VARCHAR(255) PRIMARY KEY, "
    "customer_id VARCHAR(255), status VARCHAR(32), price_id VARCHAR(255), quantity INTEGER, "
    "period_start BIGINT, period_end BIGINT, event_created BIGINT NOT NULL)",
)
INSERT_EVENT = (
    "INSERT INTO floor_events (id, type, created, payload) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (id) DO NOTHING"
)
# Invoices carry no status, price or quantity: those keep the values they had.
UPSERT_SUBSCRIPTION = (
    "INSERT INTO floor_subscriptions AS s (id, customer_id, status, price_id, quantity, "
    "period_start, period_end, event_created) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id, "
    "status = COALESCE(excluded.status, s.status), "
    "price_id = COALESCE(excluded.price_id, s.price_id), "
    "quantity = COALESCE(excluded.quantity, s.quantity), period_start = excluded.period_start, "
    "period_end = excluded.period_end, event_created = excluded.event_created "
    "WHERE s.event_created <= excluded.event_created"
)
if SQLITE:  # sqlite3's placeholders
    INSERT_EVENT = INSERT_EVENT.replace("%s", "?")
    UPSERT_SUBSCRIPTION = UPSERT_SUBSCRIPTION.replace("%s", "?")

Connection = sqlite3.Connection | psycopg.Connection[Any]
# Opened in the workers as needed; the last one used is the next one taken.
idle_connections: queue.LifoQueue[Connection] = queue.LifoQueue()


def connect() -> Connection:
    if SQLITE:
        path = DATABASE_URL.split(":///", 1)[1]
        conn = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn
    conninfo = DATABASE_URL.replace("postgresql+psycopg://", "postgresql://", 1)
    return psycopg.connect(conninfo, autocommit=True, application_name=APPLICATION_NAME)


def subscription_row(event: dict[str, Any]) -> tuple[Any, ...] | None:
    """The subscription an event describes (both payload shapes), or None."""
    try:
        obj = event["data"]["object"]
        if obj["object"] == "subscription":
            item = obj["items"]["data"][0]
            period = item if "current_period_start" in item else obj  # basil: on the item
            start, end = period["current_period_start"], period["current_period_end"]
            price, quantity = item["price"]["id"], item["quantity"]
            return (obj["id"], obj["customer"], obj["status"], price, quantity, start, end)
        if event["type"] == "invoice.paid":
            details = (obj.get("parent") or {}).get("subscription_details") or {}  # basil
            sub = obj.get("subscription") or details.get("subscription")
            period = obj["lines"]["data"][0]["period"]
            if sub:
                return (sub, obj["customer"], None, None, None, period["start"], period["end"])
    except (KeyError, IndexError, TypeError):
        pass  # not a shape this receiver knows: the event is logged, nothing else
    return None


def store(event: dict[str, Any], body: bytes) -> None:
    """Log the event and upsert its subscription, in one transaction."""
    row = (event["id"], event["type"], event["created"], body.decode())
    sub = subscription_row(event)
    try:
        conn = idle_connections.get_nowait()
    except queue.Empty:
        conn = connect()
    try:
        if isinstance(conn, sqlite3.Connection):
            conn.execute("BEGIN IMMEDIATE")
            with conn:  # COMMIT, or ROLLBACK on an error
                if conn.execute(INSERT_EVENT, row).rowcount and sub:
                    conn.execute(UPSERT_SUBSCRIPTION, (*sub, event["created"]))
        else:
            with conn.transaction():
                if conn.execute(INSERT_EVENT, row).rowcount and sub:
                    conn.execute(UPSERT_SUBSCRIPTION, (*sub, event["created"]))
    except BaseException:
        conn.close()
        raise
    idle_connections.put(conn)


def answer(start_response: StartResponse, status: str, body: bytes) -> Iterable[bytes]:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response(status, headers)
    return [body]


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    path, method = environ.get("PATH_INFO"), environ["REQUEST_METHOD"]
    if path == "/healthz" and method == "GET":
        return answer(start_response, "200 OK", b'{"status": "ok"}')
    if path != WEBHOOK_PATH:
        return answer(start_response, "404 Not Found", b'{"error": "not found"}')
    if method != "POST":
        return answer(start_response, "405 Method Not Allowed", b'{"error": "use POST"}')
    length = environ.get("CONTENT_LENGTH") or ""
    if not length.isdigit():
        return answer(start_response, "411 Length Required", b'{"error": "no Content-Length"}')
    if int(length) > MAX_BODY:
        return answer(start_response, "413 Content Too Large", b'{"error": "body too large"}')
    body = environ["wsgi.input"].read(int(length))
    try:
        header = environ.get("HTTP_STRIPE_SIGNATURE")
        stripe.WebhookSignature.verify_header(body, header, SECRET, TOLERANCE)
        event = json.loads(body)
        if not all(
            isinstance(event.get(k), t) for k, t in (("id", str), ("type", str), ("created", int))
        ):
            raise ValueError("not an event")
    except (ValueError, AttributeError, stripe.SignatureVerificationError):
        return answer(start_response, "400 Bad Request", b'{"error": "invalid event"}')
    store(event, body)
    return answer(start_response, "200 OK", b'{"received": true}')


if __name__ == "__main__":  # python -m bench.floor_app: create the tables in DATABASE_URL
    with contextlib.closing(connect()) as conn:
        for statement in SCHEMA:
            conn.execute(statement)
