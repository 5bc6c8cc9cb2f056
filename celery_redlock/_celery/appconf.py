"""The Celery layer's settings: read once from ``app.conf`` (``redlock_*``), checked, frozen.

Every per-task option is a ``lock_<name>`` task attribute whose app-wide default is the
``redlock_<name>`` setting; :data:`TASK_OPTIONS` is that one table. Settings are read with
``conf.get``, which also finds them under a ``config_from_object(..., namespace="CELERY")``
prefix (``CELERY_REDLOCK_MASTERS``). Each value is checked when read, so a bad one fails at
app finalize or worker start with the setting's name in the message, never on the first
lock in production. Masters are named only by their redacted address.

This module reads a mapping and imports nothing from Celery.
"""

from __future__ import annotations

import dataclasses
import enum
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery_redlock._core.durations import seconds
from celery_redlock._core.masters import parse_masters
from celery_redlock._core.settings import LockSettings, flag
from celery_redlock.exceptions import ConfigurationError
from celery_redlock.settings import split_urls

__all__ = ["TASK_OPTIONS", "LockOptions", "OnDuplicate", "OnLost", "OnOutage", "RedlockConfig"]


class OnDuplicate(str, enum.Enum):
    """What a run does when another run holds its key."""

    SKIP = "skip"  # the body does not run; the result says why
    RAISE = "raise"  # the run fails with TaskLocked
    RETRY = "retry"  # re-queued after lock_duplicate_countdown, honouring max_retries
    WAIT = "wait"  # waits up to lock_wait_timeout for the key, then fails with TaskLocked


class OnOutage(str, enum.Enum):
    """What a run does when too few masters answer to lock or refuse it."""

    RETRY = "retry"  # re-queued with backoff until lock_outage_deadline; not max_retries
    RAISE = "raise"  # the run fails with QuorumUnavailable
    RUN_UNLOCKED = "run_unlocked"  # fail-open: the body runs without a lock (WARNING)


class OnLost(str, enum.Enum):
    """What a run does the moment renewal finds its lock lost (see ``_celery/stop.py``)."""

    CONTINUE = "continue"  # the body goes on; it reads self.lock_lost or calls lock_check()
    RAISE = "raise"  # LockLost is raised in the body's thread (or greenlet) at once
    KILL = "kill"  # prefork only: the pool process kills itself, as a hard time limit does


def _duration(value: Any, name: str) -> float:
    return seconds(value, name)


def _duration_or_zero(value: Any, name: str) -> float:
    return seconds(value, name, allow_zero=True)


def _choice(kind: type[enum.Enum]) -> Callable[[Any, str], Any]:
    def parse(value: Any, name: str) -> Any:
        try:
            return kind(value)
        except ValueError:
            allowed = ", ".join(repr(m.value) for m in kind)
            raise ConfigurationError(f"{name} must be one of {allowed}, not {value!r}") from None

    return parse


@dataclass(frozen=True, slots=True)
class LockOptions:
    """One task's lock behaviour; the app-wide defaults are an instance too.

    - ``lease`` (30 s): the lock's TTL, renewed every third of it while the body runs, so
      a run killed outright frees its key within one lease.
    - ``on_duplicate`` (``skip``): see :class:`OnDuplicate`.
    - ``on_outage`` (``retry``): see :class:`OnOutage`.
    - ``wait_timeout`` (60 s): how long ``on_duplicate="wait"`` waits for the key.
    - ``duplicate_countdown`` (10 s): delay before a retried duplicate runs again.
    - ``outage_countdown`` (2 s): first delay of an outage retry, doubling per retry up to
      :data:`OUTAGE_COUNTDOWN_MAX`.
    - ``outage_deadline`` (3600 s): how long after a call's first outage it is still
      retried; then it fails with QuorumUnavailable. Outage retries have this budget of
      their own: they never count against the task's ``max_retries``, which is for its
      body's retries, so an outage of minutes drops no call.
    - ``dedup`` (False): at ``apply_async``, return the queued or running call's result
      instead of publishing a second message for the same key.
    - ``dedup_ttl`` (3600 s): how long such a queue-time lock waits in the queue, on top
      of the message's countdown or ETA, within the core's ``restart_guard`` (60 s by
      default, ``redlock_restart_guard``): no lock may outlive the time a restarted
      master sits out. A call due later than the guard allows is not deduplicated at
      publish (its run is still locked).
    - ``window`` (0, off): keep the key this many seconds after a run ends, so the call
      runs at most once per window (throttling); at most ``restart_guard``.
    - ``on_lost`` (``continue``): see :class:`OnLost`; checked against the worker's pool
      at its start (``kill`` needs prefork).
    - ``fencing`` (True): the run's lock carries a fence (``self.lock_fence``), for the
      places the body writes to to refuse a run that lost its lock unawares.

    ``lease`` and ``window`` are TTLs, so the core's checks apply to them too.
    """

    lease: float = 30.0
    on_duplicate: OnDuplicate = OnDuplicate.SKIP
    on_outage: OnOutage = OnOutage.RETRY
    wait_timeout: float = 60.0
    duplicate_countdown: float = 10.0
    outage_countdown: float = 2.0
    outage_deadline: float = 3600.0
    dedup: bool = False
    dedup_ttl: float = 3600.0
    window: float = 0.0
    on_lost: OnLost = OnLost.CONTINUE
    fencing: bool = True


#: An outage retry never waits longer than this.
OUTAGE_COUNTDOWN_MAX = 300.0

_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "lease": _duration,
    "on_duplicate": _choice(OnDuplicate),
    "on_outage": _choice(OnOutage),
    "wait_timeout": _duration,
    "duplicate_countdown": _duration_or_zero,
    "outage_countdown": _duration,
    "outage_deadline": _duration,
    "dedup": flag,
    "dedup_ttl": _duration,
    "window": _duration_or_zero,
    "on_lost": _choice(OnLost),
    "fencing": flag,
}

#: (task attribute, app setting) for every per-task option, as Celery's ``Task.from_config``.
TASK_OPTIONS: tuple[tuple[str, str], ...] = tuple(
    (f"lock_{f.name}", f"redlock_{f.name}") for f in dataclasses.fields(LockOptions)
)

#: Task attributes that are options but have no app-wide default.
TASK_ONLY_OPTIONS = ("lock_key",)

#: Settings handed to the lock core (:class:`~celery_redlock.LockSettings`).
_CORE_SETTINGS = (
    "key_prefix",
    "master_timeout",
    "retry_count",
    "retry_delay",
    "drift_factor",
    "restart_guard",
)

#: Settings of the beat leader lease, read by :mod:`celery_redlock.beat`.
BEAT_SETTINGS = ("redlock_beat_lease", "redlock_beat_key")

#: Every ``redlock_*`` setting this layer reads; any other is a typo and an error.
KNOWN_SETTINGS = frozenset(
    {"redlock_masters", "redlock_tasks", *BEAT_SETTINGS}
    | {s for _attr, s in TASK_OPTIONS}
    | {f"redlock_{name}" for name in _CORE_SETTINGS}
)

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def parse_options(
    given: Mapping[str, Any], base: LockOptions, where: Callable[[str], str]
) -> LockOptions:
    """``base`` with the options in ``given`` (by field name) checked and applied;
    ``where(field)`` names the setting or attribute in error messages."""
    changes = {name: _PARSERS[name](value, where(name)) for name, value in given.items()}
    return dataclasses.replace(base, **changes)


def check_ttls(options: LockOptions, lock: LockSettings, where: Callable[[str], str]) -> None:
    """The lease and the window are lock TTLs: each must pass the core's checks (room for
    a round and the drift allowance, within the restart guard)."""
    for name in ("lease", "window"):
        value = getattr(options, name)
        if not value:
            continue
        try:
            lock.ttl(value)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where(name)}: {exc}") from None


@dataclass(frozen=True)
class RedlockConfig:
    """Everything the Celery layer reads from the app's configuration, checked once.

    ``masters`` as given (URLs, dicts or clients; shown redacted), ``masters_source`` the
    setting they came from (``redlock_masters``, or ``broker_url`` / ``result_backend``
    when those serve as the single master), ``lock`` the core's settings, ``defaults`` the
    app-wide :class:`LockOptions`, ``tasks`` the ``redlock_tasks`` mapping (task name →
    ``lock_*`` options, checked).
    """

    masters: tuple[Any, ...] = field(repr=False)
    masters_source: str
    lock: LockSettings
    defaults: LockOptions
    tasks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"RedlockConfig(masters={list(self.master_names)}, from={self.masters_source},"
            f" lock={self.lock}, defaults={self.defaults}, tasks={sorted(self.tasks)})"
        )

    @property
    def master_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in parse_masters(self.masters))

    @classmethod
    def from_conf(cls, conf: Any) -> RedlockConfig:
        """Read and check every ``redlock_*`` setting of a Celery ``app.conf`` (or a dict)."""
        check_names(conf)
        masters, source = _masters(conf)
        lock = _lock_settings(conf)
        given = {name: conf.get(setting) for name, setting in _fields_and_settings()}
        defaults = parse_options(
            {k: v for k, v in given.items() if v is not None}, LockOptions(), "redlock_{}".format
        )
        check_ttls(defaults, lock, "redlock_{}".format)
        tasks = _task_table(conf.get("redlock_tasks"), defaults, lock)
        return cls(masters, source, lock, defaults, types.MappingProxyType(tasks))


def _fields_and_settings() -> Iterable[tuple[str, str]]:
    return ((attr.removeprefix("lock_"), setting) for attr, setting in TASK_OPTIONS)


def check_names(conf: Any) -> None:
    """Refuse ``redlock_*`` settings we do not know: a typo must not silently do nothing."""
    keys = list(conf.keys())  # first: a pending Celery conf learns its prefix on loading
    prefix = getattr(conf, "prefix", None) or ""
    for key in keys:
        if not isinstance(key, str):
            continue
        name = key[len(prefix) :] if prefix and key.upper().startswith(prefix.upper()) else key
        lowered = name.lower()
        if not lowered.startswith("redlock_"):
            continue
        if lowered not in KNOWN_SETTINGS:
            known = ", ".join(sorted(KNOWN_SETTINGS))
            raise ConfigurationError(f"unknown setting {key!r}; celery_redlock reads: {known}")
        if not prefix and name != lowered:
            raise ConfigurationError(
                f"setting {key!r} is not read: Celery setting names are lower case ({lowered})"
            )


def _masters(conf: Any) -> tuple[tuple[Any, ...], str]:
    given = conf.get("redlock_masters")
    if given is None:
        return _fallback_master(conf)
    if isinstance(given, str):
        given = split_urls(given)
    if isinstance(given, Sequence) and not given:
        raise ConfigurationError(
            "redlock_masters is empty: list the Redis masters' URLs, or leave it unset to"
            " use a Redis broker as the single master"
        )
    try:
        parse_masters(given)
    except ConfigurationError as exc:
        raise ConfigurationError(f"redlock_masters: {exc}") from None
    return tuple(given), "redlock_masters"


def _fallback_master(conf: Any) -> tuple[tuple[Any, ...], str]:
    """A Redis broker or result backend as the single master, when none is configured."""
    for setting in ("broker_url", "result_backend"):
        url = _redis_url(_setting(conf, setting))
        if url is not None:
            return (url,), setting
    raise ConfigurationError(
        "redlock_masters is not set, and neither broker_url nor result_backend is a single"
        " Redis URL to use instead: set redlock_masters to your Redis masters' URLs"
    )


def _setting(conf: Any, name: str) -> Any:
    # Celery's Settings has properties for these (they also read CELERY_BROKER_URL etc.).
    value = getattr(conf, name, None) if not isinstance(conf, Mapping) else None
    return value if value is not None else conf.get(name)


def _redis_url(value: Any) -> str | None:
    if not isinstance(value, str) or ";" in value:
        return None
    url = value.strip()
    if url.startswith("redis+socket://"):
        url = "unix://" + url.removeprefix("redis+socket://")
    return url if url.startswith(_REDIS_SCHEMES) else None


def _lock_settings(conf: Any) -> LockSettings:
    given: dict[str, Any] = {}
    for name in _CORE_SETTINGS:
        value = conf.get(f"redlock_{name}")
        if value is None:
            continue
        try:
            LockSettings(**{name: value})  # one at a time, so the error names its setting
        except ConfigurationError as exc:
            raise ConfigurationError(f"redlock_{name}: {exc}") from None
        given[name] = value
    return LockSettings(**given)


def _task_table(table: Any, defaults: LockOptions, lock: LockSettings) -> dict[str, dict[str, Any]]:
    """``redlock_tasks``: task name → ``lock_*`` options, each checked like a task's own."""
    if table is None:
        return {}
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"redlock_tasks must map task names to options, not {table!r}")
    checked: dict[str, dict[str, Any]] = {}
    for task, options in table.items():
        where = f"redlock_tasks[{task!r}]"
        options = {} if options is None else options  # noqa: PLW2901 - None means no options
        if not isinstance(task, str) or not isinstance(options, Mapping):
            raise ConfigurationError(f"{where} must map a task name to a dict of lock_* options")
        check_attribute_names(options, where)
        given = {k.removeprefix("lock_"): v for k, v in options.items() if k != "lock_key"}
        resolved = parse_options(given, defaults, f"{where}['lock_{{}}']".format)
        check_ttls(resolved, lock, f"{where}['lock_{{}}']".format)
        checked[task] = dict(options)
    return checked


def check_attribute_names(names: Iterable[str], where: str) -> None:
    """Refuse ``lock_*`` option names we do not know (``where`` names their origin)."""
    known = {attr for attr, _setting in TASK_OPTIONS} | set(TASK_ONLY_OPTIONS)
    for name in names:
        if name not in known:
            raise ConfigurationError(
                f"{where}: unknown option {name!r}; options are {', '.join(sorted(known))}"
            )
