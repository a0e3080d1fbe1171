"""Time the largest tenant sync in process: 10,000 tenants, 3 keys and a customer each.

A fresh database (a SQLite file, or a PostgreSQL database created and dropped here),
then the same request twice through ``QuotaService``: once creating every tenant, once
re-syncing them unchanged. Prints the validation time and the transaction's time (what
holds SQLite's write lock, or the lock on all customers on PostgreSQL).

    python -m bench.sync_bulk [--backend sqlite|postgresql] [--tenants 10000]
"""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

from bench.common import DEFAULT_PG_URL
from bench.databases import create_pg_database, drop_pg_database
from webhook_service.db import Database
from webhook_service.migrate import upgrade
from webhook_service.plans import load_catalog
from webhook_service.quotas.service import QuotaService
from webhook_service.web.sync_request import parse_sync_request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument(
        "--postgres-url", default=DEFAULT_PG_URL.replace("nat_bench", "nat_sync_bulk")
    )
    args = parser.parse_args(argv)
    body = {
        "tenants": [
            {
                "tenant_id": f"tnt_{i:05d}",
                "api_keys": ["nat_pk_" + secrets.token_hex(16) for _ in range(3)],
                "stripe_customer_id": f"cus_Bulk{i:010d}",
            }
            for i in range(args.tenants)
        ]
    }
    with tempfile.TemporaryDirectory(prefix="nat-sync-bulk-") as scratch:
        if args.backend == "sqlite":
            url = f"sqlite:///{Path(scratch) / 'sync.db'}"
        else:
            url = args.postgres_url
            create_pg_database(url)
        database = Database(url)
        try:
            upgrade(database)
            service = QuotaService(database, load_catalog(None))
            for label in ("create", "re-sync"):
                started = time.perf_counter()
                entries = parse_sync_request(body)
                parsed = time.perf_counter()
                result = service.sync(entries)
                done = time.perf_counter()
                print(
                    f"{args.backend} {label}: validate {parsed - started:.2f} s, "
                    f"transaction {done - parsed:.2f} s ({result})"
                )
        finally:
            database.dispose()
            if args.backend == "postgresql":
                drop_pg_database(url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
