"""Fixtures: real redis-server processes on free loopback ports, never the machine's own.

``shared5`` is one group of five masters for the whole session, for tests that do not
harm servers (each uses its own resource names); tests that kill, stop or restart
masters take a fresh group of their own.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from celery_redlock import Redlock
from celery_redlock.testing import RedisGroup


@pytest.fixture(scope="session")
def shared5() -> Iterator[RedisGroup]:
    with RedisGroup(5) as group:
        yield group


@pytest.fixture
def fresh3() -> Iterator[RedisGroup]:
    with RedisGroup(3) as group:
        yield group


@pytest.fixture
def fresh5() -> Iterator[RedisGroup]:
    with RedisGroup(5) as group:
        yield group


@pytest.fixture
def dlm(shared5: RedisGroup) -> Iterator[Redlock]:
    manager = Redlock(shared5.urls)
    yield manager
    manager.close()


@pytest.fixture
def resource() -> str:
    """A resource name no other test uses, so tests can share servers."""
    return f"test:{uuid.uuid4().hex}"


#: A PostgreSQL server URL for the fencing tests (``postgresql://user:pw@host:port/db``);
#: without it they try ``postgres@127.0.0.1:5432`` (trust auth), and skip if none answers.
POSTGRES_ENV = "CELERY_REDLOCK_TEST_POSTGRES"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str | None]:
    """The URL of a database of our own on a PostgreSQL that answers, or None (the reason
    is then in :data:`postgres_absent`). The database has a unique name, is created for
    the session and dropped after it: nothing else on the server is touched."""
    import psycopg
    from psycopg import sql

    given = os.environ.get(POSTGRES_ENV)
    base = given or "postgresql://postgres@127.0.0.1:5432/postgres"
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        where = f"from {POSTGRES_ENV}" if given else f"set {POSTGRES_ENV} to a server's URL"
        postgres_absent.append(f"no PostgreSQL at {redact(base)} ({where}): {exc}")
        yield None
        return
    name = f"celery_redlock_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            parts = urlsplit(base)
            yield urlunsplit(parts._replace(path=f"/{name}"))
        finally:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


#: Why :func:`postgres_server` found no server (filled when it yields None).
postgres_absent: list[str] = []


@pytest.fixture
def postgres_url(postgres_server: str | None) -> str:
    """:func:`postgres_server`'s URL, or the test is skipped with the reason."""
    if postgres_server is None:
        pytest.skip(postgres_absent[-1])
    return postgres_server


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"***@{parts.hostname}:{parts.port}"))
