"""What the sync and asyncio front ends share: settings, masters, handle state, renewal policy.

Only decisions live here; anything that waits or talks to a master is the drivers'.
"""

from __future__ import annotations

import logging
import os
import random
import reprlib
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Generic, TypeVar

from celery_redlock import _quorum
from celery_redlock._masters import Health, MasterSpec, parse_masters, seconds
from celery_redlock._scripts import GRANTED, Call, Outcome
from celery_redlock.config import LockSettings, check_utf8, timeout_seconds
from celery_redlock.exceptions import ConfigurationError, LockLost

logger = logging.getLogger("celery_redlock")

#: Jitter source, reseeded in every forked child so that siblings forked from one
#: parent do not retry in lockstep after a split vote.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)


def new_token() -> str:
    """128 bits from the OS's CSPRNG: unguessable, so nobody can forge a release."""
    return secrets.token_hex(16)


Seconds = float | timedelta

#: Shows a master's unexpected reply in a vote: short, and safe for any nesting depth.
_shown = reprlib.Repr()
_shown.maxlevel, _shown.maxlist, _shown.maxstring, _shown.maxother = 3, 4, 80, 80


def unexpected(reply: object, why: Exception) -> str:
    """Why a reply that ``Call.parse`` refused (``why``) is an ERROR vote, in both drivers'
    words: whatever a master sends is a vote, never an exception out of a round."""
    return f"unexpected reply {_shown.repr(reply)}: {why}"


def vote_of(
    name: str, call: Call, reply: Any, problem: str | None, granted: _quorum.Vote
) -> _quorum.Vote:
    """A master's well-formed reply as its vote, the same in both drivers: an ERROR vote
    when the master may not vote (``problem``: it evicts, or is another master), or when
    ``Call.parse`` refuses the reply; ``granted`` is the caller's ready yes-vote."""
    if problem is not None:
        return _quorum.Vote(name, Outcome.ERROR, error=problem)
    try:
        parsed = call.parse(reply)
    except Exception as exc:  # any malformed reply is an ERROR vote
        return _quorum.Vote(name, Outcome.ERROR, error=unexpected(reply, exc))
    if parsed is GRANTED:
        return granted
    outcome, pttl_ms, owner, note, guard_ms = parsed
    return _quorum.Vote(name, outcome, pttl_ms, note, owner, guard_ms)


@dataclass(frozen=True, slots=True)
class Renewal:
    """Opt-in automatic renewal of one lock: every ``every`` seconds, up to ``max_hold``."""

    every: float
    max_hold: float | None
    on_lost: Callable[[Any, LockLost], None] | None


class ManagerBase:
    """Settings, masters and the algorithm's context, common to both lock managers."""

    def __init__(
        self,
        masters: Sequence[Any],
        *,
        settings: LockSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        **options: Any,
    ) -> None:
        if settings is not None and options:
            raise ConfigurationError("give either settings or individual options, not both")
        try:
            self.settings = settings or LockSettings(**options)
        except TypeError as exc:
            raise ConfigurationError(f"unknown lock option: {exc}") from None
        self._specs: tuple[MasterSpec, ...] = parse_masters(masters)
        self._health = [Health() for _ in self._specs]
        self.policy = _quorum.Policy(
            len(self._specs),
            self.settings.drift_factor,
            self.settings.retry_count,
            self.settings.retry_delay,
        )
        self._ctx = _quorum.Context(clock, _rng, new_token)
        #: Monotonic seconds: the clock the algorithm is given (injected by the simulator).
        self.clock = clock
        self._unwakeable: set[str] = set()  # masters warned of: releases there wake nobody
        if len(self._specs) % 2 == 0:
            logger.warning(
                "%d Redis masters: an even count tolerates no more failures than %d would;"
                " use an odd number",
                len(self._specs),
                len(self._specs) - 1,
            )

    def _released(self, resource: str, released: bool, votes: Sequence[_quorum.Vote]) -> bool:
        """A release's answer, logging what it did not do: reach a quorum (INFO), or wake
        the next waiter on a master that deleted our key (see :meth:`_cannot_wake`)."""
        for vote in votes:
            if vote.outcome is Outcome.YES and vote.error:
                self._cannot_wake(vote.master, vote.error)
        if not released:
            logger.info("release of %r reached no quorum: %s", resource, "; ".join(map(str, votes)))
        return bool(released)

    def _subscription_refused(self, i: int, error: Exception) -> None:
        """Master ``i`` refused a waiter's SUBSCRIBE with an error reply (an ACL)."""
        cause = f"subscribe refused: {type(error).__name__}: {error}"
        self._cannot_wake(self._specs[i].name, cause)

    def _cannot_wake(self, master: str, cause: str) -> None:
        """Warn, once per master, that blocked waiters there cannot be woken by releases:
        nothing is lost (they still ask again by their timed poll), but every hand-off
        there then waits for that poll, and an operator can fix the cause (the ACL)."""
        if master in self._unwakeable:
            return
        self._unwakeable.add(master)
        logger.warning(
            "master %s cannot wake blocked waiters (%s): they ask again every %g s instead;"
            " the user needs PUBLISH, SUBSCRIBE and the channels &%s*",
            master,
            cause,
            _quorum.FALLBACK_POLL,
            self.settings.key_prefix,
        )

    @property
    def masters(self) -> tuple[str, ...]:
        """The masters' redacted names, in order."""
        return tuple(spec.name for spec in self._specs)

    @property
    def quorum(self) -> int:
        return self.policy.quorum

    @staticmethod
    def _token(token: Any) -> str:
        """A token given back to release by: the non-empty text a handle's ``token`` is."""
        if not isinstance(token, str) or not token:
            raise ConfigurationError("token must be a non-empty string")
        if not token.isascii():
            check_utf8(token, "token")
        return token

    def _request(
        self,
        resource: str,
        ttl: Seconds,
        blocking: bool,
        timeout: Seconds | None,
        owner: str | None = None,
    ) -> _quorum.AcquireRequest:
        key = self.settings.key(resource)
        if owner is not None and (
            not isinstance(owner, str) or len(owner) > 200 or not owner.isprintable()
        ):
            raise ConfigurationError(
                f"owner must be printable text of at most 200 characters, not {owner!r}"
            )
        return _quorum.AcquireRequest(
            resource,
            key,
            self.settings.ttl(ttl),
            bool(blocking),
            timeout_seconds(timeout),
            self.settings.restart_guard,
            owner or "",
        )

    def _renewal(
        self,
        ttl: float,
        auto_renew: bool,
        renew_every: Seconds | None,
        max_hold: Seconds | None,
        on_lost: Callable[[Any, LockLost], None] | None,
    ) -> Renewal | None:
        if not auto_renew:
            if renew_every is not None or max_hold is not None:
                raise ConfigurationError("renew_every and max_hold need auto_renew=True")
            return None
        every = ttl / 3 if renew_every is None else seconds(renew_every, "renew_every")
        if every >= ttl:
            raise ConfigurationError(
                f"renew_every ({every} s) must be shorter than the ttl ({ttl} s)"
            )
        hold = None if max_hold is None else seconds(max_hold, "max_hold")
        return Renewal(every, hold, on_lost)


M = TypeVar("M", bound=ManagerBase)


class HandleBase(Generic[M]):
    """A held lock's state: the lease, whether it was released or lost, renewal plans."""

    def __init__(self, manager: M, lease: _quorum.Lease, renewal: Renewal | None) -> None:
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
        """Why the lock was lost while held (renewal failed), or None."""
        return self._lost

    @property
    def released(self) -> bool:
        return self._released

    @property
    def votes(self) -> tuple[_quorum.Vote, ...]:
        """Each master's vote in the round that won (or last renewed) the lock."""
        return self._lease.votes

    def __repr__(self) -> str:
        state = "released" if self._released else "lost" if self._lost else "held"
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

    def _extension(self, ttl: float) -> _quorum.Algorithm:
        """The extend algorithm for this lease, believing the shorter validity already.

        Masters may apply an extend before we hear of it, or with the round cut off
        (cancelled, interrupted) without our ever hearing: from its start, the handle
        believes only what an unknown outcome allows (:func:`_quorum.unsure`, counted from
        a moment before the round's own start); :meth:`_extended` then records the result.
        """
        m = self._manager
        lease = self._lease
        self._lease = _quorum.unsure(lease, m.clock(), ttl, m.policy.drift_factor)
        return _quorum.extend(lease, ttl, m.policy, m._ctx)

    def _extended(self, extension: _quorum.Extension) -> float:
        """Record what an explicit extend left us; the new validity, or its error raised."""
        self._lease = extension.lease
        if extension.error is not None:
            raise extension.error
        return self.validity

    def _renewed(self, extension: _quorum.Extension) -> float | None:
        """Record a renewal's result; the delay before the next one, or None when lost."""
        self._lease = extension.lease
        if extension.error is not None:
            return self._renewal_failed(extension.error)
        assert self._renewal is not None
        return self._renewal.every

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
