"""celery_redlock: Celery tasks that never run twice at once, on a Redlock quorum.

The public names are re-exported here; modules starting with ``_`` are internal.
"""

from celery_redlock.aio import AsyncLock, AsyncRedlock
from celery_redlock.config import LockSettings
from celery_redlock.exceptions import (
    ConfigurationError,
    LockError,
    LockLost,
    LockNotAcquired,
    QuorumUnavailable,
)
from celery_redlock.lock import Lock, Redlock

__all__ = [
    "AsyncLock",
    "AsyncRedlock",
    "ConfigurationError",
    "Lock",
    "LockError",
    "LockLost",
    "LockNotAcquired",
    "LockSettings",
    "QuorumUnavailable",
    "Redlock",
]

__version__ = "0.1.0"
