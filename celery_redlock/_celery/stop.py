"""Ending a run the moment renewal finds its lock lost (``lock_on_lost``).

The renewal thread learns of the loss; the body runs in another thread (prefork and solo:
the process's main thread; threads: a pool thread), or in a greenlet under gevent. A
:class:`Stopper` acts on the body from the renewal thread, once, and only while the body
runs: ``raise`` sends :class:`Stop` into the body's thread (CPython's
``PyThreadState_SetAsyncExc``, checked between bytecodes) or throws it into its greenlet
(from gevent's hub); ``kill`` is handed an action of the run's (the prefork child ends
itself). The run turns a Stop into its LockLost at its edge (:meth:`Stopper.call`).

Why the arming: an exception sent into a thread lands at its next bytecode, wherever
that is. Sent after the body returned, it would land in the run's release or in Celery's
tracer, storing the result. So the body runs armed, disarming clears a Stop still pending
(under the mutex the renewal thread sends it under), and every Stop that can still land
lands inside :meth:`Stopper.call`, which catches it.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from celery_redlock.exceptions import LockLost

__all__ = ["Stop", "Stopper", "in_pool_child", "interrupter", "prefork_started"]


class Stop(BaseException):
    """Sent into a body whose lock was lost. A BaseException, as KeyboardInterrupt and
    asyncio's CancelledError are, so that a body's ``except Exception`` does not swallow
    it; the run raises its LockLost in its place."""


#: What a Stopper does to the body: called once, with the loss, from the renewal thread;
#: returns a function that takes it back (a Stop sent but not landed yet), or None.
Action = Callable[[LockLost], "Callable[[], None] | None"]


def interrupter() -> Action:
    """How to raise :class:`Stop` in the calling thread (or greenlet) from another one."""
    if _gevent_threads():
        return _greenlet_interrupter()
    ident = threading.get_ident()

    def interrupt(_error: LockLost) -> Callable[[], None]:
        _set_async_exc(ident, Stop)
        return lambda: _set_async_exc(ident, None)

    return interrupt


def _set_async_exc(ident: int, exc: type[BaseException] | None) -> None:
    # No argtypes: None must go as NULL (clears a pending exception), not as Py_None.
    raised = None if exc is None else ctypes.py_object(exc)
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), raised)


def _gevent_threads() -> bool:
    """Whether threads are greenlets here (gevent's monkey-patching, as its pool does):
    then an exception sent to the OS thread would land in whichever greenlet runs next."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


def _greenlet_interrupter() -> Action:
    """Throw Stop into the calling greenlet, from gevent's hub (never from the renewal
    greenlet itself: a greenlet switched away from by ``throw`` is never resumed)."""
    gevent: Any = importlib.import_module("gevent")  # untyped; imported by its patching
    body: Any = importlib.import_module("greenlet").getcurrent()
    cancelled = False

    def throw() -> None:
        if not cancelled and not body.dead:
            body.throw(Stop)

    def cancel() -> None:
        nonlocal cancelled
        cancelled = True  # one OS thread: the hub runs throw() before or after, not during

    def interrupt(_error: LockLost) -> Callable[[], None]:
        gevent.get_hub().loop.run_callback(throw)
        return cancel

    return interrupt


#: The pid of a prefork worker's main process, set at worker start (children inherit it).
_prefork_main: int | None = None


def prefork_started() -> None:
    """In a prefork worker's main process at its start, before the pool forks."""
    global _prefork_main  # noqa: PLW0603
    _prefork_main = os.getpid()


def in_pool_child() -> bool:
    """Whether this process is a prefork pool child, whose death the worker survives."""
    return _prefork_main is not None and os.getpid() != _prefork_main


class Stopper:
    """Acts on one run's body at most once, and only while it runs (see the module)."""

    __slots__ = ("_action", "_armed", "_mutex", "_undo", "sent")

    def __init__(self, action: Action) -> None:
        self._action = action
        self._mutex = threading.Lock()
        self._armed = False
        self._undo: Callable[[], None] | None = None
        self.sent = False

    def stop(self, error: LockLost) -> bool:
        """From the renewal thread: act on the body, unless it is not running (not yet
        begun, or returned) or was acted on already. Whether it acted."""
        with self._mutex:
            if not self._armed or self.sent:
                return False
            self.sent = True
            self._undo = self._action(error)
            return True

    def call(self, body: Callable[[], Any], loss: Callable[[], LockLost | None]) -> Any:
        """Run ``body`` armed; a Stop sent to it comes out as the run's LockLost, with the
        traceback of where the body was. ``loss`` is the run's current loss: a lock lost
        before the body began fails the run without running it."""
        try:
            try:
                with self._mutex:
                    self._armed = True
                lost = loss()
                if lost is not None:
                    raise lost
                return body()
            finally:
                self._disarm()
        except Stop as stop:
            if not self.sent:
                raise  # not ours: an outer run's, met in a nested eager run
            lost = loss() or LockLost("the lock was lost while the body ran")
            raise lost.with_traceback(stop.__traceback__) from None

    def _disarm(self) -> None:
        with self._mutex:
            self._armed = False
            undo, self._undo = self._undo, None
        if undo is not None:
            undo()
