"""What the Celery layer needs of a task: the seam between it and :class:`SingletonTask`.

``run.py``, ``publish.py`` and the worker's receivers are handed a task of this shape (and,
as arguments, the lock manager and the call's key: never SingletonTask's private state),
so they can be read, typed and tested without the class that owns them.
"""

from __future__ import annotations

from typing import Any, Protocol

from celery_redlock._celery.appconf import LockOptions

__all__ = ["LockedTask"]


class LockedTask(Protocol):
    """A Celery task bound to its app, with its resolved lock options."""

    @property
    def name(self) -> str: ...

    @property
    def app(self) -> Any: ...

    @property
    def request(self) -> Any: ...

    @property
    def backend(self) -> Any: ...

    @property
    def serializer(self) -> str | None: ...

    @property
    def time_limit(self) -> float | None: ...

    @property
    def lock_options(self) -> LockOptions: ...

    def retry(self, *, exc: BaseException, countdown: float) -> Any: ...

    def signature_from_request(self, request: Any, *, countdown: float) -> Any: ...

    def AsyncResult(self, task_id: str) -> Any: ...  # noqa: N802 - Celery's name
