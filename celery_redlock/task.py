"""SingletonTask: Celery tasks that never run twice at once, per task or per arguments.

A task with ``base=SingletonTask`` holds a Redlock on its call's key for the whole of each
run, renewed while the body runs and released however the run ends; its options are
``lock_*`` attributes (``@app.task(base=SingletonTask, lock_key=["customer_id"])``), each
defaulting to its ``redlock_*`` setting. The README's "SingletonTask" section is the
user's guide (keys, duplicates, outages, queue-time dedup, canvases, settings).

This module is the class and its wiring into an app (:func:`install`, the worker
bootstep, the ``redlock_tasks`` listing); a run's policies are in ``_celery/run.py``,
queue-time dedup in ``_celery/publish.py``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

from celery import Task, bootsteps

from celery_redlock._celery import hooks, publish, run
from celery_redlock._celery.appconf import (
    TASK_OPTIONS,
    LockOptions,
    check_attribute_names,
    check_ttls,
    parse_options,
)
from celery_redlock._celery.appstate import state_of
from celery_redlock._core.sync import Lock
from celery_redlock.exceptions import ConfigurationError, LockLost
from celery_redlock.keys import KeySpec

__all__ = ["SingletonTask", "install", "make_singleton"]


class SingletonTask(Task):  # type: ignore[misc]  # celery is untyped
    """A task whose runs hold a quorum lock on their key (see the module docstring)."""

    #: How calls are keyed: None (all arguments), names, ``[]`` (task only), or a function.
    lock_key: Any = None
    lock_lease: Any = None
    lock_on_duplicate: Any = None
    lock_on_outage: Any = None
    lock_wait_timeout: Any = None
    lock_duplicate_countdown: Any = None
    lock_outage_countdown: Any = None
    lock_outage_deadline: Any = None
    lock_dedup: Any = None
    lock_dedup_ttl: Any = None
    lock_window: Any = None
    lock_on_lost: Any = None
    lock_fencing: Any = None

    #: (attribute, setting) pairs: an attribute left None takes the setting's value.
    lock_from_config: ClassVar[tuple[tuple[str, str], ...]] = TASK_OPTIONS

    _lock_options: ClassVar[LockOptions | None] = None
    _lock_spec: ClassVar[KeySpec | None] = None
    _lock_state: ClassVar[Any] = None  # the app's AppState, kept at bind: asked every run
    _plain_call: ClassVar[bool] = False  # no class between us and Task overrides __call__

    @classmethod
    def on_bound(cls, app: Any) -> None:
        """Celery binds each task to its app: resolve and check its lock options now, so a
        bad one fails at app finalize rather than on the first run."""
        super().on_bound(app)
        cls.configure_lock(app)
        install(app)

    @classmethod
    def configure_lock(cls, app: Any) -> None:
        """Resolve this task's options through :attr:`lock_from_config` and check them,
        with the key spec against the task's signature (raises ConfigurationError)."""
        where = f"task {cls.name}"
        _check_option_names(cls, where)
        state = cls._lock_state = state_of(app)
        config = state.config
        given = {
            attr.removeprefix("lock_"): getattr(cls, attr)
            for attr, _setting in cls.lock_from_config
            if getattr(cls, attr) is not None
        }
        options = parse_options(given, config.defaults, lambda n: f"lock_{n} of {where}")
        check_ttls(options, config.lock, lambda n: f"lock_{n} of {where}")
        cls._lock_options = options
        cls._lock_spec = KeySpec.parse(cls.name, _run_signature(cls), _raw(cls, "lock_key"))
        cls._plain_call = _next_call(cls) is Task.__call__

    @property
    def lock_options(self) -> LockOptions:
        """This task's resolved lock options (its own, else the app's settings)."""
        if self._lock_options is None:
            raise ConfigurationError(f"task {self.name} is not bound to an app yet")
        return self._lock_options

    def lock_resource(self, *args: Any, **kwargs: Any) -> str:
        """The lock's resource name for a call with these arguments: the one its run
        takes, computed (as the worker does) from the arguments as the task's serializer
        delivers them, so ``{1: "x"}`` and ``{"1": "x"}`` are one call under JSON."""
        spec = self._spec()
        return spec.resource(*publish.as_delivered(args, kwargs, self.serializer))

    def _resource(self, args: Any, kwargs: Any) -> str:
        """The resource of a call whose arguments are as delivered (in the worker, or
        through :func:`~celery_redlock._celery.publish.as_delivered`)."""
        return self._spec().resource(args, kwargs)

    def _spec(self) -> KeySpec:
        if self._lock_spec is None:
            raise ConfigurationError(f"task {self.name} is not bound to an app yet")
        return self._lock_spec

    def is_locked(self, *args: Any, **kwargs: Any) -> bool:
        """Whether a call with these arguments is running (or queued, with lock_dedup)."""
        return state_of(self.app).manager.locked(self.lock_resource(*args, **kwargs))

    @property
    def current_lock(self) -> Lock | None:
        """The lock held by the run in progress (None outside a run, or running unlocked)."""
        hold = run.current_hold(self)
        return hold.lock if hold is not None else None

    @property
    def lock_lost(self) -> LockLost | None:
        """Why the running call's lock is lost, or None while it holds (or holds none).

        Renewal's verdict, or expiry as soon as the validity has run out: a renewal
        thread that is late (starved, the process paused) does not make a lost lock
        look held. See :meth:`Lock.lost <celery_redlock.Lock.lost>`.
        """
        hold = run.current_hold(self)
        return hold.current_loss() if hold is not None else None

    @property
    def lock_fence(self) -> int | None:
        """The running call's fence: higher than that of every earlier run of its key, for
        the places the body writes to to refuse a run that lost its lock unawares (see
        :mod:`celery_redlock.fencing`). None outside a run, running unlocked, or with
        ``lock_fencing = False``."""
        lock = self.current_lock
        return lock.fence if lock is not None else None

    def lock_check(self) -> None:
        """Raise :class:`LockLost` if the running call's lock is lost; else do nothing.

        For bodies that loop: call it between steps, so that a run whose key another
        run may hold by now stops writing. It reads state kept in this process (no round
        to the masters). A run that holds no lock (a direct call, or ``run_unlocked``
        on an outage) has none to lose, and the check does nothing: the fail-open policy
        chose to run unlocked, and a check that failed it would undo that choice
        (``self.current_lock is None`` tells such a run).
        """
        hold = run.current_hold(self)
        if hold is not None and hold.lock is not None:
            hold.lock.check()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the body under the call's lock (a direct call runs it plainly).

        Calling ``run`` itself, as Celery's tracer does, is a copy kept for speed: the
        ``ours`` row of ``benchmarks/bench_instructions.py`` shows it pays.
        """
        call = super().__call__
        if self.request.called_directly:
            return call(*args, **kwargs)
        if self._plain_call:
            # Celery's tracer has pushed this run's request and task already, and calls
            # ``run`` itself for a task that does not override __call__; Task.__call__
            # would push both again (a copy of the request per run). Unless a class
            # between us and Task has a __call__ of its own, do as the tracer does.
            call = self.run
        resource = self._resource(args, kwargs)
        manager = self._lock_state.manager
        return run.run(self, manager, resource, lambda: call(*args, **kwargs))

    def retry(  # noqa: PLR0917 - Celery's signature
        self,
        args: Any = None,
        kwargs: Any = None,
        exc: Any = None,
        throw: bool = True,
        eta: Any = None,
        countdown: Any = None,
        max_retries: Any = None,
        **options: Any,
    ) -> Any:
        """:meth:`celery.Task.retry`, releasing the run's lock first when a retry will be
        sent and the body ends here, so that the retry can take it (and not find its own
        run holding it). With ``throw=False`` the body goes on, so the lock is kept until
        it ends (a retry due before then meets the duplicate policy)."""
        hold = run.current_hold(self)
        if hold is not None and throw and self._will_retry(max_retries):
            run.finish(self, hold)
        return super().retry(args, kwargs, exc, throw, eta, countdown, max_retries, **options)

    def _will_retry(self, max_retries: Any) -> bool:
        request = self.request
        limit = self.max_retries if max_retries is None else max_retries
        return not request.called_directly and (limit is None or request.retries < limit)

    def apply_async(  # noqa: PLR0917 - Celery's signature
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: Any = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: Any = None,
        **options: Any,
    ) -> Any:
        """:meth:`celery.Task.apply_async`; with ``lock_dedup``, a call whose key is queued
        or running returns that call's result instead of being published again."""
        options.update(
            task_id=task_id, producer=producer, link=link, link_error=link_error, shadow=shadow
        )
        send = super().apply_async
        if self._lock_options is None or not publish.wants_dedup(self, options):
            return send(args, kwargs, **options)
        return publish.publish(self, self._spec(), args, kwargs, options, send)


def _check_option_names(cls: type[SingletonTask], where: str) -> None:
    """Refuse unknown ``lock_*`` attributes (typos) and ``redlock_*`` ones (settings given
    as task options); methods SingletonTask itself defines are fine to override."""
    ours = {name for name in dir(SingletonTask) if name.startswith("lock_")}
    given: set[str] = set()
    for klass in cls.__mro__:
        if klass is SingletonTask:
            break
        given |= {n for n in vars(klass) if n.startswith(("lock_", "redlock_"))}
    for name in sorted(given):
        if name.startswith("redlock_"):
            raise ConfigurationError(
                f"{where}: {name} is an app setting; the task option is"
                f" {name.replace('redlock_', 'lock_', 1)}"
            )
    check_attribute_names(given - ours, where)


def _next_call(cls: type[Any]) -> Any:
    """The ``__call__`` that ``super()`` in :meth:`SingletonTask.__call__` reaches for
    ``cls``: Task's own, or one a base class listed after SingletonTask defines."""
    mro = cls.__mro__
    for klass in mro[mro.index(SingletonTask) + 1 :]:
        if "__call__" in vars(klass):
            return vars(klass)["__call__"]
    return None


def _raw(cls: type[Any], name: str) -> Any:
    """A class attribute as stored (a function given as an option is not a method)."""
    value = inspect.getattr_static(cls, name)
    return value.__func__ if isinstance(value, staticmethod) else value


def _run_signature(cls: type[Any]) -> inspect.Signature:
    """The signature callers use: ``run``'s, without ``self`` for bound tasks."""
    run = inspect.getattr_static(cls, "run")
    if isinstance(run, staticmethod):
        return inspect.signature(run.__func__)
    signature = inspect.signature(run)
    params = list(signature.parameters.values())[1:]
    return signature.replace(parameters=params)


def make_singleton(task: Any, options: Mapping[str, Any]) -> None:
    """Turn a registered task into a SingletonTask with ``options`` (``redlock_tasks``).

    Its class is swapped for a subclass of both SingletonTask and its own class, before
    any worker builds its tracer, so its own methods still apply under ours.
    """
    cls = type(task)
    attrs = {
        **options,
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "_redlock_listed": True,
    }
    singleton: type[SingletonTask] = type(cls.__name__, (SingletonTask, cls), attrs)
    singleton.configure_lock(task.app)
    task.__class__ = singleton


def install(app: Any) -> None:
    """Enable celery_redlock on ``app`` (idempotent).

    :class:`SingletonTask` installs itself when a task is bound; call it yourself only
    for an app whose locked tasks are all listed in ``redlock_tasks`` (tasks whose base
    class you cannot change). It adds a worker bootstep (:func:`prepare_worker`), the
    main process's receivers (``_celery/hooks.py``), and locks the ``redlock_tasks`` once
    the app is finalized, in every process, so that publishers deduplicate them too
    (``celeryd_init`` is only sent by ``celery worker``, ``worker_init`` only in a
    worker's main process).
    """
    state = state_of(app)
    if state.installed:
        return
    state.installed = True
    app.steps["worker"].add(RedlockStep)
    hooks.connect_receivers(_is_locked)
    if app.finalized:
        lock_listed_tasks(app, strict=False)
    else:
        app.on_after_finalize.connect(_after_finalize, sender=app, weak=False)


def _after_finalize(sender: Any, **_kwargs: Any) -> None:
    lock_listed_tasks(sender, strict=False)


def _is_locked(task: Any) -> bool:
    """Whether ``task`` is a SingletonTask bound to its app."""
    return isinstance(task, SingletonTask) and task._lock_options is not None


class RedlockStep(bootsteps.Step):  # type: ignore[misc]  # celery is untyped
    """Checks and prepares celery_redlock as the worker starts; an error stops the start."""

    name = "celery_redlock"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        prepare_worker(worker)


def prepare_worker(worker: Any) -> None:
    """Refuse a pool we cannot run in (or one a task's ``lock_on_lost`` cannot work in),
    lock the ``redlock_tasks`` (strictly: task modules are imported by now), and ready
    the manager and the reaper before the pool forks."""
    pool = hooks.check_pool(worker)
    lock_listed_tasks(worker.app, strict=True)
    app = worker.app
    defaults = state_of(app).config.defaults
    hooks.check_on_lost(
        pool,
        [
            ("redlock_on_lost", defaults),
            *((f"task {t.name}", t.lock_options) for t in app.tasks.values() if _is_locked(t)),
        ],
    )
    hooks.ready_worker(worker.app, pool)


def lock_listed_tasks(app: Any, *, strict: bool) -> None:
    """Make every task named in ``redlock_tasks`` a SingletonTask with the options given.

    ``strict`` (at worker start, once task modules are imported): a name that is not a
    registered task is an error, since a typo would leave a task unlocked.
    """
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
