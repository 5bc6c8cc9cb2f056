"""The worker's side of :func:`celery_redlock.install` (which lives with SingletonTask, in
``celery_redlock.task``, since locking the ``redlock_tasks`` makes SingletonTasks).

- At worker start, from its bootstep: :func:`check_pool` refuses the eventlet pool;
  :func:`ready_worker` warns when the broker serves as the only master, makes the lock
  manager and under prefork enables the reaper (``reaper.py``), before the pool forks.
  A bootstep rather than signal receivers: Celery logs and ignores their exceptions, and
  a worker must refuse to start on a bad setting.
- ``task_revoked`` and ``task_failure`` in the worker's main process: a terminated, timed
  out or lost child's lock is released once the child has exited, and a message revoked
  before it ran frees its queue-time lock. ``worker_shutdown``: the same for whatever the
  pool left behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from celery import signals as celery_signals
from celery import states
from celery.exceptions import TimeLimitExceeded, WorkerLostError

from celery_redlock._celery import stop
from celery_redlock._celery.appconf import LockOptions, OnLost
from celery_redlock._celery.appstate import state_of
from celery_redlock._celery.reaper import reaper
from celery_redlock._celery.run import queued_lock
from celery_redlock._core.masters import redact
from celery_redlock.exceptions import ConfigurationError, LockLost

__all__ = ["check_on_lost", "check_pool", "connect_receivers", "ready_worker"]

logger = logging.getLogger("celery_redlock")

#: Pools whose workers cannot run our lock client: eventlet's patching deletes
#: ``select.poll``, in which the client waits for replies (gevent makes it cooperative).
_UNSUPPORTED_POOLS = ("eventlet",)


def check_pool(worker: Any) -> str:
    """The worker's pool name; refuses a pool whose workers cannot run the lock client."""
    pool = _pool_name(worker.pool_cls)
    if pool in _UNSUPPORTED_POOLS:
        raise ConfigurationError(
            f"celery_redlock does not support the {pool} pool: its lock client waits for"
            " replies in select.poll, which eventlet's monkey-patching removes; use"
            " prefork, threads, solo or gevent"
        )
    return pool


def ready_worker(app: Any, pool: str) -> None:
    """Warn about a lone broker master, make the manager and, under prefork, enable the
    reaper: all before the pool forks."""
    state = state_of(app)
    config = state.config
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
        stop.prefork_started()


def check_on_lost(pool: str, tasks: Iterable[tuple[str, LockOptions]]) -> None:
    """Refuse ``lock_on_lost="kill"`` outside prefork: only a prefork child runs one task
    and is replaced when it dies; under threads, solo or gevent the process is the
    worker, and killing it would end every other run with it."""
    if pool == "prefork":
        return
    for where, options in tasks:
        if options.on_lost is OnLost.KILL:
            raise ConfigurationError(
                f"{where}: lock_on_lost='kill' needs the prefork pool, not {pool}: it ends"
                " the pool process, which here is the whole worker; use 'raise', which"
                " raises LockLost in the run's thread (or greenlet)"
            )


def _pool_name(pool_cls: Any) -> str:
    module = pool_cls if isinstance(pool_cls, str) else getattr(pool_cls, "__module__", "")
    return str(module).rsplit(".", 1)[-1].rsplit(":", 1)[0]


def connect_receivers(is_locked: Callable[[Any], bool]) -> None:
    """Connect the main process's receivers, once (by dispatch uid); ``is_locked`` tells
    a task bound as a SingletonTask from any other sender of Celery's signals."""
    receivers = _Receivers(is_locked)
    uid = "celery_redlock"
    celery_signals.task_revoked.connect(receivers.on_revoked, weak=False, dispatch_uid=uid)
    celery_signals.task_failure.connect(receivers.on_failure, weak=False, dispatch_uid=uid)
    celery_signals.worker_shutdown.connect(
        receivers.on_worker_shutdown, weak=False, dispatch_uid=uid
    )


def _store_loss(task: Any, task_id: str, resource: str, message: str) -> None:
    """A child that killed itself on losing its lock (``lock_on_lost="kill"``): its result
    is the LockLost again, in place of the WorkerLostError Celery stored for the child."""
    try:
        task.backend.store_result(task_id, LockLost(message, resource=resource), states.FAILURE)
    except Exception as exc:  # the WorkerLostError stays
        logger.warning("storing the result of %s[%s] failed: %s", task.name, task_id, exc)


def _patience(task: Any) -> float:
    """How long the main process waits for a killed child to exit: two leases."""
    return 2 * float(task.lock_options.lease)


class _Receivers:
    """Celery's signals in the worker's main process, for the SingletonTasks among their
    senders (every task of the process sends them)."""

    def __init__(self, is_locked: Callable[[Any], bool]) -> None:
        self.is_locked = is_locked

    def on_revoked(
        self, sender: Any = None, request: Any = None, terminated: bool = False, **_kwargs: Any
    ) -> None:
        if request is None or not self.is_locked(sender):
            return
        dlm = state_of(sender.app).manager
        if terminated:
            reaper.reap(request.id, dlm, _patience(sender))
        queued = queued_lock(request)
        if queued is not None:
            dlm.release(*queued)  # owner-checked: a no-op once the run took the key

    def on_failure(
        self, sender: Any = None, task_id: str | None = None, exception: Any = None, **_kwargs: Any
    ) -> None:
        if (
            task_id
            and isinstance(exception, (WorkerLostError, TimeLimitExceeded))
            and self.is_locked(sender)
        ):
            reaper.reap(
                task_id,
                state_of(sender.app).manager,
                _patience(sender),
                on_lost=lambda resource, message: _store_loss(sender, task_id, resource, message),
            )

    @staticmethod
    def on_worker_shutdown(sender: Any = None, **_kwargs: Any) -> None:
        if sender is None or not reaper.enabled:
            return
        try:
            reaper.reap_all(state_of(sender.app).manager)
        finally:
            reaper.disable()
