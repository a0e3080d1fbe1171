"""Helpers of the reliability tests: gunicorn's processes, signed deliveries over HTTP.

``running_service`` (tests/servers.py) yields only a base URL; the processes behind it
are found in /proc: the master is the gunicorn child of this test process bound to that
port, its workers are the master's children.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests import stripe_events as se
from tests.helpers import WEBHOOK_SECRET
from tests.servers import http

WEBHOOK_PATH = "/api/v1/billing/webhook"
# What a client sees when the server dies mid-answer: a reset, a closed connection, or a
# response cut short after its headers (IncompleteRead). None of these is an answer.
NO_ANSWER_ERRORS = (OSError, HTTPException)
PROC = Path("/proc")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid``, or None when it is gone."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may contain spaces.
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1])


def _children(ppid: int) -> list[int]:
    """The live (not zombie) children of ``ppid``."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[1] == ppid and stat[0] != "Z":
            found.append(int(entry.name))
    return sorted(found)


def master_pid(base_url: str) -> int:
    """The gunicorn master serving ``base_url`` (a child of this test process)."""
    bind = f"127.0.0.1:{urlsplit(base_url).port}".encode()
    for pid in _children(os.getpid()):
        try:
            argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if bind in argv:
            return pid
    raise LookupError(f"no gunicorn master of this test binds {bind.decode()}")


def worker_pids(master: int) -> list[int]:
    """The live workers of a gunicorn master."""
    return _children(master)


def wait_for_workers(master: int, count: int, timeout: float = 15.0) -> list[int]:
    """Wait until ``master`` has ``count`` workers; return their pids."""
    deadline = time.monotonic() + timeout
    while True:
        pids = worker_pids(master)
        if len(pids) == count or time.monotonic() > deadline:
            return pids
        time.sleep(0.05)


def has_exited(pid: int) -> bool:
    """True once ``pid`` is gone or a zombie waiting to be reaped."""
    stat = _stat(pid)
    return stat is None or stat[0] in ("Z", "X")


def metrics_dir(master: int) -> Path:
    """The PROMETHEUS_MULTIPROC_DIR of a gunicorn master."""
    for item in (PROC / str(master) / "environ").read_bytes().split(b"\0"):
        key, _, value = item.partition(b"=")
        if key == b"PROMETHEUS_MULTIPROC_DIR":
            return Path(value.decode())
    raise LookupError("PROMETHEUS_MULTIPROC_DIR is not set")


def signed(
    event: Mapping[str, Any] | bytes, secret: str = WEBHOOK_SECRET
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a Stripe delivery of ``event``."""
    body = event if isinstance(event, bytes) else se.render(event)
    return body, se.delivery_headers(body, secret)


def deliver(
    base_url: str,
    event: Mapping[str, Any] | bytes,
    *,
    secret: str = WEBHOOK_SECRET,
    timeout: float = 15.0,
) -> tuple[int, dict[str, Any]]:
    """POST a signed event; (status, JSON body). A lost answer raises ``NO_ANSWER_ERRORS``."""
    body, headers = signed(event, secret)
    status, _, raw = http(
        "POST", base_url + WEBHOOK_PATH, body=body, headers=headers, timeout=timeout
    )
    return status, decode(raw)


def decode(raw: bytes) -> dict[str, Any]:
    """A JSON object body, or ``{"raw": text}`` when it is not one."""
    try:
        value = json.loads(raw)
    except ValueError:
        return {"raw": raw.decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"raw": value}
