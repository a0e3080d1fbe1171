"""A local HTTP server standing in for Stripe's API (reached through STRIPE_API_BASE).

It answers the few endpoints the service calls with Stripe-shaped bodies, records every
request (method, path, form or query parameters, headers), and can be told to answer
the next call to a path with a given status, body (JSON or raw bytes) and headers, after
a delay, or to stall every call to a path until released (for timeouts and deadlines).
The events listing can misbehave on purpose: ignore its filters
(``filter_events``), or be answered by a function of the query (``events_pages``).
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit


@dataclass
class RecordedRequest:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]


@dataclass
class Scripted:
    status: int
    body: dict[str, Any] | bytes
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


# A stalled call is let go after this long at most (the test's teardown releases it).
MAX_STALL_S = 60.0


@dataclass
class StripeStub:
    base_url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # newest first, as Stripe lists
    prices: dict[str, str] = field(default_factory=dict)  # lookup_key -> price id
    # Products and prices created through the API (catalog push), as Stripe renders them.
    products: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> product
    price_objects: dict[str, dict[str, Any]] = field(default_factory=dict)  # lookup_key -> price
    scripted: dict[tuple[str, str], deque[Scripted]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    # Idempotency-Key -> (params, status, body) of the first POST with it, as Stripe keeps.
    idempotent: dict[str, tuple[dict[str, str], int, dict[str, Any]]] = field(default_factory=dict)
    stalled: dict[tuple[str, str], threading.Event] = field(default_factory=dict)
    # False: list every event whatever created[gte] and types ask (a server that does
    # not filter). A function: answers GET /v1/events from its query parameters.
    filter_events: bool = True
    events_pages: Callable[[dict[str, str]], dict[str, Any]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: int = 0

    def respond(
        self,
        method: str,
        path: str,
        status: int,
        body: dict[str, Any] | bytes,
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``method path`` with ``status``, ``body`` (raw if bytes), ``headers``."""
        self.scripted[(method.upper(), path)].append(Scripted(status, body, delay, headers or {}))

    def stall(self, method: str, path: str) -> threading.Event:
        """Hold every call to ``method path`` without an answer until the event is set."""
        released = threading.Event()
        self.stalled[(method.upper(), path)] = released
        return released

    def release_all(self) -> None:
        for released in self.stalled.values():
            released.set()

    def calls(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method.upper() and r.path == path]

    def next_id(self, prefix: str) -> str:
        with self._lock:
            self._counter += 1
            return f"{prefix}_stub{self._counter:08d}"

    def answer_once(
        self, method: str, path: str, params: dict[str, str], key: str | None
    ) -> tuple[int, dict[str, Any] | bytes, dict[str, str]]:
        """Stripe's idempotency: a POST's key replays its first answer, if the params match.

        A key reused with other parameters is refused as Stripe refuses it (400
        ``idempotency_error``), and nothing is done.
        """
        if method != "POST" or not key:
            return self.answer(method, path, params)
        with self._lock:
            first = self.idempotent.get(key)
        if first is not None:
            if first[0] != params:
                return (
                    400,
                    {
                        "error": {
                            "type": "idempotency_error",
                            "message": (
                                "Keys for idempotent requests can only be used with the same "
                                "parameters they were first used with. Try using a key other "
                                f"than '{key}' if you meant to execute a different request."
                            ),
                        }
                    },
                    {},
                )
            return first[1], first[2], {}
        status, body, headers = self.answer(method, path, params)
        if 200 <= status < 300 and isinstance(body, dict):
            # Stripe keeps no answer of a request it refused or failed.
            with self._lock:
                self.idempotent.setdefault(key, (params, status, body))
        return status, body, headers

    def answer(
        self, method: str, path: str, params: dict[str, str]
    ) -> tuple[int, dict[str, Any] | bytes, dict[str, str]]:
        released = self.stalled.get((method, path))
        if released is not None:
            released.wait(MAX_STALL_S)
        queue = self.scripted.get((method, path))
        if queue:
            scripted = queue.popleft()
            if scripted.delay:
                time.sleep(scripted.delay)
            return scripted.status, scripted.body, scripted.headers
        status, body = self._default_answer(method, path, params)
        return status, body, {}

    def _default_answer(
        self, method: str, path: str, params: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
        if method == "POST" and path == "/v1/checkout/sessions":
            session_id = self.next_id("cs_test")
            return 200, {
                "id": session_id,
                "object": "checkout.session",
                "mode": params.get("mode"),
                "client_reference_id": params.get("client_reference_id"),
                "customer": params.get("customer"),
                "url": f"https://checkout.stripe.com/c/pay/{session_id}",
            }
        if method == "POST" and path == "/v1/billing_portal/sessions":
            session_id = self.next_id("bps")
            return 200, {
                "id": session_id,
                "object": "billing_portal.session",
                "customer": params.get("customer"),
                "return_url": params.get("return_url"),
                "url": f"https://billing.stripe.com/p/session/test_{session_id}",
            }
        if method == "GET" and path == "/v1/prices":
            key = params.get("lookup_keys[0]", "")
            data = [{"id": self.prices[key], "object": "price"}] if key in self.prices else []
            if key in self.price_objects:
                price = self.price_objects[key]
                wanted_active = params.get("active")
                if wanted_active is None or wanted_active == str(price["active"]).lower():
                    data = [price]
            return 200, {"object": "list", "data": data, "has_more": False, "url": "/v1/prices"}
        if method == "POST" and path == "/v1/prices":
            return self._create_price(params)
        if method == "POST" and path == "/v1/products":
            return self._create_product(params)
        if method == "GET" and path.startswith("/v1/products/"):
            product_id = path.removeprefix("/v1/products/")
            if product_id in self.products:
                return 200, self.products[product_id]
            return 404, _missing("product", product_id)
        if method == "GET" and path == "/v1/events":
            if self.events_pages is not None:
                return 200, self.events_pages(params)
            return 200, self._events_page(params)
        return 404, {
            "error": {
                "type": "invalid_request_error",
                "message": f"Unrecognized request URL ({method}: {path}).",
            }
        }

    def _create_product(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        product_id = params.get("id") or self.next_id("prod")
        if product_id in self.products:
            return 400, {
                "error": {
                    "type": "invalid_request_error",
                    "code": "resource_already_exists",
                    "message": f"Product already exists: {product_id}",
                }
            }
        self.products[product_id] = {
            "id": product_id,
            "object": "product",
            "active": True,
            "name": params.get("name"),
            "metadata": _metadata(params),
        }
        return 200, self.products[product_id]

    def _create_price(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        product = params.get("product", "")
        if product not in self.products:
            return 400, _missing("product", product)
        key = params.get("lookup_key")
        if key and key in self.price_objects:
            return 400, {
                "error": {
                    "type": "invalid_request_error",
                    "message": f"A price ({self.price_objects[key]['id']}) already uses that "
                    "lookup key.",
                }
            }
        price = {
            "id": self.next_id("price"),
            "object": "price",
            "active": True,
            "product": product,
            "unit_amount": int(params["unit_amount"]),
            "currency": params.get("currency"),
            "lookup_key": key,
            "type": "recurring",
            "recurring": {
                "interval": params.get("recurring[interval]"),
                "interval_count": int(params.get("recurring[interval_count]", "1")),
                "usage_type": "licensed",
            },
            "metadata": _metadata(params),
        }
        if key:
            self.price_objects[key] = price
        return 200, price

    def _events_page(self, params: dict[str, str]) -> dict[str, Any]:
        gte = int(params.get("created[gte]", "0"))
        types = {v for k, v in params.items() if k.startswith("types[")}
        matching = [
            e
            for e in self.events
            if not self.filter_events or (e["created"] >= gte and (not types or e["type"] in types))
        ]
        after = params.get("starting_after")
        if after:
            ids = [e.get("id") if isinstance(e, dict) else None for e in matching]
            matching = matching[ids.index(after) + 1 :] if after in ids else []
        limit = int(params.get("limit", "10"))
        return {
            "object": "list",
            "data": matching[:limit],
            "has_more": len(matching) > limit,
            "url": "/v1/events",
        }


def _missing(kind: str, object_id: str) -> dict[str, Any]:
    return {
        "error": {
            "type": "invalid_request_error",
            "code": "resource_missing",
            "param": "id",
            "message": f"No such {kind}: '{object_id}'",
        }
    }


def _metadata(params: dict[str, str]) -> dict[str, str]:
    return {k[len("metadata[") : -1]: v for k, v in params.items() if k.startswith("metadata[")}


def _handler(stub: StripeStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode("utf-8") if length else ""
            params = dict(parse_qsl(raw if self.command == "POST" else url.query))
            stub.requests.append(
                RecordedRequest(
                    self.command, url.path, params, {k: v for k, v in self.headers.items()}
                )
            )
            status, body, headers = stub.answer_once(
                self.command, url.path, params, self.headers.get("Idempotency-Key")
            )
            data = body if isinstance(body, bytes) else json.dumps(body).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", f"req_stub{len(stub.requests):06d}")
                self.end_headers()
                self.wfile.write(data)
            except OSError:
                pass  # the client gave up on a stalled call

        do_GET = _serve
        do_POST = _serve

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


@contextmanager
def running_stripe_stub() -> Iterator[StripeStub]:
    stub = StripeStub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(stub))
    server.daemon_threads = True
    stub.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.release_all()
        server.shutdown()
        server.server_close()
