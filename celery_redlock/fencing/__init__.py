"""Fenced writes: checks, where the data lives, that refuse a holder whose lock was lost.

A lock alone cannot stop a holder that was paused past its validity (GC, swap, a stopped
VM) from writing after the next holder has started. Every acquisition carries a fence
(``lock.fence``, ``self.lock_fence`` in a :class:`~celery_redlock.SingletonTask`): an int
greater than the fence of every earlier acquisition of the same resource. The resource
records the fence of the latest write it accepted and refuses lower ones; these checks do
the compare and the write in one statement (SQL) or one script (Redis), so that no other
writer can slip between them:

- :mod:`celery_redlock.fencing.sqlalchemy`: SQLAlchemy Core (``fenced_update``,
  ``fenced_upsert``) and ORM (``fenced_orm_update``), on a fence column of the row;
- :mod:`celery_redlock.fencing.django`: Django's ORM (``fenced_update``);
- :mod:`celery_redlock.fencing.redis`: a value and its fence in one Redis hash
  (``fenced_set``, ``fenced_get`` and their asyncio twins).

The rule, the same in each: a write is accepted when the stored fence is absent (NULL,
or no fence yet) or **not higher** than ours, and it records ours. An equal fence is
accepted because fences are unique per acquisition: an equal one is the same holder
writing again (a run that updates its row twice must not reject itself, nor a retry of a
statement whose reply was lost). A refused write raises
:class:`~celery_redlock.exceptions.FenceRejected` and leaves the data as it was.

Importing this package imports neither SQLAlchemy nor Django; each submodule imports its
own library.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery_redlock.exceptions import ConfigurationError, FenceRejected

__all__ = ["MAX_FENCE", "FenceRejected", "as_fence"]

#: The largest fence a check accepts: a SQL ``BIGINT`` (and SQLite's INTEGER) holds it.
MAX_FENCE = 2**63 - 1


def as_fence(value: object, name: str = "fence") -> int:
    """``value`` checked as a fence: an int from 1 to :data:`MAX_FENCE`, not a bool.

    Anything else is a :class:`~celery_redlock.exceptions.ConfigurationError` naming it,
    raised before any statement runs: a float or a string would compare with the stored
    fence by rules of its own (or not at all), and a fence of 0 or less is never minted.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(
            f"{name} must be an int (a lock's fence), not {type(value).__name__}: {value!r}"
        )
    if not 1 <= value <= MAX_FENCE:
        shown = repr(value) if value.bit_length() <= 128 else f"an int of {value.bit_length()} bits"
        raise ConfigurationError(f"{name} must be from 1 to 2**63 - 1, got {shown}")
    return value


def _target(where: str, key: Mapping[str, Any]) -> str:
    """How a rejection names what was written to: ``orders (id=7)``."""
    return f"{where} ({', '.join(f'{k}={v!r}' for k, v in key.items())})"


def _row_write(key: object, values: object, column: str) -> None:
    """A row write's arguments: a non-empty key and values as mappings, and the fence
    column in neither (the check writes it; a caller's value for it would be a second,
    unchecked fence)."""
    if not isinstance(key, Mapping) or not key:
        raise ConfigurationError(f"key must be a non-empty mapping of column to value, got {key!r}")
    if not isinstance(values, Mapping):
        raise ConfigurationError(f"values must be a mapping of column to value, got {values!r}")
    if column in key or column in values:
        raise ConfigurationError(
            f"the fence column {column!r} is written by the check: leave it out of key and values"
        )
