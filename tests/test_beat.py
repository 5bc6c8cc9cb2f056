"""Two real beat processes, a real worker and three real masters: one send per tick."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from celery_redlock import Redlock
from celery_redlock.admin import list_locks
from celery_redlock.testing import RedisGroup, RedisServer

LEASE = 2.0
GUARD = 3.0
ROOT = Path(__file__).resolve().parent.parent
RUNS_KEY = "beat-test:runs"  # where beat_app.tick records its runs


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

    def runs(self) -> list[float]:
        with redis.Redis.from_url(self.broker.url) as client:
            return [float(x) for x in client.lrange(RUNS_KEY, 0, -1)]

    def leader_pid(self) -> int:
        with Redlock(self.masters.urls, restart_guard=GUARD) as dlm:
            infos = [i for i in list_locks(dlm) if i.key.startswith("redlock:beat:")]
        assert infos, "nobody holds the beat lease"
        return int(infos[0].owner.rpartition(":")[2])

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")[-3000:]

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


def assert_no_duplicates(runs: list[float]) -> None:
    """A tick every second: two runs closer than half a tick are one tick sent twice."""
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert not gaps or min(gaps) > 0.5, f"a tick was sent twice: gaps {sorted(gaps)[:3]}"


@pytest.mark.slow
def test_two_beats_send_each_tick_once_fail_over_and_stop_in_an_outage(
    cluster: Cluster,
) -> None:
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
    assert wait_until(lambda: len(cluster.runs()) >= 2, 60), cluster.log("beat-a")

    # Phase 1: both beats up for 30 s; one send per tick.
    start = cluster.runs()[-1]
    time.sleep(30)
    runs = [t for t in cluster.runs() if t >= start]
    elapsed = runs[-1] - runs[0]
    assert len(runs) - 1 <= elapsed + 1, f"{len(runs)} runs in {elapsed:.1f} s: duplicates"
    assert len(runs) - 1 >= elapsed * 0.8 - 1, f"{len(runs)} runs in {elapsed:.1f} s: ticks lost"
    assert_no_duplicates(runs)

    # Phase 2: kill -9 the leader; the standby sends within about one lease.
    leader = cluster.leader_pid()
    os.kill(leader, signal.SIGKILL)
    killed_at = time.time()
    assert wait_until(lambda: cluster.runs()[-1] > killed_at + 0.1, 30)
    before = [t for t in cluster.runs() if t <= killed_at]
    after = [t for t in cluster.runs() if t > killed_at]
    gap = after[0] - before[-1]
    print(f"phase 1: {len(runs)} runs in {elapsed:.1f} s; failover gap {gap:.2f} s")
    assert gap < LEASE + 1 + 3, f"standby took {gap:.1f} s to take over"  # lease+tick+slack
    assert_no_duplicates(cluster.runs())

    # Phase 3: a majority of masters down: nobody sends; back up: sending resumes.
    cluster.masters[0].kill()
    cluster.masters[1].kill()
    down_at = time.time()
    time.sleep(LEASE + 4)
    quiet_from = down_at + LEASE + 1.5  # the leader's lease has run out by then
    assert [t for t in cluster.runs() if t > quiet_from] == [], "sent without a quorum"
    cluster.masters[0].restart()
    cluster.masters[1].restart()
    back_at = time.time()
    assert wait_until(lambda: cluster.runs()[-1] > back_at, GUARD + LEASE + 20)
    assert_no_duplicates(cluster.runs())
