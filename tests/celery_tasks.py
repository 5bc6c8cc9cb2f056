"""A Celery app and tasks for the Celery-layer tests, shared by in-process and subprocess workers.

Task bodies record what they did in the broker's Redis, independently of the lock under
test: ``probe:<ns>:active:<key>`` is INCRed on entry and DECRed on exit, so a second run
entering while one is inside sees 2 and records an overlap; every run also appends its
(start, end) on the monotonic clock, which is shared by all processes of the machine.
"""

from __future__ import annotations

import functools
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery

from celery_redlock import SingletonTask

#: Settings every test app shares: quiet, and no broker retry warnings at start-up.
BASE_CONF: dict[str, Any] = {
    "broker_connection_retry_on_startup": True,
    "worker_hijack_root_logger": False,
    "task_acks_late": False,
    # None: redis-py 8 deprecates SETEX, which Celery's Redis backend uses for expiring results
    "result_expires": None,
    "worker_prefetch_multiplier": 1,
    # An AsyncResult collected after its broker stopped (a failed test's traceback keeps
    # some alive) would otherwise retry its unsubscribe for 20 s at interpreter exit.
    "result_backend_transport_options": {
        "retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.1}
    },
}


@functools.cache
def _client(url: str, _pid: int) -> redis.Redis:
    """One client per URL and process, kept: a client per call left its connection to the
    garbage collector, which then warned of an unclosed socket in some later test."""
    return redis.Redis.from_url(url, socket_timeout=5)


@dataclass(frozen=True)
class Probe:
    """Records runs in the broker's Redis under a namespace of its own."""

    url: str
    ns: str

    def client(self) -> redis.Redis:
        return _client(self.url, os.getpid())

    def enter(self, key: str, task_id: str) -> float:
        r = self.client()
        if int(r.incr(f"probe:{self.ns}:active:{key}")) > 1:
            r.rpush(f"probe:{self.ns}:overlaps", key)
        r.rpush(f"probe:{self.ns}:started:{key}", task_id)
        return time.monotonic()

    def leave(self, key: str, task_id: str, start: float) -> None:
        r = self.client()
        r.decr(f"probe:{self.ns}:active:{key}")
        interval = {"key": key, "id": task_id, "start": start, "end": time.monotonic()}
        r.rpush(f"probe:{self.ns}:runs", json.dumps(interval))

    def runs(self) -> list[dict[str, Any]]:
        raw: list[Any] = self.client().lrange(f"probe:{self.ns}:runs", 0, -1)
        return [json.loads(item) for item in raw]

    def started(self, key: str) -> list[str]:
        raw: list[Any] = self.client().lrange(f"probe:{self.ns}:started:{key}", 0, -1)
        return [item.decode() for item in raw]

    def overlaps(self) -> list[str]:
        raw: list[Any] = self.client().lrange(f"probe:{self.ns}:overlaps", 0, -1)
        return [item.decode() for item in raw]

    def open_gate(self, key: str) -> None:
        self.client().set(f"probe:{self.ns}:gate:{key}", 1)

    def wait_gate(self, key: str, timeout: float = 30.0) -> None:
        """Block until the test opens ``key``'s gate: a run the test ends when it wants."""
        r = self.client()
        deadline = time.monotonic() + timeout
        while not r.exists(f"probe:{self.ns}:gate:{key}") and time.monotonic() < deadline:
            time.sleep(0.01)

    def mark(self, name: str, value: str = "1") -> None:
        self.client().rpush(f"probe:{self.ns}:mark:{name}", value)

    def marks(self, name: str) -> list[str]:
        raw: list[Any] = self.client().lrange(f"probe:{self.ns}:mark:{name}", 0, -1)
        return [item.decode() for item in raw]


def make_app(broker_url: str, masters: Sequence[str], ns: str | None = None, **conf: Any) -> Celery:
    """An app on its own queue and key prefix (from ``ns``, random by default), so tests
    sharing servers never meet; a worker subprocess makes the same app from the same ns."""
    ns = ns or uuid.uuid4().hex[:12]
    app = Celery(f"t{ns}", broker=broker_url, backend=broker_url, set_as_current=False)
    app.conf.update(BASE_CONF)
    app.conf.update(
        task_default_queue=f"q{ns}",
        redlock_masters=list(masters),
        redlock_key_prefix=f"t{ns}:",
        redlock_outage_countdown=0.2,
        # Roomier than the 0.1 s default: a loaded test machine must not look like an outage.
        redlock_master_timeout=0.3,
    )
    app.conf.update(conf)
    app.probe = Probe(broker_url, ns)
    define_tasks(app)
    return app


def probe_of(app: Celery) -> Probe:
    probe: Probe = app.probe
    return probe


#: ``seconds`` that makes a run hold its key until the test calls ``probe.open_gate(key)``.
GATED = -1.0

Decorator = Callable[[Callable[..., Any]], Any]


def task_decorator(app: Celery) -> Callable[..., Decorator]:
    """``app.task`` with a type, and ``shared=False``: shared tasks would join every app."""

    def decorate(**options: Any) -> Decorator:
        decorator: Decorator = app.task(shared=False, **options)
        return decorator

    return decorate


def define_tasks(app: Celery) -> None:
    probe = probe_of(app)
    task = task_decorator(app)

    def hold_body(task: Any, key: str, seconds: float) -> str:
        run_id = task.request.id or "direct"
        start = probe.enter(key, run_id)
        try:
            if seconds == GATED:
                probe.wait_gate(key)
            else:
                time.sleep(seconds)
        finally:
            probe.leave(key, run_id, start)
        return key

    for policy in ("skip", "raise", "retry", "wait"):
        # Bound tasks keyed on ``key`` only: ``seconds`` may differ between duplicates.
        task(
            bind=True,
            base=SingletonTask,
            name=f"hold_{policy}",
            lock_key=["key"],
            lock_on_duplicate=policy,
            lock_duplicate_countdown=0.2,
            lock_wait_timeout=60,
            max_retries=None,
        )(hold_body)

    task(
        bind=True,
        base=SingletonTask,
        name="hold_wait_short",
        lock_key=["key"],
        lock_on_duplicate="wait",
        lock_wait_timeout=0.3,
    )(hold_body)

    task(
        bind=True,
        base=SingletonTask,
        name="hold_retry_twice",
        lock_key=["key"],
        lock_on_duplicate="retry",
        lock_duplicate_countdown=0.2,
        max_retries=2,
    )(hold_body)

    @task(bind=True, base=SingletonTask, name="hold")
    def hold(self: Any, key: str, seconds: float = 0.2) -> str:
        return hold_body(self, key, seconds)

    @task(bind=True, base=SingletonTask, name="meet", lock_key=["key"])
    def meet(self: Any, key: str, party: str, size: int = 2, timeout: float = 20.0) -> bool:
        """Waits until ``size`` runs (of any keys) are inside at once: proof of parallelism."""
        start = probe.enter(key, self.request.id)
        try:
            r = probe.client()
            r.incr(f"probe:{probe.ns}:party:{party}")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if int(r.get(f"probe:{probe.ns}:party:{party}") or 0) >= size:
                    return True
                time.sleep(0.01)
            return False
        finally:
            probe.leave(key, self.request.id, start)

    @task(bind=True, base=SingletonTask, name="retry_once", max_retries=3)
    def retry_once(self: Any, key: str) -> int:
        start = probe.enter(key, self.request.id)
        try:
            probe.mark(f"retry_once:{key}", str(self.request.retries))
            if self.request.retries == 0:
                raise self.retry(countdown=0)
        finally:
            probe.leave(key, self.request.id, start)
        return int(self.request.retries)

    @task(bind=True, base=SingletonTask, name="watch_loss", lock_lease=1.5)
    def watch_loss(self: Any, key: str, timeout: float = 10.0) -> bool:
        """Returns whether the run saw its lock lost (the test deletes the key meanwhile)."""
        probe.mark(f"watching:{key}", self.lock_resource(key))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.lock_lost is not None:
                return True
            time.sleep(0.02)
        return False

    @task(bind=True, base=SingletonTask, name="dedup", lock_dedup=True)
    def dedup(self: Any, key: str, seconds: float = 0.5) -> str:
        return hold_body(self, key, seconds)

    @task(bind=True, base=SingletonTask, name="dedup_tags", lock_dedup=True)
    def dedup_tags(self: Any, key: str, tags: Any, seconds: float = 0.5) -> str:
        """Keyed on ``tags`` too, which JSON may deliver in another shape than it was sent."""
        return hold_body(self, key, seconds)

    @task(bind=True, base=SingletonTask, name="throttled", lock_window=2.0)
    def throttled(self: Any, key: str) -> str:
        return hold_body(self, key, 0.0)

    @task(bind=True, base=SingletonTask, name="fail_open", lock_on_outage="run_unlocked")
    def fail_open(self: Any, key: str) -> bool:
        hold_body(self, key, 0.0)
        self.lock_check()  # running unlocked by policy: no lock to lose, nothing raised
        return self.current_lock is None

    @task(bind=True, base=SingletonTask, name="boom")
    def boom(self: Any, key: str) -> None:
        probe.mark(f"boom:{key}", str(self.current_lock is not None))
        raise ValueError(key)

    @task(name="record")
    def record(value: Any, tag: str) -> Any:
        probe.mark(f"record:{tag}", json.dumps(value))
        return value

    @task(name="plain_hold")
    def plain_hold(key: str, seconds: float = 0.3) -> str:
        start = probe.enter(key, "plain")
        try:
            time.sleep(seconds)
        finally:
            probe.leave(key, "plain", start)
        return key

    @task(bind=True, base=SingletonTask, name="long_run", lock_key=["key"])
    def long_run(self: Any, key: str, seconds: float = 60.0) -> str:
        """Marks its pid and resource, then sleeps: the prefork tests kill or limit it."""
        probe.mark(f"pid:{key}", str(os.getpid()))
        return hold_body(self, key, seconds)

    @task(bind=True, base=SingletonTask, name="soft_limited", soft_time_limit=1)
    def soft_limited(self: Any, key: str) -> str:
        probe.mark(f"pid:{key}", str(os.getpid()))
        try:
            time.sleep(30)
        except Exception as exc:
            probe.mark(f"soft:{key}", type(exc).__name__)
            raise
        return key

    @task(bind=True, base=SingletonTask, name="hard_limited", time_limit=1.5)
    def hard_limited(self: Any, key: str) -> str:
        probe.mark(f"pid:{key}", str(os.getpid()))
        time.sleep(30)
        return key

    @task(bind=True, base=SingletonTask, name="check_loop", lock_key=["key"], lock_lease=1.5)
    def check_loop(self: Any, key: str, timeout: float = 120.0) -> str:
        """Calls lock_check() between steps: marks the first check passed, then loops
        until a check raises (the test deletes the key meanwhile)."""
        self.lock_check()
        probe.mark(f"checked:{key}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.lock_check()
            time.sleep(0.01)
        probe.mark(f"finished:{key}")
        return "finished"

    @task(
        bind=True,
        base=SingletonTask,
        name="loop_raise",
        lock_key=["key"],
        lock_lease=1.5,
        lock_on_lost="raise",
    )
    def loop_raise(self: Any, key: str, timeout: float = 120.0) -> str:
        """Never looks at its lock: only lock_on_lost="raise" ends it before its timeout."""
        probe.mark(f"pid:{key}", str(os.getpid()))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.01)
        probe.mark(f"finished:{key}")
        return "finished"

    @task(bind=True, base=SingletonTask, name="fenced")
    def fenced(self: Any, key: str) -> int | None:
        """The run's fence, as the body would hand it to the place it writes to."""
        fence: int | None = self.lock_fence
        return fence

    @task(bind=True, base=SingletonTask, name="unfenced", lock_fencing=False)
    def unfenced(self: Any, key: str) -> int | None:
        fence: int | None = self.lock_fence
        return fence

    @task(bind=True, base=SingletonTask, name="stuck", lock_key=["key"], lock_lease=1.5)
    def stuck(self: Any, key: str, seconds: float = 120.0) -> str:
        """Blocked in one C call (a sleep) for ``seconds``: no exception reaches it there,
        so only ending its process (``redlock_on_lost="kill"``) stops it sooner."""
        probe.mark(f"pid:{key}", str(os.getpid()))
        time.sleep(seconds)
        probe.mark(f"finished:{key}")
        return key
