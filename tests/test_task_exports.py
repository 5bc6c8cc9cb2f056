"""The Celery layer's public names, and that they stay out of the core's imports."""

from __future__ import annotations

import subprocess
import sys

import celery_redlock
from celery_redlock import signals


def test_the_celery_layer_names_are_exported() -> None:
    celery_names = {"SingletonTask", "TaskLocked", "UnkeyableArgument", "install", "is_skipped"}
    assert celery_names <= set(celery_redlock.__all__)
    from celery_redlock.task import SingletonTask, install

    assert celery_redlock.SingletonTask is SingletonTask
    assert celery_redlock.install is install


def test_our_signals() -> None:
    assert set(signals.__all__) == {
        "lock_acquired",
        "lock_duplicate",
        "lock_lost",
        "lock_outage",
        "lock_released",
    }


def test_only_the_celery_names_import_celery() -> None:
    code = (
        "import sys\n"
        "import celery_redlock, celery_redlock.keys, celery_redlock.settings\n"
        "import celery_redlock.outcomes\n"
        "assert 'celery' not in sys.modules, 'imported too early'\n"
        "celery_redlock.SingletonTask\n"
        "assert 'celery' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
