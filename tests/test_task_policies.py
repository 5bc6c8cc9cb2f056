"""SingletonTask through a real worker: mutual exclusion and the duplicate policies.

Each scenario sends duplicates at once to a threads-pool worker with enough threads to run
them all together; the task bodies record their runs independently of the lock (see
``tests.celery_tasks``), and the tests check that runs of one key never overlapped.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

from celery_redlock import TaskLocked, is_skipped, signals
from tests.celery_helpers import running_worker, wait_for
from tests.celery_tasks import GATED, Probe, probe_of
from tests.test_task_lifecycle import Recorder

pytest_plugins = ["tests.celery_fixtures"]

TIMEOUT = 60


def assert_no_overlap(probe: Probe) -> None:
    """Both independent checks: the active counters and the recorded intervals."""
    assert probe.overlaps() == []
    by_key: dict[str, list[tuple[float, float]]] = {}
    for run in probe.runs():
        by_key.setdefault(run["key"], []).append((run["start"], run["end"]))
    for key, intervals in by_key.items():
        intervals.sort()
        for (_s1, end1), (start2, _e2) in itertools.pairwise(intervals):
            assert end1 <= start2, f"two runs of {key} overlapped"


def outcomes(results: list[AsyncResult]) -> dict[str, int]:
    counts = {"ran": 0, "skipped": 0, "locked": 0}
    for result in results:
        value = result.get(timeout=TIMEOUT, propagate=False)
        if isinstance(value, TaskLocked):
            counts["locked"] += 1
        elif is_skipped(value):
            counts["skipped"] += 1
        else:
            assert value == "k", value
            counts["ran"] += 1
    return counts


def send_duplicates(app: Celery, task: str, n: int, seconds: float) -> list[AsyncResult]:
    return [app.tasks[task].apply_async(("k", seconds)) for _ in range(n)]


def test_skip_20_concurrent_duplicates_run_one_at_a_time(singleton_app: Celery) -> None:
    with running_worker(singleton_app, concurrency=10):
        counts = outcomes(send_duplicates(singleton_app, "hold_skip", 20, 0.5))
    probe = probe_of(singleton_app)
    assert counts["ran"] + counts["skipped"] == 20
    assert counts["ran"] == len(probe.runs()) >= 1
    assert counts["skipped"] >= 1  # ten threads take ten at once: one runs, the rest skip
    assert_no_overlap(probe)


def test_raise_20_concurrent_duplicates_fail_with_task_locked(singleton_app: Celery) -> None:
    with running_worker(singleton_app, concurrency=10):
        counts = outcomes(send_duplicates(singleton_app, "hold_raise", 20, 0.5))
    probe = probe_of(singleton_app)
    assert counts["ran"] + counts["locked"] == 20
    assert counts["ran"] == len(probe.runs()) >= 1
    assert counts["locked"] >= 1
    assert_no_overlap(probe)


@pytest.mark.parametrize("policy", ["retry", "wait"])
def test_retry_and_wait_run_every_duplicate_in_turn(singleton_app: Celery, policy: str) -> None:
    with running_worker(singleton_app, concurrency=10):
        counts = outcomes(send_duplicates(singleton_app, f"hold_{policy}", 8, 0.1))
    probe = probe_of(singleton_app)
    assert counts == {"ran": 8, "skipped": 0, "locked": 0}
    assert len(probe.runs()) == 8
    assert_no_overlap(probe)


def test_wait_gives_up_after_its_timeout(singleton_app: Celery) -> None:
    with running_worker(singleton_app, concurrency=4):
        first = singleton_app.tasks["hold_wait_short"].apply_async(("k", GATED))
        wait_for(lambda: probe_of(singleton_app).started("k"), what="first run")
        second = singleton_app.tasks["hold_wait_short"].apply_async(("k", 0.0))
        with pytest.raises(TaskLocked, match=r"after waiting 0\.3 s"):
            second.get(timeout=TIMEOUT)
        probe_of(singleton_app).open_gate("k")
        assert first.get(timeout=TIMEOUT) == "k"
    assert len(probe_of(singleton_app).runs()) == 1


def test_retry_honours_max_retries(singleton_app: Celery) -> None:
    with Recorder(signals.lock_duplicate) as duplicates, running_worker(singleton_app, 4):
        first = singleton_app.tasks["hold_retry_twice"].apply_async(("k", GATED))
        wait_for(lambda: probe_of(singleton_app).started("k"), what="first run")
        second = singleton_app.tasks["hold_retry_twice"].apply_async(("k", 0.0))
        with pytest.raises(TaskLocked, match="is held by"):
            second.get(timeout=TIMEOUT)
        probe_of(singleton_app).open_gate("k")
        assert first.get(timeout=TIMEOUT) == "k"
    assert [c["task_id"] for c in duplicates.calls] == [second.id] * 3  # run, 2 retries
    assert len(probe_of(singleton_app).runs()) == 1


def test_different_keys_run_in_parallel(singleton_app: Celery) -> None:
    with running_worker(singleton_app, concurrency=4):
        a = singleton_app.tasks["meet"].apply_async(("a", "p1"))
        b = singleton_app.tasks["meet"].apply_async(("b", "p1"))
        assert a.get(timeout=TIMEOUT) is True
        assert b.get(timeout=TIMEOUT) is True


def test_skip_names_the_holder_and_sends_the_duplicate_signal(singleton_app: Celery) -> None:
    seen: list[dict[str, Any]] = []

    def on_duplicate(sender: Any, **kwargs: Any) -> None:
        seen.append(kwargs)

    signals.lock_duplicate.connect(on_duplicate, weak=False)
    try:
        with running_worker(singleton_app, concurrency=4):
            first = singleton_app.tasks["hold_skip"].apply_async(("k", GATED))
            wait_for(lambda: probe_of(singleton_app).started("k"), what="first run")
            second = singleton_app.tasks["hold_skip"].apply_async(("k", 0.0))
            value = second.get(timeout=TIMEOUT)
            probe_of(singleton_app).open_gate("k")
            assert first.get(timeout=TIMEOUT) == "k"
    finally:
        signals.lock_duplicate.disconnect(on_duplicate)
    assert is_skipped(value)
    assert value["holder"] == first.id
    assert value["resource"] == singleton_app.tasks["hold_skip"].lock_resource("k", 9)
    assert [(s["task_id"], s["policy"], s["stage"], s["holder"]) for s in seen] == [
        (second.id, "skip", "run", first.id)
    ]
