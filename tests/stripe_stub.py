"""A local HTTP server standing in for Stripe's API (reached through STRIPE_API_BASE).

It answers the few endpoints the service calls with Stripe-shaped bodies, records every
request (method, path, form or query parameters, headers), and can be told to answer
the next call to a path with a given status, body and headers, or to stall (for
timeouts). The events listing can misbehave on purpose: ignore its filters
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
    body: dict[str, Any]
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StripeStub:
    base_url: str = ""
    requests: list[RecordedRequest] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # newest first, as Stripe lists
    prices: dict[str, str] = field(default_factory=dict)  # lookup_key -> price id
    scripted: dict[tuple[str, str], deque[Scripted]] = field(
        default_factory=lambda: defaultdict(deque)
    )
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
        body: dict[str, Any],
        delay: float = 0.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``method path`` with ``status``, ``body`` and ``headers``."""
        self.scripted[(method.upper(), path)].append(
            Scripted(status, body, delay, dict(headers or {}))
        )

    def calls(self, method: str, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method.upper() and r.path == path]

    def next_id(self, prefix: str) -> str:
        with self._lock:
            self._counter += 1
            return f"{prefix}_stub{self._counter:08d}"

    # -- default answers, shaped like Stripe's ------------------------------------

    def answer(
        self, method: str, path: str, params: dict[str, str]
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
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
            return 200, {"object": "list", "data": data, "has_more": False, "url": "/v1/prices"}
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
            status, body, headers = stub.answer(self.command, url.path, params)
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", f"req_stub{len(stub.requests):06d}")
            self.end_headers()
            self.wfile.write(data)

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
        server.shutdown()
        server.server_close()
