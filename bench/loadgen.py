"""The Python load generator, used when wrk is not installed.

One thread per connection, each with its own ``http.client.HTTPConnection`` (keep-alive:
it reuses the connection while the server keeps it open and reconnects when the server
closes it, as gunicorn's sync workers do after every response). Requests come from a
file of pre-built raw requests (see :mod:`bench.workload`), each sent at most once; the
run stops at the deadline or when the file is used up (``exhausted``: the round is then
redone with more requests). Prints one JSON object: counts, statuses, latency
percentiles, and this process's own CPU time, so the harness can show that the
generator is not the bottleneck.

    python -m bench.loadgen --port 8080 --file requests.bin --duration 10 --connections 8
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.workload import read_requests

Parsed = tuple[str, str, dict[str, str], bytes]


def parse_raw(raw: bytes) -> Parsed:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    return method, path, headers, body


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


def run(
    host: str, port: int, requests: list[Parsed], duration: float, connections: int
) -> dict[str, Any]:
    counter = itertools.count()
    total = len(requests)
    start_barrier = threading.Barrier(connections + 1)
    deadline = [0.0]
    latencies: list[list[float]] = [[] for _ in range(connections)]
    statuses: list[Counter[int]] = [Counter() for _ in range(connections)]
    errors: list[Counter[str]] = [Counter() for _ in range(connections)]
    exhausted = threading.Event()

    def worker(slot: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        lat, stat, err = latencies[slot], statuses[slot], errors[slot]
        perf = time.perf_counter
        start_barrier.wait()
        end = deadline[0]
        while True:
            now = perf()
            if now >= end:
                break
            i = next(counter)
            if i >= total:
                exhausted.set()
                break
            method, path, headers, body = requests[i]
            try:
                conn.request(method, path, body or None, headers)
                response = conn.getresponse()
                response.read()
                if response.will_close:
                    conn.close()
            except (OSError, http.client.HTTPException) as exc:
                err[type(exc).__name__] += 1
                conn.close()
                continue
            lat.append(perf() - now)
            stat[response.status] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(connections)]
    for thread in threads:
        thread.start()
    cpu_before = os.times()
    began = time.perf_counter()
    deadline[0] = began + duration
    start_barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    cpu_after = os.times()

    merged = sorted(itertools.chain.from_iterable(latencies))
    status_total: Counter[int] = Counter()
    for s in statuses:
        status_total.update(s)
    error_total: Counter[str] = Counter()
    for e in errors:
        error_total.update(e)
    completed = len(merged)
    ok = sum(n for code, n in status_total.items() if 200 <= code < 300)
    return {
        "tool": "python",
        "duration_s": elapsed,
        "requests": completed,
        "ok": ok,
        "non_2xx": completed - ok,
        "statuses": {str(k): v for k, v in sorted(status_total.items())},
        "socket_errors": dict(error_total),
        "exhausted": exhausted.is_set(),
        "sent_from_file": min(total, next(counter)),
        "latency_ms": {
            "p50": percentile(merged, 50) * 1000,
            "p90": percentile(merged, 90) * 1000,
            "p99": percentile(merged, 99) * 1000,
            "max": (merged[-1] * 1000) if merged else 0.0,
            "mean": (sum(merged) / completed * 1000) if completed else 0.0,
        },
        "loadgen_cpu_s": (cpu_after.user - cpu_before.user)
        + (cpu_after.system - cpu_before.system),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the benchmark only sends to this machine (127.0.0.1)")
    requests = [parse_raw(r) for r in read_requests(args.file)]
    result = run(args.host, args.port, requests, args.duration, args.connections)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
