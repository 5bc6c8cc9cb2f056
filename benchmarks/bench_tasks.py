"""Tasks per second through a real ``celery worker``: a plain task, SingletonTask and its
peers (celery-singleton, celery-once), as one markdown table.

``python -m benchmarks.bench_tasks`` (``make bench`` runs it in ``.venv-bench-tasks``, which
holds the peers: kombu 5.7's Redis broker needs redis-py >= 6.1, which the lock benchmark's
virtualenv cannot have); ``--quick`` is a smoke run of about 30 s; ``--tasks N`` and
``--passes P`` change the budget (the full run takes about 2.5 minutes). Every row is
measured in the same run, against the same local servers.

Why it is built this way:

- The worker is ``celery worker -P prefork -c 2``, a subprocess per row, each importing
  only its row's library (the plain row is Celery alone), all started before the first
  pass, warmed, and kept across passes. Prefork is Celery's default pool, and its children
  are where a lock's cost lands in a real deployment. Celery's defaults otherwise
  (prefetch 4, early acks); no row has a result backend (results are disabled in all of
  them); one broker, a redis-server started here.
- The machine is split in two: the workers run on the first half of the cores, every
  redis-server and this process (the publisher) on the other half. In a deployment the
  lock masters are other hosts; sharing cores with them would charge their work (three
  of them for SingletonTask, one for the peers) to the worker. On the 2-core machine this
  was written on, that puts each worker alone on one core, where its two children keep
  it busy (one child's round trips overlap the other's work), so a row's rate measures
  what a task costs the worker's CPU.
- The task body is trivial and the same in every row: one round trip to the
  broker's Redis (RPUSH of its CLOCK_MONOTONIC reading to a list), which is also how runs
  are counted.
- Every call is ``task.delay(i)`` with an ``i`` never used before, so no call duplicates
  another and every lock row takes and frees one lock per call, keyed by its argument (the
  default for SingletonTask and both peers). A row keyed on the task name alone is left
  out on purpose: under a pool of two, consecutive calls overlap, so it would time the
  duplicate-skip path rather than locking; run one at a time it would differ from the
  per-argument row only by hashing one integer.
- One cell: the row's worker (its main process, which fetches the messages) is
  SIGSTOPped, N calls are published and timed (that is where celery-singleton, celery-once
  and ``lock_dedup`` take their locks), the worker is resumed, and the bodies' clock
  readings time the drain. Publishing and running never overlap, so the worker never
  waits for the publisher, and the publisher's lock traffic never competes with the
  drain's.
- Four figures per cell: the worker's rate (N-1 runs between the first body's clock
  reading and the last's, taken in the pool children; the clock is system-wide); the
  worker's CPU time per call (its main process and children, from ``/proc``, over the
  drain), which other load on a shared machine barely moves, and whose inverse is the
  rate the worker would reach alone on its core; the publisher's rate; and both
  together (N over the publish time plus the time from the resume to the last body). The
  85% target is judged on the worker's rate, and on its CPU per call (the plain task and
  SingletonTask publish alike); "ahead of the peers" on publish and run together, because
  the peers take their lock in the publisher and only delete it in the worker. A second
  table splits the worker's CPU per call into its main process and its pool children,
  user and system (``/proc``, in clock ticks of 10 ms, hence 1000 calls a cell): a lock's
  Python shows as the children's user time, its sends and receives as their system time.
- Locks: SingletonTask on three masters, and a row on one; that one-master row,
  celery-singleton and celery-once all lock the first of the three masters, a redis-server
  other than the broker's, so the broker carries the same load in every row.
- A floor row does only the wire work of a lock taken and freed in the worker on three
  masters (a SET NX PX to each, all sent then all read; the body; a DEL to each) over raw
  blocking sockets: no token, validity, owner check or renewal. No worker-side lock on
  three masters can cost less, so it shows how much of a lock row's cost is the wire's
  (the sends and receives, and on loopback the kernel's work for both ends) and how much
  its code's, and what the 85% target leaves for the code.
- Passes interleave the rows (in a rotated order each pass), so load drifting during the
  run falls on every row alike; each figure is the median over passes. A drain that
  stalls is given up after a deadline, its worker is stopped and its row says why; a pass
  is started only if it fits in the run's time budget.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.metadata
import importlib.util
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit

import redis
from celery import Celery

from benchmarks._common import available, host_line, version

if TYPE_CHECKING:
    from celery_redlock.testing import RedisServer

ROOT = Path(__file__).resolve().parent.parent
POOL = "prefork"
CONCURRENCY = 2
MASTERS = 3
TASK = "bench.noop"
START_TIMEOUT = 60.0  # seconds for a worker to start and run its warm-up calls
POLL = 0.005  # how often we look whether a drain is over (the figures use the bodies' clock)
ENV = "BENCH_TASKS_"  # prefix of the environment a worker subprocess builds its app from


@dataclass(frozen=True)
class Budget:
    """Calls per cell, passes, warm-up calls per worker, and the time limits."""

    tasks: int
    passes: int
    warmup: int
    drain_limit: float  # seconds one drain may take before the cell counts as stalled
    seconds: float  # the passes' wall-clock budget; a pass that would overrun is not begun


# Nine passes: on a shared 2-core VM one row's rate swings by a third between passes, and
# five passes put a median anywhere from 71% to 85% of plain on the same day.
FULL = Budget(tasks=1000, passes=9, warmup=200, drain_limit=60.0, seconds=200.0)
QUICK = Budget(tasks=200, passes=2, warmup=50, drain_limit=20.0, seconds=20.0)


@dataclass(frozen=True)
class Servers:
    """Where everything runs: the broker and the lock masters (URLs)."""

    broker: str
    masters: tuple[str, ...]

    @property
    def single(self) -> str:
        """The one Redis of the single-server rows: the first master, not the broker."""
        return self.masters[0]


@dataclass(frozen=True)
class Cores:
    """Which CPUs the workers get, and which the servers and this process get."""

    workers: frozenset[int]
    rest: frozenset[int]

    @classmethod
    def split(cls) -> Cores | None:
        """The first half of our CPUs for the workers; None on a single CPU."""
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return None
        half = len(cpus) // 2
        return cls(frozenset(cpus[:half]), frozenset(cpus[half:]))

    def pin_servers(self, urls: Sequence[str]) -> None:
        """Every redis-server named, and this process, onto the servers' cores."""
        for url in urls:
            with redis.Redis.from_url(url) as client:
                os.sched_setaffinity(int(client.info("server")["process_id"]), self.rest)
        os.sched_setaffinity(0, self.rest)

    def describe(self) -> str:
        return f"CPU {_cpus(self.workers)} for the workers, CPU {_cpus(self.rest)} for the rest"


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def _now() -> float:
    """CLOCK_MONOTONIC is one clock for every process on the machine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuSplit:
    """CPU seconds of a worker by process and mode: its main process (which fetches,
    dispatches and acks) and its pool children (which run the tasks), user and system."""

    main_user: float
    main_system: float
    children_user: float
    children_system: float

    @property
    def total(self) -> float:
        return self.main_user + self.main_system + self.children_user + self.children_system

    def __sub__(self, other: CpuSplit) -> CpuSplit:
        return CpuSplit(
            self.main_user - other.main_user,
            self.main_system - other.main_system,
            self.children_user - other.children_user,
            self.children_system - other.children_system,
        )


def _own_cpu(pid: int) -> tuple[float, float, list[int]] | None:
    """User and system CPU seconds of a process, every thread in it (Linux ``/proc``), and
    its children's pids; None where ``/proc`` cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # fields 14 and 15 of proc(5), after the name
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK, [int(c) for c in children]


def cpu_split(pid: int) -> CpuSplit | None:
    """A worker's CPU so far: ``pid`` itself, and all its descendants summed."""
    own = _own_cpu(pid)
    if own is None:
        return None
    user, system, pending = own
    children_user = children_system = 0.0
    while pending:
        found = _own_cpu(pending.pop())
        if found is not None:
            children_user += found[0]
            children_system += found[1]
            pending += found[2]
    return CpuSplit(user, system, children_user, children_system)


# --- the task body's instrument ----------------------------------------------------------


@dataclass
class Tally:
    """Runs recorded in the broker's Redis: each appends its CLOCK_MONOTONIC reading to a
    list, one command (a pipeline would cost more than the command: redis-py builds a
    table of reply callbacks for each)."""

    url: str
    key: str
    _client: redis.Redis | None = field(default=None, repr=False)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:  # made in the process that uses it (a pool child)
            self._client = redis.Redis.from_url(self.url, socket_timeout=5)
        return self._client

    def mark(self) -> None:
        """One run: the whole body of every row's task, one round trip."""
        self.client.rpush(self.key, _now())

    def reset(self) -> None:
        self.client.delete(self.key)

    def count(self) -> int:
        return int(self.client.llen(self.key))

    def span(self) -> tuple[float, float]:
        """The clock readings of the first run and the last since the reset (runs in two
        pool children may append out of order, by a few microseconds)."""
        readings = [float(r) for r in self.client.lrange(self.key, 0, -1)]
        return min(readings), max(readings)

    def wait(self, count: int, limit: float) -> None:
        """Until ``count`` runs are in, or :class:`CellError` after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        while (seen := self.count()) < count:
            if time.monotonic() > deadline:
                raise CellError(f"stalled: {seen} of {count} ran in {limit:.0f} s")
            time.sleep(POLL)


# --- the rows: one task each, defined the way its library documents ----------------------

Body: TypeAlias = Callable[[int], None]
Define: TypeAlias = Callable[[Celery, Body, Servers], Any]


def _plain(app: Celery, body: Body, _servers: Servers) -> Any:
    return app.task(name=TASK)(body)


def _ours(masters: int, **options: Any) -> Define:
    def define(app: Celery, body: Body, servers: Servers) -> Any:
        from celery_redlock import SingletonTask

        app.conf.redlock_masters = list(servers.masters[:masters])
        return app.task(name=TASK, base=SingletonTask, **options)(body)

    return define


def _celery_singleton(app: Celery, body: Body, servers: Servers) -> Any:
    singleton: Any = importlib.import_module("celery_singleton")
    app.conf.singleton_backend_url = servers.single
    return app.task(name=TASK, base=singleton.Singleton)(body)


def _celery_once(app: Celery, body: Body, servers: Servers) -> Any:
    once: Any = importlib.import_module("celery_once")
    app.conf.ONCE = {"backend": "celery_once.backends.Redis", "settings": {"url": servers.single}}
    # graceful: a duplicate returns quietly instead of raising (there are none here anyway)
    return app.task(name=TASK, base=once.QueueOnce, once={"graceful": True})(body)


class _Floor:
    """The wire work of any lock taken and freed in the worker on every master, and nothing
    else: a SET NX PX to each master (all sent, then all read), the body, then a DEL to
    each, over plain blocking sockets. What a worker-side multi-master lock cannot go
    below, whatever its code: it has no token, no validity, no owner check, no renewal."""

    def __init__(self, urls: Sequence[str]) -> None:
        self.addresses = [(u.hostname or "127.0.0.1", u.port or 6379) for u in map(urlsplit, urls)]
        self.socks: list[socket.socket] = []

    def round(self, command: bytes, reply: bytes) -> None:
        if not self.socks:  # opened in the pool child that uses them
            for address in self.addresses:
                sock = socket.create_connection(address, timeout=5)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.socks.append(sock)
        for sock in self.socks:
            sock.sendall(command)
        for sock in self.socks:
            got = sock.recv(len(reply))
            while len(got) < len(reply) and got == reply[: len(got)]:
                got += sock.recv(len(reply) - len(got))
            if got != reply:
                raise RuntimeError(f"floor: expected {reply!r}, got {got!r}")

    def wrap(self, body: Body) -> Body:
        def floor(n: int) -> None:
            key = b"floor:%d" % n
            arg = b"$%d\r\n%s\r\n" % (len(key), key)
            self.round(
                b"*6\r\n$3\r\nSET\r\n%s%s$2\r\nNX\r\n$2\r\nPX\r\n$5\r\n30000\r\n" % (arg, arg),
                b"+OK\r\n",
            )
            body(n)
            self.round(b"*2\r\n$3\r\nDEL\r\n%s" % arg, b":1\r\n")

        return floor


def _floor(app: Celery, body: Body, servers: Servers) -> Any:
    return app.task(name=TASK)(_Floor(servers.masters).wrap(body))


@dataclass(frozen=True)
class Row:
    """A table row: its label, how its task is defined, and the peer it needs (if any)."""

    label: str
    define: Define
    module: str | None = None  # a peer's import name: the row is skipped if it is missing


ROWS = {
    "plain": Row("plain `@app.task`", _plain),
    "ours": Row(f"**SingletonTask, {MASTERS} masters**", _ours(MASTERS)),
    "ours1": Row("SingletonTask, 1 master", _ours(1)),
    "unfenced": Row(
        f"SingletonTask, {MASTERS} masters, `lock_fencing=False`",
        _ours(MASTERS, lock_fencing=False),
    ),
    "floor": Row(
        f"floor: a SET NX PX and a DEL to {MASTERS} masters, raw sockets, no lock", _floor
    ),
    "dedup": Row(
        f"SingletonTask, {MASTERS} masters, `lock_dedup=True` (also locks at publish)",
        _ours(MASTERS, lock_dedup=True),
    ),
    "singleton": Row(
        "celery-singleton `Singleton` (1 Redis)", _celery_singleton, "celery_singleton"
    ),
    "once": Row("celery-once `QueueOnce` (1 Redis)", _celery_once, "celery_once"),
}


def make_app(row: str, servers: Servers, ns: str) -> tuple[Celery, Any, Tally]:
    """The row's app, its task and the task's tally; the same in the worker and here."""
    app = Celery(f"bench_{row}", broker=servers.broker, set_as_current=False)
    app.conf.update(
        task_default_queue=f"bench.{ns}.{row}",
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    tally = Tally(servers.broker, f"bench:{ns}:{row}:runs")

    def noop(n: int) -> None:  # noqa: ARG001 - the argument only keys the call
        tally.mark()

    return app, ROWS[row].define(app, noop, servers), tally


def app_from_env() -> Celery:
    """The app of a worker subprocess (see ``benchmarks/_task_worker.py``)."""
    env = os.environ
    servers = Servers(env[f"{ENV}BROKER"], tuple(env[f"{ENV}MASTERS"].split(",")))
    app, _task, _tally = make_app(env[f"{ENV}ROW"], servers, env[f"{ENV}NS"])
    return app


# --- the workers -------------------------------------------------------------------------


class CellError(Exception):
    """A cell could not be measured; its message goes in the table."""


@dataclass
class Worker:
    """One row's ``celery worker`` subprocess, and the app (in this process) feeding it."""

    row: str
    proc: subprocess.Popen[bytes]
    log: Path
    task: Any
    tally: Tally
    next_arg: int = 0
    note: str = ""  # why the row is no longer measured

    def pause(self) -> None:
        """Stop the main process, which fetches messages: none is consumed until resumed."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)

    def args(self, count: int) -> range:
        """Arguments never used before by this row: no call is a duplicate."""
        start, self.next_arg = self.next_arg, self.next_arg + count
        return range(start, start + count)

    def cpu(self) -> CpuSplit | None:
        """CPU seconds used so far by the worker: main process and pool children."""
        return cpu_split(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.resume()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def complaints(self) -> list[str]:
        """The WARNING and ERROR lines of its log (an outage retry would show here)."""
        with contextlib.suppress(OSError):
            text = self.log.read_text(errors="replace")
            return [line for line in text.splitlines() if "WARNING" in line or "ERROR" in line]
        return []


def spawn(row: str, servers: Servers, ns: str, logs: Path, cores: Cores | None) -> Worker:
    env = {
        **os.environ,
        f"{ENV}ROW": row,
        f"{ENV}BROKER": servers.broker,
        f"{ENV}MASTERS": ",".join(servers.masters),
        f"{ENV}NS": ns,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    argv = [
        *(sys.executable, "-m", "celery", "-A", "benchmarks._task_worker", "worker"),
        *("-P", POOL, "-c", str(CONCURRENCY), "-l", "WARNING", "-n", f"{row}.{ns}@%h"),
        *("--without-mingle", "--without-gossip", "--without-heartbeat"),
    ]
    log = logs / f"worker-{row}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    if cores is not None:  # before the pool forks its children, which inherit it
        os.sched_setaffinity(proc.pid, cores.workers)
    _app, task, tally = make_app(row, servers, ns)
    return Worker(row, proc, log, task, tally)


def warm(worker: Worker, calls: int) -> None:
    """Run ``calls`` calls through the worker (connections opened, scripts cached)."""
    worker.tally.reset()
    for i in worker.args(calls):
        worker.task.delay(i)
    try:
        worker.tally.wait(calls, START_TIMEOUT)
    except CellError as exc:
        worker.note = f"did not start: {exc}"
        print(f"worker {worker.row} did not start:\n{worker.log_tail()}", file=sys.stderr)
        worker.stop()


@contextlib.contextmanager
def workers(
    rows: Sequence[str], servers: Servers, budget: Budget, cores: Cores | None
) -> Iterator[dict[str, Worker]]:
    """Every row's worker, started together and warmed; stopped on the way out."""
    ns = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="bench-tasks-") as logs:
        started: dict[str, Worker] = {}
        try:
            for row in rows:
                started[row] = spawn(row, servers, ns, Path(logs), cores)
            for worker in started.values():
                warm(worker, budget.warmup)
            yield started
        finally:
            for worker in started.values():
                worker.stop()


# --- measuring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One pass of one row: seconds to publish, from the resume to the last run, and from
    the first run to the last, for ``tasks`` calls; the worker's CPU meanwhile."""

    tasks: int
    publish: float
    drain: float
    span: float
    cpu: CpuSplit | None

    @property
    def cpu_ms(self) -> float | None:
        """Worker CPU milliseconds per call."""
        return None if self.cpu is None else self.cpu.total / self.tasks * 1000

    def part_us(self, part: str) -> float:
        """Microseconds per call of one part of :class:`CpuSplit` (NaN if not measured)."""
        return math.nan if self.cpu is None else getattr(self.cpu, part) / self.tasks * 1e6

    @property
    def worker_rate(self) -> float:
        return (self.tasks - 1) / self.span

    @property
    def publish_rate(self) -> float:
        return self.tasks / self.publish

    @property
    def total_rate(self) -> float:
        return self.tasks / (self.publish + self.drain)


def measure(worker: Worker, budget: Budget) -> Cell:
    """Publish ``budget.tasks`` calls while the worker is stopped, then time their runs."""
    count = budget.tasks
    worker.tally.reset()
    delay = worker.task.delay
    worker.pause()
    try:
        start = _now()
        for i in worker.args(count):
            delay(i)
        published = _now()
        cpu_before = worker.cpu()
    finally:
        worker.resume()
    resumed = _now()
    worker.tally.wait(count, budget.drain_limit)
    cpu_after = worker.cpu()
    first, last = worker.tally.span()
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return Cell(count, published - start, last - resumed, last - first, cpu)


Results: TypeAlias = dict[str, list[Cell]]


def _progress(started: float, what: str) -> None:
    print(f"{time.monotonic() - started:5.0f} s  {what}", file=sys.stderr)


def run_passes(pool: dict[str, Worker], budget: Budget) -> Results:
    """Interleaved passes over every row, in a rotated order each pass, within the budget."""
    results: Results = {row: [] for row in pool}
    rows = list(pool)
    started = time.monotonic()
    for n in range(budget.passes):
        elapsed = time.monotonic() - started
        if n and elapsed / n > budget.seconds - elapsed:
            _progress(started, f"stopping after {n} passes: the next would overrun the budget")
            break
        for row in [*rows[n % len(rows) :], *rows[: n % len(rows)]]:
            _measure_into(results, pool[row], budget)
        _progress(started, f"pass {n + 1}/{budget.passes}: " + _pass_summary(results, rows))
    return results


def _measure_into(results: Results, worker: Worker, budget: Budget) -> None:
    if worker.note:
        return
    try:
        results[worker.row].append(measure(worker, budget))
    except CellError as exc:
        worker.note = str(exc)
        worker.stop()  # its backlog would load the machine under the other rows


def _pass_summary(results: Results, rows: Sequence[str]) -> str:
    return ", ".join(f"{row} {results[row][-1].worker_rate:.0f}/s" for row in rows if results[row])


# --- the table ---------------------------------------------------------------------------


def median(cells: Sequence[Cell], rate: Callable[[Cell], float]) -> float | None:
    values = [value for value in map(rate, cells) if not math.isnan(value)]
    return statistics.median(values) if values else None


def _worker_rate(cell: Cell) -> float:
    return cell.worker_rate


def _publish_rate(cell: Cell) -> float:
    return cell.publish_rate


def _total_rate(cell: Cell) -> float:
    return cell.total_rate


def _cpu_ms(cell: Cell) -> float:
    return math.nan if cell.cpu_ms is None else cell.cpu_ms


def _spread(cells: Sequence[Cell], rate: Callable[[Cell], float], digits: int = 0) -> str:
    values = [value for value in map(rate, cells) if not math.isnan(value)]
    if not values:
        return "—"
    shown = f"{statistics.median(values):.{digits}f}"
    low, high = min(values), max(values)
    return shown if len(values) < 2 else f"{shown} ({low:.{digits}f}-{high:.{digits}f})"


def _pct(a: float | None, b: float | None) -> str:
    return "—" if a is None or b is None or not b else f"{a / b:.0%}"


def split_table(results: Results) -> str:
    """Worker CPU per call by process and mode (medians): which side a row's cost is on."""
    parts = ("main_user", "main_system", "children_user", "children_system")
    head = [
        "task",
        "main process: user / system, µs per call",
        "pool children: user / system, µs per call",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, cells in results.items():
        medians = [median(cells, functools.partial(Cell.part_us, part=part)) for part in parts]
        shown = ["—" if m is None else f"{m:.0f}" for m in medians]
        cols = [ROWS[row].label, f"{shown[0]} / {shown[1]}", f"{shown[2]} / {shown[3]}"]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def table(results: Results, notes: dict[str, str]) -> str:
    head = [
        f"task ({POOL} -c {CONCURRENCY})",
        "through the worker, tasks/s: median (min-max)",
        "worker CPU per call, ms",
        "publish, tasks/s",
        "publish + run, tasks/s",
        "vs plain: rate / CPU",
    ]
    plain = results.get("plain", [])
    plain_rate, plain_cpu = median(plain, _worker_rate), median(plain, _cpu_ms)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, cells in results.items():
        worker = _spread(cells, _worker_rate)
        if notes.get(row):
            worker = f"{worker}; {notes[row]}" if cells else notes[row]
        vs_plain = (
            f"{_pct(median(cells, _worker_rate), plain_rate)}"
            f" / {_pct(plain_cpu, median(cells, _cpu_ms))}"
        )
        cols = [
            ROWS[row].label,
            worker,
            _spread(cells, _cpu_ms, digits=2),
            _spread(cells, _publish_rate),
            _spread(cells, _total_rate),
            vs_plain,
        ]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


# --- what the targets name -------------------------------------------------------


def _ratio(results: Results, a: str, b: str, rate: Callable[[Cell], float]) -> float | None:
    top, bottom = median(results.get(a, []), rate), median(results.get(b, []), rate)
    return None if top is None or not bottom else top / bottom


def _judge(what: str, value: float | None, *, at_least: float | None = None) -> str:
    """One line below the table: the ratio, and whether it meets its target."""
    if value is None:
        return f"- {what}: not measured"
    line = f"- {what}: {value:.0%} ({value:.2f}x)"
    if at_least is None:
        return line + " (for information)"
    return line + f" (target >= {at_least:.0%}: {'met' if value >= at_least else 'MISSED'})"


def _ahead(what: str, value: float | None) -> str:
    if value is None:
        return f"- {what}: not measured"
    verdict = "met" if value > 1 else "MISSED"
    return f"- {what}: {value:.2f}x (target: ahead, > 1.00x: {verdict})"


def targets(results: Results) -> list[str]:
    """The ratios the issue sets targets for, each judged met or missed."""
    lines = [
        _judge(
            f"SingletonTask ({MASTERS} masters) / plain, through the worker",
            _ratio(results, "ours", "plain", _worker_rate),
            at_least=0.85,
        ),
        _judge(
            f"SingletonTask ({MASTERS} masters) / plain, by worker CPU per call (plain's CPU"
            " / ours: the rate ratio on a core of its own)",
            _ratio(results, "plain", "ours", _cpu_ms),
            at_least=0.85,
        ),
        _judge(
            f"SingletonTask ({MASTERS} masters) / plain, publish + run",
            _ratio(results, "ours", "plain", _total_rate),
        ),
        _judge(
            "SingletonTask (1 master) / plain, through the worker",
            _ratio(results, "ours1", "plain", _worker_rate),
        ),
        _judge(
            f"floor ({MASTERS} masters, no lock logic) / plain, through the worker",
            _ratio(results, "floor", "plain", _worker_rate),
        ),
        _over_floor(results),
    ]
    for peer in ("singleton", "once"):
        if peer not in results:
            continue
        name = ROWS[peer].label
        lines.append(
            _ahead(
                f"SingletonTask ({MASTERS} masters) vs {name}, publish + run",
                _ratio(results, "ours", peer, _total_rate),
            )
        )
        lines.append(
            f"- SingletonTask ({MASTERS} masters) vs {name}, through the worker only:"
            f" {_x(_ratio(results, 'ours', peer, _worker_rate))} (for information: the peer"
            " locks in the publisher)"
        )
    return lines


def _over_floor(results: Results) -> str:
    """What SingletonTask's lock logic costs the worker beyond the wire work every lock on
    as many masters pays, beside what the 85% target leaves for it in this run."""
    plain, floor, ours = (
        median(results.get(row, []), _cpu_ms) for row in ("plain", "floor", "ours")
    )
    if plain is None or floor is None or ours is None:
        return "- SingletonTask's lock logic above the floor: not measured"
    return (
        f"- SingletonTask ({MASTERS} masters) above the floor, worker CPU per call:"
        f" {ours - floor:.2f} ms; the 85% target leaves {plain / 0.85 - floor:.2f} ms above"
        " the floor (for information: the floor's share is the wire's, not the code's)"
    )


def _x(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


# --- the machine, and main ---------------------------------------------------------------


def machine(broker: RedisServer) -> str:
    """What the numbers were measured on, printed above the table."""
    with broker.client() as client:
        server = client.info("server")["redis_version"]
    hiredis = "yes" if redis.utils.HIREDIS_AVAILABLE else "no"
    return (
        f"{host_line()}; Celery {version('celery')}, kombu"
        f" {version('kombu')}; redis-py {redis.__version__} (hiredis: {hiredis}); redis-server"
        f" {server} (local, loopback); celery_redlock {version('celery_redlock')},"
        f" celery-singleton {version('celery-singleton')}, celery-once {version('celery-once')}."
    )


def legend(budget: Budget, passes: int, cores: Cores | None, load: tuple[float, float]) -> str:
    split = cores.describe() if cores else "no CPU split (one CPU)"
    return (
        f"Tasks per second, {budget.tasks} calls per cell, median over {passes} interleaved"
        f" passes (min-max in brackets). One `celery worker -P {POOL} -c {CONCURRENCY}`"
        f" subprocess per row ({split}: redis-servers and the publisher), results disabled,"
        " one local redis-server as the broker; the body is one round trip to it (RPUSH of a"
        " clock reading). Calls are published while the worker is stopped, then drained:"
        " 'through the worker' is the drain alone, 'publish + run' both back to back."
        f" SingletonTask: {MASTERS} local masters, default options (lease 30 s, master_timeout"
        " 100 ms), keyed by its argument, every call a distinct argument. The one-master row"
        " and both peers lock the first of those masters. 1-minute load average"
        f" {load[0]:.2f} at start, {load[1]:.2f} at end."
    )


def parse_args(argv: Sequence[str] | None) -> Budget:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run")
    parser.add_argument("--tasks", type=int, help="calls per cell")
    parser.add_argument("--passes", type=int, help="interleaved passes over the rows")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    if args.tasks:
        budget = replace(budget, tasks=args.tasks, warmup=min(budget.warmup, args.tasks))
    if args.passes:
        budget = replace(budget, passes=args.passes)
    return budget


def main(argv: Sequence[str] | None = None) -> None:
    from celery_redlock.testing import RedisGroup, RedisServer

    budget = parse_args(argv)
    rows = available(list(ROWS), ROWS)
    started = time.monotonic()
    cores = Cores.split()
    with RedisServer() as broker, RedisGroup(MASTERS) as masters:
        servers = Servers(broker.url, tuple(masters.urls))
        if cores is not None:
            cores.pin_servers([servers.broker, *servers.masters])
        header, load = machine(broker), os.getloadavg()[0]
        with workers(rows, servers, budget, cores) as pool:
            _progress(started, f"{len(pool)} workers started and warmed")
            results = run_passes(pool, budget)
            notes = {row: worker.note for row, worker in pool.items()}
            complaints = {row: worker.complaints() for row, worker in pool.items()}
    passes = max((len(cells) for cells in results.values()), default=0)
    about = legend(budget, passes, cores, (load, os.getloadavg()[0]))
    print(header, "", about, "", table(results, notes), "", *targets(results), sep="\n")
    print(
        "", "Worker CPU per call by process (`/proc`, medians):", "", split_table(results), sep="\n"
    )
    for row, lines in complaints.items():
        if lines:
            print(f"- worker log of {row}: {len(lines)} warnings/errors, first: {lines[0]}")


if __name__ == "__main__":
    main()
