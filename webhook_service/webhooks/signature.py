"""Verify a Stripe-Signature header against every configured secret.

The cryptography is the ``stripe`` SDK's (``WebhookSignature.verify_header``: HMAC-SHA256
over ``"{t}.{body}"``, constant-time compare against every ``v1`` in the header). This
module adds what the SDK leaves out: secret rolling (several secrets, any may match),
a tolerance that also rejects timestamps from the future, and a machine-readable
reason for every rejection (for metrics and logs).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import stripe

from webhook_service.errors import InvalidSignature

SCHEME = stripe.WebhookSignature.EXPECTED_SCHEME
MAX_HEADER_LENGTH = 8192
# ASCII digits only, and few enough for int(): str.isdigit() also accepts superscripts
# and other scripts' digits, and int() refuses strings of more than 4300 digits.
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}")
# A v1 signature is a hex HMAC-SHA256: 64 lowercase hex digits, as Stripe sends it.
_V1_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class VerifiedSignature:
    timestamp: int
    secret_index: int


def _timestamp_and_schemes(header: str) -> tuple[int, set[str], bool]:
    """Check the header's shape (``t=<int>,v1=<hex>,...``) well enough to say what is wrong.

    Items are split exactly as the SDK splits them (no whitespace trimming), so that
    what this reports is what the SDK will see.
    """
    timestamp: int | None = None
    schemes: set[str] = set()
    v1_well_formed = False
    for item in header.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidSignature(
                "Malformed Stripe-Signature header: expected comma-separated key=value pairs.",
                reason="malformed",
            )
        if key == "t":
            if timestamp is None:
                if not _TIMESTAMP_RE.fullmatch(value):
                    raise InvalidSignature(
                        "Malformed Stripe-Signature header: t is not a Unix timestamp.",
                        reason="malformed",
                    )
                timestamp = int(value)
        else:
            schemes.add(key)
            if key == SCHEME and _V1_RE.fullmatch(value):
                v1_well_formed = True
    if timestamp is None:
        raise InvalidSignature(
            "Malformed Stripe-Signature header: no timestamp (t=).", reason="malformed"
        )
    return timestamp, schemes, v1_well_formed


def check_header(header: str | None) -> int:
    """Check that ``header`` is present and well formed with a ``v1``; return its timestamp.

    This needs no body: a delivery without a usable header is refused as
    ``INVALID_SIGNATURE`` before anything looks at what it carries.
    """
    if header is None or not header.strip():
        raise InvalidSignature("No Stripe-Signature header was provided.", reason="missing")
    if len(header) > MAX_HEADER_LENGTH:
        raise InvalidSignature("Malformed Stripe-Signature header: too long.", reason="malformed")
    timestamp, schemes, v1_well_formed = _timestamp_and_schemes(header)
    if SCHEME not in schemes:
        # Quoted (a stray space shows) and bounded: the header is the sender's text.
        found = ", ".join(repr(s[:16]) for s in sorted(schemes)[:5]) or "none"
        raise InvalidSignature(
            f"No {SCHEME} signature in the Stripe-Signature header (schemes found: {found}).",
            reason="no_v1",
        )
    if not v1_well_formed:
        # No v1 value could ever match: refused before any HMAC (one per secret, each a
        # pass over the whole body).
        raise InvalidSignature(
            f"Malformed Stripe-Signature header: no {SCHEME} value is 64 hex digits.",
            reason="malformed",
        )
    return timestamp


def verify_signature(
    payload: str,
    header: str | None,
    secrets: Sequence[str],
    tolerance: int,
    *,
    now: float | None = None,
) -> VerifiedSignature:
    """Return which secret signed ``payload``, or raise :class:`InvalidSignature`."""
    timestamp = check_header(header)
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
