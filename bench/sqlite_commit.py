"""Latency of SQLite write transactions with and without automatic WAL checkpoints.

Each transaction logs one ~7 kB event the way the service does (insert, then update its
outcome) into a table with the event log's indexes. With ``wal_autocheckpoint`` at
SQLite's default (1000 pages) the commit that crosses it copies the WAL back into the
database file and syncs it, inside the transaction; with 0 nothing in the loop does (the
service runs checkpoints in a background thread, ``webhook_service/db/checkpoint.py``).

    python -m bench.sqlite_commit [-n 3000] [--dir bench/out]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import time
import uuid

PAYLOAD = "x" * 7000


def measure(directory: str, autocheckpoint: int, n: int) -> dict[str, float]:
    fd, path = tempfile.mkstemp(suffix=".db", dir=directory)
    os.close(fd)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")
        conn.execute(
            "CREATE TABLE e (id TEXT PRIMARY KEY, type TEXT, outcome TEXT, received_at TEXT, "
            "object_id TEXT, payload TEXT)"
        )
        conn.execute("CREATE INDEX e_received ON e (received_at)")
        conn.execute("CREATE INDEX e_failed ON e (received_at) WHERE outcome = 'failed'")
        latencies = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(n):
            started = time.perf_counter()
            event_id = f"evt_{uuid.uuid4().hex}"
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO e VALUES (?, 'invoice.paid', 'pending', ?, 'in_1', ?)",
                (event_id, f"2026-11-28 {i:010d}", PAYLOAD),
            )
            conn.execute("UPDATE e SET outcome = 'processed' WHERE id = ?", (event_id,))
            conn.execute("COMMIT")
            latencies.append(time.perf_counter() - started)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)
    latencies.sort()
    return {
        "cpu_us": cpu / n * 1e6,
        "wall_us": wall / n * 1e6,
        "p50_us": latencies[n // 2] * 1e6,
        "p99_us": latencies[int(n * 0.99)] * 1e6,
        "max_us": latencies[-1] * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--dir", default=os.path.join(os.path.dirname(__file__), "out"))
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    print(f"{args.n} transactions per setting, in {args.dir}")
    for autocheckpoint in (1000, 0):
        r = measure(args.dir, autocheckpoint, args.n)
        print(
            f"wal_autocheckpoint={autocheckpoint:<5} CPU {r['cpu_us']:6.0f} us  wall "
            f"{r['wall_us']:6.0f} us  p50 {r['p50_us']:6.0f} us  p99 {r['p99_us']:7.0f} us  "
            f"max {r['max_us']:7.0f} us"
        )


if __name__ == "__main__":
    main()
