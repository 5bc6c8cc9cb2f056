"""Fixtures for the Celery-layer tests (``pytest_plugins = ["tests.celery_fixtures"]``).

Real parts only: three redis-server masters, a fourth redis-server as broker and result
backend, and a real worker consuming from it (in-process with the threads pool here; the
prefork tests start ``celery worker`` subprocesses themselves).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_redlock._celery.appstate import state_of
from celery_redlock.testing import RedisGroup, RedisServer
from tests.celery_helpers import AppFactory, armed, close_app
from tests.celery_tasks import make_app


@pytest.fixture(scope="session")
def redis_broker() -> Iterator[RedisServer]:
    """A redis-server as broker and result backend for the whole session."""
    with RedisServer() as server:
        yield server
        # AsyncResults left in reference cycles by tests whose result backend close_app
        # could not reach (another thread's) are collected here, while the server still
        # answers their unsubscribe: collected after it stops, one fails to reconnect
        # (Celery raises RuntimeError from AsyncResult.__del__) and fails the session.
        gc.collect()


@pytest.fixture(scope="session")
def lock_masters() -> Iterator[RedisGroup]:
    """Three masters shared by the tests that do not harm them (each app has its own keys)."""
    with RedisGroup(3) as group:
        yield armed(group)


@pytest.fixture
def make_celery(redis_broker: RedisServer, lock_masters: RedisGroup) -> Iterator[AppFactory]:
    """Makes apps on the shared servers (``masters=`` for others); closes them afterwards."""
    apps: list[Celery] = []

    def factory(masters: list[str] | None = None, **conf: Any) -> Celery:
        app = make_app(redis_broker.url, masters or lock_masters.urls, **conf)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        state_of(app).reset()
        close_app(app)


@pytest.fixture
def singleton_app(make_celery: AppFactory) -> Celery:
    return make_celery()
