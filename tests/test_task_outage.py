"""Outage is not contention: with too few masters answering, a run never runs unlocked by
accident and is never dropped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from celery_redlock import QuorumUnavailable, is_skipped, signals
from celery_redlock._celery.appconf import OUTAGE_COUNTDOWN_MAX
from celery_redlock._celery.run import outage_countdown
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


# --- outage retries have a budget of their own -------------------------------------------

#: More outage retries than Celery's default max_retries (3) allows.
PAST_MAX_RETRIES = 5


def test_outage_retries_back_off_doubling_to_the_cap() -> None:
    for attempt, ceiling in [(0, 2.0), (1, 4.0), (3, 16.0), (7, 256.0), (8, 300.0), (99, 300.0)]:
        countdown = outage_countdown(2.0, attempt)
        assert ceiling / 2 <= countdown <= ceiling
    assert OUTAGE_COUNTDOWN_MAX == 300.0


def outages_of(outages: Recorder, task_id: str) -> int:
    return sum(call["task_id"] == task_id for call in outages.calls)


def test_outage_retries_use_neither_max_retries_nor_request_retries(
    make_celery: AppFactory, cluster: RedisGroup
) -> None:
    """``retry_once`` (max_retries=3) retries itself once and records request.retries:
    after more outage retries than max_retries allows, its body still runs from 0."""
    app = make_celery(
        masters=cluster.urls, redlock_master_timeout=0.1, redlock_outage_countdown=0.05
    )
    hang_majority(cluster)
    try:
        with Recorder(signals.lock_outage) as outages, running_worker(app, 2):
            result = app.tasks["retry_once"].delay("budget")
            wait_for(
                lambda: outages_of(outages, result.id) >= PAST_MAX_RETRIES or result.ready(),
                what="outage retries past max_retries",
            )
            assert not result.ready(), result.state  # not failed by max_retries
            recover(cluster)
            assert result.get(timeout=TIMEOUT) == 1
    finally:
        recover(cluster)
    assert probe_of(app).marks("retry_once:budget") == ["0", "1"]


def test_past_the_outage_deadline_the_call_fails_loudly(
    make_celery: AppFactory, cluster: RedisGroup, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_celery(
        masters=cluster.urls,
        redlock_master_timeout=0.1,
        redlock_outage_countdown=0.05,
        redlock_outage_deadline=1,
    )
    hang_majority(cluster)
    try:
        with Recorder(signals.lock_outage) as outages, running_worker(app, 2):
            result = app.tasks["hold_skip"].delay("late", 0.0)
            result.get(timeout=TIMEOUT, propagate=False)
            error = result.result
    finally:
        recover(cluster)
    assert isinstance(error, QuorumUnavailable)
    assert str(error).startswith("too few masters answered to lock")
    gave_up = f"hold_skip[{result.id}] gave up after retrying for 1 s (lock_outage_deadline)"
    assert f"; task {gave_up}" in str(error)
    assert outages_of(outages, result.id) >= 2  # retried until the deadline, not just failed
    ours = [r for r in caplog.records if r.name == "celery_redlock" and r.levelname == "ERROR"]
    assert [r.getMessage().split(":")[0] for r in ours] == [f"task hold_skip[{result.id}] FAILS"]
    assert probe_of(app).runs() == []


def test_a_queue_time_lock_the_outage_kept_is_freed_by_the_retry(
    make_celery: AppFactory,
) -> None:
    """The run frees its message's queue-time lock before locking; masters down then keep
    it (appendonly: it survives their restart). The outage retry frees it again, so the
    call does not meet its own queue-time lock as a duplicate and get skipped."""
    with RedisGroup(3, appendonly=True) as durable:
        app = make_celery(
            masters=armed(durable).urls,
            redlock_master_timeout=0.1,
            redlock_outage_countdown=0.05,
        )
        task = app.tasks["dedup"]
        result = task.delay("kept", 0.0)  # queued: its queue-time lock is on all three
        durable[0].kill()
        durable[1].kill()
        with Recorder(signals.lock_outage) as outages, running_worker(app, 2):
            wait_for(lambda: outages_of(outages, result.id) >= 2, what="outage retries")
            durable[0].start()
            durable[1].start()
            assert result.get(timeout=TIMEOUT) == "kept"
    assert len(probe_of(app).runs()) == 1
