"""Helpers for the Celery-layer tests: a real in-process worker, and waiting on conditions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_redlock import QuorumUnavailable, Redlock
from celery_redlock.admin import arm
from celery_redlock.testing import RedisGroup

AppFactory = Callable[..., Celery]


def close_app(app: Celery) -> None:
    """Close a test app, its result backend's pub/sub consumer included.

    ``app.close()`` leaves the Redis result backend's consumer alive. An AsyncResult of a
    finished test, garbage-collected later (often during another test), then asks that
    consumer to unsubscribe, which opens a new connection that nobody closes: an
    "unclosed socket" ResourceWarning in whatever test runs at that moment. Forgetting
    the subscriptions first makes that late call a no-op.
    """
    backend = app._backend  # this thread's, if made: the one its AsyncResults hold
    consumer = getattr(backend, "result_consumer", None)
    if consumer is not None:
        consumer.subscribed_to.clear()
        consumer._pending_unsubscribe.clear()
        consumer.stop()
    if backend is not None and hasattr(backend, "client"):
        backend.client.connection_pool.disconnect()
    app.close()


@contextmanager
def running_worker(app: Celery, concurrency: int = 8) -> Iterator[Any]:
    """A real worker (threads pool) consuming the app's queue, in this process."""
    with start_worker(
        app,
        pool="threads",
        concurrency=concurrency,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=30,
    ) as worker:
        yield worker


def armed(group: RedisGroup) -> RedisGroup:
    """Declare brand-new masters as such, so the core's restart guard does not make them
    sit out the first minute (what an operator does for freshly provisioned masters)."""
    with Redlock(group.urls) as dlm:
        arm(dlm)
    return group


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``.

    A check that meets an outage (a loaded machine missing the per-master timeout) is
    no answer either way: polled again.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except QuorumUnavailable:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(0.02)
