"""What every part of the benchmark shares: paths, the synthetic secrets, progress lines."""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_BIN = Path(sys.executable).parent
WEBHOOK_SECRET = "whsec_bench_0123456789abcdef0123456789abcdef"  # noqa: S105 - synthetic
SYNC_KEY = "sync_bench_key_6c0ffee5d00d"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/nat_bench"
KINDS = ("webhook", "usage", "spend")
KIND_LABEL = {
    "webhook": "POST /api/v1/billing/webhook",
    "usage": "GET /api/v1/usage",
    "spend": "POST /api/v1/usage/scans",
}
# The servers under test: the service, and the two webhook receivers it is measured against.
SERVICE, BASELINE, FLOOR = "service", "baseline", "floor"

_STARTED = time.monotonic()


def log(message: str) -> None:
    """A progress line, with the seconds since the benchmark started."""
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", flush=True)


class BenchError(Exception):
    """The benchmark cannot go on (a server did not start, a setup request failed...)."""
