"""The machine, the versions and the commit a run measured, for the report."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sqlite3
import subprocess
from collections.abc import Sequence

import psycopg

from bench import procstats
from bench.common import ROOT
from bench.databases import admin_conninfo
from bench.options import Options


def _version(cmd: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def git_state() -> str:
    """The commit measured, and whether the service's files differ from it (read-only git)."""
    git = shutil.which("git")
    if not git:
        return "unknown (no git)"
    head = subprocess.run(
        [git, "--no-optional-locks", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        [git, "--no-optional-locks", "status", "--porcelain", "--", "webhook_service"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    if not dirty:
        return f"commit {head or 'unknown'}"
    return f"commit {head} plus uncommitted changes in {len(dirty)} file(s) under webhook_service/"


def machine_description(opts: Options, wrk: str | None) -> dict[str, str]:
    packages = [
        "flask",
        "werkzeug",
        "stripe",
        "sqlalchemy",
        "gunicorn",
        "psycopg",
        "psycopg-binary",
        "structlog",
        "prometheus-client",
        "limits",
        "alembic",
        "py-spy",
    ]
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    info = {
        "service code": git_state(),
        "nproc": str(os.cpu_count()),
        "cpu": procstats.cpu_description(),
        "memory": f"{procstats.memory_total_gib():.1f} GiB",
        "kernel": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "packages": ", ".join(versions),
        "load generator": (
            _version([wrk, "-v"])
            if wrk
            else f"python bench/loadgen.py ({opts.connections} threads)"
        ),
    }
    if "postgresql" in opts.backends:
        try:
            with psycopg.connect(admin_conninfo(opts.postgres_url), connect_timeout=3) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                info["postgresql"] = str(row[0]) if row else "unknown"
        except psycopg.Error as exc:
            info["postgresql"] = f"unreachable ({exc})"
    return info
