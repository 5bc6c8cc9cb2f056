"""The exported names are pinned, and the lock core knows nothing of Celery."""

from __future__ import annotations

import subprocess
import sys

import celery_redlock


def test_public_names_are_pinned() -> None:
    assert set(celery_redlock.__all__) == {
        "AsyncLock",
        "AsyncRedlock",
        "ConfigurationError",
        "FenceRejected",
        "Lock",
        "LockError",
        "LockLost",
        "LockNotAcquired",
        "LockSettings",
        "Outcome",
        "QuorumUnavailable",
        "Redlock",
        "SingletonTask",
        "TaskLocked",
        "UnkeyableArgument",
        "Vote",
        "install",
        "is_skipped",
    }
    assert all(hasattr(celery_redlock, name) for name in celery_redlock.__all__)


def test_contention_and_outage_are_different_errors() -> None:
    assert not issubclass(celery_redlock.QuorumUnavailable, celery_redlock.LockNotAcquired)
    assert not issubclass(celery_redlock.LockNotAcquired, celery_redlock.QuorumUnavailable)
    for name in (
        "LockNotAcquired",
        "QuorumUnavailable",
        "LockLost",
        "FenceRejected",
        "ConfigurationError",
    ):
        assert issubclass(getattr(celery_redlock, name), celery_redlock.LockError)
    assert issubclass(celery_redlock.ConfigurationError, ValueError)


def test_the_core_imports_nothing_from_celery() -> None:
    """``from celery_redlock import Redlock`` must work, and stay light, without Celery:
    every module of the core package, and the Celery-free public ones."""
    code = (
        "import importlib, pkgutil, sys\n"
        "from celery_redlock import Redlock, AsyncRedlock\n"
        "import celery_redlock._core as core\n"
        "for m in pkgutil.iter_modules(core.__path__):\n"
        "    importlib.import_module(f'{core.__name__}.{m.name}')\n"
        "import celery_redlock.admin, celery_redlock.keys, celery_redlock.testing\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'celery')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
