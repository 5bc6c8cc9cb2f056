"""A real ``celery worker -P prefork`` subprocess: pool children killed every way Celery (or
the kernel) kills them, and the key is free again at once, or within a lease at worst."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from celery import Celery
from celery.exceptions import TimeLimitExceeded, WorkerLostError

from celery_redlock import is_skipped
from celery_redlock._celery.appstate import state_of
from celery_redlock.testing import RedisGroup, RedisServer
from tests.celery_helpers import armed, close_app, wait_for
from tests.celery_tasks import make_app, probe_of
from tests.test_task_policies import assert_no_overlap

pytest_plugins = ["tests.celery_fixtures"]

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 60


@dataclass
class PreforkWorker:
    """A worker subprocess and an app (in this process) that talks to it."""

    app: Celery
    proc: subprocess.Popen[bytes]
    log: Path
    lease: float
    masters: RedisGroup

    def pid_of(self, key: str) -> int:
        marks = wait_for(lambda: probe_of(self.app).marks(f"pid:{key}"), what=f"{key} to start")
        return int(marks[-1])

    @contextmanager
    def how_freed(self, task: str, *args: Any) -> Iterator[list[str]]:
        """The events that freed the call's key on the masters, filled in when the block
        ends and the key is free: ``del`` (released, by its run or by the reaper) or
        ``expired`` (nobody released it). A test of *how* a key came free does not rest
        on how long that took on a loaded machine."""
        settings = state_of(self.app).manager.settings
        key = settings.key(self.app.tasks[task].lock_resource(*args))
        events: list[str] = []
        subscribers = []
        for url in self.masters.urls:
            client = redis.Redis.from_url(url)
            client.config_set("notify-keyspace-events", "Egx")
            pubsub = cast(Any, client).pubsub()  # typed from redis-py 8.2 on, untyped before
            pubsub.psubscribe("__keyevent@*__:del", "__keyevent@*__:expired")
            subscribers.append((client, pubsub))
        try:
            yield events
            wait_for(lambda: not self.app.tasks[task].is_locked(*args), timeout=TIMEOUT)
            for _, pubsub in subscribers:
                while (message := pubsub.get_message(timeout=1.0)) is not None:
                    if message["type"] == "pmessage" and message["data"].decode() == key:
                        events.append(message["channel"].decode().rpartition(":")[2])
        finally:
            for client, pubsub in subscribers:
                pubsub.close()
                client.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_prefork(
    redis_broker: RedisServer,
    masters: RedisGroup,
    tmp: Path,
    lease: float,
    *,
    concurrency: int = 3,
    pool: str = "prefork",
    conf: Mapping[str, Any] | None = None,
) -> PreforkWorker:
    """A ``celery worker`` subprocess (``-P prefork`` unless ``pool`` says otherwise),
    its app made with ``conf`` (settings) as the test process's is."""
    ns = uuid.uuid4().hex[:12]
    conf = dict(conf or {})
    env = {
        **os.environ,
        "REDLOCK_TEST_BROKER": redis_broker.url,
        "REDLOCK_TEST_MASTERS": ",".join(masters.urls),
        "REDLOCK_TEST_NS": ns,
        "REDLOCK_TEST_LEASE": str(lease),
        "REDLOCK_TEST_CONF": json.dumps(conf),
        "PYTHONPATH": str(ROOT),
    }
    log = tmp / f"worker-{ns}.log"
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.prefork_app",
        "worker",
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-l",
        "INFO",
        "-n",
        f"w{ns}@%h",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    app = make_app(redis_broker.url, masters.urls, ns=ns, redlock_lease=lease, **conf)
    worker = PreforkWorker(app, proc, log, lease, masters)
    try:
        assert app.tasks["hold"].delay("ready", 0.0).get(timeout=TIMEOUT) == "ready"
    except BaseException:
        worker.stop()
        print(log.read_text(errors="replace"))
        raise
    return worker


@pytest.fixture(scope="module")
def prefork(
    redis_broker: RedisServer, lock_masters: RedisGroup, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PreforkWorker]:
    """One worker for the module, with a long lease: a key freed well within it was freed
    by the worker's main process, not by expiry."""
    worker = start_prefork(redis_broker, lock_masters, tmp_path_factory.mktemp("prefork"), lease=20)
    yield worker
    worker.stop()
    close_app(worker.app)


def run_duplicates(app: Celery, key: str, count: int) -> None:
    """``count`` calls of one key at once: at least one runs, the rest are skipped, and no
    two runs overlapped."""
    task = app.tasks["hold_skip"]
    results = [task.delay(key, 0.5) for _ in range(count)]
    values = [r.get(timeout=TIMEOUT) for r in results]
    ran = [v for v in values if v == key]
    assert len(ran) >= 1
    assert len(ran) + sum(map(is_skipped, values)) == count
    assert_no_overlap(probe_of(app))


def test_duplicates_across_pool_processes_never_overlap(prefork: PreforkWorker) -> None:
    run_duplicates(prefork.app, "dup", 9)


def test_sigkill_of_the_child_frees_the_key_at_once(prefork: PreforkWorker) -> None:
    result = prefork.app.tasks["long_run"].delay("kill", 60)
    with prefork.how_freed("long_run", "kill") as freed:
        os.kill(prefork.pid_of("kill"), signal.SIGKILL)
    # The main process notices a dead child within seconds (billiard checks every few) and
    # its reaper releases the key: deleted on every master, not left to expire.
    assert freed == ["del"] * 3
    with pytest.raises(WorkerLostError):
        result.get(timeout=TIMEOUT)


def test_revoke_terminate_frees_the_key_at_once(prefork: PreforkWorker) -> None:
    result = prefork.app.tasks["long_run"].delay("revoke", 60)
    prefork.pid_of("revoke")
    with prefork.how_freed("long_run", "revoke") as freed:
        result.revoke(terminate=True)
    assert freed == ["del"] * 3
    wait_for(lambda: result.state == "REVOKED", what="the REVOKED state")


def test_the_hard_time_limit_frees_the_key_at_once(prefork: PreforkWorker) -> None:
    with prefork.how_freed("hard_limited", "hard") as freed:
        result = prefork.app.tasks["hard_limited"].delay("hard")  # time_limit=1.5
        prefork.pid_of("hard")
    assert freed == ["del"] * 3
    with pytest.raises(TimeLimitExceeded):
        result.get(timeout=TIMEOUT)


def test_the_soft_time_limit_releases_in_the_child(prefork: PreforkWorker) -> None:
    result = prefork.app.tasks["soft_limited"].delay("soft")  # soft_time_limit=1
    with pytest.raises(Exception, match="SoftTimeLimitExceeded"):
        result.get(timeout=TIMEOUT)
    assert probe_of(prefork.app).marks("soft:soft") == ["SoftTimeLimitExceeded"]
    assert not prefork.app.tasks["soft_limited"].is_locked("soft")


def test_a_killed_worker_frees_the_key_within_a_lease(
    redis_broker: RedisServer, lock_masters: RedisGroup, tmp_path: Path
) -> None:
    """Main process and children SIGKILLed together (a lost machine): nobody releases,
    and the key comes free when its lease runs out."""
    worker = start_prefork(redis_broker, lock_masters, tmp_path, lease=2, concurrency=1)
    try:
        worker.app.tasks["long_run"].delay("host", 60)
        worker.pid_of("host")
        with worker.how_freed("long_run", "host") as freed:
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait()
        assert freed == ["expired"] * 3
    finally:
        worker.stop()
        close_app(worker.app)


def test_a_cold_shutdown_frees_the_key_at_once(
    redis_broker: RedisServer, lock_masters: RedisGroup, tmp_path: Path
) -> None:
    """SIGQUIT: the worker terminates its running tasks and exits without waiting."""
    worker = start_prefork(redis_broker, lock_masters, tmp_path, lease=20, concurrency=1)
    try:
        worker.app.tasks["long_run"].delay("cold", 60)
        worker.pid_of("cold")
        with worker.how_freed("long_run", "cold") as freed:
            os.kill(worker.proc.pid, signal.SIGQUIT)
            worker.proc.wait(TIMEOUT)
        assert freed == ["del"] * 3
    finally:
        worker.stop()
        close_app(worker.app)


def test_an_outage_longer_than_max_retries_drops_no_call(
    redis_broker: RedisServer, tmp_path: Path
) -> None:
    """Three masters, two killed: calls keep arriving and retrying, more times than
    Celery's max_retries (3) would allow. The masters restart empty and sit out their
    restart guard; then every call runs, once."""
    keys = [f"outage-{i}" for i in range(4)]
    conf = {"redlock_restart_guard": 2, "redlock_outage_countdown": 0.05}
    with RedisGroup(3) as masters:
        worker = start_prefork(redis_broker, armed(masters), tmp_path, lease=1.5, conf=conf)
        try:
            probe = probe_of(worker.app)
            masters[0].kill()
            masters[1].kill()
            results = [worker.app.tasks["hold"].delay(key, 0.0) for key in keys]
            wait_for(
                lambda: (
                    any(r.failed() for r in results)
                    or all(len(probe.marks(f"outage:{r.id}")) > 4 for r in results)
                ),
                what="more outage retries than max_retries",
            )
            assert not [r.id for r in results if r.failed()]
            masters[0].start()
            masters[1].start()
            assert [r.get(timeout=TIMEOUT) for r in results] == keys
        except BaseException:
            print(worker.log.read_text(errors="replace")[-20000:])
            raise
        finally:
            worker.stop()
            close_app(worker.app)
    assert sorted(run["key"] for run in probe.runs() if run["key"] != "ready") == keys
    assert_no_overlap(probe)
