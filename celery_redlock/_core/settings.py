"""Settings of the lock manager: one frozen object holding every default in one place.

All durations are seconds (a float, or a ``datetime.timedelta``), as in Celery. Each value
is checked when the settings are made, so a bad one fails at start-up with the setting's
name in the message rather than on the first lock in production.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from celery_redlock._core.durations import bounded, seconds
from celery_redlock._core.quorum import Policy, drift
from celery_redlock.exceptions import ConfigurationError

__all__ = ["LockSettings"]

#: Longest resource name we accept: keys are compared and sent on every round.
MAX_RESOURCE_LENGTH = 1024

#: Longest owner text a lock may carry (after its token's random part): it is sent on every
#: acquire and shown by ``celery redlock list``, so it names its holder, nothing longer.
MAX_OWNER_LENGTH = 200

#: Longest TTL (and restart guard), in seconds: 2**53 ms, the most whole milliseconds a
#: float holds exactly (ours, and the numbers of Redis's Lua), so a TTL reaches every
#: master as given. Redis's own limit is higher but moves: SET PX and PEXPIRE refuse a
#: TTL that, added to the master's clock in ms, passes 2**63 - 1 (and the reply is an
#: error vote from every master: an outage, not a mistake). About 285,000 years.
MAX_TTL = 2**53 / 1000


@dataclass(frozen=True, slots=True, init=False)
class LockSettings:
    """Defaults for a :class:`~celery_redlock.Redlock`; per-call arguments override some.

    - ``master_timeout`` (0.1 s): the most one round waits for replies; opening a new
      connection (handshake, TLS, AUTH) has a bound of its own of the same length. Much
      smaller than any TTL, so a hung master costs a round at most this.
    - ``retry_count`` (3): how many more rounds after a split vote or an outage before
      giving up (a held resource ends a non-blocking call at once).
    - ``retry_delay`` (0.2 s): the upper bound of the random delay between those rounds.
    - ``drift_factor`` (0.01): share of the TTL discounted for clock drift between us and
      the masters (plus ``quorum.CLOCK_PRECISION`` for Redis's expiry precision), as in
      the reference (``quorum.drift``).
    - ``key_prefix`` (``"redlock:"``): prepended to every resource to form its key.
    - ``restart_guard`` (60 s): how long a master that lost its data (restart without
      persistence, FLUSHALL, a fresh replacement) sits out every quorum. It must cover
      the longest TTL any client uses, so TTLs above it are refused; 0 turns it off
      (then operators must delay restarts by the longest TTL themselves).
    - ``fencing`` (True): every lock carries a fence (``lock.fence``), an integer higher
      than that of every earlier lock of the same resource, for the resource to refuse
      writes from a holder that lost its lock unawares (see README, "Fencing").
    """

    master_timeout: float
    retry_count: int
    retry_delay: float
    drift_factor: float
    key_prefix: str
    restart_guard: float
    fencing: bool

    def __init__(
        self,
        *,
        master_timeout: float | timedelta = 0.1,
        retry_count: int = 3,
        retry_delay: float | timedelta = 0.2,
        drift_factor: float = 0.01,
        key_prefix: str = "redlock:",
        restart_guard: float | timedelta = 60.0,
        fencing: bool = True,
    ) -> None:
        if isinstance(retry_count, bool) or not isinstance(retry_count, int):
            raise ConfigurationError(f"retry_count must be an int, got {retry_count!r}")
        if not 0 <= retry_count <= 1000:
            raise ConfigurationError(f"retry_count must be 0 to 1000, got {_shown(retry_count)}")
        if not isinstance(key_prefix, str):
            raise ConfigurationError(f"key_prefix must be a string, got {key_prefix!r}")
        check_utf8(key_prefix, "key_prefix")
        object.__setattr__(self, "master_timeout", bounded(master_timeout, "master_timeout"))
        object.__setattr__(self, "retry_count", retry_count)
        object.__setattr__(self, "retry_delay", bounded(retry_delay, "retry_delay", zero=True))
        object.__setattr__(self, "drift_factor", _drift_factor(drift_factor))
        object.__setattr__(self, "key_prefix", key_prefix)
        guard = seconds(restart_guard, "restart_guard", allow_zero=True)
        if guard > MAX_TTL:
            raise ConfigurationError(
                f"restart_guard {guard} s is beyond the longest TTL ({MAX_TTL:.0f} s)"
            )
        object.__setattr__(self, "restart_guard", guard)
        object.__setattr__(self, "fencing", flag(fencing, "fencing"))

    def policy(self, masters: int) -> Policy:
        """What the algorithm consults of these settings, for ``masters`` masters."""
        return Policy(masters, self.drift_factor, self.retry_count, self.retry_delay)

    def ttl(self, value: float | timedelta) -> float:
        """A TTL in seconds, checked to leave room for a round and the drift allowance,
        within the restart guard, and at most :data:`MAX_TTL`."""
        ttl = seconds(value, "ttl")
        if ttl > MAX_TTL:
            raise ConfigurationError(
                f"ttl {ttl} s is beyond the longest TTL ({MAX_TTL:.0f} s, 2**53 ms): Redis"
                " would refuse it, or round it"
            )
        floor = self.master_timeout + drift(ttl, self.drift_factor)
        if ttl <= floor:
            raise ConfigurationError(
                f"ttl {ttl} s leaves no validity: it must exceed master_timeout"
                f" ({self.master_timeout} s) plus the drift allowance"
            )
        if self.restart_guard and ttl > self.restart_guard:
            raise ConfigurationError(
                f"ttl {ttl} s exceeds restart_guard ({self.restart_guard} s): a master that"
                " restarted empty could rejoin while this lock is still held elsewhere;"
                " use auto_renew with a shorter ttl, or raise restart_guard"
            )
        return ttl

    def key(self, resource: Any) -> str:
        """The Redis key for ``resource``, after checking it is usable text."""
        if not isinstance(resource, str):
            raise ConfigurationError(f"resource must be a string, not {type(resource).__name__}")
        if not resource:
            raise ConfigurationError("resource must not be empty")
        if len(resource) > MAX_RESOURCE_LENGTH:
            raise ConfigurationError(
                f"resource is {len(resource)} characters; at most {MAX_RESOURCE_LENGTH}"
            )
        if not resource.isascii():
            check_utf8(resource, "resource")
        return self.key_prefix + resource


def flag(value: Any, name: str) -> bool:
    """A yes/no setting: a bool, not a truthy string (``"false"`` would read as on)."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, not {value!r}")
    return value


def check_utf8(text: str, name: str) -> None:
    """Refuse text with no UTF-8 form (a lone surrogate, e.g. from a file name decoded
    with ``surrogateescape``): it could not be sent to a master."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"{name} has no UTF-8 form: {exc.reason} at position {exc.start}"
            f" ({text[exc.start : exc.end]!r})"
        ) from None


def _drift_factor(value: Any) -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    try:
        factor = math.nan if bad else float(value)
    except OverflowError:
        factor = math.nan
    if math.isnan(factor) or not 0 <= factor < 0.5:
        raise ConfigurationError(
            f"drift_factor must be a number from 0 to below 0.5, got {_shown(value)}"
        )
    return factor


def _shown(value: Any) -> str:
    """``repr(value)``, but a huge int by its size (too many digits even to print)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an int of {value.bit_length()} bits"
    return repr(value)
