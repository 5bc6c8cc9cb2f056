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

from celery_redlock._masters import seconds
from celery_redlock.exceptions import ConfigurationError

__all__ = ["LockSettings"]

#: Longest resource name we accept: keys are compared and sent on every round.
MAX_RESOURCE_LENGTH = 1024


@dataclass(frozen=True, slots=True)
class LockSettings:
    """Defaults for a :class:`~celery_redlock.Redlock`; per-call arguments override some.

    - ``master_timeout`` (0.1 s): the most one round waits for any one master, connecting
      included. Much smaller than any TTL, so a hung master costs a round at most this.
    - ``retry_count`` (3): how many more rounds after a split vote or an outage before
      giving up (a held resource ends a non-blocking call at once).
    - ``retry_delay`` (0.2 s): the upper bound of the random delay between those rounds.
    - ``drift_factor`` (0.01): share of the TTL discounted for clock drift between us and
      the masters (plus 2 ms for Redis's expiry precision), as in the reference.
    - ``key_prefix`` (``"redlock:"``): prepended to every resource to form its key.
    """

    master_timeout: float = 0.1
    retry_count: int = 3
    retry_delay: float = 0.2
    drift_factor: float = 0.01
    key_prefix: str = "redlock:"

    def __post_init__(self) -> None:
        object.__setattr__(self, "master_timeout", seconds(self.master_timeout, "master_timeout"))
        object.__setattr__(
            self, "retry_delay", seconds(self.retry_delay, "retry_delay", allow_zero=True)
        )
        if isinstance(self.retry_count, bool) or not isinstance(self.retry_count, int):
            raise ConfigurationError(f"retry_count must be an int, got {self.retry_count!r}")
        if not 0 <= self.retry_count <= 1000:
            raise ConfigurationError(f"retry_count must be 0 to 1000, got {self.retry_count}")
        factor = self.drift_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or math.isnan(factor):
            raise ConfigurationError(f"drift_factor must be a number, got {factor!r}")
        if not 0 <= factor < 0.5:
            raise ConfigurationError(f"drift_factor must be at least 0 and below 0.5, got {factor}")
        if not isinstance(self.key_prefix, str):
            raise ConfigurationError(f"key_prefix must be a string, got {self.key_prefix!r}")

    def ttl(self, value: float | timedelta) -> float:
        """A TTL in seconds, checked to leave room for a round and the drift allowance."""
        ttl = seconds(value, "ttl")
        floor = self.master_timeout + ttl * self.drift_factor + 0.002
        if ttl <= floor:
            raise ConfigurationError(
                f"ttl {ttl} s leaves no validity: it must exceed master_timeout"
                f" ({self.master_timeout} s) plus the drift allowance"
            )
        return ttl

    def key(self, resource: Any) -> str:
        """The Redis key for ``resource``, after checking it is usable text."""
        if not isinstance(resource, str):
            raise ConfigurationError(
                f"resource must be a string, not {type(resource).__name__}"
            )
        if not resource:
            raise ConfigurationError("resource must not be empty")
        if len(resource) > MAX_RESOURCE_LENGTH:
            raise ConfigurationError(
                f"resource is {len(resource)} characters; at most {MAX_RESOURCE_LENGTH}"
            )
        return self.key_prefix + resource


def timeout_seconds(value: Any) -> float | None:
    """A wait timeout: None (wait as long as it takes) or seconds at least 0."""
    return None if value is None else seconds(value, "timeout", allow_zero=True)
