"""Tenant identifiers: the accepted forms of tenant ids, API keys, key digests and customers.

Pure rules, shared by the sync validator, the command line and the event handlers. An
API key is stored only as its SHA-256 (:func:`hash_key`); the SQL lives in
``quotas/store.py``.
"""

from __future__ import annotations

import hashlib
import re

# \Z, not $: "$" also matches before a trailing newline ("tnt_1\n" would pass).
API_KEY_RE = re.compile(r"^nat_pk_[\x21-\x7e]{8,256}\Z")
KEY_HASH_RE = re.compile(r"^[0-9a-f]{64}\Z")
TENANT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
CUSTOMER_ID_RE = re.compile(r"^cus_[A-Za-z0-9_]{1,250}\Z")


def hash_key(api_key: str) -> str:
    """The SHA-256 hex digest an API key is stored and looked up as."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()
