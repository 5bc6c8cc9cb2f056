"""Locking by configuration: ``redlock_tasks`` for tasks whose base class cannot change,
and settings given the Django way (``CELERY_`` namespace), through a real worker."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

import celery_redlock
from celery_redlock import ConfigurationError, SingletonTask, is_skipped
from celery_redlock._celery.appconf import OnDuplicate
from celery_redlock.testing import RedisGroup, RedisServer
from tests.celery_helpers import AppFactory, close_app, running_worker
from tests.celery_tasks import BASE_CONF, Probe, define_tasks, probe_of, task_decorator
from tests.test_task_policies import assert_no_overlap

pytest_plugins = ["tests.celery_fixtures"]

TIMEOUT = 60


def test_redlock_tasks_locks_a_plain_task_without_touching_it() -> None:
    app = Celery("plain", set_as_current=False, broker="memory://")
    app.conf.redlock_masters = ["redis://127.0.0.1:7001/0"]
    app.conf.redlock_tasks = {"proj.rebuild": {"lock_key": [], "lock_on_duplicate": "raise"}}

    class Audited(app.Task):  # type: ignore[misc,name-defined]
        """A base class of the user's own, which must keep working underneath."""

        def audit(self) -> str:
            return "audited"

    @task_decorator(app)(base=Audited, name="proj.rebuild")
    def rebuild(index: str) -> str:
        return index

    celery_redlock.install(app)
    app.finalize()
    task: Any = app.tasks["proj.rebuild"]
    assert isinstance(task, SingletonTask)
    assert isinstance(task, Audited)
    assert task.audit() == "audited"
    assert task.lock_options.on_duplicate is OnDuplicate.RAISE
    assert task.lock_resource("a") == task.lock_resource("b") == "proj.rebuild"
    assert task("x") == "x"  # still the user's function


def test_a_listed_plain_task_runs_one_at_a_time_in_the_worker(make_celery: AppFactory) -> None:
    app = make_celery(redlock_tasks={"plain_hold": {"lock_key": ["key"]}})
    task = app.tasks["plain_hold"]
    with running_worker(app, concurrency=8):
        results = [task.delay("k", 0.3) for _ in range(8)]
        values = [r.get(timeout=TIMEOUT) for r in results]
    assert isinstance(task, SingletonTask)
    ran = [v for v in values if v == "k"]
    assert len(ran) == len(probe_of(app).runs()) >= 1
    assert len(ran) + sum(map(is_skipped, values)) == 8
    assert_no_overlap(probe_of(app))


def test_a_base_class_call_still_wraps_the_body(make_celery: AppFactory) -> None:
    """SingletonTask runs the body as Celery's tracer does (``run``, the request it pushed)
    unless a base class after it has a ``__call__`` of its own, which must then run: as
    a listed task's base, and as a base next to SingletonTask."""
    app = make_celery(
        redlock_tasks={"proj.listed": {"lock_key": ["key"]}}, task_default_queue="q-call"
    )
    probe = probe_of(app)

    class Traced(app.Task):  # type: ignore[misc,name-defined]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            probe.mark(f"traced:{self.name}", self.request.id or "direct")
            return super().__call__(*args, **kwargs)

    def body(self: Any, key: str) -> list[Any]:
        request = self.request
        return [key, request.id, request.retries, self.is_locked(key)]

    task = task_decorator(app)
    listed = task(bind=True, base=Traced, name="proj.listed")(body)
    mixed = task(bind=True, base=type("Mixed", (SingletonTask, Traced), {}), name="proj.mixed")(
        body
    )
    plain = task(bind=True, base=SingletonTask, name="proj.plain")(body)
    with running_worker(app, concurrency=2):
        results = {t.name: t.delay("k") for t in (listed, mixed, plain)}
        values = {name: r.get(timeout=TIMEOUT) for name, r in results.items()}
    for name, result in results.items():
        assert values[name] == ["k", result.id, 0, True], name  # its own request, locked
    assert probe.marks("traced:proj.listed") == [results["proj.listed"].id]
    assert probe.marks("traced:proj.mixed") == [results["proj.mixed"].id]
    tasks = app.tasks
    assert isinstance(tasks["proj.listed"], SingletonTask)
    assert tasks["proj.plain"]._plain_call  # Celery's fast path: run, under its request
    assert not tasks["proj.mixed"]._plain_call
    assert not tasks["proj.listed"]._plain_call


def test_settings_under_the_celery_namespace_reach_the_worker(
    redis_broker: RedisServer, lock_masters: RedisGroup
) -> None:
    settings = type(
        "DjangoSettings",
        (),
        {
            "CELERY_BROKER_URL": redis_broker.url,
            "CELERY_RESULT_BACKEND": redis_broker.url,
            "CELERY_TASK_DEFAULT_QUEUE": "q-namespace",
            "CELERY_REDLOCK_MASTERS": lock_masters.urls,
            "CELERY_REDLOCK_KEY_PREFIX": "namespace:",
            "CELERY_REDLOCK_ON_DUPLICATE": "raise",
            **{f"CELERY_{k.upper()}": v for k, v in BASE_CONF.items()},
        },
    )
    app = Celery("namespaced", set_as_current=False)
    app.config_from_object(settings, namespace="CELERY")
    app.probe = Probe(redis_broker.url, "namespace")
    define_tasks(app)
    task = app.tasks["hold"]
    try:
        with running_worker(app, concurrency=4):
            results = [task.delay("k", 0.5) for _ in range(4)]
            values = [r.get(timeout=TIMEOUT, propagate=False) for r in results]
        assert task.lock_options.on_duplicate is OnDuplicate.RAISE
        assert values.count("k") >= 1
        assert all(v == "k" or isinstance(v, celery_redlock.TaskLocked) for v in values)
    finally:
        close_app(app)


def test_a_worker_will_not_start_on_a_bad_setting(make_celery: AppFactory) -> None:
    """The check runs in a worker bootstep: an error there stops the start (a signal
    receiver's error would only be logged)."""
    app = make_celery(redlock_tasks={"proj.typo": {}})
    with pytest.raises(ConfigurationError, match="not registered: proj"), running_worker(app):
        pytest.fail("the worker started")
