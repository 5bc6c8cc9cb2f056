"""A Celery app for beat tests, configured from the environment by the test that starts it.

Every send of ``beat_app.tick`` (in the beat process that sent it) and every run of it (in
the worker) is appended to a list on the broker's server, with the sender's pid and the task
id: the tests tell which beat sent each tick and that each sent tick ran once from these
records, not from beat's own logs or from how close together two runs happened to land.
"""

from __future__ import annotations

import os
import time

import redis
from celery import Celery
from celery.signals import before_task_publish

BROKER = os.environ["BEAT_TEST_BROKER"]
RUNS_KEY = "beat-test:runs"
SENDS_KEY = "beat-test:sends"

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


def _record(key: str, task_id: str) -> None:
    with redis.Redis.from_url(BROKER) as client:
        client.rpush(key, f"{time.time()!r} {os.getpid()} {task_id}")


@before_task_publish.connect  # type: ignore[untyped-decorator]
def _sent(sender: str = "", headers: dict[str, object] | None = None, **_: object) -> None:
    if sender == "beat_app.tick" and headers is not None:
        _record(SENDS_KEY, str(headers["id"]))


@app.task(name="beat_app.tick", bind=True)  # type: ignore[untyped-decorator]
def tick(self: object) -> None:
    _record(RUNS_KEY, str(self.request.id))  # type: ignore[attr-defined]
