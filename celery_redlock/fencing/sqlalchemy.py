"""Fenced writes through SQLAlchemy 2.x: Core (a ``Table`` on a ``Connection``) and ORM (a
mapped class in a ``Session``).

Each write is one statement that compares and writes at once::

    UPDATE orders SET ..., fence = :ours
     WHERE id = :id AND (fence IS NULL OR fence <= :ours)

so the database's own row locking makes it atomic: on PostgreSQL a concurrent writer of
the same row waits for ours to commit and then re-checks the condition against the row
as committed; SQLite runs one writer at a time. The row is named by ``key``, the columns
of its primary key or of a unique constraint, so that a write is all of one row or
nothing. The statement runs in the caller's transaction and is committed with it (a
``with engine.begin() as connection:`` block, ``session.commit()``).

A write that changes no row raises :class:`~celery_redlock.exceptions.FenceRejected`
after reading the row's fence, to say which one stands (or that there is no such row).
:func:`fenced_upsert` inserts the row when it is missing, still in one statement
(``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE``, PostgreSQL and SQLite 3.24+).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from sqlalchemy import ColumnElement, Connection, Table, UniqueConstraint, inspect, or_, select
from sqlalchemy import update as sql_update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Mapper, Session

from celery_redlock.exceptions import ConfigurationError, FenceRejected
from celery_redlock.fencing import _row_write, _target, as_fence

__all__ = ["fenced_orm_update", "fenced_update", "fenced_upsert"]


def fenced_update(
    connection: Connection,
    table: Table,
    key: Mapping[str, Any],
    values: Mapping[str, Any],
    fence: int,
    *,
    column: str = "fence",
) -> None:
    """Update the row of ``table`` named by ``key`` with ``values``, and its ``column`` to
    ``fence``, if the row's fence is NULL or not higher than ``fence``.

    An equal fence is accepted: fences are unique per acquisition, so it is the same
    holder writing again. Raises ``FenceRejected`` (``reason`` ``"higher"`` with the
    standing fence, or ``"missing"``) with the row unchanged.
    """
    ours = as_fence(fence)
    fence_column, match = _plan(table, key, values, column)
    statement = (
        sql_update(table)
        .where(*match, _not_higher(fence_column, ours))
        .values({**values, column: ours})
    )
    if connection.execute(statement).rowcount != 1:
        raise _rejection(connection, _target(table.name, key), fence_column, match, ours)


def fenced_upsert(
    connection: Connection,
    table: Table,
    key: Mapping[str, Any],
    values: Mapping[str, Any],
    fence: int,
    *,
    column: str = "fence",
) -> None:
    """As :func:`fenced_update`, but a missing row is inserted (``key``, ``values`` and
    the fence) in the same statement, so two holders racing to create it cannot both
    succeed nor fail on the unique key: the loser's insert becomes the fenced update.

    PostgreSQL and SQLite only (their ``ON CONFLICT ... DO UPDATE ... WHERE``); another
    dialect is a ``ConfigurationError``.
    """
    ours = as_fence(fence)
    fence_column, match = _plan(table, key, values, column)
    conflict: dict[str, Any] = {
        "index_elements": [table.c[name] for name in key],
        "set_": {**values, column: ours},
        "where": _not_higher(fence_column, ours),
    }
    row = {**key, **values, column: ours}
    dialect = connection.dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        statement: Any = postgresql_insert(table).values(row).on_conflict_do_update(**conflict)
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(table).values(row).on_conflict_do_update(**conflict)
    else:
        raise ConfigurationError(
            f"fenced_upsert needs INSERT ... ON CONFLICT DO UPDATE ... WHERE (PostgreSQL or"
            f" SQLite), not {dialect}: create the row first and use fenced_update"
        )
    # An INSERT's rowcount is kept only when asked for (SQLAlchemy 2.0.28+): on PostgreSQL
    # it is then 1 for a row inserted or updated, 0 for an update its WHERE refused.
    result = connection.execute(statement.execution_options(preserve_rowcount=True))
    if result.rowcount != 1:
        raise _rejection(connection, _target(table.name, key), fence_column, match, ours)


def fenced_orm_update(
    session: Session,
    entity: type[Any],
    key: Mapping[str, Any],
    values: Mapping[str, Any],
    fence: int,
    *,
    attribute: str = "fence",
) -> None:
    """:func:`fenced_update` for a mapped class: ``key``, ``values`` and ``attribute``
    are its attribute names. One ORM-enabled UPDATE, with ``synchronize_session="fetch"``
    so that objects of the row already in the session show what was written.

    The session flushes its pending changes first (autoflush) and the caller commits.
    """
    ours = as_fence(fence)
    mapper = inspect(entity, raiseerr=False)
    if not isinstance(mapper, Mapper):
        raise ConfigurationError(f"entity must be a mapped class, not {entity!r}")
    _row_write(key, values, attribute)
    names = set(mapper.column_attrs.keys())
    _known(entity.__name__, names, [*key, *values, attribute])
    unique = [frozenset(_attribute(mapper, c) for c in cols) for cols in _unique(mapper)]
    _one_row(entity.__name__, key, unique)
    fence_column: ColumnElement[Any] = getattr(entity, attribute)
    match = [getattr(entity, name) == value for name, value in key.items()]
    statement = (
        sql_update(entity)
        .where(*match, _not_higher(fence_column, ours))
        .values({**values, attribute: ours})
        .execution_options(synchronize_session="fetch")
    )
    result = cast("CursorResult[Any]", session.execute(statement))
    if result.rowcount != 1:
        raise _rejection(session, _target(entity.__name__, key), fence_column, match, ours)


def _not_higher(fence_column: ColumnElement[Any], ours: int) -> ColumnElement[bool]:
    """The one rule: no fence yet (NULL), or one not higher than ours."""
    return or_(fence_column.is_(None), fence_column <= ours)


def _plan(
    table: Table, key: Mapping[str, Any], values: Mapping[str, Any], column: str
) -> tuple[ColumnElement[Any], list[ColumnElement[bool]]]:
    """The fence column and the row's match, once the arguments are checked."""
    if not isinstance(table, Table):
        raise ConfigurationError(f"table must be a sqlalchemy Table, not {table!r}")
    _row_write(key, values, column)
    _known(table.name, set(table.c.keys()), [*key, *values, column])
    _one_row(table.name, key, [frozenset(c.key for c in cols) for cols in _unique_columns(table)])
    return table.c[column], [table.c[name] == value for name, value in key.items()]


def _known(where: str, names: set[str], given: list[str]) -> None:
    unknown = [name for name in given if name not in names]
    if unknown:
        raise ConfigurationError(f"{where} has no column {unknown[0]!r}")


def _one_row(where: str, key: Mapping[str, Any], unique: list[frozenset[str]]) -> None:
    """``key`` must name a row, not rows: several would be written or refused each on its
    own fence, and a write could land on some of them only."""
    if frozenset(key) not in unique:
        raise ConfigurationError(
            f"key {sorted(key)} of {where} is not its primary key nor a unique constraint:"
            f" a fenced write is one row's, whole or not at all"
        )


def _unique_columns(table: Table) -> list[list[Any]]:
    """Every set of columns of ``table`` that names at most one row: its primary key,
    unique constraints, unique columns and unique indexes that are not partial."""
    found: list[list[Any]] = [list(table.primary_key.columns)]
    found += [list(c.columns) for c in table.constraints if isinstance(c, UniqueConstraint)]
    found += [[c] for c in table.columns if c.unique]
    found += [
        list(index.columns)
        for index in table.indexes
        if index.unique
        and not any(k.endswith("_where") and v for k, v in index.dialect_kwargs.items())
    ]
    return [cols for cols in found if cols]


def _unique(mapper: Mapper[Any]) -> list[list[Any]]:
    found: list[list[Any]] = [list(mapper.primary_key)]
    if isinstance(mapper.local_table, Table):
        found += _unique_columns(mapper.local_table)
    return found


def _attribute(mapper: Mapper[Any], column: Any) -> str:
    return mapper.get_property_by_column(column).key


def _rejection(
    executor: Connection | Session,
    target: str,
    fence_column: ColumnElement[Any],
    match: list[ColumnElement[bool]],
    ours: int,
) -> FenceRejected:
    """Why no row changed: read the row's fence (in the same transaction, after the
    refused statement), or find that there is no such row."""
    row = executor.execute(select(fence_column).where(*match)).first()
    if row is None:
        return FenceRejected(target, ours, None, reason="missing")
    standing = row[0]
    if isinstance(standing, bool) or not isinstance(standing, int):
        return FenceRejected(
            target, ours, None, reason="unreadable", found=f"its fence is not an int: {standing!r}"
        )
    return FenceRejected(target, ours, standing)
