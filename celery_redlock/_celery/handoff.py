"""Which task holds a key: what a publisher needs to answer a duplicate call with the
holder's ``AsyncResult``, and a skipped run to name the run it yielded to.

Every lock the Celery layer takes names its task as the lock's ``owner`` (the core stores
it after the token's random part), so the token a quorum of masters agree on tells whose
lock it is. ``Redlock.holder`` reads it on every master at once; it runs only on the duplicate path.
"""

from __future__ import annotations

from celery_redlock._core.settings import MAX_OWNER_LENGTH

__all__ = ["as_owner", "owner_of"]


def as_owner(task_id: str | None) -> str | None:
    """A task id as a lock owner (None if the core would refuse it as owner text)."""
    if task_id and len(task_id) <= MAX_OWNER_LENGTH and task_id.isprintable():
        return task_id
    return None


def owner_of(token: str | None) -> str | None:
    """The owner inside a token (``<random>:<owner>``), or None."""
    return (token or "").partition(":")[2] or None
