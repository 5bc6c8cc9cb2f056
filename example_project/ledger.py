"""The ledger: a SQL table of customer balances, written only through the fencing check.

The lock keeps two ``settle_balance(7)`` from running at once, as long as its assumptions
hold. The fence covers the case they do not: a run paused past its lease (a long GC, a
stopped VM) wakes up after the next run took the lock and wrote, and its late write
would put back an older balance. Every write carries the run's fence and goes through
:func:`celery_redlock.fencing.sqlalchemy.fenced_upsert`, one statement that writes only
if the row's fence is not higher: the late write is refused with ``FenceRejected``, and
the row keeps the newer balance.

SQLite by default (a file in the temporary directory, one per namespace);
``EXAMPLE_LEDGER_URL`` names another database (any SQLAlchemy URL of PostgreSQL or SQLite).
"""

from __future__ import annotations

import time

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
)
from sqlalchemy.schema import CreateTable

from celery_redlock.fencing.sqlalchemy import fenced_upsert

__all__ = ["Ledger"]


class Ledger:
    """The balances table on one database; the table is made on first use."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url)
        self.balances = Table(
            "balances",
            MetaData(),
            Column("customer_id", Integer, primary_key=True, autoincrement=False),
            Column("balance", Integer, nullable=False),
            Column("written_by", String(64), nullable=False),  # the task id
            Column("written_at", BigInteger, nullable=False),  # ms since the epoch
            Column("fence", BigInteger, nullable=True),
        )
        self._made = False

    def record(self, customer_id: int, balance: int, task_id: str, fence: int) -> None:
        """Write a customer's balance, fenced: raises ``FenceRejected`` (and writes
        nothing) if a run with a later fence has written this customer's row."""
        row = {"balance": balance, "written_by": task_id, "written_at": int(time.time() * 1000)}
        with self.engine.begin() as connection:
            self._make(connection)
            fenced_upsert(connection, self.balances, {"customer_id": customer_id}, row, fence)

    def balance(self, customer_id: int) -> tuple[int, str, int | None] | None:
        """The stored balance, who wrote it and its fence; None before the first write."""
        table = self.balances
        with self.engine.begin() as connection:
            self._make(connection)
            found = connection.execute(
                table.select()
                .with_only_columns(table.c.balance, table.c.written_by, table.c.fence)
                .where(table.c.customer_id == customer_id)
            ).first()
        return None if found is None else (found[0], found[1], found[2])

    def _make(self, connection: Connection) -> None:
        if not self._made:  # IF NOT EXISTS: the pool's processes may all be first at once
            connection.execute(CreateTable(self.balances, if_not_exists=True))
            self._made = True
