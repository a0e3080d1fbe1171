"""Summarise a py-spy ``--format raw`` profile of gunicorn workers (``bench/run.py --profile``).

    python -m bench.profile_summary PROFILE.txt [--requests N] [--rate 250] [--top 30]

Only samples inside a request (below ``SyncWorker.handle_request``) count; the rest is
the worker waiting for a connection. Three views of the in-request samples:

* **steps**: the innermost frame of the service (``webhook_service/``) or of the baseline
  app on the stack, so each sample lands on exactly one step of the request;
* **layers**: the innermost frame that belongs to a known library (SQLite/PostgreSQL
  driver calls, SQLAlchemy's compiler, logging, metrics, the stripe SDK, JSON, ...);
* **inclusive**: every function's share of requests it was on the stack of.

With ``--requests`` (the requests answered while the profile ran), shares are also
given as worker milliseconds per request (wall time, so they include waiting for the
CPU on a busy machine and for the database).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

_FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# (layer, test on "func (file)") from the most specific; the innermost match wins.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "database I/O (driver execute/commit/fetch)",
        (
            "do_execute (sqlalchemy",
            "do_executemany (sqlalchemy",
            "do_commit (sqlalchemy",
            "do_rollback (sqlalchemy",
            "do_begin (sqlalchemy",
            "do_ping (sqlalchemy",
            "psycopg/",
            "_on_begin (webhook_service/db.py",
            "exec_driver_sql",
            # Prepared statements: the driver's execute/fetch run inside sql.run.
            "run (webhook_service/sql.py",
        ),
    ),
    ("SQLite writer queue (waiting for the write lock)", ("acquire (webhook_service/db.py",)),
    ("SQLite WAL checkpoints (background thread)", ("_loop (webhook_service/checkpoint.py",)),
    ("SQLAlchemy statement compile", ("sqlalchemy/sql/compiler.py", "sqlalchemy/sql/cache_key")),
    ("SQLAlchemy (engine, pool, results, construct)", ("sqlalchemy/",)),
    ("logging (structlog + stdlib)", ("structlog/", "logging/__init__.py", "logging/")),
    ("prometheus metrics", ("prometheus_client/",)),
    ("rate limiter", ("webhook_service/web/ratelimit.py", "limits/")),
    ("stripe SDK", ("stripe/",)),
    ("json", ("json/",)),
    ("hmac / hashlib", ("hmac.py", "hashlib")),
    ("datetime / time", ("datetime", "_strptime")),
    ("service code", ("webhook_service/",)),
    ("baseline app", ("bench/baseline_app.py", "baseline_app.py")),
    ("Flask / Werkzeug", ("flask/", "werkzeug/")),
    ("gunicorn", ("gunicorn/",)),
)


@dataclass
class Summary:
    total: int
    in_request: int
    steps: Counter[str]
    layers: Counter[str]
    inclusive: Counter[str]


def parse(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    stacks = []
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        body, _, count = line.rpartition(" ")
        try:
            n = int(count)
        except ValueError:
            continue
        stacks.append((body.split(";"), n))
    return stacks


def _short(frame: str) -> str:
    match = _FRAME_RE.match(frame)
    if not match:
        return frame
    return f"{match.group('func')} ({match.group('file')})"


def summarise(stacks: list[tuple[list[str], int]]) -> Summary:
    total = in_request = 0
    steps: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, n in stacks:
        total += n
        try:
            start = next(
                i for i, f in enumerate(frames) if f.startswith("SyncWorker.handle_request")
            )
        except StopIteration:
            continue
        in_request += n
        request_frames = [_short(f) for f in frames[start:]]
        step = "outside the view (gunicorn, Flask/Werkzeug dispatch, request hooks)"
        for frame in reversed(request_frames):
            if "webhook_service/" in frame or "baseline_app.py" in frame:
                step = frame
                break
        steps[step] += n
        layer = "other (Python runtime)"
        for frame in reversed(request_frames):
            hit = next((name for name, keys in LAYERS if any(k in frame for k in keys)), None)
            if hit:
                layer = hit
                break
        layers[layer] += n
        for frame in set(request_frames):
            inclusive[frame] += n
    return Summary(total, in_request, steps, layers, inclusive)


def render(summary: Summary, *, requests: int | None, rate: float, top: int) -> str:
    out: list[str] = []
    busy = summary.in_request
    if not busy:
        return "no in-request samples"

    def share(n: int) -> str:
        text = f"{100 * n / busy:5.1f} %"
        if requests:
            text += f"  {1000 * n / rate / requests:6.2f} ms/req"
        return text

    out.append(
        f"samples {summary.total}, in requests {busy} "
        f"({100 * busy / max(summary.total, 1):.0f} % of all worker and master samples)"
    )
    out.append("")
    out.append("layers (innermost known library on the stack):")
    for name, n in summary.layers.most_common():
        out.append(f"  {share(n)}  {name}")
    out.append("")
    out.append(f"steps (innermost service frame), top {top}:")
    for name, n in summary.steps.most_common(top):
        out.append(f"  {share(n)}  {name}")
    out.append("")
    out.append(f"inclusive, top {top}:")
    for name, n in summary.inclusive.most_common(top):
        out.append(f"  {share(n)}  {name}")
    return "\n".join(out)


def summarise_file(
    path: Path, *, requests: int | None = None, rate: float = 250, top: int = 30
) -> str:
    with path.open(encoding="utf-8", errors="replace") as fh:
        return render(summarise(parse(fh)), requests=requests, rate=rate, top=top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--requests", type=int, help="requests answered while profiling")
    parser.add_argument("--rate", type=float, default=250, help="py-spy sampling rate (250)")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    print(summarise_file(args.profile, requests=args.requests, rate=args.rate, top=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
