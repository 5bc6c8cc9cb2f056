"""The errors celery_redlock raises.

The tree, so that callers can tell contention from outage from misuse::

    LockError                     root of everything below
    ├── LockNotAcquired           another holder has the resource (contention)
    ├── QuorumUnavailable         too few masters answered to decide (outage)
    ├── LockLost                  a lock we held is no longer ours (expired, taken over)
    └── ConfigurationError        bad settings or arguments (also a ValueError)

Every error that comes out of a round against the masters carries the resource name and
each master's vote (``votes``), with masters named by their redacted address: passwords
never appear in messages, reprs or logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery_redlock._core.protocol import Vote

__all__ = [
    "ConfigurationError",
    "LockError",
    "LockLost",
    "LockNotAcquired",
    "QuorumUnavailable",
]


class LockError(Exception):
    """Root of celery_redlock's errors; ``resource`` and ``votes`` say where and how."""

    def __init__(
        self, message: str, *, resource: str | None = None, votes: Sequence[Vote] = ()
    ) -> None:
        super().__init__(message)
        self.resource = resource
        self.votes: tuple[Vote, ...] = tuple(votes)

    def __str__(self) -> str:
        base = super().__str__()
        if not self.votes:
            return base
        return f"{base} [{'; '.join(str(v) for v in self.votes)}]"


class LockNotAcquired(LockError):
    """The resource is held by someone else (or stayed held until the timeout)."""


class QuorumUnavailable(LockError):
    """Too few masters answered to win or refuse a quorum: an outage, not contention."""


class LockLost(LockError):
    """A lock we held can no longer be proven ours: it expired or a quorum dropped it."""


class ConfigurationError(LockError, ValueError):
    """A setting or argument is invalid; the message names it (never with a password)."""
