"""Per-request CPU and SQL statements of each endpoint, in one process, without HTTP.

The service's own app (``create_app``) behind Flask's test client, on a fresh SQLite
file or PostgreSQL database, with the benchmark's tenants and subscriptions. No
gunicorn, no sockets, no second worker: what is left is the application's own cost per
request, and how many SQL statements it sends (counted with SQLAlchemy's
``before_cursor_execute`` event, BEGIN/COMMIT/SAVEPOINT included). The baseline's
``construct_event`` is timed the same way for comparison.

    python -m bench.inprocess [--backend sqlite|postgresql] [-n 400] [--cprofile webhook]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import stripe
from sqlalchemy import event

from bench import workload
from bench.common import DEFAULT_PG_URL, SYNC_KEY, WEBHOOK_SECRET
from bench.databases import create_pg_database, drop_pg_database
from tests import stripe_events as se
from webhook_service import sql
from webhook_service.db import Database
from webhook_service.migrate import upgrade
from webhook_service.sql import Prepared
from webhook_service.web.app import create_app


def _statement_kind(statement: str) -> str:
    words = statement.strip().split(None, 3)
    head = " ".join(words[:2]).upper() if words else "?"
    if head.startswith(("INSERT", "UPDATE", "DELETE")):
        target = words[2] if head.startswith("INSERT") and len(words) > 2 else words[1]
        return f"{words[0].upper()} {target.strip('(').lower()}"
    if head.startswith("SELECT"):
        found = re.search(r"\bFROM\s+(\w+)", statement, re.IGNORECASE)
        return f"SELECT {found.group(1).lower() if found else '-'}"
    return head


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("-n", type=int, default=400, help="requests per endpoint")
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--postgres-url", default=DEFAULT_PG_URL.replace("nat_bench", "nat_inproc"))
    parser.add_argument("--cprofile", choices=("webhook", "usage", "spend"), action="append")
    parser.add_argument("--top", type=int, default=35)
    parser.add_argument("--dump-dir", help="also write each cProfile as DIR/<endpoint>.prof")
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="nat-inprocess-")
    plans = Path(tmp.name) / "plans.toml"
    plans.write_text(workload.PLANS_TOML, encoding="utf-8")
    if args.backend == "sqlite":
        url = f"sqlite:///{Path(tmp.name) / 'inprocess.db'}"
    else:
        create_pg_database(args.postgres_url)
        url = args.postgres_url
    try:
        database = Database(url, pool=False)
        upgrade(database)
        database.dispose()
        app = create_app(
            {
                "DATABASE_URL": url,
                "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "NAT_APP_SYNC_KEY": SYNC_KEY,
                "NAT_PLANS_FILE": str(plans),
                "RATE_LIMIT": "1000000/minute",
                "LOG_LEVEL": "info",
                "LOG_FORMAT": "json",
            }
        )
        client = app.test_client()
        tenants = workload.bench_tenants(args.tenants, int(time.time()))
        response = client.post(
            "/api/v1/tenants/sync",
            data=workload.sync_body(tenants),
            headers={"X-Sync-Key": SYNC_KEY, "Content-Type": "application/json"},
        )
        assert response.status_code == 200, response.data
        stream = workload.EventStream(tenants, int(time.time()), processes=1)
        for body in stream.creations(int(time.time()) - 60):
            client.post(
                workload.WEBHOOK_PATH,
                data=body,
                headers={**se.DELIVERY_HEADERS, "Stripe-Signature": se.sign(body, WEBHOOK_SECRET)},
            )

        statements: Counter[str] = Counter()
        engine = app.extensions["nat"].database.engine

        @event.listens_for(engine, "before_cursor_execute")
        def _count(_conn: Any, _cursor: Any, statement: str, *_rest: Any) -> None:
            statements[_statement_kind(statement)] += 1

        # Prepared statements go straight to the driver's cursor: count them where the
        # service's modules call webhook_service.sql.run.
        run = sql.run

        def _counting_run(conn: Any, prepared: Prepared, params: Any = None) -> Any:
            statements[_statement_kind(prepared.plan(conn.dialect).sql)] += 1
            return run(conn, prepared, params)

        for name, module in list(sys.modules.items()):
            if name.startswith("webhook_service.") and getattr(module, "run", None) is run:
                module.run = _counting_run  # type: ignore[attr-defined]

        def webhook_calls(n: int) -> list[Callable[[], Any]]:
            bodies = stream.batch(n, int(time.time()))
            return [
                partial(
                    client.post,
                    workload.WEBHOOK_PATH,
                    data=body,
                    headers={
                        **se.DELIVERY_HEADERS,
                        "Stripe-Signature": se.sign(body, WEBHOOK_SECRET),
                    },
                )
                for body in bodies
            ]

        def usage_calls(n: int) -> list[Callable[[], Any]]:
            return [
                partial(client.get, workload.USAGE_PATH, headers={"X-API-Key": t.api_key})
                for t in (tenants[i % len(tenants)] for i in range(n))
            ]

        def spend_calls(n: int) -> list[Callable[[], Any]]:
            return [
                partial(
                    client.post,
                    workload.SPEND_PATH,
                    data=b'{"count": 1}',
                    headers={
                        "X-API-Key": tenants[i % len(tenants)].api_key,
                        "Content-Type": "application/json",
                        "Idempotency-Key": f"inproc-{time.time_ns()}-{i}",
                    },
                )
                for i in range(n)
            ]

        def baseline_calls(n: int) -> list[Callable[[], Any]]:
            bodies = stream.batch(n, int(time.time()))
            return [
                partial(
                    stripe.Webhook.construct_event,
                    body,
                    se.sign(body, WEBHOOK_SECRET),
                    WEBHOOK_SECRET,
                )
                for body in bodies
            ]

        print(f"backend {args.backend}, {args.n} requests each (after 50 warm-up)")
        print(f"{'endpoint':34} {'CPU us/req':>10} {'wall us/req':>11} {'SQL/req':>8}")
        for name, make in (
            ("baseline construct_event only", baseline_calls),
            (workload.WEBHOOK_PATH, webhook_calls),
            (workload.USAGE_PATH, usage_calls),
            (workload.SPEND_PATH, spend_calls),
        ):
            for call in make(50):
                status = call()
                if hasattr(status, "status_code") and status.status_code >= 300:
                    raise SystemExit(f"{name}: {status.status_code} {status.data[:300]!r}")
            calls = make(args.n)
            statements.clear()
            kind = {
                workload.WEBHOOK_PATH: "webhook",
                workload.USAGE_PATH: "usage",
                workload.SPEND_PATH: "spend",
            }.get(name)
            profiler = cProfile.Profile() if kind and kind in (args.cprofile or []) else None
            cpu0, wall0 = time.process_time(), time.perf_counter()
            if profiler:
                profiler.enable()
            for call in calls:
                call()
            if profiler:
                profiler.disable()
            cpu = (time.process_time() - cpu0) / args.n * 1e6
            wall = (time.perf_counter() - wall0) / args.n * 1e6
            per = sum(statements.values()) / args.n
            print(f"{name:34} {cpu:10.0f} {wall:11.0f} {per:8.1f}")
            for stmt, count in sorted(statements.items(), key=lambda kv: -kv[1]):
                print(f"{'':6}{count / args.n:5.2f}  {stmt}")
            if profiler:
                if args.dump_dir:
                    profiler.dump_stats(str(Path(args.dump_dir) / f"{kind}.prof"))
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(args.top)
                print(text.getvalue())
        app.extensions["nat"].database.dispose()
    finally:
        if args.backend == "postgresql":
            drop_pg_database(args.postgres_url)
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
