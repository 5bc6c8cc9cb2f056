"""Celery beat that publishes only while it holds a leader lease on a quorum of masters.

Run as many beats as you like; one leads, the others stand by::

    celery -A proj beat -S celery_redlock.beat:RedlockScheduler

or with any other scheduler (django-celery-beat's, redbeat's, your own)::

    from django_celery_beat.schedulers import DatabaseScheduler
    from celery_redlock.beat import LeaderLeaseMixin

    class LeaderDatabaseScheduler(LeaderLeaseMixin, DatabaseScheduler):
        pass

How it behaves (``lease`` is ``redlock_beat_lease``, 10 s by default):

- Each tick, the leader renews its lease when a third of it has passed, and checks that
  it is still valid immediately before every send. It never sends on a lease it cannot
  prove: a leader cut off from the masters stops within one lease.
- A standby keeps its schedule moving in step (entries advance as if sent) while it can
  see another leader, so that taking over causes no burst; when nobody holds the lease
  (an outage) its entries stay put, and the beat that wins the lease afterwards sends
  each overdue entry once, as Celery does after a beat restart.
- Failover: a standby takes over within one lease of the leader's death (SIGKILL, lost
  host). Worst-case gap: one lease plus one tick; duplicates: none, since the old leader
  stops sending before its lease can be won by anyone else (drift allowance included),
  unless it was paused past its validity between its check and its send (the send is
  one broker round trip after the check).
"""

from __future__ import annotations

import enum
import logging
import os
import socket
from typing import Any

from celery.beat import PersistentScheduler

from celery_redlock._celery.appstate import state_of
from celery_redlock._core.durations import seconds
from celery_redlock._core.sync import Lock
from celery_redlock.exceptions import ConfigurationError, LockError, LockLost, QuorumUnavailable

__all__ = ["LeaderLeaseMixin", "RedlockScheduler"]

logger = logging.getLogger("celery_redlock.beat")

#: Default lease of the beat leader, in seconds (``redlock_beat_lease``).
DEFAULT_LEASE = 10.0


class Role(enum.Enum):
    LEADER = "leader"
    STANDBY = "standby"  # another beat leads
    OUTAGE = "outage"  # nobody can be shown to lead


class Leadership:
    """The leader lease of one beat: won, renewed on ticks, checked before each send."""

    def __init__(self, app: Any) -> None:
        conf = app.conf
        self.lease = seconds(conf.get("redlock_beat_lease") or DEFAULT_LEASE, "redlock_beat_lease")
        self.resource = conf.get("redlock_beat_key") or f"beat:{app.main or 'default'}"
        if not isinstance(self.resource, str) or not self.resource:
            raise ConfigurationError(
                f"redlock_beat_key must be a non-empty string, not {self.resource!r}"
            )
        self._state = state_of(app)
        self._state.manager.settings.ttl(self.lease)  # refuse a lease that cannot work, now
        self._owner = f"beat@{socket.gethostname()}:{os.getpid()}"
        self._lock: Lock | None = None
        self.role = Role.STANDBY

    def refresh(self) -> Role:
        """Win the lease, keep it, or learn who has it; the role for this tick."""
        try:
            if self._lock is None:
                self._lock = self._state.manager.acquire(
                    self.resource, self.lease, owner=self._owner
                )
                if self._lock is not None:
                    logger.info("beat: leading (lease %.1f s on %r)", self.lease, self.resource)
            elif self._lock.validity < self.lease * 2 / 3:
                self._lock.extend()
        except LockLost as exc:
            logger.warning("beat: lost the lead: %s", exc)
            self._lock = None
        except QuorumUnavailable as exc:
            if self._lock is None or not self._lock.valid:
                self._lock = None
                return self._become(Role.OUTAGE, exc)
        return self._become(Role.LEADER if self._lock is not None else Role.STANDBY)

    def _become(self, role: Role, cause: Exception | None = None) -> Role:
        if role is not self.role:
            message = "beat: %s -> %s" + (": %s" if cause else "")
            args = (self.role.value, role.value, cause) if cause else (self.role.value, role.value)
            logger.warning(message, *args) if role is Role.OUTAGE else logger.info(message, *args)
        self.role = role
        return role

    def may_send(self) -> bool:
        """Whether the lease is provably ours right now (checked before every send)."""
        return self._lock is not None and self._lock.valid

    @property
    def fence(self) -> int | None:
        """This term's fence while leading (None otherwise): higher than every earlier
        term's, for a scheduler that writes somewhere (a database) to refuse a deposed
        leader's late writes. A new term (the lease won again) has a new fence."""
        return self._lock.fence if self._lock is not None else None

    def next_check(self) -> float:
        """The longest a tick may sleep without letting the lease lapse or a takeover lag."""
        return self.lease / 3

    def resign(self) -> None:
        if self._lock is not None:
            try:
                self._lock.release()
            except LockError as exc:
                logger.warning("beat: releasing the lead failed: %s", exc)
            self._lock = None


class LeaderLeaseMixin:
    """Adds the leader lease to a Celery beat scheduler: put it first in the bases."""

    _leadership: Leadership | None = None

    def setup_schedule(self) -> None:
        self._leadership = Leadership(self.app)  # type: ignore[attr-defined]
        super().setup_schedule()  # type: ignore[misc]

    def tick(self, *args: Any, **kwargs: Any) -> float:
        leadership = self._lead()
        role = leadership.refresh()
        if role is Role.OUTAGE:
            return leadership.next_check()  # entries stay due for whoever leads next
        interval: float = super().tick(*args, **kwargs)  # type: ignore[misc]
        return min(interval, leadership.next_check())

    def apply_entry(self, entry: Any, producer: Any = None) -> None:
        if not self._lead().may_send():
            logger.debug("beat: standby, not sending %s", entry.name)
            return
        super().apply_entry(entry, producer=producer)  # type: ignore[misc]

    @property
    def leader_fence(self) -> int | None:
        """The fence of this beat's term as leader (None while it stands by): see
        :attr:`Leadership.fence`."""
        return self._lead().fence

    def close(self) -> None:
        if self._leadership is not None:
            self._leadership.resign()
        super().close()  # type: ignore[misc]

    def _lead(self) -> Leadership:
        if self._leadership is None:
            self._leadership = Leadership(self.app)  # type: ignore[attr-defined]
        return self._leadership


class RedlockScheduler(LeaderLeaseMixin, PersistentScheduler):  # type: ignore[misc]
    """Celery's default (shelve-file) scheduler with the leader lease."""
