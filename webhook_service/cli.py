"""`webhook-service`: serve, migrate, replay fixtures, inspect and repair the event log."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click
import stripe
from dotenv import find_dotenv, load_dotenv
from sqlalchemy.exc import SQLAlchemyError

from webhook_service.billing.catalog import push_catalog
from webhook_service.billing.reconcile import (
    MAX_PAGES,
    MAX_SECONDS,
    RETENTION_DAYS,
    Bounds,
    reconcile,
)
from webhook_service.billing.stripe_api import StripeGateway
from webhook_service.config import ConfigError, Settings, load_settings, redact_url
from webhook_service.db import Database
from webhook_service.errors import ServiceError
from webhook_service.logging import configure_logging
from webhook_service.migrate import DatabaseAhead, upgrade
from webhook_service.quotas.service import QuotaService
from webhook_service.quotas.tenants import API_KEY_RE, CUSTOMER_ID_RE, TENANT_ID_RE
from webhook_service.services import build_router
from webhook_service.webhooks.eventlog import EventFailed, EventLog

_DURATION_RE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(value: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``45s``."""
    match = _DURATION_RE.match(value.strip())
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration like 90d, 12h, 30m or 45s")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


class Runtime:
    """Settings and the database, opened on first use (so --help needs neither)."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._database: Database | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings()
            except ConfigError as exc:
                fail(f"configuration error: {exc}")
            configure_logging(self._settings.log_format, "warning")
        return self._settings

    @property
    def database_url(self) -> str | None:
        """The database in use, once settings were loaded (for messages)."""
        return self._settings.database_url if self._settings is not None else None

    @property
    def database(self) -> Database:
        if self._database is None:
            # Migrations and batch jobs: not the requests' deadlines (webhook_service.db).
            self._database = Database(
                self.settings.database_url, pool=False, request_deadlines=False
            )
        return self._database

    def event_log(self) -> EventLog:
        return EventLog(self.database, build_router(), self.settings.catalog)

    def quota_service(self) -> QuotaService:
        return QuotaService(self.database, self.settings.catalog)


pass_runtime = click.make_pass_decorator(Runtime, ensure=True)


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(message, err=True)
    sys.exit(code)


def database_error_line(exc: SQLAlchemyError, url: str | None) -> str:
    """One line for an operator: what the database said, where, and what to do about it."""
    orig = getattr(exc, "orig", None) or exc
    said = (str(orig).strip().splitlines() or [""])[0]
    line = f"database error: {type(orig).__name__}: {said}"
    if url:
        line += f" ({redact_url(url)})"
    if getattr(orig, "sqlstate", None) == "42P01" or "no such table" in said:
        line += "; run `webhook-service db upgrade`"
    return line


class ReportsDatabaseErrors(click.Group):
    """A command group whose commands end with one line, not a traceback, when the
    database cannot be used (unreachable, not migrated, locked)."""

    def invoke(self, ctx: click.Context) -> Any:
        state = ctx.ensure_object(Runtime)  # shared with the subcommand (pass_runtime)
        try:
            return super().invoke(ctx)
        except SQLAlchemyError as exc:
            fail(database_error_line(exc, state.database_url), 1)


@click.group()
@click.version_option(package_name="nat-webhook-service")
def cli() -> None:
    """NAT billing webhook service."""


@cli.command()
@pass_runtime
def serve(runtime: Runtime) -> None:
    """Run the production server (gunicorn, the Procfile's settings)."""
    settings = runtime.settings  # validate before gunicorn starts its workers
    if not settings.webhook_secrets:
        click.echo(
            "warning: STRIPE_WEBHOOK_SECRET is not set: the webhook answers 503 "
            "WEBHOOK_NOT_CONFIGURED and /readyz 503 until it is (`webhook-service init-env` "
            "writes a local one)",
            err=True,
        )
    problem = bind_problem(settings.bind_host, settings.port)
    if problem:
        fail(problem)
    click.echo(
        f"serving on http://{settings.bind_address} with {settings.web_concurrency} workers, "
        f"database {redact_url(settings.database_url)}",
        err=True,
    )
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:webhook_service.web.gunicorn_config",
        "webhook_service.web.app:create_app()",
    ]
    os.execv(sys.executable, argv)  # noqa: S606 - a fixed argv, replacing this process


def bind_problem(host: str, port: int) -> str | None:
    """One line saying why gunicorn could not bind ``host:port``, or None if it can.

    gunicorn itself retries a busy port for five seconds and logs eleven lines; a probe
    with the same socket options (SO_REUSEADDR) says it in one, naming the fix.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"BIND_HOST {host!r} cannot be resolved: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (
                    f"port {port} is already in use (PORT={port}): stop the server holding it "
                    "(`ss -ltnp`, `lsof -i`) or set PORT to a free port in .env or the environment"
                )
            if exc.errno == errno.EACCES:
                return f"no permission to bind port {port} (PORT={port}): choose a port >= 1024"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"BIND_HOST {host} is not an address of this machine"
            return f"cannot bind {host}:{port} (BIND_HOST, PORT): {exc.strerror}"
    return None


@cli.group(cls=ReportsDatabaseErrors)
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_runtime
def db_upgrade(runtime: Runtime, revision: str) -> None:
    """Apply migrations up to REVISION."""
    try:
        upgrade(runtime.database, revision)
    except DatabaseAhead as exc:
        # A rollback's release step: the newer schema serves this code (expand, then
        # contract), so this is success, said in one line.
        click.echo(str(exc))
        return
    click.echo(f"database {redact_url(runtime.settings.database_url)} is at {revision}")


@cli.command("init-env")
@click.option("--path", type=click.Path(dir_okay=False, path_type=Path), default=".env")
@pass_runtime
def init_env(runtime: Runtime, path: Path) -> None:
    """Create a local .env with a fresh webhook secret and sync key (never overwrites)."""
    if path.exists():
        return
    port = runtime.settings.port
    webhook_secret = "whsec_" + secrets.token_hex(24)
    sync_key = secrets.token_urlsafe(24)
    path.write_text(
        "# Local settings for `make run`; never commit this file.\n"
        "# With `stripe listen`, replace the secret by the one it prints "
        "(`stripe listen --print-secret`).\n"
        f"STRIPE_WEBHOOK_SECRET={webhook_secret}\n"
        f"NAT_APP_SYNC_KEY={sync_key}\n"
        "LOG_FORMAT=console\n"
        "# The port of `make run` and of `webhook-service replay`'s default URL.\n"
        f"PORT={port}\n"
        "# A test-mode secret key (sk_test_...) enables checkout, the billing portal,\n"
        "# `events reconcile` and `catalog push` (which creates the plans' prices).\n"
        "STRIPE_API_KEY=\n",
        encoding="utf-8",
    )
    path.chmod(0o600)
    click.echo(
        f"Created {path} with a local webhook secret and sync key.\n"
        "Replay the bundled events once the server is up:\n"
        "  .venv/bin/webhook-service replay fixtures/\n"
        "Or forward real test-mode events:\n"
        f"  {stripe_listen_line(sorted(build_router().event_types), port)}\n"
        "  (then put the whsec_ it prints into .env as STRIPE_WEBHOOK_SECRET)",
        err=True,
    )


# -- replay -------------------------------------------------------------------


def _event_files(paths: tuple[Path, ...]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*.json") if p.is_file())
        else:
            yield path


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--url", help="Webhook URL (default: this machine's server on $PORT).")
@click.option("--secret", help="whsec_ secret to sign with (default: the first configured).")
@click.option("--new-ids", is_flag=True, help="Give each event a fresh evt_ id.")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per request.")
@pass_runtime
def replay(
    runtime: Runtime,
    paths: tuple[Path, ...],
    url: str | None,
    secret: str | None,
    new_ids: bool,
    timeout: float,
) -> None:
    """Sign Stripe events as Stripe does (timestamp now) and POST them, in order."""
    if secret is None:
        if not runtime.settings.webhook_secrets:
            fail("no secret: pass --secret or set STRIPE_WEBHOOK_SECRET")
        secret = runtime.settings.webhook_secrets[0]
    port = runtime.settings.port
    target = url or f"http://127.0.0.1:{port}/api/v1/billing/webhook"
    files = list(_event_files(paths))
    click.echo(f"replaying {len(files)} events to {target}", err=True)
    failures = sent = 0
    for path in files:
        raw = path.read_bytes()
        if new_ids:
            event = json.loads(raw)
            event["id"] = "evt_" + secrets.token_hex(12)
            raw = json.dumps(event, indent=2).encode("utf-8")
        header = stripe.WebhookSignature.generate_signature_header(raw.decode("utf-8"), secret)
        try:
            status, body = _post(target, raw, header, timeout)
        except Unreachable as exc:
            hint = "" if url else f" (is the server running? `make run` serves on PORT={port})"
            fail(f"cannot reach {target}: {exc.reason}{hint}; {sent} sent before", 1)
        sent += 1
        ok = 200 <= status < 300
        failures += not ok
        detail = body.get("outcome") if ok else body.get("error", "")
        event_id = body.get("event_id", "-")
        message = "" if ok else f"  {body.get('message') or 'no JSON error body'}"
        click.echo(f"{status} {detail or '-':<10} {event_id} {path}{message}")
    click.echo(f"{sent} sent, {sent - failures} acknowledged, {failures} failed", err=True)
    if failures or not sent:
        sys.exit(1)


class Unreachable(Exception):
    """No HTTP answer at all: refused, unresolvable, timed out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _post(url: str, raw: bytes, header: str, timeout: float) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 - the operator's own URL
        url,
        data=raw,
        method="POST",
        headers={
            "Content-Type": "application/json; charset=utf-8",
            "Stripe-Signature": header,
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks) nat-replay",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, text = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        if isinstance(reason, ConnectionRefusedError):
            raise Unreachable("connection refused") from None
        if isinstance(reason, TimeoutError):
            raise Unreachable(f"no answer within {timeout:g} s") from None
        raise Unreachable(str(getattr(reason, "strerror", None) or reason)) from None
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = {}
    return status, decoded if isinstance(decoded, dict) else {}


# -- events ---------------------------------------------------------------------


@cli.group(cls=ReportsDatabaseErrors)
def events() -> None:
    """Inspect and repair the event log."""


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if value else "-"


@events.command("types")
@click.option(
    "--listen", is_flag=True, help="Print the `stripe listen` command that forwards exactly these."
)
@pass_runtime
def events_types(runtime: Runtime, listen: bool) -> None:
    """The Stripe event types this service handles (any other is stored as ignored)."""
    types = sorted(build_router().event_types)
    if listen:
        click.echo(stripe_listen_line(types, runtime.settings.port))
        return
    for event_type in types:
        click.echo(event_type)


def stripe_listen_line(types: list[str], port: int) -> str:
    return (
        f"stripe listen --events {','.join(types)} "
        f"--forward-to localhost:{port}/api/v1/billing/webhook"
    )


@events.command("list")
@click.option("--outcome", type=click.Choice(["processed", "ignored", "stale", "failed"]))
@click.option("--type", "event_type", help="Only this event type.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@pass_runtime
def events_list(runtime: Runtime, outcome: str | None, event_type: str | None, limit: int) -> None:
    """List the newest events."""
    rows = runtime.event_log().recent(outcome=outcome, event_type=event_type, limit=limit)
    for row in rows:
        error = f"  {row.last_error}" if row.last_error else ""
        click.echo(
            f"{row.id}  {row.type:<40} {row.outcome:<9} attempts={row.attempts} "
            f"received={_when(row.received_at)} tenant={row.tenant_id or '-'}{error}"
        )
    if not rows:
        click.echo("no events", err=True)


@events.command("show")
@click.argument("event_id")
@click.option("--payload/--no-payload", default=True, help="Print the stored payload.")
@pass_runtime
def events_show(runtime: Runtime, event_id: str, payload: bool) -> None:
    """Show one event, its processing record and its payload."""
    row = runtime.event_log().get(event_id)
    if row is None:
        fail(f"no event {event_id}", 1)
    fields = [
        ("id", row.id),
        ("type", row.type),
        ("api_version", row.api_version or "-"),
        ("created", _when(datetime.fromtimestamp(row.created, UTC))),
        ("livemode", str(row.livemode).lower()),
        ("received_at", _when(row.received_at)),
        ("processed_at", _when(row.processed_at)),
        ("outcome", row.outcome),
        ("attempts", str(row.attempts)),
        ("tenant", row.tenant_id or "-"),
        ("last_error", row.last_error or "-"),
    ]
    for name, value in fields:
        click.echo(f"{name + ':':<14}{value}")
    if payload:
        click.echo(row.payload)


@events.command("reprocess")
@click.argument("event_ids", nargs=-1)
@click.option("--failed", "all_failed", is_flag=True, help="Every event whose outcome is failed.")
@pass_runtime
def events_reprocess(runtime: Runtime, event_ids: tuple[str, ...], all_failed: bool) -> None:
    """Run logged events through the pipeline again (failed ones are re-applied)."""
    event_log = runtime.event_log()
    ids = list(event_ids)
    if not ids and not all_failed:
        fail("name events to reprocess, or pass --failed")
    if all_failed:
        ids += [i for i in event_log.failed_ids() if i not in ids]
    counts = {"processed": 0, "ignored": 0, "stale": 0, "duplicate": 0, "failed": 0, "missing": 0}
    for event_id in ids:
        try:
            receipt = event_log.reprocess(event_id)
        except KeyError:
            counts["missing"] += 1
            click.echo(f"{event_id}  not in the log")
            continue
        except EventFailed as exc:
            counts["failed"] += 1
            click.echo(f"{event_id}  failed: {exc.error}")
            continue
        counts[receipt.outcome] += 1
        click.echo(f"{event_id}  {receipt.outcome}")
    click.echo(", ".join(f"{n} {k}" for k, n in counts.items() if n) or "nothing to do", err=True)
    if counts["failed"] or counts["missing"]:
        sys.exit(1)


@events.command("prune")
@click.option("--older-than", "older_than", required=True, help="Age, e.g. 90d.")
@click.option("--include-failed", is_flag=True, help="Also delete failed events.")
@click.option(
    "--batch-rows",
    type=click.IntRange(1, 100_000),
    help="Events deleted per transaction [default: 1000 on SQLite, 20000 on PostgreSQL].",
)
@pass_runtime
def events_prune(
    runtime: Runtime, older_than: str, include_failed: bool, batch_rows: int | None
) -> None:
    """Delete events received longer ago than --older-than (failed ones are kept).

    In batches, each its own short transaction: deliveries are answered meanwhile.
    """
    cutoff = datetime.now(UTC) - parse_duration(older_than)
    progress = [0, 0]  # events deleted, batches

    def on_batch(deleted: int) -> None:
        progress[0] += deleted
        progress[1] += 1

    try:
        deleted = runtime.event_log().prune(
            cutoff, include_failed=include_failed, batch_rows=batch_rows, on_batch=on_batch
        )
    except SQLAlchemyError as exc:
        fail(
            f"prune stopped after deleting {progress[0]} events in {progress[1]} batches: "
            + database_error_line(exc, runtime.database_url),
            1,
        )
    click.echo(f"deleted {deleted} events received before {_when(cutoff)} in {progress[1]} batches")


@events.command("reconcile")
@click.option("--since", default="3d", show_default=True, help="How far back, e.g. 3d or 12h.")
@click.option("--dry-run", is_flag=True, help="List what would be applied; change nothing.")
@click.option(
    "--max-pages",
    default=MAX_PAGES,
    show_default=True,
    type=click.IntRange(1),
    help="Stop after this many pages of 100 events.",
)
@click.option(
    "--max-seconds",
    default=MAX_SECONDS,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Stop asking for pages after this long.",
)
@click.option("--starting-after", help="Continue a stopped run after this event id.")
@pass_runtime
def events_reconcile(
    runtime: Runtime,
    since: str,
    dry_run: bool,
    max_pages: int,
    max_seconds: float,
    starting_after: str | None,
) -> None:
    """Pull missed events from Stripe's events API through the same pipeline.

    Page by page (what was applied stays applied if a later page fails), bounded in
    pages and time; exits 1 if anything failed or the listing was not read to its end.
    """
    settings = runtime.settings
    if not settings.stripe_api_key:
        fail("STRIPE_API_KEY is not set: reconciliation reads Stripe's events API")
    window = parse_duration(since)
    if window > timedelta(days=RETENTION_DAYS):
        click.echo(
            f"warning: --since {since} reaches past Stripe's {RETENTION_DAYS}-day event "
            "retention; older events cannot be recovered",
            err=True,
        )
    gateway = StripeGateway(settings.stripe_api_key, settings.stripe_api_base)
    try:
        summary = reconcile(
            gateway,
            runtime.event_log(),
            datetime.now(UTC) - window,
            dry_run=dry_run,
            bounds=Bounds(max_pages=max_pages, max_seconds=max_seconds),
            starting_after=starting_after,
            report=click.echo,
        )
    except ServiceError as exc:
        fail(f"reconciliation stopped: {exc.message}", 1)
    click.echo(("dry run: " if dry_run else "") + summary.line(), err=True)
    if not summary.complete:
        sys.exit(1)


# -- catalog ----------------------------------------------------------------------


@cli.group()
def catalog() -> None:
    """The plan catalog and its products and prices in Stripe."""


@catalog.command("push")
@click.option("--dry-run", is_flag=True, help="Say what would be created; create nothing.")
@click.option("--live", is_flag=True, help="Allow a live-mode STRIPE_API_KEY.")
@pass_runtime
def catalog_push(runtime: Runtime, dry_run: bool, live: bool) -> None:
    """Create the catalog's products and prices (by lookup key) in Stripe, idempotently."""
    settings = runtime.settings
    key = settings.stripe_api_key
    if not key:
        fail("STRIPE_API_KEY is not set: catalog push creates the prices in that Stripe account")
    livemode = "_live_" in key
    if livemode and not live:
        fail("STRIPE_API_KEY is a live-mode key: push to a test-mode key first, then pass --live")
    if not any(plan.stripe_prices for plan in settings.catalog.plans):
        fail(
            "the plan catalog has no [plans.NAME.stripe_prices.LOOKUP_KEY] table: "
            "nothing to push (see the README's plan catalog)"
        )
    click.echo(
        f"{'dry run: ' if dry_run else ''}pushing the plan catalog to Stripe "
        f"({'live' if livemode else 'test'} mode)",
        err=True,
    )
    client = StripeGateway(key, settings.stripe_api_base).client
    try:
        summary = push_catalog(client, settings.catalog, dry_run=dry_run, report=click.echo)
    except stripe.StripeError as exc:
        said = exc.user_message or type(exc).__name__
        fail(f"Stripe refused: {said} (request {exc.request_id or '-'})", 1)
    click.echo(("dry run: " if dry_run else "") + summary.line(dry_run), err=True)
    if summary.conflicts:
        sys.exit(1)


# -- tenants ----------------------------------------------------------------------


@cli.group()
def tenants() -> None:
    """Tenants, their keys, quotas and change history."""


@tenants.command("add")
@click.argument("tenant_id")
@click.option("--api-key", required=True, help="A nat_pk_ key (stored only as its SHA-256).")
@click.option("--customer", help="The tenant's Stripe customer (cus_...).")
@pass_runtime
def tenants_add(runtime: Runtime, tenant_id: str, api_key: str, customer: str | None) -> None:
    """Create a tenant (or add a key to one) and optionally link its Stripe customer."""
    if not TENANT_ID_RE.match(tenant_id):
        fail("TENANT must be 1-64 characters of A-Z a-z 0-9 _ . : -")
    if not API_KEY_RE.match(api_key):
        fail("--api-key must be nat_pk_ followed by 8-256 printable characters")
    if customer and not CUSTOMER_ID_RE.match(customer):
        fail("--customer must be a cus_ id")
    created = runtime.quota_service().add_tenant(tenant_id, api_key, customer)
    click.echo(f"{'created' if created else 'updated'} tenant {tenant_id}")


@tenants.command("list")
@pass_runtime
def tenants_list(runtime: Runtime) -> None:
    """List tenants with their plan and usage."""
    service = runtime.quota_service()
    rows = service.list_tenants()
    for tenant, usage, keys in rows:
        body = usage.body()
        click.echo(
            f"{tenant.id:<24} {'active' if tenant.active else 'inactive':<8} "
            f"customer={tenant.stripe_customer_id or '-':<20} keys={keys} plan={body['plan']} "
            f"status={body['subscription_status'] or '-'} "
            f"used={body['scans_used']}/{body['scans_quota']} resets={body['quota_reset_date']}"
            + "".join(f" UNKNOWN_PRICE={sub.price}" for sub in usage.entitlement.unpriced)
        )
    if not rows:
        click.echo("no tenants", err=True)


@tenants.command("show")
@click.argument("tenant_id")
@pass_runtime
def tenants_show(runtime: Runtime, tenant_id: str) -> None:
    """Show a tenant's quota, usage and the history of its plan, status and period."""
    report = runtime.quota_service().report(tenant_id)
    if report is None:
        fail(f"no tenant {tenant_id}", 1)
    tenant, usage, keys, changes = report
    body = usage.body()
    click.echo(f"tenant:             {tenant.id} ({'active' if tenant.active else 'inactive'})")
    click.echo(f"stripe customer:    {tenant.stripe_customer_id or '-'}")
    click.echo(f"api keys:           {keys}")
    click.echo(f"plan:               {body['plan']}")
    click.echo(f"subscription:       {body['subscription_status'] or '-'}")
    click.echo(
        f"scans:              {body['scans_used']} used of {body['scans_quota']}, "
        f"{body['scans_remaining']} left"
    )
    click.echo(f"period:             {body['period_start']} .. {body['quota_reset_date']}")
    ent = usage.entitlement
    if ent.quantity is not None:
        click.echo(f"decided by:         {_price_and_quantity(ent, ent.scans_quota)}")
    for sub in ent.unpriced:
        click.echo(
            f"warning:            subscription {sub.id} ({sub.status}) is on price "
            f"{sub.price or '-'}, which no plan sells: it grants nothing until the plan "
            "catalog (NAT_PLANS_FILE) lists it"
        )
    click.echo("history:")
    if not changes:
        click.echo("  (no changes recorded)")
    for change in changes:
        cause = change.event_id or change.source
        what = change.event_type or ("-" if change.event_id else change.source)
        explained = (
            f" {_price_and_quantity(change, change.scans_quota)}"
            if change.quantity is not None
            else ""
        )
        click.echo(
            f"  {_when(change.changed_at)}  {cause:<32} {what:<32} plan={change.plan} "
            f"status={change.subscription_status or '-'} quota={change.scans_quota}"
            f"{explained} period={_when(change.period_start)}..{_when(change.quota_reset_date)}"
        )


def _price_and_quantity(source: Any, quota: int) -> str:
    """``price=price_1Abc (pro_monthly) quantity=2 (1000 = 2 x 500)``."""
    price = source.price_id or source.price_lookup_key or "-"
    if source.price_id and source.price_lookup_key:
        price += f" ({source.price_lookup_key})"
    line = f"price={price} quantity={source.quantity}"
    if source.quantity:
        line += f" ({quota} = {source.quantity} x {quota // source.quantity})"
    return line


def main() -> None:
    """Console-script entry point: read .env (local runs), then dispatch."""
    load_dotenv(find_dotenv(usecwd=True), override=False)
    cli()
