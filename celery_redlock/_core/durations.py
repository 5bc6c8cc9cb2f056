"""Durations: every time setting is seconds (a float or a ``timedelta``), as in Celery,
checked finite and in range where it is read."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from celery_redlock.exceptions import ConfigurationError

Seconds = float | timedelta


def seconds(value: Any, setting: str, *, allow_zero: bool = False) -> float:
    """A duration setting in seconds, from a number or a ``timedelta``, checked finite."""
    if type(value) is float and 0.0 < value < math.inf:
        return value  # the usual case, checked on every acquire: a settled, positive float
    total = value.total_seconds() if hasattr(value, "total_seconds") else value
    if isinstance(total, bool) or not isinstance(total, (int, float)):
        raise ConfigurationError(
            f"{setting} must be a number of seconds or a timedelta, not {type(value).__name__}"
        )
    bound = "at least 0" if allow_zero else "more than 0"
    try:
        total = float(total)
    except OverflowError:  # an int beyond a float (its digits may be too many to print)
        raise ConfigurationError(
            f"{setting} must be finite and {bound} seconds, got an int of"
            f" {int(total).bit_length()} bits"
        ) from None
    if math.isnan(total) or math.isinf(total) or total < 0 or (total == 0 and not allow_zero):
        raise ConfigurationError(f"{setting} must be finite and {bound} seconds, got {value!r}")
    return total


#: No per-master timeout or retry delay is this long on purpose: a larger value is almost
#: certainly milliseconds carried over from another Redlock library.
MAX_DELAY = 60.0


def bounded(value: Any, setting: str, *, zero: bool = False) -> float:
    result = seconds(value, setting, allow_zero=zero)
    if result > MAX_DELAY:
        raise ConfigurationError(
            f"{setting} is {result} seconds: durations here are seconds, not milliseconds"
            f" (at most {MAX_DELAY:.0f})"
        )
    return result


def timeout_seconds(value: Any) -> float | None:
    """A wait timeout: None (wait as long as it takes) or seconds at least 0."""
    return None if value is None else seconds(value, "timeout", allow_zero=True)
