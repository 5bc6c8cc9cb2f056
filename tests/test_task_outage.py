"""Outage is not contention: with too few masters answering, a run never runs unlocked by
accident and is never dropped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from celery_redlock import QuorumUnavailable, is_skipped, signals
from celery_redlock.testing import RedisGroup
from tests.celery_helpers import AppFactory, armed, running_worker, wait_for
from tests.celery_tasks import probe_of
from tests.test_task_lifecycle import Recorder

pytest_plugins = ["tests.celery_fixtures"]

TIMEOUT = 60


@pytest.fixture
def cluster() -> Iterator[RedisGroup]:
    """Masters of this test alone: it hangs two of them."""
    with RedisGroup(3) as group:
        yield armed(group)


@pytest.fixture
def outage_app(make_celery: AppFactory, cluster: RedisGroup) -> Celery:
    return make_celery(masters=cluster.urls, redlock_master_timeout=0.1)


def hang_majority(cluster: RedisGroup) -> None:
    cluster[0].pause()
    cluster[1].pause()


def recover(cluster: RedisGroup) -> None:
    cluster[0].resume()
    cluster[1].resume()


def test_majority_down_the_task_retries_and_runs_once_they_return(
    outage_app: Celery, cluster: RedisGroup
) -> None:
    hang_majority(cluster)
    try:
        with Recorder(signals.lock_outage) as outages, running_worker(outage_app, 2):
            result = outage_app.tasks["hold_skip"].apply_async(("o", 0.0))
            wait_for(lambda: len(outages.calls) >= 2, what="two outage retries")
            assert result.state == "RETRY"
            assert probe_of(outage_app).runs() == []
            recover(cluster)
            assert result.get(timeout=TIMEOUT) == "o"
    finally:
        recover(cluster)
    assert len(probe_of(outage_app).runs()) == 1
    assert {c["policy"] for c in outages.calls} == {"retry"}


def test_outage_policy_raise_fails_the_run(make_celery: AppFactory, cluster: RedisGroup) -> None:
    app = make_celery(masters=cluster.urls, redlock_on_outage="raise", redlock_master_timeout=0.1)
    hang_majority(cluster)
    try:
        with running_worker(app, 2), pytest.raises(QuorumUnavailable, match="too few masters"):
            app.tasks["hold"].delay("o").get(timeout=TIMEOUT)
    finally:
        recover(cluster)
    assert probe_of(app).runs() == []


def test_fail_open_runs_unlocked_with_a_warning(
    outage_app: Celery, cluster: RedisGroup, caplog: pytest.LogCaptureFixture
) -> None:
    hang_majority(cluster)
    try:
        with running_worker(outage_app, 2):
            assert outage_app.tasks["fail_open"].delay("u").get(timeout=TIMEOUT) is True
    finally:
        recover(cluster)
    assert len(probe_of(outage_app).runs()) == 1
    assert "runs WITHOUT its lock" in caplog.text


def test_dedup_in_an_outage_publishes_and_lets_the_worker_decide(
    outage_app: Celery, cluster: RedisGroup
) -> None:
    task = outage_app.tasks["dedup"]
    hang_majority(cluster)
    try:
        with Recorder(signals.lock_outage) as outages:
            first = task.delay("d", 0.0)
            second = task.delay("d", 0.0)
        assert first.id != second.id  # published, not dropped
        assert [c["policy"] for c in outages.calls] == ["publish", "publish"]
    finally:
        recover(cluster)
    with running_worker(outage_app, 2):
        values = [first.get(timeout=TIMEOUT), second.get(timeout=TIMEOUT)]
    # Both were published; in the worker the lock still lets one run at a time, and the
    # default policy skips a duplicate that finds the other one running.
    assert "d" in values
    assert len(probe_of(outage_app).runs()) == sum(v == "d" for v in values)
    assert all(v == "d" or is_skipped(v) for v in values)
