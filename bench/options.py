"""The benchmark's command line (``bench/run.py --help``) and the options it makes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from bench.common import BENCH, DEFAULT_PG_URL


@dataclass(frozen=True)
class Options:
    quick: bool
    rounds: int
    duration: float
    connections: int
    workers: int
    tenants: int
    backends: tuple[str, ...]
    prefill_events: int
    prefill_tenants: int
    loadgen: str
    postgres_url: str
    output: Path
    profile: bool
    keep_files: bool
    warmup_s: float


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark the webhook service against a stateless Stripe-sample receiver "
        "(the baseline) and a minimal complete one (the floor).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 1 round of 3 s, SQLite only, a small pre-fill (under a minute)",
    )
    parser.add_argument("--rounds", type=int, help="alternating rounds per phase (default 3)")
    parser.add_argument("--duration", type=float, help="seconds per round (default 10)")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY (default 2)")
    parser.add_argument("--tenants", type=int, help="tenants under load (500; --quick 100)")
    parser.add_argument("--backends", help="comma-separated: sqlite,postgresql (default both)")
    parser.add_argument("--prefill-events", type=int, help="events in the big log (1,000,000)")
    parser.add_argument(
        "--prefill-tenants", type=int, help="tenants in the big state, load tenants included"
    )
    parser.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    parser.add_argument("--output", type=Path, help="report (default bench/RESULTS.md)")
    parser.add_argument(
        "--profile", action="store_true", help="one extra round per endpoint under py-spy"
    )
    parser.add_argument("--keep-files", action="store_true", help="keep request files and DBs")
    args = parser.parse_args(argv)
    quick = bool(args.quick)
    backends = tuple(
        b.strip()
        for b in (args.backends or ("sqlite" if quick else "sqlite,postgresql")).split(",")
        if b.strip()
    )
    for backend in backends:
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"unknown backend {backend!r}")
    url = make_url(args.postgres_url)
    if url.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--postgres-url must point at this machine")
    output = args.output or (BENCH / "out" / "RESULTS.quick.md" if quick else BENCH / "RESULTS.md")
    return Options(
        quick=quick,
        rounds=args.rounds or (1 if quick else 3),
        duration=args.duration or (3.0 if quick else 10.0),
        connections=args.connections,
        workers=args.workers,
        tenants=args.tenants or (100 if quick else 500),
        backends=backends,
        prefill_events=(
            args.prefill_events
            if args.prefill_events is not None
            else (10_000 if quick else 1_000_000)
        ),
        prefill_tenants=(
            args.prefill_tenants
            if args.prefill_tenants is not None
            else (2_000 if quick else 100_000)
        ),
        loadgen=args.loadgen,
        postgres_url=args.postgres_url,
        output=output,
        profile=bool(args.profile),
        keep_files=bool(args.keep_files),
        warmup_s=1.0 if quick else 2.0,
    )
