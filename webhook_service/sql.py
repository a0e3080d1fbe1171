"""Hot-path statements: compiled once per dialect, run straight on the driver's cursor.

SQLAlchemy Core builds and compiles every statement of the service, and its
``Connection`` owns transactions, pooling, events and error translation. What it also
does on each ``execute`` (cache-key lookup, an execution context, a cursor result with
its metadata) costs several times what SQLite needs to run a primary-key lookup, and a
webhook sends several statements. :class:`Prepared` keeps what a compiled statement
knows (its SQL, the order of its parameters, the type processors of its parameters and
columns, all read through SQLAlchemy's public compiler and type API) and :func:`run`
hands the SQL to the DBAPI cursor of the connection's current transaction.

What stays SQLAlchemy's: the transaction (``Database.transaction``; :func:`run` refuses
a connection outside one, as it would bypass SQLAlchemy's autobegin), and errors. A
driver error is passed to ``Connection._handle_dbapi_exception``, the translation
``Connection.execute`` uses: it raises ``sqlalchemy.exc.OperationalError`` and the like
(so a database outage still answers 503), runs the ``handle_error`` hooks, and
invalidates a connection that was lost. That method is SQLAlchemy's only private name
used here; the pin ``sqlalchemy<2.2`` in pyproject.toml is for it, and ``tests/test_sql.py``
checks the translation on both engines.

What ``Connection.execute`` does and :func:`run` does not: the ``before_cursor_execute``
and ``after_cursor_execute`` events (the service registers none), and Python-side
column defaults (a statement that would need one is refused: list the column in
``column_keys`` and give its value).

Only statements whose SQL does not depend on the parameters can be prepared: no
expanding ``IN``, no parameters rendered into the SQL at execution, and INSERT/UPDATE
statements list the columns they set (``column_keys``), every one of which must then be
given on each call.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from typing import Any

from sqlalchemy import Connection, Dialect
from sqlalchemy.exc import MultipleResultsFound, NoResultFound
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import Executable

Processor = Callable[[Any], Any]
_CURSOR_KEY = "webhook_service.sql.cursor"


class Rows:
    """The rows a statement returned (all fetched), with ``Result``'s accessors."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount

    def all(self) -> list[Any]:
        return self.rows

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def one_or_none(self) -> Any:
        if len(self.rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when one or none was required")
        return self.rows[0] if self.rows else None

    def one(self) -> Any:
        if not self.rows:
            raise NoResultFound("No row was found when one was required")
        if len(self.rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when exactly one was required")
        return self.rows[0]

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]


class _Plan:
    """One statement compiled for one dialect."""

    __slots__ = (
        "bind_processors",
        "column_processors",
        "columns",
        "defaults",
        "names",
        "positional",
        "required",
        "row_type",
        "sql",
    )

    def __init__(self, statement: Executable, compiled: SQLCompiler, dialect: Dialect) -> None:
        rendered = compiled.literal_execute_params | compiled.post_compile_params
        if rendered:
            names = sorted(compiled.bind_names[bind] for bind in rendered)
            raise ValueError(f"cannot prepare a statement with parameters {names}")
        defaulted = [*compiled.insert_prefetch, *compiled.update_prefetch]
        if defaulted:
            names = sorted(column.key for column in defaulted)
            raise ValueError(f"cannot prepare a statement that needs column defaults: {names}")
        self.sql: str = compiled.string
        self.positional: bool = bool(compiled.positional)
        if self.positional:
            self.names: tuple[str, ...] = tuple(compiled.positiontup or ())
        else:
            self.names = tuple(compiled.bind_names.values())
        # Values written into the statement (``col == "x"``, LIMIT 1) travel as binds too.
        self.defaults: dict[str, Any] = {}
        processors: list[tuple[str, Processor]] = []
        for name in self.names:
            bind = compiled.binds[name]
            if bind.expanding or bind.callable is not None:
                raise ValueError(f"cannot prepare a statement with parameter {name!r}")
            if not bind.required:
                self.defaults[name] = bind.value
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                processors.append((name, process))
        self.required = frozenset(self.names) - self.defaults.keys()
        self.bind_processors: tuple[tuple[str, Processor], ...] = tuple(processors)
        # The result's columns, in the order of the SQL's: RETURNING's (also the implicit
        # one that fetches a new primary key), else the SELECT's; text() has no types.
        columns = compiled.effective_returning
        if columns is None:
            columns = getattr(statement, "exported_columns", None)
        self.columns: tuple[Any, ...] | None = tuple(columns) if columns is not None else None
        self.column_processors: tuple[tuple[int, Processor], ...] = ()
        if self.columns is not None:
            self.column_processors = tuple(
                (index, process)
                for index, column in enumerate(self.columns)
                if (process := column.type.dialect_impl(dialect).result_processor(dialect, None))
                is not None
            )
        # Named as SQLAlchemy names a result's keys (the cursor's), at the first result.
        self.row_type: Any = None

    def make_row_type(self, description: Sequence[Sequence[Any]]) -> Any:
        if self.columns is not None and len(description) != len(self.columns):
            raise ValueError(f"{len(description)} result columns, {len(self.columns)} expected")
        keys = [str(column[0]) for column in description]
        self.row_type = namedtuple("Row", keys, rename=True)  # type: ignore[misc]
        return self.row_type

    def parameters(self, params: Mapping[str, Any]) -> Any:
        if not self.required <= params.keys():
            raise KeyError(f"missing parameters: {sorted(self.required - params.keys())}")
        if self.defaults:
            params = {**self.defaults, **params}
        if self.bind_processors:
            params = dict(params)
            for name, process in self.bind_processors:
                params[name] = process(params[name])
        if self.positional:
            return tuple([params[name] for name in self.names])
        return params


class Prepared:
    """A Core statement to run with :func:`run`; compiled at first use on each dialect."""

    __slots__ = ("_plans", "column_keys", "statement")

    def __init__(self, statement: Executable, *, column_keys: Sequence[str] | None = None) -> None:
        self.statement = statement
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._plans: dict[tuple[str, str], _Plan] = {}

    def plan(self, dialect: Dialect) -> _Plan:
        key = (dialect.name, dialect.driver)
        found = self._plans.get(key)
        if found is None:
            compiled = self.statement.compile(  # type: ignore[attr-defined]
                dialect=dialect, column_keys=self.column_keys
            )
            found = self._plans[key] = _Plan(self.statement, compiled, dialect)
        return found


def _cursor(conn: Connection) -> Any:
    """The cursor of ``conn``'s driver connection, opened once and reused.

    Opening a psycopg cursor costs about as much as running a primary-key lookup. The
    cursor is kept in the pool record's ``info`` beside the driver connection it
    belongs to, so a connection the pool replaced (after a disconnect) gets a new one.
    """
    pooled = conn.connection
    driver = pooled.driver_connection
    cached = pooled.info.get(_CURSOR_KEY)
    if cached is not None and cached[0] is driver:
        return cached[1]
    cursor = driver.cursor()  # type: ignore[union-attr]
    pooled.info[_CURSOR_KEY] = (driver, cursor)
    return cursor


def _forget_cursor(conn: Connection) -> None:
    with suppress(Exception):  # an invalidated connection has nothing left to forget
        conn.connection.info.pop(_CURSOR_KEY, None)


def run(conn: Connection, prepared: Prepared, params: Mapping[str, Any] | None = None) -> Rows:
    """Execute ``prepared`` in ``conn``'s transaction; every row is fetched at once."""
    if not conn.in_transaction():
        raise RuntimeError("run() needs a connection in a transaction (Database.transaction)")
    plan = prepared.plan(conn.dialect)
    given = params or {}
    cursor = None
    try:
        cursor = _cursor(conn)
        cursor.execute(plan.sql, plan.parameters(given))
        description = cursor.description
        raw = cursor.fetchall() if description is not None else []
        rowcount = cursor.rowcount
    except conn.dialect.loaded_dbapi.Error as exc:
        # SQLAlchemy closes the cursor of a failed statement: the next one opens another.
        _forget_cursor(conn)
        # Translated and re-raised as SQLAlchemy would; other errors (a value the driver
        # cannot convert, say) propagate unchanged, as they do from Connection.execute.
        conn._handle_dbapi_exception(exc, plan.sql, given, cursor, None)
    if description is None:
        return Rows(raw, rowcount)
    make = (plan.row_type or plan.make_row_type(description))._make
    if not plan.column_processors:
        return Rows([make(row) for row in raw], rowcount)
    rows = []
    for row in raw:
        values = list(row)
        for index, process in plan.column_processors:
            values[index] = process(values[index])
        rows.append(make(values))
    return Rows(rows, rowcount)
