"""The benchmark's workload: tenants, subscriptions, and a stream of unique Stripe events.

Every event body is Stripe's exact rendering (``tests.stripe_events.render``) of an event
built by the test factory, in both payload shapes (legacy ``2024-06-20`` and
``2025-03-31.basil``). Rendering costs ~2-3 ms an event, far too slow to make the
tens of thousands a round needs, so each (subscription, shape, variant) is rendered
once as a *template* with placeholder ids, and each event of a round is a template with
a fresh ``evt_`` id, a fresh ``in_`` id (invoices, every occurrence), and the envelope's
``created`` set to the moment the round is signed. Ids derived from the invoice id by the
factory (line, charge, payment intent, hosted URL token) stay those of the template.

Requests are written as raw HTTP/1.1 requests, length-prefixed
(``b"<len>\\n" + request``), one file per round; both load generators read that format.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import string
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests import stripe_events as se

WEBHOOK_PATH = "/api/v1/billing/webhook"
USAGE_PATH = "/api/v1/usage"
SPEND_PATH = "/api/v1/usage/scans"

BENCH_PRICE_ID = "price_bench_scale_monthly"
BENCH_PLAN = "scale"
BENCH_SCANS_PER_MONTH = 10_000_000
PLANS_TOML = f"""# Plan catalog of the benchmark: the built-in plans plus a large one, so spending
# never runs out during a run (no 402s).
default_plan = "free"

[plans.free]
scans_per_month = 10

[plans.pro]
scans_per_month = 500
prices = ["price_pro_monthly", "pro_monthly", "price_pro_yearly", "pro_yearly"]

[plans.{BENCH_PLAN}]
scans_per_month = {BENCH_SCANS_PER_MONTH}
prices = ["{BENCH_PRICE_ID}"]
"""

EVT_PLACEHOLDER = "evt_0PLACEHOLDER0EVENT0ID000"
INVOICE_PLACEHOLDER = "in_0PLACEHOLDER0INVOICE0000"
_ALNUM = string.digits + string.ascii_uppercase + string.ascii_lowercase

# The mix of a round: half subscription updates, half paid renewal invoices.
EVENT_MIX = (("customer.subscription.updated", 0.5), ("invoice.paid", 0.5))


@dataclass(frozen=True)
class BenchTenant:
    index: int
    tenant_id: str
    api_key: str
    customer_id: str
    subscription_id: str
    period_start: int
    period_end: int


def bench_tenants(count: int, now: int) -> list[BenchTenant]:
    """``count`` tenants, each with a key, a customer and one monthly subscription.

    Periods are current (started 1 to 28 days ago), so quota windows contain now.
    """
    day = 86_400
    tenants = []
    for i in range(count):
        start = now - ((i % 28) + 1) * day
        digest = hashlib.sha256(f"bench-key-{i}".encode()).hexdigest()[:32]
        tenants.append(
            BenchTenant(
                index=i,
                tenant_id=f"tnt_bench_{i:05d}",
                api_key=f"nat_pk_bench_{digest}",
                customer_id=se.stable_id("cus", "bench", i),
                subscription_id=se.stable_id("sub", "bench", i),
                period_start=start,
                period_end=se.add_months(start, 1),
            )
        )
    return tenants


def sync_body(tenants: Sequence[BenchTenant]) -> bytes:
    """The NAT app's sync request for ``tenants`` (keys and customers)."""
    return json.dumps(
        {
            "tenants": [
                {
                    "tenant_id": t.tenant_id,
                    "api_keys": [t.api_key],
                    "stripe_customer_id": t.customer_id,
                    "active": True,
                }
                for t in tenants
            ]
        }
    ).encode()


def _subscription(
    tenant: BenchTenant,
    event_type: str,
    api_version: str,
    created: int,
    *,
    quantity: int = 1,
    previous: dict[str, object] | None = None,
) -> bytes:
    event = se.subscription_event(
        event_type,
        sub_id=tenant.subscription_id,
        customer=tenant.customer_id,
        status="active",
        period_start=tenant.period_start,
        period_end=tenant.period_end,
        created=created,
        api_version=api_version,
        price_id=BENCH_PRICE_ID,
        metadata={"tenant_id": tenant.tenant_id},
        event_id=EVT_PLACEHOLDER,
        quantity=quantity,
        previous=previous,
    )
    return se.render(event)


def _invoice(tenant: BenchTenant, api_version: str, created: int) -> bytes:
    event = se.invoice_event(
        "invoice.paid",
        invoice_id=INVOICE_PLACEHOLDER,
        sub_id=tenant.subscription_id,
        customer=tenant.customer_id,
        period_start=tenant.period_start,
        period_end=tenant.period_end,
        created=created,
        api_version=api_version,
        billing_reason="subscription_cycle",
        price_id=BENCH_PRICE_ID,
        subscription_metadata={"tenant_id": tenant.tenant_id},
        event_id=EVT_PLACEHOLDER,
    )
    return se.render(event)


@dataclass(frozen=True)
class Template:
    event_type: str
    api_version: str
    body: bytes


def _templates_for(args: tuple[BenchTenant, int]) -> dict[str, list[Template]]:
    tenant, created = args
    out: dict[str, list[Template]] = {
        "customer.subscription.created": [],
        "customer.subscription.updated": [],
        "invoice.paid": [],
    }
    # The creation that sets every subscription up: legacy and basil alternate by tenant.
    first = se.API_VERSIONS[tenant.index % 2]
    out["customer.subscription.created"].append(
        Template(
            "customer.subscription.created",
            first,
            _subscription(tenant, "customer.subscription.created", first, created - 60),
        )
    )
    for version in se.API_VERSIONS:
        # Quantity 1 <-> 2: about half the updates change the quota (a history row).
        for quantity in (1, 2):
            body = _subscription(
                tenant,
                "customer.subscription.updated",
                version,
                created,
                quantity=quantity,
                previous={"quantity": 3 - quantity},
            )
            out["customer.subscription.updated"].append(
                Template("customer.subscription.updated", version, body)
            )
        out["invoice.paid"].append(
            Template("invoice.paid", version, _invoice(tenant, version, created))
        )
    return out


class EventStream:
    """Unique events over the bench subscriptions, made from pre-rendered templates."""

    def __init__(self, tenants: Sequence[BenchTenant], created: int, *, processes: int = 0) -> None:
        self.created = created
        self.tenants = list(tenants)
        self._templates: dict[str, list[list[Template]]] = {}
        self.run_id = "".join(secrets.choice(_ALNUM) for _ in range(6))
        self._counter = 0
        self._rng = random.Random(0xBE4C)
        jobs = [(t, created) for t in self.tenants]
        workers = processes or max(1, min(4, os.cpu_count() or 1))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            per_tenant = list(pool.map(_templates_for, jobs, chunksize=16))
        for kind in (
            "customer.subscription.created",
            "customer.subscription.updated",
            "invoice.paid",
        ):
            self._templates[kind] = [t[kind] for t in per_tenant]
        self.template_bytes = {
            kind: sum(len(t.body) for ts in per for t in ts) // sum(len(ts) for ts in per)
            for kind, per in self._templates.items()
        }

    def _next_id(self, prefix: str) -> str:
        self._counter += 1
        n, digits = self._counter, []
        for _ in range(12):
            n, r = divmod(n, len(_ALNUM))
            digits.append(_ALNUM[r])
        salt = "".join(self._rng.choice(_ALNUM) for _ in range(6))
        return f"{prefix}_{self.run_id}{salt}{''.join(reversed(digits))}"

    def _instantiate(self, template: Template, created: int) -> bytes:
        body = template.body.replace(EVT_PLACEHOLDER.encode(), self._next_id("evt").encode(), 1)
        old = b'\n  "created": %d,' % (
            self.created - 60 if template.event_type.endswith(".created") else self.created
        )
        body = body.replace(old, b'\n  "created": %d,' % created, 1)
        if template.event_type.startswith("invoice."):
            body = body.replace(INVOICE_PLACEHOLDER.encode(), self._next_id("in").encode())
        return body

    def creations(self, created: int) -> list[bytes]:
        """One ``customer.subscription.created`` per subscription (shapes alternate)."""
        return [
            self._instantiate(per[0], created)
            for per in self._templates["customer.subscription.created"]
        ]

    def batch(self, count: int, created: int) -> list[bytes]:
        """``count`` events of the mix, random subscriptions and shapes, all new ids."""
        kinds = [k for k, _ in EVENT_MIX]
        weights = [w for _, w in EVENT_MIX]
        out = []
        rng = self._rng
        for kind in rng.choices(kinds, weights, k=count):
            per = self._templates[kind][rng.randrange(len(self.tenants))]
            out.append(self._instantiate(per[rng.randrange(len(per))], created))
        return out


# -- raw HTTP requests --------------------------------------------------------------


def raw_request(
    method: str, path: str, host: str, headers: Iterable[tuple[str, str]], body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def signed_webhooks(bodies: Sequence[bytes], secret: str, host: str) -> list[bytes]:
    """Sign every body now (the stripe SDK's scheme, via the test factory) as Stripe sends it."""
    timestamp = int(time.time())
    base = list(se.DELIVERY_HEADERS.items())
    return [
        raw_request(
            "POST",
            WEBHOOK_PATH,
            host,
            [*base, ("Stripe-Signature", se.sign(body, secret, timestamp))],
            body,
        )
        for body in bodies
    ]


def usage_requests(tenants: Sequence[BenchTenant], count: int, host: str) -> list[bytes]:
    rng = random.Random(0x05A6E)
    headers = [("Accept", "application/json"), ("User-Agent", "nat-engine/bench")]
    return [
        raw_request("GET", USAGE_PATH, host, [*headers, ("X-API-Key", t.api_key)])
        for t in rng.choices(tenants, k=count)
    ]


def spend_requests(tenants: Sequence[BenchTenant], count: int, host: str) -> list[bytes]:
    """One scan each, with a unique Idempotency-Key (the engine's scan id)."""
    rng = random.Random()
    headers = [
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
        ("User-Agent", "nat-engine/bench"),
    ]
    body = b'{"count": 1}'
    return [
        raw_request(
            "POST",
            SPEND_PATH,
            host,
            [*headers, ("X-API-Key", t.api_key), ("Idempotency-Key", str(uuid.uuid4()))],
            body,
        )
        for t in rng.choices(tenants, k=count)
    ]


def write_requests(path: Path, requests: Iterable[bytes]) -> int:
    """Write length-prefixed raw requests; return how many."""
    n = 0
    with path.open("wb") as fh:
        for req in requests:
            fh.write(b"%d\n" % len(req))
            fh.write(req)
            n += 1
    return n


def read_requests(path: Path) -> list[bytes]:
    data = path.read_bytes()
    out, pos = [], 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        length = int(data[pos:nl])
        out.append(data[nl + 1 : nl + 1 + length])
        pos = nl + 1 + length
    return out
