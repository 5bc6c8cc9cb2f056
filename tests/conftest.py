"""Fixtures: real redis-server processes on free loopback ports, never the machine's own.

``shared5`` is one group of five masters for the whole session, for tests that do not
harm servers (each uses its own resource names); tests that kill, stop or restart
masters take a fresh group of their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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
