"""A Celery app for beat tests, configured from the environment by the test that starts it.

Every run of ``beat_app.tick`` appends the time it ran to a list on the broker's server,
which is how the tests count executions independently of beat's own logs.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery

BROKER = os.environ["BEAT_TEST_BROKER"]
RUNS_KEY = "beat-test:runs"

app = Celery("beat_app", broker=BROKER)
app.conf.update(
    redlock_masters=os.environ["BEAT_TEST_MASTERS"].split(","),
    redlock_beat_lease=float(os.environ.get("BEAT_TEST_LEASE", "2")),
    redlock_lease=float(os.environ.get("BEAT_TEST_LEASE", "2")),
    redlock_restart_guard=float(os.environ.get("BEAT_TEST_GUARD", "3")),
    beat_schedule={
        "tick": {"task": "beat_app.tick", "schedule": float(os.environ.get("BEAT_TEST_EVERY", "1"))}
    },
    beat_max_loop_interval=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="beat_app.tick")  # type: ignore[untyped-decorator]
def tick() -> None:
    with redis.Redis.from_url(BROKER) as client:
        client.rpush(RUNS_KEY, repr(time.time()))
