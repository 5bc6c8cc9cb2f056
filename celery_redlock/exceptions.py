"""The errors celery_redlock raises.

The tree, so that callers can tell contention from outage from misuse::

    LockError                     root of everything below
    ├── LockNotAcquired           another holder has the resource (contention)
    ├── QuorumUnavailable         too few masters answered to decide (outage)
    ├── LockLost                  a lock we held is no longer ours (expired, taken over)
    ├── FenceRejected             a fenced write refused where the data lives (stale holder)
    └── ConfigurationError        bad settings or arguments (also a ValueError)

Every error that comes out of a round against the masters carries the resource name and
each master's vote (``votes``), with masters named by their redacted address: passwords
never appear in messages, reprs or logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from celery_redlock._core.protocol import Vote

__all__ = [
    "ConfigurationError",
    "FenceRejected",
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


class FenceRejected(LockError):
    """A fenced write was refused, and nothing of it was written.

    ``target`` names what was written to (a table and the row's key, a Redis key),
    ``offered`` is the writer's fence, ``standing`` the fence the data holds. ``reason``
    says why: ``"higher"`` (a later holder has written: ``standing`` > ``offered``; the
    writer's lock was lost, it must not retry with the same fence), ``"missing"`` (no
    such row: ``standing`` is None) or ``"unreadable"`` (what is stored where the fence
    should be is not one, so no comparison is possible: ``standing`` is None, and
    ``found`` says what was found).
    """

    def __init__(
        self,
        target: str,
        offered: int,
        standing: int | None,
        *,
        reason: Literal["higher", "missing", "unreadable"] = "higher",
        found: str | None = None,
    ) -> None:
        if reason == "higher":
            why = f"fence {offered} offered, {standing} stands"
        elif reason == "missing":
            why = f"no such row (fence {offered} offered)"
        else:
            why = f"{found or 'its stored fence cannot be read'} (fence {offered} offered)"
        super().__init__(f"write to {target} rejected: {why}")
        self.target = target
        self.offered = offered
        self.standing = standing
        self.reason = reason


class ConfigurationError(LockError, ValueError):
    """A setting or argument is invalid; the message names it (never with a password)."""
