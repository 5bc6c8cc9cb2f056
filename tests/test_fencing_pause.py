"""Kleppmann's scenario with real processes: a holder SIGSTOPped past its validity, a second
holder that takes the lock and writes through the SQL check, and the first one's write,
once it resumes, refused by the database; the row keeps the second writer's data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from celery_redlock import Redlock
from celery_redlock.fencing.sqlalchemy import fenced_update
from celery_redlock.testing import RedisGroup

ROOT = Path(__file__).resolve().parent.parent

#: The first holder: takes the lock (1 s, no renewal), says its fence, waits for a line on
#: stdin (it is stopped meanwhile), then writes through the check and says what happened.
HOLDER = r"""
import json, sys
import sqlalchemy as sa
from celery_redlock import FenceRejected, Redlock
from celery_redlock.fencing.sqlalchemy import fenced_update

urls, url = sys.argv[1].split(","), sys.argv[2]
lock = Redlock(urls).acquire("ledger:7", 1.0)
print(json.dumps({"fence": lock.fence}), flush=True)
sys.stdin.readline()
engine = sa.create_engine(url)
table = sa.Table("balances", sa.MetaData(), autoload_with=engine)
try:
    with engine.begin() as connection:
        fenced_update(connection, table, {"id": 7}, {"owner": "A"}, lock.fence)
    print(json.dumps({"written": True}), flush=True)
except FenceRejected as exc:
    print(json.dumps({"offered": exc.offered, "standing": exc.standing}), flush=True)
engine.dispose()
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with one row to fight over: SQLite always, PostgreSQL when one answers
    (a database of the test's own, dropped after)."""
    url = (
        f"sqlite:///{tmp_path / 'ledger.db'}"
        if request.param == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    engine = sa.create_engine(url)
    meta = sa.MetaData()
    table = sa.Table(
        "balances",
        meta,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("owner", sa.Text),
        sa.Column("fence", sa.BigInteger),
    )
    meta.create_all(engine)
    with engine.begin() as connection:
        connection.execute(table.insert().values(id=7, owner="nobody", fence=None))
    yield url
    meta.drop_all(engine)
    engine.dispose()


def row(url: str) -> tuple[Any, ...]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        found = connection.execute(sa.text("SELECT owner, fence FROM balances WHERE id = 7"))
        result = tuple(found.one())
    engine.dispose()
    return result


def test_a_holder_paused_past_its_lease_is_refused_by_the_database(
    fresh3: RedisGroup, database: str
) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, ",".join(fresh3.urls), database],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        first = json.loads(holder.stdout.readline())["fence"]
        os.kill(holder.pid, signal.SIGSTOP)  # past its validity from here on

        dlm = Redlock(fresh3.urls)
        lock = dlm.acquire("ledger:7", 10, blocking=True, timeout=30)  # once A's key expires
        assert lock is not None
        assert lock.fence is not None
        assert lock.fence > first
        engine = sa.create_engine(database)
        table = sa.Table("balances", sa.MetaData(), autoload_with=engine)
        with engine.begin() as connection:
            fenced_update(connection, table, {"id": 7}, {"owner": "B"}, lock.fence)
        engine.dispose()

        os.kill(holder.pid, signal.SIGCONT)  # A wakes up believing it holds the lock
        holder.stdin.write("write\n")
        holder.stdin.flush()
        answer = json.loads(holder.stdout.readline())
        assert answer == {"offered": first, "standing": lock.fence}
        assert row(database) == ("B", lock.fence)
        lock.release()
        dlm.close()
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.kill()
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()
