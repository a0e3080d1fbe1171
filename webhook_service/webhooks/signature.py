"""Verify a Stripe-Signature header against every configured secret.

The cryptography is the ``stripe`` SDK's (``WebhookSignature.verify_header``: HMAC-SHA256
over ``"{t}.{body}"``, constant-time compare against every ``v1`` in the header). This
module adds what the SDK leaves out: secret rolling (several secrets, any may match),
a tolerance that also rejects timestamps from the future, and a machine-readable
reason for every rejection (for metrics and logs).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import stripe

from webhook_service.errors import InvalidSignature

SCHEME = stripe.WebhookSignature.EXPECTED_SCHEME


@dataclass(frozen=True)
class VerifiedSignature:
    timestamp: int
    secret_index: int


def _timestamp_and_schemes(header: str) -> tuple[int, set[str]]:
    """Check the header's shape (``t=<int>,v1=<hex>,...``) well enough to say what is wrong."""
    timestamp: int | None = None
    schemes: set[str] = set()
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise InvalidSignature(
                "Malformed Stripe-Signature header: expected comma-separated key=value pairs.",
                reason="malformed",
            )
        if key == "t":
            if timestamp is None:
                if not value.isdigit():
                    raise InvalidSignature(
                        "Malformed Stripe-Signature header: t is not a Unix timestamp.",
                        reason="malformed",
                    )
                timestamp = int(value)
        else:
            schemes.add(key)
    if timestamp is None:
        raise InvalidSignature(
            "Malformed Stripe-Signature header: no timestamp (t=).", reason="malformed"
        )
    return timestamp, schemes


def verify_signature(
    payload: str,
    header: str | None,
    secrets: Sequence[str],
    tolerance: int,
    *,
    now: float | None = None,
) -> VerifiedSignature:
    """Return which secret signed ``payload``, or raise :class:`InvalidSignature`."""
    if header is None or not header.strip():
        raise InvalidSignature("No Stripe-Signature header was provided.", reason="missing")
    if len(header) > 8192:
        raise InvalidSignature("Malformed Stripe-Signature header: too long.", reason="malformed")
    timestamp, schemes = _timestamp_and_schemes(header)
    if SCHEME not in schemes:
        found = ", ".join(sorted(schemes)) or "none"
        raise InvalidSignature(
            f"No {SCHEME} signature in the Stripe-Signature header (schemes found: {found}).",
            reason="no_v1",
        )
    matched: int | None = None
    for index, secret in enumerate(secrets):
        try:
            # tolerance=None: the SDK checks only the past; both directions are checked below.
            stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=None)
        except stripe.SignatureVerificationError:
            continue
        matched = index
        break
    if matched is None:
        raise InvalidSignature(
            "No signature matches the payload for any configured webhook secret.",
            reason="mismatch",
        )
    current = time.time() if now is None else now
    if timestamp < current - tolerance:
        raise InvalidSignature(
            f"Timestamp is more than {tolerance} seconds in the past (possible replay).",
            reason="too_old",
        )
    if timestamp > current + tolerance:
        raise InvalidSignature(
            f"Timestamp is more than {tolerance} seconds in the future (check clocks).",
            reason="too_new",
        )
    return VerifiedSignature(timestamp=timestamp, secret_index=matched)
