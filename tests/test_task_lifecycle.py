"""SingletonTask through a real worker: the lock is held for the whole body and released
however the run ends; every way a task arrives is guarded."""

from __future__ import annotations

import json
from typing import Any

import pytest
from celery import Celery, chain
from celery.exceptions import TaskRevokedError

from celery_redlock import is_skipped, signals
from celery_redlock._celery.appstate import state_of
from celery_redlock.testing import RedisGroup
from tests.celery_helpers import running_worker, wait_for
from tests.celery_tasks import GATED, probe_of

pytest_plugins = ["tests.celery_fixtures"]

TIMEOUT = 60


class Recorder:
    """Collects one of our signals while connected."""

    def __init__(self, signal: Any) -> None:
        self.signal = signal
        self.calls: list[dict[str, Any]] = []

    def __call__(self, sender: Any, **kwargs: Any) -> None:
        self.calls.append({"sender": sender, **kwargs})

    def __enter__(self) -> Recorder:
        self.signal.connect(self, weak=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.signal.disconnect(self)


def test_success_holds_the_lock_for_the_body_and_releases_it(singleton_app: Celery) -> None:
    task = singleton_app.tasks["hold"]
    with (
        Recorder(signals.lock_acquired) as acquired,
        Recorder(signals.lock_released) as rel,
        running_worker(singleton_app, concurrency=2),
    ):
        result = task.apply_async(("k", GATED))
        wait_for(lambda: probe_of(singleton_app).started("k"), what="the run")
        assert task.is_locked("k", GATED)
        assert task.is_locked(seconds=GATED, key="k")  # one call, however spelled
        assert not task.is_locked("k")  # another call: `seconds` defaults to 0.2
        probe_of(singleton_app).open_gate("k")
        assert result.get(timeout=TIMEOUT) == "k"
    assert not task.is_locked("k", GATED)
    assert [c["task_id"] for c in acquired.calls] == [result.id]
    assert [(c["task_id"], c["released"]) for c in rel.calls] == [(result.id, True)]
    assert acquired.calls[0]["lock"].owner == result.id


def test_an_exception_releases_the_lock(singleton_app: Celery) -> None:
    task = singleton_app.tasks["boom"]
    with running_worker(singleton_app, concurrency=2):
        first = task.apply_async(("k",))
        with pytest.raises(ValueError, match="k"):
            first.get(timeout=TIMEOUT)
        second = task.apply_async(("k",))
        with pytest.raises(ValueError, match="k"):
            second.get(timeout=TIMEOUT)
    # Both ran under the lock: the first one's exception did not leave it behind.
    assert probe_of(singleton_app).marks("boom:k") == ["True", "True"]
    assert not task.is_locked("k")


def test_retry_takes_the_lock_again(singleton_app: Celery) -> None:
    with Recorder(signals.lock_acquired) as acquired, running_worker(singleton_app, concurrency=2):
        result = singleton_app.tasks["retry_once"].apply_async(("k",))
        assert result.get(timeout=TIMEOUT) == 1
    assert probe_of(singleton_app).marks("retry_once:k") == ["0", "1"]
    assert [c["task_id"] for c in acquired.calls] == [result.id, result.id]


def test_eager_apply_locks_and_its_retry_does_not_deadlock(singleton_app: Celery) -> None:
    result = singleton_app.tasks["retry_once"].apply(("eager",))
    assert result.get(timeout=TIMEOUT) == 1
    assert not singleton_app.tasks["retry_once"].is_locked("eager")


def test_a_direct_call_is_a_plain_function_call(singleton_app: Celery) -> None:
    assert singleton_app.tasks["hold"]("k", 0.0) == "k"
    assert probe_of(singleton_app).runs()


def test_send_task_by_name_is_guarded_in_the_worker(singleton_app: Celery) -> None:
    with running_worker(singleton_app, concurrency=4):
        first = singleton_app.tasks["hold_skip"].apply_async(("k", GATED))
        wait_for(lambda: probe_of(singleton_app).started("k"), what="the first run")
        second = singleton_app.send_task("hold_skip", args=("k", 0.0))
        assert is_skipped(second.get(timeout=TIMEOUT))
        probe_of(singleton_app).open_gate("k")
        assert first.get(timeout=TIMEOUT) == "k"
    assert len(probe_of(singleton_app).runs()) == 1


def test_a_skipped_duplicate_sends_no_callbacks_but_a_run_does(singleton_app: Celery) -> None:
    hold, record = singleton_app.tasks["hold_skip"], singleton_app.tasks["record"]
    with running_worker(singleton_app, concurrency=4):
        first = hold.apply_async(("k", GATED))
        wait_for(lambda: probe_of(singleton_app).started("k"), what="the first run")
        skipped = chain(hold.s("k", 0.0), record.s("after-skip")).apply_async()
        assert is_skipped(skipped.parent.get(timeout=TIMEOUT))
        probe_of(singleton_app).open_gate("k")
        assert first.get(timeout=TIMEOUT) == "k"
        ran = chain(hold.s("k", 0.0), record.s("after-run")).apply_async()
        assert ran.get(timeout=TIMEOUT) == "k"
    # Callbacks are sent before the result is stored, so the skip's is final by now; and
    # the chain's result does not wait forever for a step that will never run.
    assert probe_of(singleton_app).marks("record:after-skip") == []
    with pytest.raises(TaskRevokedError, match="not sent: hold_skip"):
        skipped.get(timeout=TIMEOUT)
    assert probe_of(singleton_app).marks("record:after-run") == [json.dumps("k")]
    assert not skipped.parent.children


def test_a_lost_lock_is_visible_to_the_task_and_signalled(
    singleton_app: Celery, lock_masters: RedisGroup
) -> None:
    task = singleton_app.tasks["watch_loss"]
    key = state_of(singleton_app).manager.settings.key(task.lock_resource("k"))
    with Recorder(signals.lock_lost) as lost, running_worker(singleton_app, concurrency=2):
        result = task.apply_async(("k",))
        wait_for(lambda: probe_of(singleton_app).marks("watching:k"), what="the run")
        for master in lock_masters:
            master.client().delete(key)  # what a failover losing the key would do
        assert result.get(timeout=TIMEOUT) is True
    assert [(c["task_id"], c["resource"]) for c in lost.calls] == [
        (result.id, task.lock_resource("k"))
    ]
