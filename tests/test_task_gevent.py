"""A real ``celery worker -P gevent`` subprocess: the lock client waits cooperatively, so
duplicates among concurrent greenlets never overlap, different keys run side by side, and
a run outliving its lease keeps its lock (renewed from a greenlet)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from celery.exceptions import TimeLimitExceeded

from celery_redlock import is_skipped
from celery_redlock.testing import RedisGroup, RedisServer
from tests.celery_helpers import close_app, wait_for
from tests.test_task_prefork import TIMEOUT, PreforkWorker, run_duplicates, start_prefork

pytest_plugins = ["tests.celery_fixtures"]

LEASE = 2.0  # short, so that the renewal test outlives it


@pytest.fixture(scope="module")
def gevent_worker(
    redis_broker: RedisServer, lock_masters: RedisGroup, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PreforkWorker]:
    tmp = tmp_path_factory.mktemp("gevent")
    worker = start_prefork(redis_broker, lock_masters, tmp, LEASE, concurrency=20, pool="gevent")
    yield worker
    worker.stop()
    close_app(worker.app)
    log = worker.log.read_text(errors="replace")
    assert "lost its lock" not in log, log


def test_duplicates_among_greenlets_never_overlap(gevent_worker: PreforkWorker) -> None:
    run_duplicates(gevent_worker.app, "g-dup", 20)


def test_different_keys_run_side_by_side(gevent_worker: PreforkWorker) -> None:
    meet = gevent_worker.app.tasks["meet"]
    results = [meet.delay(f"g-meet-{i}", "g-party", size=5) for i in range(5)]
    assert [r.get(timeout=TIMEOUT) for r in results] == [True] * 5


def test_a_run_outliving_its_lease_keeps_its_lock(gevent_worker: PreforkWorker) -> None:
    hold = gevent_worker.app.tasks["hold_skip"]
    first = hold.delay("g-long", 3 * LEASE)
    wait_for(lambda: hold.is_locked("g-long", 0), what="the long run to start")
    time.sleep(1.5 * LEASE)  # past the lease it took: only renewal keeps it
    assert hold.is_locked("g-long", 0)
    assert is_skipped(hold.delay("g-long", 0).get(timeout=TIMEOUT))
    assert first.get(timeout=TIMEOUT) == "g-long"
    assert not hold.is_locked("g-long", 0)


def test_the_hard_time_limit_frees_the_key_at_once(gevent_worker: PreforkWorker) -> None:
    """gevent enforces the hard limit by raising into the task's greenlet: the run's
    finally releases the lock, so the key is free long before renewal (which would keep
    it up to the limit plus a lease) or expiry could free it."""
    task = gevent_worker.app.tasks["hard_limited"]  # time_limit=1.5
    with gevent_worker.how_freed("hard_limited", "g-hard") as freed:
        result = task.delay("g-hard")
        gevent_worker.pid_of("g-hard")
    assert freed == ["del"] * 3
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=TIMEOUT)
