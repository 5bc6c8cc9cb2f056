"""How a run ends when its body did not run: the error, and the "skipped" result.

- :class:`TaskLocked` is the failure of a run whose key another call held, with
  ``lock_on_duplicate="raise"``, ``"wait"`` (after ``lock_wait_timeout``) or ``"retry"``
  (once ``max_retries`` is spent). It is a :class:`~celery_redlock.LockNotAcquired`.
- With ``lock_on_duplicate="skip"`` the run succeeds without running its body, and its
  result is :func:`skipped` (a plain dict, so every result serializer stores it), which
  :func:`is_skipped` recognises.
"""

from __future__ import annotations

from typing import Any

from celery_redlock.exceptions import LockNotAcquired

__all__ = ["TaskLocked", "is_skipped", "skipped"]

#: The result key marking a skipped run.
SKIPPED = "celery_redlock.skipped"


class TaskLocked(LockNotAcquired):
    """Another call of this task (same key) holds the lock, so this run did not run."""


def skipped(resource: str, holder: str | None) -> dict[str, Any]:
    """The result of a run skipped as a duplicate: why, which key, which task held it."""
    return {SKIPPED: "duplicate", "resource": resource, "holder": holder}


def is_skipped(result: Any) -> bool:
    """Whether a task's result says its run was skipped as a duplicate."""
    return isinstance(result, dict) and SKIPPED in result
