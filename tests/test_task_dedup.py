"""Queue-time deduplication (``lock_dedup``) and throttling windows (``lock_window``)."""

from __future__ import annotations

import logging
import time

import pytest
from celery import Celery, group

from celery_redlock import is_skipped, signals
from celery_redlock._celery.appstate import state_of
from celery_redlock.testing import RedisGroup
from tests.celery_helpers import AppFactory, running_worker, wait_for
from tests.celery_tasks import GATED, probe_of
from tests.test_task_lifecycle import Recorder

pytest_plugins = ["tests.celery_fixtures"]

TIMEOUT = 60


def pttls(app: Celery, masters: RedisGroup, resource: str) -> list[int]:
    key = state_of(app).manager.settings.key(resource)
    return [int(master.client().pttl(key)) for master in masters]


def test_a_queued_call_is_returned_instead_of_published_twice(singleton_app: Celery) -> None:
    task = singleton_app.tasks["dedup"]
    with Recorder(signals.lock_duplicate) as duplicates:
        first = task.apply_async(("k",))  # no worker yet: it waits in the queue
        second = task.delay("k")
        assert second.id == first.id
        assert task.is_locked("k")
        with running_worker(singleton_app, concurrency=2):
            assert first.get(timeout=TIMEOUT) == "k"
            third = task.delay("k")
            assert third.id != first.id
            assert third.get(timeout=TIMEOUT) == "k"
    assert len(probe_of(singleton_app).runs()) == 2
    assert [(c["stage"], c["holder"]) for c in duplicates.calls] == [("publish", first.id)]
    assert not task.is_locked("k")


def test_a_running_call_is_returned_too(singleton_app: Celery) -> None:
    task = singleton_app.tasks["dedup"]
    with running_worker(singleton_app, concurrency=2):
        first = task.apply_async(("k", GATED))
        wait_for(lambda: probe_of(singleton_app).started("k"), what="the run")
        assert task.apply_async(("k", GATED)).id == first.id
        probe_of(singleton_app).open_gate("k")
        assert first.get(timeout=TIMEOUT) == "k"
    assert len(probe_of(singleton_app).runs()) == 1


def test_arguments_the_serializer_reshapes_are_deduplicated_all_the_same(
    singleton_app: Celery,
) -> None:
    """JSON delivers ``{1: "x"}`` as ``{"1": "x"}`` and a tuple as a list. The run keys the
    call on what arrived; the publisher must key it the same way, or the duplicate of a
    running call is published (and its message skipped in the worker)."""
    task = singleton_app.tasks["dedup_tags"]
    probe = probe_of(singleton_app)
    tags = {1: "x", "pair": (1, 2)}
    with running_worker(singleton_app, concurrency=2):
        first = task.apply_async(("m", tags, GATED))
        wait_for(lambda: probe.started("m"), what="the run")
        assert task.apply_async(("m", tags, GATED)).id == first.id
        assert task.is_locked("m", tags, GATED)
        assert task.is_locked("m", {"1": "x", "pair": [1, 2]}, GATED)  # as JSON delivers it
        probe.open_gate("m")
        assert first.get(timeout=TIMEOUT) == "m"
    assert len(probe.runs()) == 1


def test_the_queue_time_lock_outlives_the_countdown(
    make_celery: AppFactory, lock_masters: RedisGroup
) -> None:
    app = make_celery(redlock_dedup_ttl=1)
    task = app.tasks["dedup"]
    published = time.monotonic()
    result = task.apply_async(("k", 0.0), countdown=2)
    resource = task.lock_resource("k", 0.0)
    left = pttls(app, lock_masters, resource)
    waited_ms = (time.monotonic() - published) * 1000
    # dedup_ttl + countdown (3 s) less the time since publishing, however long a busy
    # machine made that: a lock of dedup_ttl alone would have at most 1000 ms left.
    assert all(3000 - waited_ms - 1 <= pttl <= 3000 for pttl in left), (left, waited_ms)
    with running_worker(app, concurrency=2):
        assert result.get(timeout=TIMEOUT) == "k"
    assert not task.is_locked("k", 0.0)


def test_a_call_due_after_the_restart_guard_is_published_not_deduplicated(
    singleton_app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    task = singleton_app.tasks["dedup"]
    with caplog.at_level(logging.WARNING, logger="celery_redlock"):
        first = task.apply_async(("late",), countdown=600)
        second = task.apply_async(("late",), countdown=600)
    assert first.id != second.id
    assert not task.is_locked("late")
    assert "not deduplicated at publish" in caplog.text


def test_calls_with_callbacks_are_not_deduplicated(singleton_app: Celery) -> None:
    task, record = singleton_app.tasks["dedup"], singleton_app.tasks["record"]
    first = task.apply_async(("k",))
    linked = task.apply_async(("k",), link=record.s("linked"))
    assert linked.id != first.id  # returning `first` would drop the callback


def test_canvas_members_are_left_to_the_worker(singleton_app: Celery) -> None:
    """Group members have task ids the group result waits for: never swapped at publish."""
    task = singleton_app.tasks["dedup"]
    with running_worker(singleton_app, concurrency=4):
        values = group(task.s("g", 0.3), task.s("g", 0.3)).apply_async().get(timeout=TIMEOUT)
    assert "g" in values
    assert all(v == "g" or is_skipped(v) for v in values)


def test_revoking_a_queued_call_frees_its_key(singleton_app: Celery) -> None:
    task = singleton_app.tasks["dedup"]
    with running_worker(singleton_app, concurrency=2):
        result = task.apply_async(("k",), countdown=1)
        assert task.is_locked("k")
        result.revoke()
        wait_for(lambda: not task.is_locked("k"), what="the key to be freed")
    assert probe_of(singleton_app).runs() == []


def test_a_window_throttles_calls_after_a_run(singleton_app: Celery) -> None:
    task = singleton_app.tasks["throttled"]  # lock_window=2.0
    with running_worker(singleton_app, concurrency=2):
        first = task.delay("w")
        assert first.get(timeout=TIMEOUT) == "w"
        again = task.delay("w").get(timeout=TIMEOUT)
        assert is_skipped(again)
        assert again["holder"] == first.id
        wait_for(
            lambda: not state_of(singleton_app).manager.locked(task.lock_resource("w") + "~window"),
            what="the window to close",
        )
        assert task.delay("w").get(timeout=TIMEOUT) == "w"
    assert len(probe_of(singleton_app).runs()) == 2
