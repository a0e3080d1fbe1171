"""Prepared statements: the same rows, types and errors as Connection.execute, on both engines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, MultipleResultsFound, NoResultFound

from webhook_service.db import Database
from webhook_service.models import tenant_changes, tenants
from webhook_service.sql import Prepared, run

NOW = datetime(2026, 11, 27, 23, 15, 57, 317563, tzinfo=UTC)
CREATE = Prepared(
    insert(tenants), column_keys=("id", "stripe_customer_id", "active", "created_at", "updated_at")
)
BY_ID = Prepared(select(tenants).where(tenants.c.id == bindparam("b_id")))
ACTIVE_SINCE = Prepared(
    select(tenants.c.id)
    .where(tenants.c.active.is_(True), tenants.c.created_at >= bindparam("b_since"))
    .order_by(tenants.c.id)
)
FIRST_INACTIVE = Prepared(
    select(tenants.c.id).where(tenants.c.active == False).order_by(tenants.c.id).limit(1)  # noqa: E712
)
RENAME_CUSTOMER = Prepared(
    update(tenants).where(tenants.c.id == bindparam("b_id")),
    column_keys=("stripe_customer_id",),
)


def _create(database: Database, tenant_id: str, *, active: bool = True) -> None:
    with database.transaction(write=True) as conn:
        run(
            conn,
            CREATE,
            {
                "id": tenant_id,
                "stripe_customer_id": None,
                "active": active,
                "created_at": NOW,
                "updated_at": NOW,
            },
        )


def test_rows_carry_the_column_types(database: Database) -> None:
    """Read back booleans and aware UTC datetimes, as Connection.execute returns them."""
    _create(database, "tnt_a")
    with database.transaction() as conn:
        row = run(conn, BY_ID, {"b_id": "tnt_a"}).one()
        reference = conn.execute(select(tenants).where(tenants.c.id == "tnt_a")).one()
    assert row.id == "tnt_a"
    assert row.active is True
    assert row.created_at == NOW
    assert row.created_at.tzinfo is not None
    assert row.created_at.utcoffset() == timedelta(0)
    assert tuple(row) == tuple(reference)


def test_parameters_go_through_the_column_types(database: Database) -> None:
    """An aware datetime in another zone is compared as the same instant."""
    _create(database, "tnt_b")
    _create(database, "tnt_c", active=False)
    tokyo = timezone(timedelta(hours=9))
    with database.transaction() as conn:
        same_instant = run(conn, ACTIVE_SINCE, {"b_since": NOW.astimezone(tokyo)}).all()
        later = run(conn, ACTIVE_SINCE, {"b_since": NOW + timedelta(microseconds=1)}).all()
    assert [r.id for r in same_instant] == ["tnt_b"]
    assert later == []


def test_values_written_in_the_statement_are_sent(database: Database) -> None:
    """Literal comparisons and LIMIT travel as parameters the caller never gives."""
    _create(database, "tnt_d", active=False)
    _create(database, "tnt_e", active=False)
    with database.transaction() as conn:
        assert run(conn, FIRST_INACTIVE).scalar_one() == "tnt_d"


def test_update_reports_rowcount(database: Database) -> None:
    _create(database, "tnt_f")
    with database.transaction(write=True) as conn:
        done = run(conn, RENAME_CUSTOMER, {"b_id": "tnt_f", "stripe_customer_id": "cus_f"})
        missing = run(conn, RENAME_CUSTOMER, {"b_id": "tnt_zz", "stripe_customer_id": "cus_z"})
    assert (done.rowcount, missing.rowcount) == (1, 0)
    with database.transaction() as conn:
        assert run(conn, BY_ID, {"b_id": "tnt_f"}).one().stripe_customer_id == "cus_f"


def test_result_accessors_match_sqlalchemy(database: Database) -> None:
    _create(database, "tnt_g")
    _create(database, "tnt_h")
    with database.transaction() as conn:
        both = run(conn, ACTIVE_SINCE, {"b_since": NOW})
        none = run(conn, BY_ID, {"b_id": "tnt_nobody"})
        assert both.first().id == "tnt_g"
        assert both.scalar() == "tnt_g"
        with pytest.raises(MultipleResultsFound):
            both.one()
        with pytest.raises(MultipleResultsFound):
            both.scalar_one_or_none()
        with pytest.raises(NoResultFound):
            none.one()
        assert none.one_or_none() is None
        assert none.scalar_one_or_none() is None
        assert none.first() is None


def test_driver_errors_are_translated_and_roll_back(database: Database) -> None:
    """A constraint violation raises SQLAlchemy's IntegrityError without parameter values."""
    _create(database, "tnt_i")

    def rename_then_duplicate() -> None:
        with database.transaction(write=True) as conn:
            run(conn, RENAME_CUSTOMER, {"b_id": "tnt_i", "stripe_customer_id": "cus_secret"})
            _create_in(conn, "tnt_i")

    with pytest.raises(IntegrityError) as raised:
        rename_then_duplicate()
    assert "cus_secret" not in str(raised.value)
    with database.transaction() as conn:
        assert run(conn, BY_ID, {"b_id": "tnt_i"}).one().stripe_customer_id is None


def _create_in(conn: object, tenant_id: str) -> None:
    run(
        conn,  # type: ignore[arg-type]
        CREATE,
        {
            "id": tenant_id,
            "stripe_customer_id": None,
            "active": True,
            "created_at": NOW,
            "updated_at": NOW,
        },
    )


def test_a_missing_parameter_is_an_error(database: Database) -> None:
    with pytest.raises(KeyError), database.transaction(write=True) as conn:
        run(conn, RENAME_CUSTOMER, {"b_id": "tnt_j"})


def test_statements_whose_sql_depends_on_values_are_refused(database: Database) -> None:
    expanding = Prepared(
        select(tenant_changes.c.id).where(tenant_changes.c.tenant_id.in_(bindparam("b_ids")))
    )
    with database.transaction() as conn, pytest.raises(ValueError, match="b_ids"):
        run(conn, expanding, {"b_ids": ["tnt_a"]})


def test_rows_are_keyed_as_sqlalchemy_keys_them(database: Database) -> None:
    """Name a row's fields as Connection.execute does: labels, functions, RETURNING, text()."""
    _create(database, "tnt_k")
    statements = [
        select(tenants.c.id, tenants.c.id, (tenants.c.active).label("on")).where(
            tenants.c.id == bindparam("b_id")
        ),
        select(func.count(tenants.c.id)).where(tenants.c.id == bindparam("b_id")),
        update(tenants)
        .where(tenants.c.id == bindparam("b_id"))
        .values(updated_at=bindparam("b_now"))
        .returning(tenants.c.id, tenants.c.updated_at),
        text("SELECT id, active FROM tenants WHERE id = :b_id"),
    ]
    params = {"b_id": "tnt_k", "b_now": NOW}
    with database.transaction(write=True) as conn:
        for statement in statements:
            [row] = run(conn, Prepared(statement), params).all()
            reference = conn.execute(statement, params)
            assert row._fields == tuple(reference.keys())
            assert tuple(row) == tuple(reference.one())


def test_a_statement_needing_column_defaults_is_refused(database: Database) -> None:
    """An INSERT without a column that has a Python-side default is refused, not run.

    It would send NULL where Connection.execute sends the default (``tenants.active``).
    """
    without_active = Prepared(
        insert(tenants), column_keys=("id", "stripe_customer_id", "created_at", "updated_at")
    )
    values = {"id": "tnt_l", "stripe_customer_id": None, "created_at": NOW, "updated_at": NOW}
    with database.transaction(write=True) as conn, pytest.raises(ValueError, match="active"):
        run(conn, without_active, values)


def test_a_connection_outside_a_transaction_is_refused(database: Database) -> None:
    """Run only in SQLAlchemy's transaction: a statement must not bypass its autobegin."""
    _create(database, "tnt_m")
    with database.engine.connect() as conn:
        with pytest.raises(RuntimeError, match="transaction"):
            run(conn, RENAME_CUSTOMER, {"b_id": "tnt_m", "stripe_customer_id": "cus_m"})
        conn.rollback()
    with database.transaction() as conn:
        assert run(conn, BY_ID, {"b_id": "tnt_m"}).one().stripe_customer_id is None
