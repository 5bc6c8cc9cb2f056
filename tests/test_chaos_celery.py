"""The Celery layer under faults: pool children killed, masters paused, killed, restarted.

A real prefork worker runs a SingletonTask over a few keys while faults are injected;
every completed run records its interval from inside the body, and no two runs of one key
may overlap. A run killed mid-body records nothing, and cannot overlap anything after
its death: its process is gone.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_redlock.testing import RedisGroup, RedisServer
from tests.celery_helpers import armed, close_app
from tests.celery_tasks import probe_of
from tests.test_task_prefork import PreforkWorker, start_prefork

pytest_plugins = ["tests.celery_fixtures"]

KEYS = ("k0", "k1", "k2")
PUBLISH_FOR = 20.0


def children_of(pid: int) -> list[int]:
    """The pool processes: the worker's direct children, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


class Faults:
    """Injects one fault every second or so until stopped; never more than two masters out."""

    def __init__(self, worker: PreforkWorker, masters: RedisGroup, seed: int) -> None:
        self.worker = worker
        self.masters = masters
        self.rng = random.Random(seed)
        self.counts = {"child_killed": 0, "master_paused": 0, "master_restarted": 0}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.rng.uniform(0.5, 1.5)):
            getattr(self, f"_{self.rng.choice(list(self.counts))}")()

    def _child_killed(self) -> None:
        children = children_of(self.worker.proc.pid)
        if children:
            os.kill(self.rng.choice(children), signal.SIGKILL)
            self.counts["child_killed"] += 1

    def _master_paused(self) -> None:
        server = self.rng.choice(list(self.masters)[:2])  # masters 0 and 1 take the faults
        if server.running and not server.paused:
            server.pause()
            self._stop.wait(self.rng.uniform(0.3, 1.0))
            server.resume()
            self.counts["master_paused"] += 1

    def _master_restarted(self) -> None:
        server = self.rng.choice(list(self.masters)[:2])
        if server.running and not server.paused:
            server.kill()
            server.restart()  # empty: it sits out its restart guard, as designed
            self.counts["master_restarted"] += 1

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()
        for server in self.masters:
            server.resume()


@pytest.fixture
def chaos_worker(
    redis_broker: RedisServer, tmp_path: Path
) -> Iterator[tuple[PreforkWorker, RedisGroup]]:
    with RedisGroup(5) as masters:
        worker = start_prefork(redis_broker, armed(masters), tmp_path, lease=3.0, concurrency=4)
        try:
            yield worker, masters
        finally:
            worker.stop()
            close_app(worker.app)


@pytest.mark.slow
def test_no_two_runs_of_a_key_overlap_while_things_break(
    chaos_worker: tuple[PreforkWorker, RedisGroup],
) -> None:
    worker, masters = chaos_worker
    task = worker.app.tasks["hold_retry"]
    faults = Faults(worker, masters, seed=int(time.time()))
    faults.thread.start()
    published = 0
    deadline = time.monotonic() + PUBLISH_FOR
    try:
        for key in itertools.cycle(KEYS):
            if time.monotonic() >= deadline:
                break
            task.delay(key, 0.1)
            published += 1
            time.sleep(0.03)
    finally:
        faults.stop()
    probe = probe_of(worker.app)
    time.sleep(worker.lease + 2)  # let queued retries run after the last fault
    runs = probe.runs()
    by_key: dict[str, list[tuple[float, float]]] = {}
    for run in runs:
        by_key.setdefault(run["key"], []).append((run["start"], run["end"]))
    overlaps = 0
    for intervals in by_key.values():
        intervals.sort()
        overlaps += sum(e1 > s2 for (_s1, e1), (s2, _e2) in itertools.pairwise(intervals))
    print(f"published={published} runs={len(runs)} faults={faults.counts} overlaps={overlaps}")
    assert overlaps == 0
    assert sum(faults.counts.values()) >= 5
    assert len(runs) >= 30, "the worker should keep working through the faults"
