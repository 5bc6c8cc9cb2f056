"""A held lock's state and renewal policy, common to the sync and asyncio handles."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from celery_redlock._core import quorum
from celery_redlock._core.settings import LockSettings
from celery_redlock.exceptions import LockLost

logger = logging.getLogger("celery_redlock")


@dataclass(frozen=True, slots=True)
class Renewal:
    """Opt-in automatic renewal of one lock: every ``every`` seconds, up to ``max_hold``."""

    every: float
    max_hold: float | None
    on_lost: Callable[[Any, LockLost], None] | None


class Manager(Protocol):
    """What a handle needs of the manager that made it."""

    settings: LockSettings
    policy: quorum.Policy
    _ctx: quorum.Context

    def clock(self) -> float: ...


M = TypeVar("M", bound=Manager)


class HandleBase(Generic[M]):
    """A held lock's state: the lease, whether it was released or lost, renewal plans."""

    def __init__(self, manager: M, lease: quorum.Lease, renewal: Renewal | None) -> None:
        self._manager = manager
        self._lease = lease
        self._ttl = lease.ttl  # renewals re-arm to this; max_hold may shorten the last one
        self._renewal = renewal
        self._acquired_at = manager.clock()
        self._released = False
        self._lost: LockLost | None = None

    @property
    def resource(self) -> str:
        return self._lease.resource

    @property
    def key(self) -> str:
        return self._lease.key

    @property
    def token(self) -> str:
        """The holder's secret: with the resource, enough to release from another process."""
        return self._lease.token

    @property
    def owner(self) -> str:
        """The ``owner`` text given at acquisition (after the token's random part), or ""."""
        return self._lease.token.partition(":")[2]

    @property
    def fence(self) -> int | None:
        """This lock's fence: higher than that of every earlier lock of the resource, for
        the place a holder writes to to refuse a holder whose lock ended unawares (a
        pause past its validity). None when acquired with fencing off."""
        return self._lease.fence

    @property
    def validity(self) -> float:
        """Seconds the lock is still safely ours (0 once released, lost or expired)."""
        if self._released or self._lost is not None:
            return 0.0
        return max(0.0, self._lease.valid_until - self._manager.clock())

    @property
    def valid(self) -> bool:
        return self.validity > 0

    @property
    def lost(self) -> LockLost | None:
        """Why the lock is no longer ours, or None while it is valid (or once released).

        Renewal's verdict when it failed; otherwise, once the validity has run out, a
        LockLost saying it expired, without waiting for the renewal thread to notice: a
        thread that is late (starved, or the process paused past the lease) must not let
        the handle report a lock as held for longer than it is.
        """
        if self._released:
            return None
        lost = self._lost
        if lost is None and self._manager.clock() >= self._lease.valid_until:
            lost = self._expired()
        return lost

    def check(self) -> None:
        """Raise :class:`LockLost` unless the lock is still ours; do nothing while valid.

        For bodies that loop: call it between steps. It reads the handle's state (no round
        to the masters, so it costs next to nothing and never blocks, an
        :class:`AsyncLock`'s included): the loss renewal recorded, or expiry once the
        validity has run out unrenewed, or the release.
        """
        if self._released:
            raise LockLost(f"lock on {self.resource!r} was released", resource=self.resource)
        lost = self.lost
        if lost is not None:
            raise lost.with_traceback(None)  # raised again and again: no traceback pile-up

    @property
    def released(self) -> bool:
        return self._released

    @property
    def votes(self) -> tuple[quorum.Vote, ...]:
        """Each master's vote in the round that won (or last renewed) the lock."""
        return self._lease.votes

    def __repr__(self) -> str:
        state = "released" if self._released else "lost" if self.lost else "held"
        return f"<{type(self).__name__} {self.resource!r} {state}, validity={self.validity:.3f}s>"

    # --- renewal decisions (the drivers wait and extend; these decide) ---

    def _next_ttl(self) -> float | None:
        """The TTL for the next renewal, or None when renewal must stop."""
        if self._released or self._lost is not None or self._renewal is None:
            return None
        ttl = self._ttl
        if self._renewal.max_hold is not None:
            hold_left = self._acquired_at + self._renewal.max_hold - self._manager.clock()
            ttl = min(ttl, hold_left)
            if ttl <= self._manager.settings.master_timeout * 2:
                logger.warning("lock on %r reached max_hold; renewal stops", self.resource)
                return None
        return ttl

    def _extension(self, ttl: float) -> quorum.Algorithm:
        """The extend algorithm for this lease, believing the shorter validity already.

        Masters may apply an extend before we hear of it, or with the round cut off
        (cancelled, interrupted) without our ever hearing: from its start, the handle
        believes only what an unknown outcome allows (:func:`quorum.unsure`, counted from
        a moment before the round's own start); :meth:`_extended` then records the result.
        """
        m = self._manager
        lease = self._lease
        self._lease = quorum.unsure(lease, m.clock(), ttl, m.policy.drift_factor)
        return quorum.extend(lease, ttl, m.policy, m._ctx)

    def _extended(self, extension: quorum.Extension) -> float:
        """Record what an explicit extend left us; the new validity, or its error raised."""
        error = self._record(extension)
        if error is not None:
            raise error
        return self.validity

    def _renewed(self, extension: quorum.Extension) -> float | None:
        """Record a renewal's result; the delay before the next one, or None when lost."""
        error = self._record(extension)
        if error is not None:
            return self._renewal_failed(error)
        assert self._renewal is not None
        return self._renewal.every

    def _record(self, extension: quorum.Extension) -> Exception | None:
        """Take an extension's lease; its error, or a LockLost when it came too late.

        Once the validity believed during the round has run out, :attr:`lost` may have
        said so (and a body stopped on it): an extension that lands after that moment
        does not make the lock held again. A lost lock stays lost; its keys, still ours
        on the masters, go at its release (owner-checked) or with their TTL.
        """
        late = self._manager.clock() >= self._lease.valid_until
        self._lease = extension.lease
        if extension.error is None and late:
            self._lease = self._lease._replace(valid_until=self._manager.clock())
            return self._expired()
        return extension.error

    def _expired(self) -> LockLost:
        return LockLost(
            f"lock on {self.resource!r} expired: its validity ran out before a renewal extended it",
            resource=self.resource,
            votes=self._lease.votes,
        )

    def _renewal_failed(self, error: Exception) -> float | None:
        """After a failed renewal: the delay before trying again, or None when lost."""
        left = self._lease.valid_until - self._manager.clock()
        if isinstance(error, LockLost) or left <= 0:
            lost = (
                error
                if isinstance(error, LockLost)
                else LockLost(
                    f"lock on {self.resource!r} expired while renewal could not reach a quorum:"
                    f" {error}",
                    resource=self.resource,
                    votes=getattr(error, "votes", ()),
                )
            )
            self._mark_lost(lost)
            return None
        logger.warning("renewing lock on %r failed, retrying: %s", self.resource, error)
        return max(0.01, min(left / 4, self._manager.settings.master_timeout * 2))

    def _mark_lost(self, error: LockLost) -> None:
        """Record the loss and tell the holder: through ``on_lost`` if given (its owner
        logs it with the context it has), else with an ERROR line of our own."""
        self._lost = error
        callback = self._renewal.on_lost if self._renewal else None
        if callback is None:
            logger.error("lock on %r lost: %s", self.resource, error)
            return
        try:
            callback(self, error)
        except Exception:
            logger.exception("on_lost callback for %r raised", self.resource)
