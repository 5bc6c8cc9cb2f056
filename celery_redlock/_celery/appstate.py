"""Per-app state of the Celery layer: its checked settings and its lock manager.

Settings are read and checked once per app (at finalize, through the first task bound);
the manager is made on first use. A manager made before a prefork pool forks is safe in the
children: the core opens new connections in each of them.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from celery_redlock._celery.appconf import RedlockConfig
from celery_redlock._core.sync import Redlock

__all__ = ["AppState", "state_of"]


class AppState:
    """The checked :class:`RedlockConfig` of one Celery app and its :class:`Redlock`."""

    def __init__(self, app: Any) -> None:
        self._app = weakref.ref(app)
        self._mutex = threading.Lock()
        self._config: RedlockConfig | None = None
        self._manager: Redlock | None = None
        self.installed = False

    @property
    def config(self) -> RedlockConfig:
        """The app's settings, read and checked on first access (raises ConfigurationError)."""
        with self._mutex:
            if self._config is None:
                app = self._app()
                assert app is not None, "the app was garbage-collected"
                self._config = RedlockConfig.from_conf(app.conf)
            return self._config

    @property
    def manager(self) -> Redlock:
        manager = self._manager
        if manager is not None:  # every run asks: no mutex once it exists
            return manager
        config = self.config
        with self._mutex:
            if self._manager is None:
                self._manager = Redlock(list(config.masters), settings=config.lock)
            return self._manager

    def reset(self) -> None:
        """Forget the settings and close the manager (tests, or a reconfigured app)."""
        with self._mutex:
            if self._manager is not None:
                self._manager.close()
            self._config = None
            self._manager = None


_states: weakref.WeakKeyDictionary[Any, AppState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def state_of(app: Any) -> AppState:
    """The state of ``app``, created on first use."""
    with _states_lock:
        state = _states.get(app)
        if state is None:
            state = _states[app] = AppState(app)
        return state
