"""Which task holds a key: what a publisher needs to answer a duplicate call with the
holder's ``AsyncResult``, and a skipped run to name the run it yielded to.

Every lock the Celery layer takes names its task as the lock's ``owner`` (the core stores
it after the token's random part), so the token a quorum of masters agree on tells whose
lock it is. The core has no read of one key's holder yet (``admin.list_locks`` scans every
key); :func:`holder` asks every master at once on fresh connections, each bounded by the
per-master timeout. It runs only on the duplicate path.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Any

import redis

from celery_redlock.lock import Redlock

__all__ = ["as_owner", "holder", "owner_of"]

#: The core's limit on owner text.
_OWNER_MAX = 200


def as_owner(task_id: str | None) -> str | None:
    """A task id as a lock owner (None if the core would refuse it as owner text)."""
    if task_id and len(task_id) <= _OWNER_MAX and task_id.isprintable():
        return task_id
    return None


def owner_of(token: str | None) -> str | None:
    """The owner inside a token (``<random>:<owner>``), or None."""
    return (token or "").partition(":")[2] or None


def holder(dlm: Redlock, resource: str) -> str | None:
    """The owner of the lock on ``resource`` per a quorum of masters, or None (free, not
    ours, or no quorum agrees: a race or an outage, which callers treat as unknown)."""
    key = dlm.settings.key(resource)
    votes = collections.Counter(_read_all(dlm, key))
    if not votes:
        return None
    value, count = votes.most_common(1)[0]
    return owner_of(value.decode(errors="replace")) if count >= dlm.quorum else None


def _read_all(dlm: Redlock, key: str) -> list[bytes]:
    """GET ``key`` from every master not cooling down: all sent first, then all read."""
    now = dlm.clock()
    timeout = dlm.settings.master_timeout
    sent: list[Any] = []
    values: list[bytes] = []
    try:
        for spec, health in zip(dlm._specs, dlm._health, strict=True):
            if health.skip_reason(now) is not None:
                continue
            conn = spec.connection_class(**spec.connect_kwargs(timeout))
            sent.append(conn)
            with contextlib.suppress(redis.RedisError, OSError):
                conn.send_command("GET", key)
        for conn in sent:
            with contextlib.suppress(redis.RedisError, OSError):
                value = conn.read_response()
                if isinstance(value, bytes):
                    values.append(value)
    finally:
        for conn in sent:
            conn.disconnect()
    return values
