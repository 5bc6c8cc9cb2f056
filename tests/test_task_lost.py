"""A run whose lock is lost can stop: ``self.lock_check()`` in a body that loops, and
``lock_on_lost`` ending the body the moment renewal finds out (``raise`` in its thread,
``kill`` its prefork process). The loss is caused the real way: the key deleted on every
master, as a failover losing it would."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

from celery_redlock import ConfigurationError, LockLost, SingletonTask, signals
from celery_redlock._celery import stop
from celery_redlock._celery.appstate import state_of
from celery_redlock._celery.reaper import reaper
from celery_redlock.task import prepare_worker
from celery_redlock.testing import RedisGroup, RedisServer
from tests.celery_helpers import close_app, running_worker, wait_for
from tests.celery_tasks import GATED, probe_of, task_decorator
from tests.test_task_lifecycle import Recorder
from tests.test_task_prefork import TIMEOUT, PreforkWorker, start_prefork
from tests.test_task_settings import MASTERS, bare_app, bind_task, fake_worker

pytest_plugins = ["tests.celery_fixtures"]


def lose(app: Celery, masters: RedisGroup, task: str, *args: Any) -> str:
    """Delete the call's key on every master; returns the key."""
    key = state_of(app).manager.settings.key(app.tasks[task].lock_resource(*args))
    for master in masters:
        master.client().delete(key)
    return key


def test_lock_check_passes_while_held_and_raises_once_lost(
    singleton_app: Celery, lock_masters: RedisGroup
) -> None:
    task = singleton_app.tasks["check_loop"]
    probe = probe_of(singleton_app)
    with Recorder(signals.lock_lost) as lost, running_worker(singleton_app, concurrency=2):
        result = task.apply_async(("k",))
        wait_for(lambda: probe.marks("checked:k"), what="a check passed while held")
        lose(singleton_app, lock_masters, "check_loop", "k")
        with pytest.raises(LockLost):
            result.get(timeout=TIMEOUT)
    assert [c["task_id"] for c in lost.calls] == [result.id]
    assert probe.marks("finished:k") == []


def test_lock_check_does_nothing_without_a_lock(singleton_app: Celery) -> None:
    """A direct call holds no lock (neither does ``run_unlocked``): nothing to lose."""
    task = singleton_app.tasks["check_loop"]
    assert task("direct", 0.05) == "finished"


def test_raise_ends_a_looping_body_in_its_thread_and_frees_only_its_own(
    singleton_app: Celery, lock_masters: RedisGroup
) -> None:
    """threads pool: the body never looks at its lock; LockLost lands in its thread. The
    key, taken meanwhile by another holder, is left alone by the stopped run's release."""
    task = singleton_app.tasks["loop_raise"]
    probe = probe_of(singleton_app)
    with running_worker(singleton_app, concurrency=2):
        result = task.apply_async(("k",))
        wait_for(lambda: probe.marks("pid:k"), what="the run")
        key = lose(singleton_app, lock_masters, "loop_raise", "k")
        taker = state_of(singleton_app).manager.acquire(task.lock_resource("k"), 60)
        assert taker is not None  # the key is free: someone else takes it
        with pytest.raises(LockLost):
            result.get(timeout=TIMEOUT)
        assert probe.marks("finished:k") == []
        assert [m.client().get(key) for m in lock_masters] == [taker.token.encode()] * 3
        assert taker.release()
        # The next run of the same resource proceeds; this one is not lost, so it ends.
        assert task.apply_async(("k", 0.05)).get(timeout=TIMEOUT) == "finished"


@pytest.fixture(scope="module")
def killing(
    redis_broker: RedisServer, lock_masters: RedisGroup, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PreforkWorker]:
    tmp = tmp_path_factory.mktemp("kill")
    worker = start_prefork(
        redis_broker,
        lock_masters,
        tmp,
        lease=20,
        concurrency=1,
        conf={"redlock_on_lost": "kill"},
    )
    yield worker
    worker.stop()
    close_app(worker.app)


def test_kill_ends_a_blocked_prefork_child_and_the_result_says_why(
    killing: PreforkWorker, lock_masters: RedisGroup
) -> None:
    """The body sleeps in one C call, where no exception reaches it: the child ends itself.
    A waiting client sees LockLost (stored first, by the child); Celery's main process
    then records the lost child (WorkerLostError), and the reaper stores the LockLost
    again, so that it is what stays."""
    app = killing.app
    task = app.tasks["stuck"]
    result = task.delay("k")
    pid = killing.pid_of("k")
    lose(app, lock_masters, "stuck", "k")
    with pytest.raises(LockLost):
        result.get(timeout=TIMEOUT)
    wait_for(lambda: "WorkerLostError" in killing.log.read_text(errors="replace"), timeout=TIMEOUT)
    wait_for(
        lambda: isinstance(AsyncResult(result.id, app=app).result, LockLost),
        timeout=TIMEOUT,
        what="the LockLost stored again over WorkerLostError",
    )
    assert probe_of(app).marks("finished:k") == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the child is gone...
    assert task.delay("k", 0.0).get(timeout=TIMEOUT) == "k"  # ...replaced, and the key free
    assert killing.pid_of("k") != pid
    assert signal.SIGKILL.name in killing.log.read_text(errors="replace")


def raise_stops_loop(worker: PreforkWorker, masters: RedisGroup, key: str) -> None:
    """loop_raise (``lock_on_lost="raise"``) in a worker subprocess: it fails with
    LockLost before its end, and the next run of its resource proceeds."""
    task = worker.app.tasks["loop_raise"]
    result = task.delay(key)
    worker.pid_of(key)
    lose(worker.app, masters, "loop_raise", key)
    with pytest.raises(LockLost):
        result.get(timeout=TIMEOUT)
    assert probe_of(worker.app).marks(f"finished:{key}") == []
    assert task.delay(key, 0.05).get(timeout=TIMEOUT) == "finished"


def test_raise_in_a_prefork_child_lands_in_its_main_thread(
    killing: PreforkWorker, lock_masters: RedisGroup
) -> None:
    """The task's own ``lock_on_lost="raise"`` wins over the worker's ``kill``: the child
    lives on (the next run is served by the same process)."""
    raise_stops_loop(killing, lock_masters, "p-raise")
    pids = probe_of(killing.app).marks("pid:p-raise")
    assert len(pids) == 2
    assert len(set(pids)) == 1


@pytest.fixture(scope="module")
def gevent_worker(
    redis_broker: RedisServer, lock_masters: RedisGroup, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PreforkWorker]:
    tmp = tmp_path_factory.mktemp("gevent-lost")
    worker = start_prefork(redis_broker, lock_masters, tmp, lease=20, pool="gevent")
    yield worker
    worker.stop()
    close_app(worker.app)


def test_raise_under_gevent_is_thrown_into_the_runs_greenlet(
    gevent_worker: PreforkWorker, lock_masters: RedisGroup
) -> None:
    """One OS thread for every greenlet: the LockLost goes to the run's greenlet alone,
    while another run goes on in the same process."""
    hold = gevent_worker.app.tasks["hold_skip"]
    other = hold.delay("g-other", GATED)
    wait_for(lambda: probe_of(gevent_worker.app).started("g-other"), what="the other run")
    raise_stops_loop(gevent_worker, lock_masters, "g-raise")
    assert hold.is_locked("g-other", 0)
    probe_of(gevent_worker.app).open_gate("g-other")
    assert other.get(timeout=TIMEOUT) == "g-other"


def test_bad_values_are_refused() -> None:
    message = "redlock_on_lost must be one of 'continue', 'raise', 'kill', not 'stop'"
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        state_of(bare_app(redlock_masters=MASTERS, redlock_on_lost="stop")).config  # noqa: B018
    with pytest.raises(ConfigurationError, match=r"lock_on_lost of task proj.sync must be one"):
        bind_task(lock_on_lost=True)
    with pytest.raises(ConfigurationError, match=r"unknown option 'lock_on_loss'"):
        bind_task(lock_on_loss="raise")


def app_with(name: str, conf: dict[str, Any] | None = None, **options: Any) -> Celery:
    """An app with settings ``conf`` and one SingletonTask with ``options``."""
    app = bare_app(redlock_masters=MASTERS, **(conf or {}))

    def body() -> None:
        """A task to check."""

    task_decorator(app)(base=SingletonTask, name=name, **options)(body)
    app.finalize()
    return app


@pytest.mark.parametrize("pool", ["celery.concurrency.thread", "solo", "gevent"])
def test_kill_is_refused_outside_prefork(pool: str) -> None:
    app = bare_app(redlock_masters=MASTERS, redlock_on_lost="kill")
    needs = (
        f"lock_on_lost='kill' needs the prefork pool, not {pool.rsplit('.', 1)[-1]}: it ends"
        " the pool process, which here is the whole worker; use 'raise', which raises"
        " LockLost in the run's thread (or greenlet)"
    )
    with pytest.raises(ConfigurationError, match=re.escape(f"redlock_on_lost: {needs}")):
        prepare_worker(fake_worker(app, pool))
    app = app_with("killer", lock_on_lost="kill")
    with pytest.raises(ConfigurationError, match=re.escape(f"task killer: {needs}")):
        prepare_worker(fake_worker(app, pool))


def test_kill_and_raise_are_accepted_in_prefork(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stop, "_prefork_main", None)  # this process is no worker after
    app = app_with("raiser", {"redlock_on_lost": "kill"}, lock_on_lost="raise")
    try:
        prepare_worker(fake_worker(app, "celery.concurrency.prefork:TaskPool"))
    finally:
        reaper.disable()
