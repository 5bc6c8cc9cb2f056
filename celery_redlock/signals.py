"""celery_redlock's own signals, for monitoring: connect to them as to Celery's.

Usage::

    from celery_redlock import signals

    @signals.lock_duplicate.connect
    def count_duplicates(sender, task_id, resource, policy, stage, **kwargs):
        statsd.incr(f"duplicates.{sender.name}.{policy}")

Every signal is sent with the task as ``sender`` and ``task_id`` and ``resource`` (the lock's
name) as arguments. A receiver that raises is logged and ignored, as with Celery's signals.

- :data:`lock_acquired` (``lock``): a run took its lock; its body runs next.
- :data:`lock_released` (``released``: whether a quorum deleted the key): the run ended.
- :data:`lock_duplicate` (``policy``, ``stage``, ``holder``): the key was held by another
  call. ``stage`` is ``"run"`` in the worker (``policy`` is the duplicate policy applied)
  or ``"publish"`` when ``apply_async`` returned the existing call's result instead of
  publishing (``policy`` is ``"dedup"``). ``holder`` is the holding task's id when known.
- :data:`lock_lost` (``error``): renewal could not keep the lock while the body ran; another
  run may start. Sent from the renewal thread, not the task's.
- :data:`lock_outage` (``policy``, ``error``): too few masters answered; ``policy`` says
  what happens to the run (``retry``, ``raise``, ``run_unlocked``, or ``publish`` at
  ``apply_async``, which then publishes without its queue-time lock).
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

__all__ = ["lock_acquired", "lock_duplicate", "lock_lost", "lock_outage", "lock_released"]

lock_acquired = Signal(
    name="celery_redlock.lock_acquired", providing_args={"task_id", "resource", "lock"}
)
lock_released = Signal(
    name="celery_redlock.lock_released", providing_args={"task_id", "resource", "released"}
)
lock_duplicate = Signal(
    name="celery_redlock.lock_duplicate",
    providing_args={"task_id", "resource", "policy", "stage", "holder"},
)
lock_lost = Signal(name="celery_redlock.lock_lost", providing_args={"task_id", "resource", "error"})
lock_outage = Signal(
    name="celery_redlock.lock_outage", providing_args={"task_id", "resource", "policy", "error"}
)
