"""Metrics from Celery's and celery_redlock's signals, kept in Redis.

A stand-in for statsd or Prometheus: counters in one hash, timings in lists, under the
run log's namespace. What it shows about the public API is the wiring: every lock event
is a signal (:mod:`celery_redlock.signals`) with the task as sender, its id and the lock's
resource, so monitoring needs no hook inside the library.

Acquire latency is measured here as the time from Celery's ``task_prerun`` (the worker is
about to call the task) to celery_redlock's ``lock_acquired`` (the lock is held, the body
runs next) for the same task id: the quorum round plus what the library does around it.
The time to learn that a key is held elsewhere is the same span ending at
``lock_duplicate``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from celery import signals as celery_signals

from celery_redlock import signals as lock_signals
from example_project.runlog import RunLog

__all__ = ["Metrics", "connect"]


class Metrics:
    """Counters (``event|task``) and timed samples, in the run log's Redis."""

    def __init__(self, log: RunLog) -> None:
        self.log = log
        self._started: dict[str, float] = {}  # task id -> perf_counter at task_prerun

    def count(self, event: str, task: str) -> None:
        self.log.client().hincrby(self.log.key("counts"), f"{event}|{task}", 1)

    def counts(self) -> dict[str, int]:
        raw: dict[Any, Any] = self.log.client().hgetall(self.log.key("counts"))
        return {k.decode(): int(v) for k, v in raw.items()}

    def total(self, event: str, task: str | None = None) -> int:
        """One counter, or the sum over every task when ``task`` is None."""
        return sum(n for name, n in self.counts().items() if _matches(name, event, task))

    def sample(self, name: str, value: Any) -> None:
        """Append ``[wall time, value]`` to the samples list ``name``."""
        self.log.client().rpush(self.log.key("samples", name), json.dumps([time.time(), value]))

    def samples(self, name: str) -> list[tuple[float, Any]]:
        raw: list[Any] = self.log.client().lrange(self.log.key("samples", name), 0, -1)
        return [(float(t), v) for t, v in map(json.loads, raw)]

    def started(self, task_id: str) -> None:
        self._started[task_id] = time.perf_counter()

    def since_start_ms(self, task_id: str) -> float | None:
        start = self._started.get(task_id)
        return None if start is None else (time.perf_counter() - start) * 1000

    def finished(self, task_id: str) -> None:
        self._started.pop(task_id, None)


def _matches(name: str, event: str, task: str | None) -> bool:
    got_event, _, got_task = name.partition("|")
    return got_event == event and (task is None or got_task == task)


def connect(metrics: Metrics) -> None:
    """Connect the receivers (strong references: they are closures over ``metrics``)."""

    def on_publish(sender: str | None = None, **_: Any) -> None:
        # Fires in every process that sends a task: the demo, and beat for periodic ones.
        metrics.count("published", str(sender))
        metrics.sample(f"published:{sender}", f"{socket.gethostname()}:{os.getpid()}")

    def on_prerun(sender: Any = None, task_id: str = "", **_: Any) -> None:
        metrics.count("received", sender.name)
        metrics.started(task_id)  # last: our own round trip is not the lock's latency

    def on_postrun(task_id: str = "", **_: Any) -> None:
        metrics.finished(task_id)

    def on_failure(sender: Any = None, **_: Any) -> None:
        metrics.count("failed", sender.name)

    def on_acquired(sender: Any = None, task_id: str = "", **_: Any) -> None:
        elapsed = metrics.since_start_ms(task_id)  # first: before our own round trips
        metrics.count("acquired", sender.name)
        if elapsed is not None:
            metrics.sample("acquire_ms", {"ms": elapsed, "pid": os.getpid()})

    def on_duplicate(sender: Any = None, task_id: str = "", stage: str = "", **_: Any) -> None:
        elapsed = metrics.since_start_ms(task_id)
        metrics.count(f"duplicate-{stage}", sender.name)
        if stage == "run" and elapsed is not None:
            metrics.sample("refuse_ms", {"ms": elapsed, "pid": os.getpid()})

    def on_released(sender: Any = None, released: bool = True, **_: Any) -> None:
        metrics.count("released" if released else "release-no-quorum", sender.name)

    def on_lost(sender: Any = None, **_: Any) -> None:
        metrics.count("lost", sender.name)

    def on_outage(sender: Any = None, policy: str = "", **_: Any) -> None:
        metrics.count(f"outage-{policy}", sender.name)

    celery_signals.before_task_publish.connect(on_publish, weak=False)
    celery_signals.task_prerun.connect(on_prerun, weak=False)
    celery_signals.task_postrun.connect(on_postrun, weak=False)
    celery_signals.task_failure.connect(on_failure, weak=False)
    lock_signals.lock_acquired.connect(on_acquired, weak=False)
    lock_signals.lock_duplicate.connect(on_duplicate, weak=False)
    lock_signals.lock_released.connect(on_released, weak=False)
    lock_signals.lock_lost.connect(on_lost, weak=False)
    lock_signals.lock_outage.connect(on_outage, weak=False)
