"""celery_redlock: Celery tasks that never run twice at once, on a Redlock quorum.

The public names are re-exported here; modules starting with ``_`` are internal. The
Celery-facing names (``SingletonTask``, ``install``) are imported on first use, so that
``from celery_redlock import Redlock`` does not import Celery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from celery_redlock._core.aio import AsyncLock, AsyncRedlock
from celery_redlock._core.protocol import Outcome, Vote
from celery_redlock._core.settings import LockSettings
from celery_redlock._core.sync import Lock, Redlock
from celery_redlock.exceptions import (
    ConfigurationError,
    FenceRejected,
    LockError,
    LockLost,
    LockNotAcquired,
    QuorumUnavailable,
)
from celery_redlock.keys import UnkeyableArgument
from celery_redlock.outcomes import TaskLocked, is_skipped

if TYPE_CHECKING:
    from celery_redlock.task import SingletonTask, install

__all__ = [
    "AsyncLock",
    "AsyncRedlock",
    "ConfigurationError",
    "FenceRejected",
    "Lock",
    "LockError",
    "LockLost",
    "LockNotAcquired",
    "LockSettings",
    "Outcome",
    "QuorumUnavailable",
    "Redlock",
    "SingletonTask",
    "TaskLocked",
    "UnkeyableArgument",
    "Vote",
    "install",
    "is_skipped",
]

__version__ = "0.1.0"

#: Names whose modules import Celery, loaded when first asked for.
_LAZY = {"SingletonTask": "celery_redlock.task", "install": "celery_redlock.task"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'celery_redlock' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
