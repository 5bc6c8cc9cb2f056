"""The Celery app: ``celery -A example_project worker`` and ``... beat`` find it here.

Configured from environment variables (:mod:`example_project.settings`); the lock needs
one setting, ``redlock_masters``, and beat one more, its scheduler.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.schedules import crontab

from example_project import monitoring
from example_project.ledger import Ledger
from example_project.runlog import RunLog
from example_project.settings import Settings

__all__ = ["app", "ledger", "metrics", "runlog", "settings"]

settings = Settings.from_env()
runlog = RunLog(settings.runlog_url, settings.namespace)
metrics = monitoring.Metrics(runlog)
ledger = Ledger(settings.ledger_url)


def report_schedule(every: float | None) -> Any:
    """Nightly at 02:00, or every ``every`` seconds (the demo cannot wait for the night)."""
    return crontab(hour=2, minute=0) if every is None else every


app = Celery(
    "example_project",
    broker=settings.broker_url,
    backend=settings.result_backend,
    include=["example_project.tasks"],
)
app.conf.update(
    # The lock: an odd number of independent masters; any minority may fail.
    redlock_masters=list(settings.masters),
    redlock_key_prefix=f"redlock:{settings.namespace}:",
    # A beat started without -S must not become a second, unleashed scheduler.
    beat_scheduler="celery_redlock.beat:RedlockScheduler",
    beat_schedule={
        "nightly-report": {
            "task": "example_project.tasks.nightly_report",
            "schedule": report_schedule(settings.report_every),
        },
    },
    task_default_queue=settings.namespace,
    # One message per pool process at a time: a duplicate waits in the queue, where any
    # free process can take (and skip) it, not behind a long run in a prefetch buffer.
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

monitoring.connect(metrics)
