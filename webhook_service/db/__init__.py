"""The database: SQLite (WAL) by default, PostgreSQL for fleets.

- :mod:`~webhook_service.db.engine`: ``create_engine`` with each driver's settings and
  hooks (SQLite pragmas and ``BEGIN IMMEDIATE``; PostgreSQL's timeouts, answer deadlines
  and the ping of idle pooled connections).
- :mod:`~webhook_service.db.database`: :class:`Database`, the transaction discipline
  every store uses.
- :mod:`~webhook_service.db.writer_queue`: SQLite writers of one file take turns before
  SQLite's write lock.
- :mod:`~webhook_service.db.checkpoint`: SQLite WAL checkpoints in a background thread.

The names the rest of the service imports are re-exported here. Tunables that tests
change (``PG_PING_AFTER_IDLE_S``, ``SQLITE_BUSY_TIMEOUT_MS``) are not: a test patches
them in the module that reads them.
"""

from webhook_service.db.database import Database
from webhook_service.db.engine import (
    PG_ANSWER_DEADLINE_S,
    PG_BATCH_STATEMENT_TIMEOUT_MS,
    PG_CONNECT_TIMEOUT_S,
    PG_LOCK_TIMEOUT_MS,
    PG_PING_DEADLINE_S,
    PG_POOL_TIMEOUT_S,
    PG_STATEMENT_TIMEOUT_MS,
    DatabaseStalled,
    answers,
    create_db_engine,
    sqlite_file,
    watched,
)

__all__ = [
    "PG_ANSWER_DEADLINE_S",
    "PG_BATCH_STATEMENT_TIMEOUT_MS",
    "PG_CONNECT_TIMEOUT_S",
    "PG_LOCK_TIMEOUT_MS",
    "PG_PING_DEADLINE_S",
    "PG_POOL_TIMEOUT_S",
    "PG_STATEMENT_TIMEOUT_MS",
    "Database",
    "DatabaseStalled",
    "answers",
    "create_db_engine",
    "sqlite_file",
    "watched",
]
