"""What the sync and asyncio lock managers share: settings, masters, the algorithm's context.

Only decisions live here; anything that waits or talks to a master is the drivers'.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

from celery_redlock._core import quorum
from celery_redlock._core.durations import Seconds, seconds, timeout_seconds
from celery_redlock._core.handle import Renewal
from celery_redlock._core.masters import parse_masters
from celery_redlock._core.protocol import Outcome
from celery_redlock._core.quorum import AcquireRequest, Vote
from celery_redlock._core.roster import Roster
from celery_redlock._core.settings import MAX_OWNER_LENGTH, LockSettings, check_utf8, flag
from celery_redlock.exceptions import ConfigurationError, LockLost, LockNotAcquired

logger = logging.getLogger("celery_redlock")

#: Jitter source, reseeded in every forked child so that siblings forked from one
#: parent do not retry in lockstep after a split vote.
_rng = random.Random()
os.register_at_fork(after_in_child=_rng.seed)


def new_token() -> str:
    """128 bits from the OS's CSPRNG: unguessable, so nobody can forge a release."""
    return secrets.token_hex(16)


class AcquireOptions(TypedDict, total=False):
    """The keyword options of ``acquire`` and ``lock``, in both lock managers (documented
    at :meth:`celery_redlock.Redlock.acquire`): one list, so that the two drivers' verbs
    cannot drift apart."""

    blocking: bool
    timeout: Seconds | None
    auto_renew: bool
    renew_every: Seconds | None
    max_hold: Seconds | None
    owner: str | None
    on_lost: Callable[[Any, LockLost], None] | None
    fencing: bool | None


#: The most permits a semaphore may have: each attempt names every slot to every master
#: (two keys a slot, in one script run), so a limit is a few thousand keys at most.
MAX_LIMIT = 1000

#: What ``acquire`` accepts, checked at each call as Python checks a signature.
_OPTION_NAMES = frozenset(AcquireOptions.__annotations__)


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
        specs = parse_masters(masters)
        #: The masters as the driver is handed them (names, endpoints, health, clock).
        self.roster = Roster(specs, self.settings.master_timeout, clock, self._cannot_wake)
        self.policy = self.settings.policy(len(specs))
        self._ctx = quorum.Context(clock, _rng, new_token)
        #: Monotonic seconds: the clock the algorithm is given (injected by the simulator).
        self.clock = clock
        self._unwakeable: set[str] = set()  # masters warned of: releases there wake nobody
        if len(specs) % 2 == 0:
            logger.warning(
                "%d Redis masters: an even count tolerates no more failures than %d would;"
                " use an odd number",
                len(specs),
                len(specs) - 1,
            )

    def _released(self, resource: str, released: bool, votes: Sequence[Vote]) -> bool:
        """A release's answer, logging what it did not do: reach a quorum (INFO), or wake
        the next waiter on a master that deleted our key (see :meth:`_cannot_wake`)."""
        for vote in votes:
            if vote.outcome is Outcome.YES and vote.error:
                self._cannot_wake(vote.master, vote.error)
        if not released:
            logger.info("release of %r reached no quorum: %s", resource, "; ".join(map(str, votes)))
        return bool(released)

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
            quorum.FALLBACK_POLL,
            self.settings.key_prefix,
        )

    @property
    def masters(self) -> tuple[str, ...]:
        """The masters' redacted names, in order."""
        return self.roster.names

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

    def _acquisition(
        self, resource: str, ttl: Seconds, options: AcquireOptions, limit: int = 0
    ) -> tuple[AcquireRequest, Renewal | None]:
        """An ``acquire`` call's arguments, checked before any round: the request for
        :func:`quorum.acquire` and the renewal its lock gets (None: not renewed); a
        ``semaphore`` call's with its ``limit`` (0: a lock)."""
        if not _OPTION_NAMES.issuperset(options):
            name = min(set(options) - _OPTION_NAMES)
            raise TypeError(f"acquire() got an unexpected keyword argument {name!r}")
        key = self.settings.key(resource)
        owner = options.get("owner")
        if owner is not None and (
            not isinstance(owner, str) or len(owner) > MAX_OWNER_LENGTH or not owner.isprintable()
        ):
            raise ConfigurationError(
                f"owner must be printable text of at most {MAX_OWNER_LENGTH} characters,"
                f" not {owner!r}"
            )
        req = quorum.AcquireRequest(
            resource,
            key,
            self.settings.ttl(ttl),
            bool(options.get("blocking", False)),
            timeout_seconds(options.get("timeout")),
            self.settings.restart_guard,
            owner or "",
            self._fencing(options.get("fencing")),
            limit,
        )
        return req, self._renewal(req.ttl, options)

    def _permits(
        self, resource: str, ttl: Seconds, limit: int, options: AcquireOptions
    ) -> tuple[AcquireRequest, Renewal | None]:
        """A ``semaphore`` call's arguments: ``acquire``'s, and a limit checked first."""
        if type(limit) is not int or not 1 <= limit <= MAX_LIMIT:
            raise ConfigurationError(
                f"limit must be an integer from 1 to {MAX_LIMIT}, not {limit!r}"
            )
        return self._acquisition(resource, ttl, options, limit)

    def _fencing(self, given: bool | None) -> bool:
        """Whether an acquisition mints a fence: as asked, else as the settings say."""
        return self.settings.fencing if given is None else flag(given, "fencing")

    @staticmethod
    def _renewal(ttl: float, options: AcquireOptions) -> Renewal | None:
        renew_every = options.get("renew_every")
        max_hold = options.get("max_hold")
        if not options.get("auto_renew", False):
            if renew_every is not None or max_hold is not None:
                raise ConfigurationError("renew_every and max_hold need auto_renew=True")
            return None
        every = ttl / 3 if renew_every is None else seconds(renew_every, "renew_every")
        if every >= ttl:
            raise ConfigurationError(
                f"renew_every ({every} s) must be shorter than the ttl ({ttl} s)"
            )
        hold = None if max_hold is None else seconds(max_hold, "max_hold")
        return Renewal(every, hold, options.get("on_lost"))

    def _not_acquired(self, resource: str, limit: int = 0) -> LockNotAcquired:
        """What ``lock()`` raises instead of entering its block when others hold it (and
        ``permit()`` when ``limit`` others hold every permit)."""
        if limit:
            message = f"all {limit} permits of {resource!r} are held"
            return LockNotAcquired(message, resource=resource)
        return LockNotAcquired(f"{resource!r} is locked by another holder", resource=resource)
