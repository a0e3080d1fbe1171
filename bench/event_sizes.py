"""How the baseline's cost per event grows with the event's size.

``stripe.Webhook.construct_event`` (what Stripe's sample, the benchmark's baseline,
runs per delivery) against the signature check plus ``json.loads`` alone (what the
service does with the body before its database work), CPU per call, for fixture events
of about 3 kB (checkout session) to 8 kB (subscription updated with the previous
attributes). Run it on an idle machine::

    python -m bench.event_sizes [-n 2000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import stripe

from bench.common import WEBHOOK_SECRET as SECRET
from tests import stripe_events as se

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FILES = (
    "lifecycle-2024-06-20/01_checkout.session.completed.json",
    "lifecycle-2025-03-31.basil/02_customer.subscription.created.json",
    "lifecycle-2025-03-31.basil/07_customer.subscription.updated.json",
)


def cpu_us(call: object, n: int) -> float:
    assert callable(call)
    for _ in range(n // 10):
        call()
    started = time.process_time()
    for _ in range(n):
        call()
    return (time.process_time() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000)
    args = parser.parse_args()
    print("| body | event | construct_event µs CPU | verify + json.loads µs CPU |")
    print("|---|---|---|---|")
    for name in FILES:
        body = (FIXTURES / name).read_bytes()
        header = se.sign_bytes(body, SECRET)
        text = body.decode("utf-8")

        def construct(body: bytes = body, header: str = header) -> None:
            stripe.Webhook.construct_event(body, header, SECRET)

        def verify_parse(text: str = text, header: str = header) -> None:
            stripe.WebhookSignature.verify_header(text, header, SECRET, None)
            json.loads(text)

        print(
            f"| {len(body)} B | {name.split('/')[-1].removesuffix('.json')} | "
            f"{cpu_us(construct, args.n):.0f} | {cpu_us(verify_parse, args.n):.0f} |"
        )


if __name__ == "__main__":
    main()
