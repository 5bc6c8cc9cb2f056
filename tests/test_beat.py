"""Two real beat processes, a real worker and three real masters: one send per tick."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import redis

from celery_redlock import Redlock
from celery_redlock.admin import list_locks
from celery_redlock.testing import RedisGroup, RedisServer

LEASE = 2.0
GUARD = 3.0
ROOT = Path(__file__).resolve().parent.parent
RUNS_KEY = "beat-test:runs"  # where beat_app records each run of its tick
SENDS_KEY = "beat-test:sends"  # ... and each send, in the beat process that sent it


class Record(NamedTuple):
    at: float
    pid: int
    task_id: str


class Cluster:
    """The processes of one beat scenario, all stopped at the end whatever happens."""

    def __init__(self, masters: RedisGroup, broker: RedisServer, tmp: Path) -> None:
        self.masters = masters
        self.broker = broker
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {
            **os.environ,
            "BEAT_TEST_BROKER": broker.url,
            "BEAT_TEST_MASTERS": ",".join(masters.urls),
            "BEAT_TEST_LEASE": str(LEASE),
            "BEAT_TEST_GUARD": str(GUARD),
            "PYTHONPATH": str(ROOT / "tests" / "apps"),
        }

    def start(self, name: str, *args: str) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "beat_app", *args],
            env=self.env,
            cwd=self.tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def start_beat(self, name: str) -> None:
        self.start(
            name,
            "beat",
            "-S",
            "celery_redlock.beat.RedlockScheduler",
            "--schedule",
            str(self.tmp / f"{name}.db"),
            "--loglevel",
            "INFO",
        )

    def _records(self, key: str) -> list[Record]:
        with redis.Redis.from_url(self.broker.url) as client:
            rows = [row.decode().split() for row in client.lrange(key, 0, -1)]
        return [Record(float(at), int(pid), task_id) for at, pid, task_id in rows]

    def sends(self) -> list[Record]:
        """Each tick a beat sent: when, from which beat process, as which task id."""
        return self._records(SENDS_KEY)

    def runs(self) -> list[Record]:
        """Each execution of a tick in the worker."""
        return self._records(RUNS_KEY)

    def leader_pid(self) -> int:
        with Redlock(self.masters.urls, restart_guard=GUARD) as dlm:
            infos = [i for i in list_locks(dlm) if i.key.startswith("redlock:beat:")]
        assert infos, "nobody holds the beat lease"
        return int(infos[0].owner.rpartition(":")[2])

    def log(self, name: str, tail: int | None = 3000) -> str:
        text = (self.tmp / f"{name}.log").read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            _wait_or_kill(proc)


def _wait_or_kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with RedisGroup(3) as masters, RedisServer() as broker:
        cluster = Cluster(masters, broker, tmp_path)
        try:
            yield cluster
        finally:
            cluster.stop()


def wait_until(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def assert_each_send_ran_once(cluster: Cluster) -> None:
    """Nothing sent was dropped or run twice: the worker ran exactly the ids beats sent."""
    sent = sorted(r.task_id for r in cluster.sends())
    assert wait_until(lambda: len(cluster.runs()) >= len(sent), 60), cluster.log("worker")
    assert sorted(r.task_id for r in cluster.runs())[: len(sent)] == sent


@pytest.mark.slow
def test_two_beats_send_each_tick_once_fail_over_and_stop_in_an_outage(
    cluster: Cluster,
) -> None:
    """Which beat sent each tick is recorded by the sender itself, so "sent twice" is an
    identity (two beats sending in one phase), never an inference from two runs landing
    close together on a loaded machine."""
    cluster.start(
        "worker",
        "worker",
        "-P",
        "solo",
        "--without-heartbeat",
        "--without-mingle",
        "--without-gossip",
        "--loglevel",
        "WARNING",
    )
    cluster.start_beat("beat-a")
    cluster.start_beat("beat-b")
    pids = {cluster.procs[name].pid: name for name in ("beat-a", "beat-b")}
    assert wait_until(lambda: len(cluster.sends()) >= 2, 60), cluster.log("beat-a")

    # Phase 1: both beats up for 20 more ticks: one of them sends them all, never losing
    # the lead (each loss and each win is logged at INFO), the other sends nothing.
    first = len(cluster.sends())
    assert wait_until(lambda: len(cluster.sends()) >= first + 20, 120), cluster.log("beat-a")
    senders = {r.pid for r in cluster.sends()}
    assert len(senders) == 1, f"two beats sent ticks: {senders}"
    leader = senders.pop()
    assert leader == cluster.leader_pid()
    log = cluster.log(pids[leader], tail=None)
    assert log.count("beat: leading") == 1, log[-3000:]
    assert "lost the lead" not in log, log[-3000:]
    assert "leader ->" not in log, log[-3000:]
    assert_each_send_ran_once(cluster)

    # Phase 2: kill -9 the leader; the standby sends within about one lease, and only it.
    os.kill(leader, signal.SIGKILL)
    cluster.procs[pids[leader]].wait(10)
    killed_at = time.time()
    last_before = cluster.sends()[-1].at
    assert wait_until(lambda: cluster.sends()[-1].pid != leader, 30), cluster.log("beat-b")
    takeover = next(r for r in cluster.sends() if r.pid != leader)
    gap = takeover.at - last_before
    print(f"phase 1: {first + 20} sends by one beat; failover gap {gap:.2f} s")
    assert gap < LEASE + 1 + 3, f"standby took {gap:.1f} s to take over"  # lease+tick+slack
    assert all(r.at <= killed_at for r in cluster.sends() if r.pid == leader)

    # Phase 3: a majority of masters down: nobody sends; back up: sending resumes.
    cluster.masters[0].kill()
    cluster.masters[1].kill()
    down_at = time.time()
    time.sleep(LEASE + 4)
    quiet_from = down_at + LEASE + 1.5  # the leader's lease has run out by then
    assert [r for r in cluster.sends() if r.at > quiet_from] == [], "sent without a quorum"
    cluster.masters[0].restart()
    cluster.masters[1].restart()
    sent_before = len(cluster.sends())
    assert wait_until(lambda: len(cluster.sends()) > sent_before, GUARD + LEASE + 20)
    assert_each_send_ran_once(cluster)
