"""The body of ``POST /api/v1/tenants/sync``, validated into the domain's sync entries.

Every problem of the whole body is found before anything is applied: a request with
one bad entry is refused with ``INVALID_REQUEST``, its ``details`` naming each entry's
index, field and (when well formed) tenant id. The entries it returns are applied by
``QuotaService.sync`` (``quotas/sync.py``).
"""

from __future__ import annotations

from typing import Any

from webhook_service.errors import InvalidRequest
from webhook_service.quotas.service import MAX_SYNC_TENANTS, SyncEntry
from webhook_service.quotas.tenants import (
    API_KEY_RE,
    CUSTOMER_ID_RE,
    KEY_HASH_RE,
    TENANT_ID_RE,
    hash_key,
)

# An error body names at most this many problems (and counts them all): a rejected
# request of megabytes must not be echoed back in an error of hundreds of kilobytes.
MAX_SYNC_PROBLEMS_SHOWN = 20
MAX_ECHOED_NAME = 64


def _problem(index: int, tenant_id: object, field_name: str, message: str) -> dict[str, Any]:
    if len(field_name) > MAX_ECHOED_NAME:
        field_name = field_name[:MAX_ECHOED_NAME] + "..."
    problem: dict[str, Any] = {"index": index, "field": field_name, "message": message}
    # Only a well-formed tenant id is echoed; a malformed one may be any text of any size.
    if isinstance(tenant_id, str) and TENANT_ID_RE.match(tenant_id):
        problem["tenant_id"] = tenant_id
    return problem


def parse_sync_request(body: object) -> list[SyncEntry]:
    """Validate a whole sync body; raise INVALID_REQUEST with every problem found."""
    if not isinstance(body, dict) or not isinstance(body.get("tenants"), list):
        raise InvalidRequest(
            "The body must be a JSON object with a 'tenants' list.",
            details=[{"field": "tenants", "message": "required list"}],
        )
    raw_entries: list[Any] = body["tenants"]
    if len(raw_entries) > MAX_SYNC_TENANTS:
        raise InvalidRequest(
            f"At most {MAX_SYNC_TENANTS} tenants per request.",
            details=[{"field": "tenants", "message": "too many entries"}],
        )
    problems: list[dict[str, Any]] = []
    entries: list[SyncEntry] = []
    seen_tenants: set[str] = set()
    key_owner: dict[str, str] = {}
    customer_owner: dict[str, str] = {}
    for index, raw in enumerate(raw_entries):
        if not isinstance(raw, dict):
            problems.append(_problem(index, None, "", "each entry must be an object"))
            continue
        tenant_id = raw.get("tenant_id")
        start = len(problems)
        if not isinstance(tenant_id, str) or not TENANT_ID_RE.match(tenant_id):
            problems.append(
                _problem(index, tenant_id, "tenant_id", "required; 1-64 of A-Z a-z 0-9 _ . : -")
            )
        elif tenant_id in seen_tenants:
            problems.append(_problem(index, tenant_id, "tenant_id", "appears more than once"))
        unknown = set(raw) - {
            "tenant_id",
            "api_keys",
            "api_key_sha256",
            "stripe_customer_id",
            "active",
        }
        if unknown:
            problems.append(_problem(index, tenant_id, ",".join(sorted(unknown)), "unknown field"))
        hashes: set[str] | None = None
        if "api_keys" in raw:
            keys = raw["api_keys"]
            if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                problems.append(_problem(index, tenant_id, "api_keys", "must be a list of strings"))
            else:
                bad = [i for i, k in enumerate(keys) if not API_KEY_RE.match(k)]
                if bad:
                    problems.append(
                        _problem(
                            index,
                            tenant_id,
                            "api_keys",
                            f"keys at positions {bad} are not nat_pk_ keys (8-256 printable "
                            "characters after the prefix, no whitespace)",
                        )
                    )
                hashes = {hash_key(k) for k in keys}
        if "api_key_sha256" in raw:
            digests = raw["api_key_sha256"]
            if not isinstance(digests, list) or not all(
                isinstance(d, str) and KEY_HASH_RE.match(d) for d in digests
            ):
                problems.append(
                    _problem(
                        index,
                        tenant_id,
                        "api_key_sha256",
                        "must be a list of lowercase hex SHA-256 digests",
                    )
                )
            else:
                hashes = (hashes or set()) | set(digests)
        customer = raw.get("stripe_customer_id")
        if customer is not None and (
            not isinstance(customer, str) or not CUSTOMER_ID_RE.match(customer)
        ):
            problems.append(
                _problem(index, tenant_id, "stripe_customer_id", "must be null or a cus_ id")
            )
        active = raw.get("active", True)
        if not isinstance(active, bool):
            problems.append(_problem(index, tenant_id, "active", "must be true or false"))
        if len(problems) > start or not isinstance(tenant_id, str):
            continue
        seen_tenants.add(tenant_id)
        for digest in hashes or ():
            if key_owner.setdefault(digest, tenant_id) != tenant_id:
                problems.append(
                    _problem(
                        index, tenant_id, "api_keys", f"a key is also given to {key_owner[digest]}"
                    )
                )
                break
        if customer is not None and customer_owner.setdefault(customer, tenant_id) != tenant_id:
            problems.append(
                _problem(
                    index,
                    tenant_id,
                    "stripe_customer_id",
                    f"also given to {customer_owner[customer]}",
                )
            )
        entries.append(
            SyncEntry(
                tenant_id=tenant_id,
                key_hashes=frozenset(hashes) if hashes is not None else None,
                customer_id=customer,
                active=bool(active),
            )
        )
    if problems:
        shown = problems[:MAX_SYNC_PROBLEMS_SHOWN]
        more = "" if len(shown) == len(problems) else f" (the first {len(shown)} are listed)"
        raise InvalidRequest(
            f"{len(problems)} problem(s) in the tenants list{more}; nothing was applied.",
            details=shown,
            problem_count=len(problems),
        )
    return entries
