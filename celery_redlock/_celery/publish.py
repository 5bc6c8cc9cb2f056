"""Queue-time deduplication: ``apply_async`` of a call whose key is queued or running
returns that call's ``AsyncResult`` instead of publishing a second message.

The publisher takes the call's key, owned by the new task id, and passes the lock's
token in the message headers; the run frees it and takes the key as its own (see
``run._adopt``). The queue-time lock lasts ``lock_dedup_ttl`` plus the message's
countdown or ETA, so a delayed message keeps its key until it is due. Nothing is ever
dropped: if the holder cannot be named, or the masters cannot be reached, the message is
published and the worker-side lock decides.

The key is computed from the arguments as the worker will receive them: put through the
task's serializer and back (:func:`as_delivered`). With JSON, ``{1: "x"}`` arrives as
``{"1": "x"}``; a key computed from the Python value would differ from the run's, and the
duplicate would be published.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery.utils import uuid
from celery.utils.time import subtract_datetimes
from kombu import serialization

from celery_redlock import signals
from celery_redlock._celery.appconf import LockOptions
from celery_redlock._celery.appstate import state_of
from celery_redlock._celery.handoff import as_owner
from celery_redlock._celery.locked import LockedTask
from celery_redlock._celery.run import HEADER_OUTAGE, HEADER_RESOURCE, HEADER_TOKEN, window_of
from celery_redlock._core.sync import Lock, Redlock
from celery_redlock.exceptions import QuorumUnavailable
from celery_redlock.keys import KeySpec

logger = logging.getLogger("celery_redlock")

#: Options with which a call is not deduplicated: it is part of a canvas (a chain step,
#: a group or chord member, a call with callbacks), whose other parts know its task id
#: or need its result, so returning another call's result would leave them waiting.
_CANVAS = ("link", "link_error", "chain", "group_id", "chord")

Send = Callable[..., Any]

#: kombu's serializer registry (untyped), the one the message itself goes through.
_dumps: Callable[..., tuple[str, str, Any]] = serialization.dumps
_loads: Callable[..., Any] = serialization.loads


def wants_dedup(task: LockedTask, options: dict[str, Any]) -> bool:
    lock_options: LockOptions = task.lock_options
    return (
        lock_options.dedup
        and not task.app.conf.task_always_eager
        and not options.get("retries")  # Task.retry re-publishing a run that holds the key
        and HEADER_OUTAGE not in (options.get("headers") or {})  # an outage retry's
        and all(options.get(name) is None for name in _CANVAS)
    )


def as_delivered(
    args: Any, kwargs: Any, serializer: str | None
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args`` and ``kwargs`` as a worker receives them: through ``serializer`` (the
    task's, e.g. ``"json"``) and back, so that a key computed here is the run's key.

    Raises kombu's ``EncodeError`` for arguments the serializer cannot carry (sending
    them would fail the same way). Loaded with ``force``: the payload is our own.
    """
    content_type, encoding, payload = _dumps(
        [list(args or ()), dict(kwargs or {})], serializer=serializer
    )
    delivered_args, delivered_kwargs = _loads(payload, content_type, encoding, force=True)
    return tuple(delivered_args), dict(delivered_kwargs)


def publish(  # noqa: PLR0917 - the call, and what it is keyed and sent by
    task: LockedTask, spec: KeySpec, args: Any, kwargs: Any, options: dict[str, Any], send: Send
) -> Any:
    """Publish through ``send(args, kwargs, **options)`` unless the key (``spec``'s, of the
    arguments as delivered) is already taken."""
    serializer = options.get("serializer") or task.serializer
    resource = spec.resource(*as_delivered(args, kwargs, serializer))
    options = {**options, "task_id": options.get("task_id") or uuid()}
    dlm = state_of(task.app).manager
    try:
        lock, existing = _claim(task, dlm, resource, options)
    except QuorumUnavailable as exc:
        logger.warning(
            "task %s: cannot deduplicate %r, publishing anyway: %s", task.name, resource, exc
        )
        signals.lock_outage.send(
            sender=task,
            task_id=options["task_id"],
            resource=resource,
            policy="publish",
            error=exc,
        )
        return send(args, kwargs, **options)
    if lock is not None:
        headers = {
            **(options.get("headers") or {}),
            HEADER_TOKEN: lock.token,
            HEADER_RESOURCE: resource,
        }
        try:
            return send(args, kwargs, **{**options, "headers": headers})
        except BaseException:
            lock.release()  # nothing was queued: free the key again
            raise
    if existing is None:
        # Held, but by nobody we can name (a race, or a foreign lock): the worker decides.
        return send(args, kwargs, **options)
    signals.lock_duplicate.send(
        sender=task,
        task_id=options["task_id"],
        resource=resource,
        policy="dedup",
        stage="publish",
        holder=existing,
    )
    logger.debug("task %s: %r is queued or running as %s", task.name, resource, existing)
    return task.AsyncResult(existing)


def _claim(
    task: LockedTask, dlm: Redlock, resource: str, options: dict[str, Any]
) -> tuple[Lock | None, str | None]:
    """The queue-time lock, or the id of the call that holds the key (or its window).

    Tried twice: a key found held may be released before we can read its holder.
    """
    lock_options: LockOptions = task.lock_options
    if lock_options.window:
        last = dlm.holder(window_of(resource))
        if last is not None:
            return None, last
    ttl = _queue_ttl(task, dlm, lock_options, options)
    if ttl is None:
        return None, None
    existing = None
    for _attempt in range(2):
        # Unfenced: the run takes a lock of its own (see run._adopt), and that one's fence
        # is what its writes carry.
        lock = dlm.acquire(resource, ttl, owner=as_owner(options["task_id"]), fencing=False)
        if lock is not None:
            return lock, None
        existing = dlm.holder(resource)
        if existing is not None:
            break
    return None, existing


def _queue_ttl(
    task: LockedTask, dlm: Redlock, lock_options: LockOptions, options: dict[str, Any]
) -> float | None:
    """``dedup_ttl`` past the message's due time, within the restart guard; None when the
    guard ends before the message is due (no queue-time lock can cover the wait)."""
    delay = _delay(task, options)
    ttl = lock_options.dedup_ttl + delay
    guard = dlm.settings.restart_guard
    if guard and ttl > guard:
        ttl = guard
        if ttl <= delay:
            logger.warning(
                "task %s: not deduplicated at publish: due in %.0f s, longer than any lock"
                " may last (restart_guard %.0f s); its run is still locked",
                task.name,
                delay,
                guard,
            )
            return None
    return ttl


def _delay(task: LockedTask, options: dict[str, Any]) -> float:
    """Seconds until the message is due (countdown or ETA), so the key outlives the wait."""
    countdown = options.get("countdown")
    eta = options.get("eta")
    if isinstance(eta, str):
        eta = datetime.fromisoformat(eta)
    if isinstance(eta, datetime):
        wait: float = subtract_datetimes(eta, task.app.now()).total_seconds()
        return max(0.0, wait)
    return max(0.0, float(countdown)) if countdown else 0.0
