"""Wiring celery_redlock into a Celery app: :func:`install`, and the hooks it sets.

:class:`~celery_redlock.SingletonTask` installs itself when a task is bound; call
``install(app)`` yourself only for an app whose locked tasks are all listed in
``redlock_tasks`` (tasks whose base class you cannot change)::

    app.conf.redlock_tasks = {"thirdparty.tasks.rebuild_index": {"lock_key": []}}
    celery_redlock.install(app)

What it sets, and why there:

- A worker bootstep that checks the settings when the worker starts. Signal receivers
  would not do: Celery logs and ignores their exceptions, and a worker must refuse to
  start on a bad setting. The step also locks the ``redlock_tasks``, warns when the broker
  serves as the only master, refuses the eventlet pool, and under prefork enables the
  reaper (``_reaper``), before the pool forks.
- ``app.on_after_finalize``: locks the ``redlock_tasks`` in every process, so that
  publishers deduplicate them too (``celeryd_init`` is only sent by ``celery worker``,
  ``worker_init`` only in a worker's main process).
- ``task_revoked`` and ``task_failure`` in the worker's main process: a terminated, timed
  out or lost child's lock is released once the child has exited, and a message revoked
  before it ran frees its queue-time lock. ``worker_shutdown``: the same for whatever the
  pool left behind.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from celery import signals as celery_signals
from celery.exceptions import TimeLimitExceeded, WorkerLostError

from celery_redlock._celery.appstate import state_of
from celery_redlock._celery.reaper import reaper
from celery_redlock._celery.run import HEADER_RESOURCE, HEADER_TOKEN, header
from celery_redlock._core.masters import redact
from celery_redlock.exceptions import ConfigurationError

__all__ = ["install"]

logger = logging.getLogger("celery_redlock")

#: Pools whose workers cannot run our lock client: eventlet's patching deletes
#: ``select.poll``, in which the client waits for replies (gevent makes it cooperative).
_UNSUPPORTED_POOLS = ("eventlet",)


def install(app: Any) -> None:
    """Enable celery_redlock on ``app`` (idempotent)."""
    state = state_of(app)
    if state.installed:
        return
    state.installed = True
    app.steps["worker"].add(RedlockStep)
    _connect_receivers()
    if app.finalized:
        lock_listed_tasks(app, strict=False)
    else:
        app.on_after_finalize.connect(_after_finalize, sender=app, weak=False)


def _after_finalize(sender: Any, **_kwargs: Any) -> None:
    lock_listed_tasks(sender, strict=False)


class RedlockStep(bootsteps.Step):  # type: ignore[misc]  # celery is untyped
    """Checks and prepares celery_redlock as the worker starts; an error stops the start."""

    name = "celery_redlock"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        prepare_worker(worker)


def prepare_worker(worker: Any) -> None:
    app = worker.app
    pool = _pool_name(worker.pool_cls)
    if pool in _UNSUPPORTED_POOLS:
        raise ConfigurationError(
            f"celery_redlock does not support the {pool} pool: its lock client waits for"
            " replies in select.poll, which eventlet's monkey-patching removes; use"
            " prefork, threads, solo or gevent"
        )
    state = state_of(app)
    config = state.config
    lock_listed_tasks(app, strict=True)
    if config.masters_source != "redlock_masters":
        logger.warning(
            "redlock_masters is not set: the %s %s is the only lock master. One master is"
            " not fault tolerant (while it is down no SingletonTask runs, and a failover"
            " can lose locks); list three or five independent masters in redlock_masters",
            config.masters_source,
            redact(str(config.masters[0])),
        )
    state.manager  # noqa: B018 - made before the pool forks, so its warnings show once
    if pool == "prefork":
        reaper.enable()


def _pool_name(pool_cls: Any) -> str:
    module = pool_cls if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", "")
    return str(module).rsplit(".", 1)[-1].rsplit(":", 1)[0]


def lock_listed_tasks(app: Any, *, strict: bool) -> None:
    """Make every task named in ``redlock_tasks`` a SingletonTask with the options given.

    ``strict`` (at worker start, once task modules are imported): a name that is not a
    registered task is an error, since a typo would leave a task unlocked.
    """
    from celery_redlock.task import SingletonTask, make_singleton

    missing = []
    for name, options in state_of(app).config.tasks.items():
        task = app.tasks.get(name)
        if task is None:
            missing.append(name)
        elif not isinstance(task, SingletonTask):
            make_singleton(task, options)
        elif not getattr(type(task), "_redlock_listed", False):
            raise ConfigurationError(
                f"redlock_tasks[{name!r}]: {name} is a SingletonTask already;"
                " give its options in its @app.task(...) instead"
            )
    if strict and missing:
        raise ConfigurationError(
            f"redlock_tasks names tasks that are not registered: {', '.join(sorted(missing))}"
        )


def _connect_receivers() -> None:
    celery_signals.task_revoked.connect(_on_revoked, weak=False, dispatch_uid="celery_redlock")
    celery_signals.task_failure.connect(_on_failure, weak=False, dispatch_uid="celery_redlock")
    celery_signals.worker_shutdown.connect(
        _on_worker_shutdown, weak=False, dispatch_uid="celery_redlock"
    )


def _locked_task(task: Any) -> bool:
    return getattr(task, "_lock_options", None) is not None


def _patience(task: Any) -> float:
    """How long the main process waits for a killed child to exit: two leases."""
    return 2 * float(task.lock_options.lease)


def _on_revoked(
    sender: Any = None, request: Any = None, terminated: bool = False, **_kwargs: Any
) -> None:
    if not _locked_task(sender) or request is None:
        return
    dlm = state_of(sender.app).manager
    if terminated:
        reaper.reap(request.id, dlm, _patience(sender))
    token = header(request, HEADER_TOKEN)
    resource = header(request, HEADER_RESOURCE)
    if isinstance(token, str) and isinstance(resource, str):
        dlm.release(resource, token)  # owner-checked: a no-op once the run took the key


def _on_failure(
    sender: Any = None, task_id: str | None = None, exception: Any = None, **_kwargs: Any
) -> None:
    if (
        _locked_task(sender)
        and task_id
        and isinstance(exception, (WorkerLostError, TimeLimitExceeded))
    ):
        reaper.reap(task_id, state_of(sender.app).manager, _patience(sender))


def _on_worker_shutdown(sender: Any = None, **_kwargs: Any) -> None:
    if sender is None or not reaper.enabled:
        return
    try:
        reaper.reap_all(state_of(sender.app).manager)
    finally:
        reaper.disable()
