"""Prometheus metrics, correct across gunicorn workers.

When ``PROMETHEUS_MULTIPROC_DIR`` is set (the gunicorn config prepares it), every
worker writes its samples there and ``/metrics`` aggregates them all. The readiness
gauges are computed at scrape time (:class:`Readiness`), never stored.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric

EVENTS = Counter(
    "nat_webhook_events_total", "Verified Stripe events by type and outcome.", ["type", "outcome"]
)
SIGNATURE_FAILURES = Counter(
    "nat_webhook_signature_failures_total", "Rejected webhook signatures by reason.", ["reason"]
)
SECRET_MATCHES = Counter(
    "nat_webhook_secret_matches_total",
    "Verified webhooks by the position of the secret that matched.",
    ["index"],
)
PROCESSING_SECONDS = Histogram(
    "nat_webhook_processing_seconds",
    "Time to log and apply one event, commit included.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
HTTP_REQUESTS = Counter(
    "nat_http_requests_total",
    "HTTP requests by route, method and status.",
    ["route", "method", "status"],
)
SCAN_SPENDS = Counter("nat_scan_spends_total", "Scans spent.")
QUOTA_EXCEEDED = Counter("nat_quota_exceeded_total", "Spend requests refused with 402.")
RATE_LIMIT_STORAGE_FAILURES = Counter(
    "nat_rate_limit_storage_failures_total",
    "Times the rate limit storage (Redis) failed or missed its deadline; "
    "the process then counts in memory.",
)
RATE_LIMIT_FALLBACK = Gauge(
    "nat_rate_limit_storage_fallback",
    "1 while a worker counts rate limits in its own memory because the storage is down.",
    multiprocess_mode="livemax",
)


# Every label value comes from a bounded set, whatever a client sends: a label is a new
# series in every worker's file and in every scrape. Methods outside RFC 9110's (and
# PATCH) are counted as "other"; event types the service has no handler for as well.
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
OTHER = "other"


def method_label(method: str) -> str:
    """``method`` if it is a standard HTTP method, else ``"other"``."""
    return method if method in HTTP_METHODS else OTHER


def event_type_label(event_type: str, *, handled: bool) -> str:
    """``event_type`` if the service handles it, else ``"other"`` (Stripe keeps adding types)."""
    return event_type if handled else OTHER


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


@dataclass(frozen=True)
class Readiness:
    """What ``/readyz`` reports, as of the scrape (None: unknown, e.g. not migrated)."""

    ready: bool
    failed_events: int | None = None
    oldest_failed_event_age_seconds: int | None = None

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "nat_ready", "1 when /readyz answers 200, else 0.", value=int(self.ready)
        )
        if self.failed_events is not None:
            yield GaugeMetricFamily(
                "nat_webhook_failed_events",
                "Logged events whose outcome is failed.",
                value=self.failed_events,
            )
            yield GaugeMetricFamily(
                "nat_webhook_oldest_failed_event_age_seconds",
                "Age of the oldest failed event (0 when none is failed).",
                value=self.oldest_failed_event_age_seconds or 0,
            )


def render(readiness: Readiness | None = None) -> tuple[bytes, str]:
    """The exposition text of every worker (or of this process alone), and ``readiness``."""
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        data = generate_latest(registry)
    else:
        data = generate_latest()
    if readiness is not None:
        scrape_time = CollectorRegistry()
        scrape_time.register(readiness)
        data += generate_latest(scrape_time)
    return data, CONTENT_TYPE_LATEST
