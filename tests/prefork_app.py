"""The app of the ``celery worker -P prefork`` subprocesses started by test_task_prefork.

Everything comes from the environment the test sets, so that the worker and the test
process make the same app: same queue, key prefix, probe namespace, lease and any other
settings (``REDLOCK_TEST_CONF``, JSON).
"""

from __future__ import annotations

import json
import os
from typing import Any

from celery_redlock import signals
from tests.celery_tasks import make_app, probe_of

app = make_app(
    os.environ["REDLOCK_TEST_BROKER"],
    os.environ["REDLOCK_TEST_MASTERS"].split(","),
    ns=os.environ["REDLOCK_TEST_NS"],
    redlock_lease=float(os.environ["REDLOCK_TEST_LEASE"]),
    **json.loads(os.environ.get("REDLOCK_TEST_CONF") or "{}"),
)


def _record_outage(sender: Any = None, task_id: str = "", **_kwargs: Any) -> None:
    """Each outage a run meets, by task id: the test counts them from its own process."""
    probe_of(app).mark(f"outage:{task_id}")


signals.lock_outage.connect(_record_outage, weak=False)
