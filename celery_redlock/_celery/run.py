"""One run of a SingletonTask in the worker: take the lock, or apply the duplicate or outage
policy; run the body while the lock is renewed; release however the run ends.

Every way a task arrives (``apply_async``, ``send_task`` by name, beat, a retry, a broker
redelivery) ends up here, in the worker, so none of them bypasses the lock.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import states
from celery.exceptions import Reject, Retry

from celery_redlock import signals
from celery_redlock._celery.appconf import (
    OUTAGE_COUNTDOWN_MAX,
    LockOptions,
    OnDuplicate,
    OnLost,
    OnOutage,
)
from celery_redlock._celery.handoff import as_owner, owner_of
from celery_redlock._celery.locked import LockedTask
from celery_redlock._celery.reaper import reaper
from celery_redlock._celery.stop import Action, Stopper, in_pool_child, interrupter
from celery_redlock._core.sync import Lock, Redlock
from celery_redlock.exceptions import LockLost, QuorumUnavailable
from celery_redlock.outcomes import TaskLocked, skipped

logger = logging.getLogger("celery_redlock")

#: Message headers handing a queue-time lock from the publisher to the run.
HEADER_TOKEN = "redlock_token"  # noqa: S105 - a header name, not a secret
HEADER_RESOURCE = "redlock_resource"
#: Message header of an outage retry: ``[first outage (epoch seconds), outage retries]``.
HEADER_OUTAGE = "redlock_outage"

#: The holds of the runs in progress in this thread, by task id. Not on the request:
#: Celery copies unknown request attributes into the headers of a retry's message.
_local = threading.local()


def window_of(resource: str) -> str:
    """The key that stays taken for ``lock_window`` seconds after a run of ``resource``."""
    return f"{resource}~window"


@dataclass(eq=False)
class Hold:
    """The lock one run holds (None while it runs unlocked), and whether it was lost."""

    task: LockedTask
    dlm: Redlock
    task_id: str
    resource: str
    lock: Lock | None = None
    lost: LockLost | None = None
    finished: bool = False
    stopper: Stopper | None = None

    def current_loss(self) -> LockLost | None:
        """The loss renewal reported, or expiry once the validity ran out unrenewed."""
        if self.lost is not None or self.lock is None:
            return self.lost
        return self.lock.lost

    def on_lost(self, _lock: Lock, error: LockLost) -> None:
        """Called by the renewal thread when a quorum can no longer be kept: tell, then
        end the body if ``lock_on_lost`` says so."""
        self.lost = error
        logger.error(
            "task %s[%s] lost its lock on %r while running; another run may start: %s",
            self.task.name,
            self.task_id,
            self.resource,
            error,
        )
        signals.lock_lost.send(
            sender=self.task, task_id=self.task_id, resource=self.resource, error=error
        )
        if self.stopper is not None:
            self.stopper.stop(error)


def _holds() -> dict[str, Hold]:
    holds: dict[str, Hold] | None = getattr(_local, "holds", None)
    if holds is None:
        holds = _local.holds = {}
    return holds


def current_hold(task: LockedTask) -> Hold | None:
    """The hold of ``task``'s run in progress in this thread, if any."""
    task_id = task.request.id
    return _holds().get(task_id) if task_id else None


def run(task: LockedTask, dlm: Redlock, resource: str, body: Callable[[], Any]) -> Any:
    """Run ``body`` under the lock on ``resource`` (the call's key), taken through ``dlm``
    (the app's manager), or end the run as the policies say."""
    request = task.request
    options = task.lock_options
    hold = Hold(task, dlm, request.id, resource)
    if not request.retries:
        _adopt(dlm, request)
    try:
        hold.lock = _take(dlm, hold, options, _max_hold(task, options))
    except QuorumUnavailable as exc:
        return _outage(task, hold, options, exc, body)
    if hold.lock is None:
        return _duplicate(task, dlm, hold, options)
    return _run_held(task, hold, body)


def _run_held(task: LockedTask, hold: Hold, body: Callable[[], Any]) -> Any:
    holds = _holds()
    holds[hold.task_id] = hold
    if hold.lock is not None:
        reaper.record(hold.task_id, hold.resource, hold.lock.token)
        logger.debug("task %s[%s] holds %r", task.name, hold.task_id, hold.resource)
        signals.lock_acquired.send(
            sender=task, task_id=hold.task_id, resource=hold.resource, lock=hold.lock
        )
    try:
        policy = task.lock_options.on_lost
        if policy is OnLost.CONTINUE or hold.lock is None:
            return body()
        hold.stopper = Stopper(_stop_action(task, hold, policy))
        return hold.stopper.call(body, hold.current_loss)
    finally:
        try:
            finish(task, hold)
        finally:
            holds.pop(hold.task_id, None)


def _stop_action(task: LockedTask, hold: Hold, policy: OnLost) -> Action:
    """What ends this run's body on a loss (in the body's thread: it captures it).

    ``kill`` outside a prefork pool child (an eager ``apply()``, whose process is the
    caller's) raises instead: ending that process would end far more than the run.
    """
    if policy is OnLost.KILL and in_pool_child():
        return _killer(task, hold)
    return interrupter()


def _killer(task: LockedTask, hold: Hold) -> Action:
    """End this prefork child, as a hard time limit does: SIGKILL, so that no code of the
    run goes on. First its result is stored as FAILURE with the LockLost (a client
    waiting for it sees why), and the loss noted in the reaper's record: the main
    process, told of a lost child by Celery (WorkerLostError, which it stores), stores
    the LockLost again and releases what the record holds, owner-checked."""
    request = task.request
    assert hold.lock is not None
    token = hold.lock.token

    def kill(error: LockLost) -> None:
        logger.error(
            "task %s[%s] ends its pool process (lock_on_lost='kill'): %s",
            task.name,
            hold.task_id,
            error,
        )
        reaper.note_lost(hold.task_id, hold.resource, token, str(error))
        try:
            task.backend.store_result(hold.task_id, error, states.FAILURE, request=request)
        except Exception as exc:  # the process ends anyway; the main process stores it
            logger.warning("storing the result of %s[%s] failed: %s", task.name, hold.task_id, exc)
        os.kill(os.getpid(), signal.SIGKILL)

    return kill


def finish(task: LockedTask, hold: Hold) -> None:
    """Release the run's lock (once), after starting its window if it has one."""
    if hold.finished:
        return
    hold.finished = True
    lock = hold.lock
    if lock is None:
        return
    options = task.lock_options
    if options.window:
        _start_window(hold.dlm, hold, options.window)
    released = lock.release()
    reaper.forget(hold.task_id)
    logger.debug(
        "task %s[%s] released %r (quorum: %s)", task.name, hold.task_id, hold.resource, released
    )
    signals.lock_released.send(
        sender=task, task_id=hold.task_id, resource=hold.resource, released=released
    )


def _start_window(dlm: Redlock, hold: Hold, window: float) -> None:
    # Taken before the run's lock is released, so no other run fits in between.
    try:
        opened = dlm.acquire(
            window_of(hold.resource), window, owner=as_owner(hold.task_id), fencing=False
        )
        if opened is None:
            logger.warning("the window of %r was already taken", hold.resource)
    except Exception as exc:  # the run is over; only throttling is lost
        logger.warning("could not start the %s s window of %r: %s", window, hold.resource, exc)


def header(request: Any, name: str) -> Any:
    """A custom header of the message ``request`` runs (Celery sets each as an attribute
    too), or None."""
    headers = getattr(request, "headers", None) or {}
    return getattr(request, name, None) or headers.get(name)


def _adopt(dlm: Redlock, request: Any) -> None:
    """Free the queue-time lock this message carries, so that this run can take the key.

    Released (owner-checked) rather than taken over: a broker redelivery of the same
    message carries the same token, and two runs must never share one. An outage retry
    carries it again and tries again, in case the outage kept the first try from it.
    """
    queued = queued_lock(request)
    if queued is not None and owner_of(queued[1]) == request.id:
        dlm.release(*queued)


def queued_lock(request: Any) -> tuple[str, str] | None:
    """The ``(resource, token)`` of the queue-time lock the message carries, if any."""
    token = header(request, HEADER_TOKEN)
    resource = header(request, HEADER_RESOURCE)
    if isinstance(token, str) and isinstance(resource, str):
        return resource, token
    return None


def _max_hold(task: LockedTask, options: LockOptions) -> float | None:
    """Renew no longer than the hard time limit plus a lease: a run past its hard limit is
    being killed, and its lock must not outlive it by more than a lease."""
    limits = task.request.timelimit or (None, None)
    hard = limits[0] or task.time_limit
    return float(hard) + options.lease if hard else None


def _take(dlm: Redlock, hold: Hold, options: LockOptions, max_hold: float | None) -> Lock | None:
    """The run's lock, or None when another call holds the key (or its window is open).

    ``wait`` blocks (woken by the holder's release) up to the wait timeout.
    """
    wait = options.on_duplicate is OnDuplicate.WAIT
    deadline = time.monotonic() + options.wait_timeout
    while True:
        left = max(0.0, deadline - time.monotonic()) if wait else None
        lock = dlm.acquire(
            hold.resource,
            options.lease,
            blocking=wait,
            timeout=left,
            auto_renew=True,
            max_hold=max_hold,
            owner=as_owner(hold.task_id),
            on_lost=hold.on_lost,
            fencing=options.fencing,
        )
        if lock is None or not options.window or not _window_open(dlm, hold, lock):
            return lock
        left = deadline - time.monotonic()
        if not wait or left <= 0:
            return None
        # Wait out the window: its key expires, it is never released, and the core's
        # blocking acquire sleeps until that expiry.
        opened = dlm.acquire(
            window_of(hold.resource), options.lease, blocking=True, timeout=left, fencing=False
        )
        if opened is None:
            return None
        opened.release()


def _window_open(dlm: Redlock, hold: Hold, lock: Lock) -> bool:
    try:
        is_open = dlm.locked(window_of(hold.resource))
    except BaseException:
        lock.release()
        raise
    if is_open:
        lock.release()
    return is_open


def _duplicate(task: LockedTask, dlm: Redlock, hold: Hold, options: LockOptions) -> Any:
    policy = options.on_duplicate
    holder_id = dlm.holder(hold.resource)
    if holder_id is None and options.window:
        holder_id = dlm.holder(window_of(hold.resource))
    signals.lock_duplicate.send(
        sender=task,
        task_id=hold.task_id,
        resource=hold.resource,
        policy=policy.value,
        stage="run",
        holder=holder_id,
    )
    held = f"{hold.resource!r} is held by {holder_id or 'another call'}"
    if policy is OnDuplicate.SKIP:
        return _skip(task, hold, held, holder_id)
    if policy is OnDuplicate.RETRY:
        logger.info(
            "task %s[%s] retries in %s s: %s",
            task.name,
            hold.task_id,
            options.duplicate_countdown,
            held,
        )
        raise task.retry(
            exc=TaskLocked(held, resource=hold.resource), countdown=options.duplicate_countdown
        )
    if policy is OnDuplicate.WAIT:
        held += f" after waiting {options.wait_timeout} s"
    raise TaskLocked(held, resource=hold.resource)


def _skip(task: LockedTask, hold: Hold, held: str, holder_id: str | None) -> dict[str, Any]:
    """Succeed without running the body.

    The callbacks and the rest of a chain are not sent: they would get a result the body
    never made. So that nothing waits for them forever (a chain's result is its last
    step's), each one with a task id is marked REVOKED with the reason, and the log line
    counts them.
    """
    request = task.request
    dropped = [*(request.callbacks or ()), *(request.chain or ())]
    request.callbacks = None
    request.chain = None
    reason = f"not sent: {task.name}[{hold.task_id}] before it was skipped ({held})"
    for signature in dropped:
        _mark_unsent(task, signature, reason)
    logger.info(
        "task %s[%s] skipped: %s%s",
        task.name,
        hold.task_id,
        held,
        f"; its {len(dropped)} callback(s)/chain step(s) are not sent" if dropped else "",
    )
    return skipped(hold.resource, holder_id)


def _mark_unsent(task: LockedTask, signature: Any, reason: str) -> None:
    options = signature.get("options") if isinstance(signature, Mapping) else None
    task_id = options.get("task_id") if isinstance(options, Mapping) else None
    if task_id:
        with contextlib.suppress(NotImplementedError):  # no result backend configured
            task.backend.mark_as_revoked(task_id, reason)


def _outage(
    task: LockedTask,
    hold: Hold,
    options: LockOptions,
    exc: QuorumUnavailable,
    body: Callable[[], Any],
) -> Any:
    policy = options.on_outage
    signals.lock_outage.send(
        sender=task, task_id=hold.task_id, resource=hold.resource, policy=policy.value, error=exc
    )
    if policy is OnOutage.RUN_UNLOCKED:
        logger.warning(
            "task %s[%s] runs WITHOUT its lock on %r (lock_on_outage='run_unlocked'): %s",
            task.name,
            hold.task_id,
            hold.resource,
            exc,
        )
        return _run_held(task, hold, body)
    if policy is OnOutage.RAISE or task.request.is_eager:  # eager: no queue to wait in
        raise exc
    raise _retry_outage(task, hold, options, exc)


def _retry_outage(
    task: LockedTask, hold: Hold, options: LockOptions, exc: QuorumUnavailable
) -> Retry:
    """Send the call again after a backoff (returns the ``Retry`` to raise), or fail it
    once ``outage_deadline`` has passed since its first outage.

    Not through ``Task.retry``, which counts against ``max_retries`` (3 by default, used up
    by a minute of outage) and in ``request.retries``: both belong to the body. The retry
    is sent as ``Task.retry`` sends one (the request's signature; ``Retry`` raised for the
    worker to record it) with ``retries`` unchanged, and the outage's start and count in a
    header, so the deadline holds across re-queueing and worker restarts.
    """
    request = task.request
    now = time.time()
    since, attempts = _outage_so_far(request, now)
    left = since + options.outage_deadline - now
    if left <= 0:
        raise _gave_up(task, hold, options.outage_deadline, exc) from exc
    countdown = min(outage_countdown(options.outage_countdown, attempts), left)
    logger.warning(
        "task %s[%s] cannot lock %r, retrying in %.1f s: %s",
        task.name,
        hold.task_id,
        hold.resource,
        countdown,
        exc,
    )
    retry = task.signature_from_request(request, countdown=countdown)
    headers = retry.options.get("headers") or {}
    retry.set(headers={**headers, HEADER_OUTAGE: [since, attempts + 1]})
    try:
        retry.apply_async(add_to_parent=False)  # the same call, not a child of this run
    except Exception as error:  # as Task.retry: the message is not requeued
        raise Reject(error, requeue=False) from error
    return Retry(exc=exc, when=countdown, sig=retry)


def _outage_so_far(request: Any, now: float) -> tuple[float, int]:
    """When the call's first outage was (wall clock: it may have been on another
    worker) and how many outage retries it has had; ``(now, 0)`` for a first outage."""
    value = header(request, HEADER_OUTAGE)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        since, attempts = value
        if (
            isinstance(since, (int, float))
            and math.isfinite(since)
            and isinstance(attempts, int)
            and attempts >= 0
        ):
            return min(float(since), now), attempts
    return now, 0


def _gave_up(
    task: LockedTask, hold: Hold, deadline: float, exc: QuorumUnavailable
) -> QuorumUnavailable:
    logger.error(
        "task %s[%s] FAILS: it could not lock %r for lock_outage_deadline (%g s): %s",
        task.name,
        hold.task_id,
        hold.resource,
        deadline,
        exc,
    )
    return QuorumUnavailable(
        f"{exc.args[0]}; task {task.name}[{hold.task_id}] gave up after retrying for"
        f" {deadline:g} s (lock_outage_deadline)",
        resource=exc.resource,
        votes=exc.votes,
    )


def outage_countdown(base: float, retries: int) -> float:
    """Exponential backoff with jitter, so that a fleet of retries does not return at once."""
    ceiling = min(base * 2 ** min(retries, 30), OUTAGE_COUNTDOWN_MAX)
    return random.uniform(ceiling / 2, ceiling)
