"""The app of the ``celery worker -P prefork`` subprocesses started by test_task_prefork.

Everything comes from the environment the test sets, so that the worker and the test
process make the same app: same queue, key prefix, probe namespace and lease.
"""

from __future__ import annotations

import os

from tests.celery_tasks import make_app

app = make_app(
    os.environ["REDLOCK_TEST_BROKER"],
    os.environ["REDLOCK_TEST_MASTERS"].split(","),
    ns=os.environ["REDLOCK_TEST_NS"],
    redlock_lease=float(os.environ["REDLOCK_TEST_LEASE"]),
)
