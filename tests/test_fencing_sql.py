"""celery_redlock.fencing.sqlalchemy against real databases: SQLite (a file, so that
threads share it) always, PostgreSQL when one answers (a database of the session's own,
see ``postgres_server`` in conftest)."""

from __future__ import annotations

import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    insert,
    make_url,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from celery_redlock import ConfigurationError, FenceRejected
from celery_redlock.fencing.sqlalchemy import fenced_orm_update, fenced_update, fenced_upsert

Write = Callable[..., None]


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'fence.db'}"
    else:
        server = request.getfixturevalue("postgres_url")
        url = make_url(server).set(drivername="postgresql+psycopg").render_as_string(False)
    made = create_engine(url)
    yield made
    made.dispose()


@pytest.fixture
def orders(engine: Engine) -> Iterator[Table]:
    """A table of its own for each test: rows keyed by id, and by (shop, number) too."""
    table = Table(
        f"orders_{uuid.uuid4().hex[:10]}",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("shop", String(20)),
        Column("number", Integer),
        Column("status", String(40)),
        Column("holder", String(40)),
        Column("fence", BigInteger, nullable=True),
        UniqueConstraint("shop", "number"),
    )
    table.create(engine)
    yield table
    table.drop(engine)


def add(engine: Engine, table: Table, fence: int | None, **row: Any) -> None:
    values = {"id": 1, "shop": "s", "number": 1, "status": "new", "holder": None, **row}
    with engine.begin() as connection:
        connection.execute(insert(table).values(fence=fence, **values))


def rows(engine: Engine, table: Table) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(r) for r in connection.execute(select(table).order_by(table.c.id))]


def write(
    engine: Engine, verb: Write, table: Table, fence: Any, key: Any = None, **values: Any
) -> None:
    with engine.begin() as connection:
        verb(connection, table, {"id": 1} if key is None else key, values, fence)


@pytest.mark.parametrize("verb", [fenced_update, fenced_upsert])
@pytest.mark.parametrize("stored", [None, 41, 42])
def test_a_fence_not_lower_than_the_stored_one_writes_and_is_recorded(
    engine: Engine, orders: Table, verb: Write, stored: int | None
) -> None:
    add(engine, orders, stored)
    write(engine, verb, orders, 42, status="paid", holder="a")
    assert rows(engine, orders) == [(1, "s", 1, "paid", "a", 42)]


@pytest.mark.parametrize("verb", [fenced_update, fenced_upsert])
def test_the_same_fence_writes_again(engine: Engine, orders: Table, verb: Write) -> None:
    """A run that updates its row twice is not a stale holder."""
    add(engine, orders, None)
    write(engine, verb, orders, 7, status="half")
    write(engine, verb, orders, 7, status="done")
    assert rows(engine, orders) == [(1, "s", 1, "done", None, 7)]


@pytest.mark.parametrize("verb", [fenced_update, fenced_upsert])
def test_a_lower_fence_is_rejected_and_writes_nothing(
    engine: Engine, orders: Table, verb: Write
) -> None:
    add(engine, orders, 42, status="paid", holder="b")
    before = rows(engine, orders)
    with pytest.raises(FenceRejected) as caught:
        write(engine, verb, orders, 41, status="refunded", holder="a")
    assert (caught.value.offered, caught.value.standing, caught.value.reason) == (41, 42, "higher")
    assert caught.value.target == f"{orders.name} (id=1)"
    assert (
        str(caught.value) == f"write to {orders.name} (id=1) rejected: fence 41 offered, 42 stands"
    )
    assert rows(engine, orders) == before


def test_a_rejected_write_leaves_the_transaction_usable(engine: Engine, orders: Table) -> None:
    """The refused statement changed nothing, so the caller may catch the error and
    commit what else it did (or roll it all back: its choice)."""
    add(engine, orders, 42)
    with engine.begin() as connection:
        with pytest.raises(FenceRejected):
            fenced_update(connection, orders, {"id": 1}, {"status": "x"}, 41)
        connection.execute(insert(orders).values(id=2, shop="s", number=2, fence=None))
    assert [r[0] for r in rows(engine, orders)] == [1, 2]


def test_an_update_of_a_missing_row_says_so(engine: Engine, orders: Table) -> None:
    add(engine, orders, 5)
    with pytest.raises(FenceRejected) as caught:
        write(engine, fenced_update, orders, 9, key={"id": 2}, status="paid")
    assert (caught.value.standing, caught.value.reason) == (None, "missing")
    assert (
        str(caught.value)
        == f"write to {orders.name} (id=2) rejected: no such row (fence 9 offered)"
    )
    assert rows(engine, orders) == [(1, "s", 1, "new", None, 5)]


def test_an_upsert_inserts_a_missing_row_with_its_fence(engine: Engine, orders: Table) -> None:
    write(engine, fenced_upsert, orders, 3, key={"shop": "s", "number": 4}, id=9, status="new")
    assert rows(engine, orders) == [(9, "s", 4, "new", None, 3)]
    with pytest.raises(FenceRejected) as caught:
        write(engine, fenced_upsert, orders, 2, key={"shop": "s", "number": 4}, id=9, status="x")
    assert caught.value.target == f"{orders.name} (shop='s', number=4)"
    assert rows(engine, orders) == [(9, "s", 4, "new", None, 3)]


def test_a_unique_constraint_names_a_row_too(engine: Engine, orders: Table) -> None:
    add(engine, orders, 1, shop="x", number=8)
    write(engine, fenced_update, orders, 2, key={"shop": "x", "number": 8}, status="paid")
    assert rows(engine, orders) == [(1, "x", 8, "paid", None, 2)]


@pytest.mark.parametrize(
    "case",
    [
        ({"shop": "s"}, {"status": "x"}, "key ['shop'] of orders_"),
        ({"status": "new"}, {}, "is not its primary key nor a unique constraint"),
        ({"id": 1}, {"colour": "red"}, "has no column 'colour'"),
        ({"id": 1}, {"fence": 99}, "the fence column 'fence' is written by the check"),
        ({}, {"status": "x"}, "key must be a non-empty mapping"),
        ({"id": 1}, ["status"], "values must be a mapping"),
    ],
)
@pytest.mark.parametrize("verb", [fenced_update, fenced_upsert])
def test_a_write_that_is_not_one_rows_is_refused_before_it_runs(
    engine: Engine, orders: Table, verb: Write, case: tuple[Any, Any, str]
) -> None:
    key, values, message = case
    add(engine, orders, None)
    with engine.begin() as connection, pytest.raises(ConfigurationError, match=re.escape(message)):
        verb(connection, orders, key, values, 5)
    assert rows(engine, orders) == [(1, "s", 1, "new", None, None)]


@pytest.mark.parametrize("fence", [True, 1.0, "5", None, 0, -1, 2**63])
@pytest.mark.parametrize("verb", [fenced_update, fenced_upsert])
def test_a_bad_fence_is_refused_before_anything_is_written(
    engine: Engine, orders: Table, verb: Write, fence: Any
) -> None:
    add(engine, orders, None)
    with pytest.raises(ConfigurationError, match=r"^fence must be"):
        write(engine, verb, orders, fence, status="x")
    assert rows(engine, orders) == [(1, "s", 1, "new", None, None)]


def test_the_largest_fence_fits_the_column(engine: Engine, orders: Table) -> None:
    add(engine, orders, 2**63 - 2)
    write(engine, fenced_update, orders, 2**63 - 1, status="max")
    assert rows(engine, orders)[0][-1] == 2**63 - 1
    with pytest.raises(FenceRejected):
        write(engine, fenced_update, orders, 2**63 - 2, status="late")


def test_an_unreadable_stored_fence_is_reported_not_overwritten(tmp_path: Any) -> None:
    """SQLite keeps what it is given, whatever the column's type: a text 'fence' compares
    above every integer, so the write is refused, and the error says what stands."""
    engine = create_engine(f"sqlite:///{tmp_path / 'odd.db'}")
    table = Table(
        "t", MetaData(), Column("id", Integer, primary_key=True), Column("fence", BigInteger)
    )
    table.create(engine)
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO t (id, fence) VALUES (1, 'garbage')"))
    with pytest.raises(FenceRejected) as caught, engine.begin() as connection:
        fenced_update(connection, table, {"id": 1}, {}, 5)
    assert caught.value.reason == "unreadable"
    assert (
        str(caught.value)
        == "write to t (id=1) rejected: its fence is not an int: 'garbage' (fence 5 offered)"
    )
    engine.dispose()


def test_upsert_refuses_a_dialect_without_a_conditional_upsert(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    table = Table(
        "t", MetaData(), Column("id", Integer, primary_key=True), Column("fence", BigInteger)
    )
    with engine.connect() as connection:
        connection.dialect.name = "mysql"  # what fenced_upsert reads to choose its statement
        with pytest.raises(ConfigurationError, match="not mysql: create the row first"):
            fenced_upsert(connection, table, {"id": 1}, {}, 5)
    engine.dispose()


def race(
    engine: Engine, work: Callable[[Connection, int], None], fences: list[int]
) -> dict[int, Any]:
    """Each fence's writer in a thread of its own, started together; each holds its
    transaction open a moment after writing, so the others meet its row lock."""
    start = threading.Barrier(len(fences))
    outcome: dict[int, Any] = {}

    def run(fence: int) -> None:
        start.wait()
        try:
            with engine.begin() as connection:
                work(connection, fence)
                time.sleep(0.02)
            outcome[fence] = "ok"
        except Exception as exc:  # recorded, and asserted on below
            outcome[fence] = exc

    threads = [threading.Thread(target=run, args=(f,)) for f in fences]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return outcome


def assert_highest_won(outcome: dict[int, Any], final: tuple[Any, ...], fences: list[int]) -> None:
    top = max(fences)
    assert outcome[top] == "ok"
    # Started together in random order, they cannot all have come in rising order (that
    # is 1 chance in 8!): some were refused, so the check was met, not just passed by.
    assert any(result != "ok" for result in outcome.values())
    assert final[-2:] == (f"w{top}", top)
    for fence, result in outcome.items():
        if result != "ok":
            assert isinstance(result, FenceRejected), result
            assert result.offered == fence
            assert result.standing is not None
            assert result.standing > fence


@pytest.mark.parametrize("verb", [fenced_update, fenced_upsert])
def test_racing_writers_leave_the_highest_fences_data(
    engine: Engine, orders: Table, verb: Write
) -> None:
    fences = random.sample(range(1_800_000_000_000_000, 1_800_000_000_000_100), 8)
    if verb is fenced_update:
        add(engine, orders, None)

    def work(connection: Connection, fence: int) -> None:
        verb(
            connection, orders, {"id": 1}, {"shop": "s", "number": 1, "holder": f"w{fence}"}, fence
        )

    outcome = race(engine, work, fences)
    assert len(outcome) == len(fences)
    [final] = rows(engine, orders)
    assert_highest_won(outcome, final, fences)


def test_writers_in_rising_order_all_write(engine: Engine, orders: Table) -> None:
    add(engine, orders, None)
    for fence in (10, 11, 11, 12):
        write(engine, fenced_update, orders, fence, holder=f"w{fence}")
    assert rows(engine, orders)[0][-2:] == ("w12", 12)


# The ORM helper: the same rule, through a Session and a mapped class.


def mapped_order(engine: Engine) -> type[Any]:
    class Base(DeclarativeBase):
        pass

    class Order(Base):
        __tablename__ = f"orm_orders_{uuid.uuid4().hex[:10]}"
        id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
        code: Mapped[str] = mapped_column(String(20), unique=True)
        status: Mapped[str] = mapped_column(String(40))
        version_fence: Mapped[int | None] = mapped_column("fence_col", BigInteger)

    Base.metadata.create_all(engine)
    return Order


@pytest.fixture
def order(engine: Engine) -> Iterator[type[Any]]:
    model = mapped_order(engine)
    yield model
    model.__table__.drop(engine)


def test_orm_writes_and_the_sessions_object_shows_it(engine: Engine, order: type[Any]) -> None:
    with Session(engine) as session:
        session.add(order(id=1, code="c1", status="new", version_fence=None))
        session.commit()
        loaded = session.get(order, 1)
        assert loaded is not None
        fenced_orm_update(
            session, order, {"id": 1}, {"status": "paid"}, 5, attribute="version_fence"
        )
        assert (loaded.status, loaded.version_fence) == ("paid", 5)
        session.commit()
    with engine.connect() as connection:
        assert list(
            connection.execute(text(f"SELECT status, fence_col FROM {order.__tablename__}"))  # noqa: S608
        ) == [("paid", 5)]


def test_orm_rejects_a_lower_fence_and_writes_nothing(engine: Engine, order: type[Any]) -> None:
    with Session(engine) as session:
        session.add(order(id=1, code="c1", status="paid", version_fence=9))
        session.commit()
        with pytest.raises(FenceRejected) as caught:
            fenced_orm_update(
                session, order, {"code": "c1"}, {"status": "x"}, 8, attribute="version_fence"
            )
        assert str(caught.value) == "write to Order (code='c1') rejected: fence 8 offered, 9 stands"
        session.commit()
        session.expire_all()
        assert session.scalars(select(order.status)).all() == ["paid"]
        with pytest.raises(FenceRejected, match="no such row"):
            fenced_orm_update(
                session, order, {"id": 2}, {"status": "x"}, 8, attribute="version_fence"
            )


def test_orm_refuses_what_is_not_one_mapped_row(engine: Engine, order: type[Any]) -> None:
    with Session(engine) as session:
        with pytest.raises(ConfigurationError, match="entity must be a mapped class"):
            fenced_orm_update(session, object, {"id": 1}, {}, 5)
        with pytest.raises(ConfigurationError, match="is not its primary key nor a unique"):
            fenced_orm_update(session, order, {"status": "x"}, {}, 5, attribute="version_fence")
        with pytest.raises(ConfigurationError, match="Order has no column 'fence'"):
            fenced_orm_update(session, order, {"id": 1}, {}, 5)
        with pytest.raises(ConfigurationError, match=r"^fence must be"):
            fenced_orm_update(session, order, {"id": 1}, {}, 0, attribute="version_fence")
