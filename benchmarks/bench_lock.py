"""The lock benchmark: celery_redlock side by side with its peers, as one markdown table.

``python -m benchmarks.bench_lock`` (``make bench`` runs it in a virtualenv holding the
peers); ``--quick`` is a smoke run of about 30 s, ``--iterations N`` caps every cell at N
samples. Every row is measured in the same run, against the same local masters.

Why it is built this way:

- Each library runs in a worker process of its own behind a two-verb adapter (acquire,
  release) called the way its documentation recommends, with the same 0.1 s per-master
  timeout as ours and warmed connections. The delay proxies' threads live in this
  process, so they never compete with the measured client for its GIL.
- Uncontended cells run in interleaved passes (every library, then again), so load from
  elsewhere on this small machine falls on all rows alike rather than on one.
- Every answer from a worker is awaited with a deadline: a peer that stalls is killed and
  its cell says so, and the run goes on.
- Hand-off puts the holder and the waiter in separate processes and subtracts
  CLOCK_MONOTONIC readings taken in each (the clock is system-wide). The holder releases
  at a random point of a polling waiter's period, so polling peers show their real mean.
- The queue table (``--only queue`` runs it alone) blocks 1, 10 and 50 waiters, each a
  process of its own, on one held key; each new holder holds briefly and releases, so the
  lock passes down the line. Hand-off is again a release in one process to the next
  acquisition in another; a waiter whose ``timeout`` ran out counts as timed out. Our rows
  only: it shows whether a release hands the lock on or sets every waiter fighting.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import logging
import math
import multiprocessing
import os
import random
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from typing import Any, ParamSpec, Protocol, TypeAlias

import redis
from redis.lock import Lock as RedisPyLockClass

from benchmarks._common import available, host_line, version
from celery_redlock import Redlock
from celery_redlock.testing import FaultProxy, RedisGroup

TTL = 10.0  # seconds: longer than any cell, so no lock expires while it is measured
MASTER_TIMEOUT = 0.1  # our default master_timeout; every peer gets it as its socket timeout
WAIT_LIMIT = 5.0  # a blocked waiter gives up after this, where its library lets it
SETTLE = 0.01  # head start for a waiter to block before the holder releases
DELAY = 0.001  # seconds the proxies add each way on every master
HUNG = 0  # which master is SIGSTOPped for the hung-master column
WARMUP = 50  # pairs run before measuring: connections open, scripts cached
SLACK = 10.0  # how far a worker may overrun its cell before it counts as stalled
HOST = "127.0.0.1"

Samples: TypeAlias = tuple[list[float], int]  # durations in seconds, attempts that failed
P = ParamSpec("P")


@dataclass(frozen=True)
class Budget:
    """Samples wanted per cell, each kind of cell's wall-clock cap, and how many interleaved
    passes the uncontended cells are split into (so that background load drifting during
    the run falls on every library alike)."""

    pairs: int
    delayed: int
    handoffs: int
    hung: int
    pair_seconds: float
    handoff_seconds: float
    hung_seconds: float
    passes: int


FULL = Budget(2000, 500, 400, 20000, 4.0, handoff_seconds=12.0, hung_seconds=8.0, passes=5)
QUICK = Budget(200, 60, 30, 2000, 0.6, handoff_seconds=2.0, hung_seconds=1.0, passes=2)

QUEUES = (1, 10, 50)  # waiters blocked on one key, one row each
QUEUE_HOLD = 0.001  # seconds each new holder holds the lock before releasing it
QUEUE_SETTLE = 0.3  # head start for a line of waiters to block (at least this, per 10 of them)


# --- adapters: one per library, run inside a worker process -------------------------------


class Adapter(Protocol):
    """One library's acquire and release, called as its documentation recommends."""

    def acquire(self, blocking: bool) -> Any:
        """A handle, or None when the lock was not acquired."""

    def release(self, handle: Any) -> None: ...


def _timeouts() -> dict[str, float]:
    return {"socket_timeout": MASTER_TIMEOUT, "socket_connect_timeout": MASTER_TIMEOUT}


class RedisPyLock:
    """redis-py's own ``Lock`` on the first master: the single-master baseline."""

    def __init__(self, urls: Sequence[str], key: str) -> None:
        client = redis.Redis.from_url(urls[0], **_timeouts())
        self._lock = client.lock(key, timeout=TTL, blocking_timeout=WAIT_LIMIT)

    def acquire(self, blocking: bool) -> Any:
        return self._lock if self._lock.acquire(blocking=blocking) else None

    def release(self, handle: Any) -> None:
        handle.release()


class PotteryRedlock:
    """pottery's ``Redlock``, a fresh object per acquisition over shared redis-py clients.

    Not one object reused: its release returns at quorum and leaves the other masters to
    background threads that read the object's *current* token, which the next acquire has
    already replaced; so back-to-back reuse leaves stale keys on a minority until their
    TTL, and with one master hung no quorum is left at all (its bug, not its speed).
    """

    def __init__(self, urls: Sequence[str], key: str) -> None:
        pottery: Any = importlib.import_module("pottery")
        masters = {redis.Redis.from_url(url, **_timeouts()) for url in urls}
        self._new = functools.partial(
            pottery.Redlock, key=key, masters=masters, auto_release_time=TTL
        )

    def acquire(self, blocking: bool) -> Any:
        lock = self._new()
        if blocking:
            return lock if lock.acquire(blocking=True, timeout=WAIT_LIMIT) else None
        return lock if lock.acquire(blocking=False) else None

    def release(self, handle: Any) -> None:
        handle.release()


class RedlockNg:
    """redlock-ng's sync ``Redlock`` (its default socket timeouts are 0.1 s, as ours).

    Its blocking acquire takes no timeout; the worker's deadline bounds it instead.
    """

    def __init__(self, urls: Sequence[str], key: str) -> None:
        redlock: Any = importlib.import_module("redlock")
        self._dlm = redlock.Redlock(list(urls))
        self._key = key

    def acquire(self, blocking: bool) -> Any:
        return self._dlm.acquire(self._key, int(TTL * 1000), blocking=blocking)

    def release(self, handle: Any) -> None:
        self._dlm.release(handle)


class CeleryRedlock:
    """Ours, through its public API only (fenced, the default)."""

    fencing = True

    def __init__(self, urls: Sequence[str], key: str) -> None:
        self._dlm = Redlock(list(urls), master_timeout=MASTER_TIMEOUT, fencing=self.fencing)
        self._key = key

    def acquire(self, blocking: bool) -> Any:
        timeout = WAIT_LIMIT if blocking else None
        return self._dlm.acquire(self._key, TTL, blocking=blocking, timeout=timeout)

    def release(self, handle: Any) -> None:
        handle.release()


class CeleryPermit:
    """Ours, a permit of a semaphore of ``limit`` (the ``permits`` table; not a row of the
    side-by-side table, where every row is a lock)."""

    limit = 1

    def __init__(self, urls: Sequence[str], key: str) -> None:
        self._dlm = Redlock(list(urls), master_timeout=MASTER_TIMEOUT)
        self._key = key

    def acquire(self, blocking: bool) -> Any:
        timeout = WAIT_LIMIT if blocking else None
        return self._dlm.semaphore(
            self._key, TTL, limit=self.limit, blocking=blocking, timeout=timeout
        )

    def release(self, handle: Any) -> None:
        handle.release()


def _permits_of(limit: int) -> type[CeleryPermit]:
    return type(f"CeleryPermit{limit}", (CeleryPermit,), {"limit": limit})


class CeleryRedlockUnfenced(CeleryRedlock):
    """Ours with fencing off: what a fence costs is the difference to the row above."""

    fencing = False


class ScatterGather:
    """Not a lock library: the floor for N masters. redis-py Lock's two commands (SET NX PX,
    then its release script), each sent to every master before any reply is read."""

    def __init__(self, urls: Sequence[str], key: str) -> None:
        pools: list[Any] = [redis.ConnectionPool.from_url(url, **_timeouts()) for url in urls]
        self._conns = [pool.make_connection() for pool in pools]
        self._key = key
        script = RedisPyLockClass.LUA_RELEASE_SCRIPT
        self._sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
        self._all(("SCRIPT", "LOAD", script))

    def acquire(self, blocking: bool) -> Any:
        if blocking:
            raise NotImplementedError("the reference row does not wait")
        token = secrets.token_hex(16)
        replies = self._all(("SET", self._key, token, "NX", "PX", int(TTL * 1000)))
        won = sum(reply is not None for reply in replies) > len(replies) // 2
        return token if won else None

    def release(self, handle: Any) -> None:
        self._all(("EVALSHA", self._sha, 1, self._key, handle))

    def _all(self, command: tuple[Any, ...]) -> list[Any]:
        for conn in self._conns:
            conn.send_command(*command)
        return [conn.read_response() for conn in self._conns]


@dataclass(frozen=True)
class Library:
    """A table row: how to build its adapter, and what it can be asked."""

    label: str
    make: Callable[[Sequence[str], str], Adapter]
    module: str | None = None  # a peer's import name: the row is skipped if it is missing
    multi: bool = True  # runs on N masters (redis-py's Lock takes one)
    poll: float | None = 0.0  # seconds between a blocked waiter's tries; None: cannot wait
    lock: bool = True  # a real lock (the reference row is not)


LIBRARIES = {
    "redis-py": Library("redis-py `Lock` (1 master)", RedisPyLock, multi=False, poll=0.1),
    "pottery": Library("pottery `Redlock`", PotteryRedlock, "pottery", poll=0.2),
    "redlock-ng": Library("redlock-ng `Redlock`", RedlockNg, "redlock", poll=0.3),
    "ours": Library("**celery_redlock `Redlock`**", CeleryRedlock),
    "unfenced": Library("celery_redlock `Redlock`, `fencing=False`", CeleryRedlockUnfenced),
    "scatter": Library(
        "bare scatter-gather over N redis-py connections (send all, then read all)",
        ScatterGather,
        poll=None,
        lock=False,
    ),
}


#: The permits table: a semaphore's permit at each limit, beside our lock (the ``ours`` row).
PERMIT_LIMITS = (1, 3, 10)
PERMITS = {
    f"permit{n}": Library(f"celery_redlock permit, limit={n}", _permits_of(n))
    for n in PERMIT_LIMITS
}
#: Every adapter a worker process can run, by name.
ADAPTERS = {**LIBRARIES, **PERMITS}


# --- the worker process ------------------------------------------------------------------


def _now() -> float:
    """CLOCK_MONOTONIC is one clock for every process on the machine."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def _repeat(count: int, seconds: float, step: Callable[[], float | None]) -> Samples:
    """Run ``step`` up to ``count`` times or for ``seconds``: its durations and failures."""
    durations: list[float] = []
    failed = 0
    end = time.monotonic() + seconds
    while len(durations) + failed < count and time.monotonic() < end:
        took = step()
        if took is None:
            failed += 1
        else:
            durations.append(took)
    return durations, failed


class _Runner:
    """A worker's side: runs its adapter on command and times what it is asked to."""

    def __init__(self, adapter: Adapter, conn: Connection) -> None:
        self.adapter = adapter
        self.conn = conn
        self.held: Any = None

    def pairs(self, count: int, seconds: float) -> Samples:
        return _repeat(count, seconds, self._pair)

    def acquires(self, count: int, seconds: float) -> Samples:
        return _repeat(count, seconds, self._acquire)

    def hold(self) -> bool:
        self.held = self.adapter.acquire(False)
        return self.held is not None

    def release(self) -> float:
        return self.release_handle(self.held)

    def wait(self) -> float | None:
        """Block until the lock is ours; when that happened, or None if it never did."""
        self.conn.send("blocking")
        handle = self.adapter.acquire(True)
        acquired = _now()
        if handle is None:
            return None
        self.adapter.release(handle)
        return acquired

    def relay(self, hold: float) -> tuple[float, float] | None:
        """Block until the lock is ours, hold it ``hold`` seconds and release it: when it
        was acquired and released, or None if the wait timed out."""
        self.conn.send("blocking")
        handle = self.adapter.acquire(True)
        acquired = _now()
        if handle is None:
            return None
        time.sleep(hold)
        return acquired, self.release_handle(handle)

    def release_handle(self, handle: Any) -> float:
        released = _now()
        self.adapter.release(handle)
        return released

    def _pair(self) -> float | None:
        start = time.perf_counter()
        handle = self.adapter.acquire(False)
        if handle is None:
            return None
        self.adapter.release(handle)
        return time.perf_counter() - start

    def _acquire(self) -> float | None:
        start = time.perf_counter()
        handle = self.adapter.acquire(False)
        took = time.perf_counter() - start
        if handle is None:
            return None
        self.adapter.release(handle)
        return took


@dataclass(frozen=True)
class _Failure:
    """What a worker sends back instead of an answer when its command raised."""

    error: str


def _serve(conn: Connection, lib: str, urls: list[str], key: str) -> None:
    """A worker process: build the adapter, then answer commands until told to stop."""
    logging.getLogger("pottery").setLevel(logging.CRITICAL)  # it logs every master error
    try:
        runner = _Runner(ADAPTERS[lib].make(urls, key), conn)
        while (command := conn.recv()) is not None:
            name, args = command
            conn.send(getattr(runner, name)(*args))
    except Exception as exc:  # reported in the cell, not as a traceback mid-table
        conn.send(_Failure(f"{type(exc).__name__}: {exc}"))


# --- the main process's side -------------------------------------------------------------


class CellError(Exception):
    """A cell could not be measured; its message goes in the table."""


class Worker:
    """A library driven in its own process; every answer is awaited with a deadline."""

    def __init__(self, ctx: ForkServerContext, lib: str, urls: Sequence[str], key: str) -> None:
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, lib, list(urls), key), daemon=True)
        self._proc.start()
        child.close()

    def send(self, name: str, *args: Any) -> None:
        self._conn.send((name, args))

    def recv(self, timeout: float) -> Any:
        if not self._conn.poll(timeout):
            raise CellError(f"stalled: no answer in {timeout:.0f} s")
        try:
            answer = self._conn.recv()
        except EOFError:
            raise CellError("its worker process died") from None
        if isinstance(answer, _Failure):
            raise CellError(answer.error)
        return answer

    def call(self, timeout: float, name: str, *args: Any) -> Any:
        self.send(name, *args)
        return self.recv(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send(None)
        self._proc.join(1.0)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()


@dataclass(frozen=True)
class Result:
    """One cell: durations in seconds, failed attempts, or why there are none."""

    samples: tuple[float, ...] = ()
    failed: int = 0
    note: str = ""
    wanted: int = 0

    @classmethod
    def of(cls, answer: Samples, wanted: int) -> Result:
        durations, failed = answer
        return cls(tuple(sorted(durations)), failed, wanted=wanted)

    def merge(self, other: Result) -> Result:
        """Two passes of one cell as one; a failed pass's reason wins."""
        if self.note or other.note:
            return self if self.note else other
        samples = tuple(sorted(self.samples + other.samples))
        return Result(samples, self.failed + other.failed, wanted=self.wanted + other.wanted)

    def pct(self, p: float) -> float | None:
        """The ``p``-th percentile (nearest rank), or None without samples."""
        if not self.samples:
            return None
        rank = max(math.ceil(p / 100 * len(self.samples)), 1)
        return self.samples[rank - 1]


@dataclass
class Bench:
    """Everything a scenario needs: the servers, their delayed twins, the budget."""

    ctx: ForkServerContext
    group: RedisGroup
    direct: list[str]
    delayed: list[str]
    budget: Budget
    kept: dict[tuple[str, tuple[str, ...]], Worker] = field(default_factory=dict)

    def warm(self, lib: str, urls: Sequence[str]) -> Worker:
        """A worker kept across passes, warmed once: passes then cost no process start."""
        key = (lib, tuple(urls))
        if key not in self.kept:
            self.kept[key] = Worker(self.ctx, lib, urls, f"bench:{lib}:{uuid.uuid4().hex}")
            self.kept[key].call(SLACK, "pairs", WARMUP, SLACK)
        return self.kept[key]

    def release_kept(self) -> None:
        for worker in self.kept.values():
            worker.close()
        self.kept.clear()

    @contextlib.contextmanager
    def worker(self, lib: str, urls: Sequence[str], key: str | None = None) -> Iterator[Worker]:
        worker = Worker(self.ctx, lib, urls, key or f"bench:{lib}:{uuid.uuid4().hex}")
        try:
            yield worker
        finally:
            worker.close()


def _guarded(measure: Callable[P, Result | None]) -> Callable[P, Result | None]:
    """A cell that failed or stalled reports why instead of ending the run."""

    @functools.wraps(measure)
    def run(*args: P.args, **kwargs: P.kwargs) -> Result | None:
        try:
            return measure(*args, **kwargs)
        except CellError as exc:
            return Result(note=str(exc))

    return run


# --- scenarios: one function each; None means "does not apply to this library" ----------


@_guarded
def uncontended(bench: Bench, lib: str, *, masters: int, delayed: bool) -> Result | None:
    """Acquire+release with nobody else around: what every lock costs (one pass of it)."""
    if masters > 1 and not ADAPTERS[lib].multi:
        return None
    urls = (bench.delayed if delayed else bench.direct)[:masters]
    budget = bench.budget
    count = math.ceil((budget.delayed if delayed else budget.pairs) / budget.passes)
    seconds = budget.pair_seconds / budget.passes
    worker = bench.warm(lib, urls)
    return Result.of(worker.call(seconds + SLACK, "pairs", count, seconds), count)


@_guarded
def handoff(bench: Bench, lib: str) -> Result | None:
    """From the holder's release to a waiter's acquisition, the waiter blocked elsewhere."""
    library = LIBRARIES[lib]
    if library.poll is None:
        return None
    urls = bench.direct[: 3 if library.multi else 1]
    key = f"bench:{lib}:{uuid.uuid4().hex}"
    budget = bench.budget
    with bench.worker(lib, urls, key) as holder, bench.worker(lib, urls, key) as waiter:
        for side in (holder, waiter):
            side.call(SLACK, "pairs", WARMUP, SLACK)
        samples: list[float] = []
        end = time.monotonic() + budget.handoff_seconds
        while len(samples) < budget.handoffs and time.monotonic() < end:
            samples.append(_handoff_once(holder, waiter, library.poll))
    return Result.of((samples, 0), budget.handoffs)


def _handoff_once(holder: Worker, waiter: Worker, poll: float) -> float:
    if not holder.call(SLACK, "hold"):
        raise CellError("the holder could not acquire a free lock")
    waiter.send("wait")
    waiter.recv(SLACK)  # it is about to block
    time.sleep(SETTLE + random.uniform(0, poll))  # a random point of its polling period
    released = holder.call(SLACK, "release")
    acquired = waiter.recv(WAIT_LIMIT + SLACK)
    if acquired is None:
        raise CellError(f"the waiter gave up after {WAIT_LIMIT:.0f} s")
    if acquired < released:
        raise CellError("the waiter acquired while the holder held the lock")
    return float(acquired - released)


@_guarded
def queue(bench: Bench, lib: str, *, waiters: int) -> Result | None:
    """Hand-offs down a line of ``waiters`` processes blocked on one key (3 masters): each
    sample is one release to the next acquisition; ``failed`` counts waits that timed out.
    The line is formed anew until the cell has its samples or its time."""
    library = LIBRARIES[lib]
    if library.poll is None or not library.multi:
        return None
    urls = bench.direct[:3]
    key = f"bench:{lib}:{uuid.uuid4().hex}"
    budget = bench.budget
    samples: list[float] = []
    timed_out = 0
    with contextlib.ExitStack() as stack:
        holder = stack.enter_context(bench.worker(lib, urls, key))
        line = [stack.enter_context(bench.worker(lib, urls, key)) for _ in range(waiters)]
        for side in (holder, *line):  # one at a time: warming must not contend
            side.call(SLACK, "pairs", WARMUP, SLACK)
        end = time.monotonic() + budget.handoff_seconds
        while len(samples) < budget.handoffs and time.monotonic() < end:
            got, lost = _relay_once(holder, line)
            samples += got
            timed_out += lost
    return Result(tuple(sorted(samples)), timed_out, wanted=budget.handoffs)


def _relay_once(holder: Worker, line: Sequence[Worker]) -> tuple[list[float], int]:
    """One line: block every waiter on the held key, release, and read the hand-offs off
    the (acquired, released) times each waiter reports."""
    if not holder.call(SLACK, "hold"):
        raise CellError("the holder could not acquire a free lock")
    for waiter in line:
        waiter.send("relay", QUEUE_HOLD)
    for waiter in line:
        waiter.recv(SLACK)  # it is about to block
    time.sleep(QUEUE_SETTLE * max(1.0, len(line) / 10))
    released = holder.call(SLACK, "release")
    answers = [waiter.recv(WAIT_LIMIT + len(line) * QUEUE_HOLD + SLACK) for waiter in line]
    held = sorted(answer for answer in answers if answer is not None)
    handoffs = []
    for acquired, next_release in held:
        if acquired < released:
            raise CellError("a waiter acquired while another held the lock")
        handoffs.append(acquired - released)
        released = next_release
    return handoffs, len(answers) - len(held)


def show_queue(result: Result) -> str:
    """p50 / p90 / max of the hand-offs, with the count of waits that timed out."""
    if result.note:
        return result.note
    shown = " / ".join(_ms(result.pct(p)) for p in (50, 90, 100))
    waits = len(result.samples) + result.failed
    return f"{shown} (n={len(result.samples)}) | {result.failed} of {waits}"


def permits_table(bench: Bench) -> str:
    """Acquire + release of a permit at each limit beside our lock, 3 and 5 masters, in
    interleaved passes as the side-by-side table's cells: permits per second (medians)."""
    names = ["ours", *PERMITS]
    results: dict[tuple[str, int], Result] = {}
    started = time.monotonic()
    for n in range(bench.budget.passes):
        for masters in (3, 5):
            for lib in [*names[n % len(names) :], *names[: n % len(names)]]:
                result = uncontended(bench, lib, masters=masters, delayed=False)
                if result is not None:
                    before = results.get((lib, masters))
                    results[lib, masters] = result if before is None else before.merge(result)
        _progress(started, f"permits pass {n + 1}/{bench.budget.passes} done")
    bench.release_kept()
    head = ["per second (acquire + release)", "3 masters", "5 masters", "vs the lock (3 / 5)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lib in names:
        cells = [ADAPTERS[lib].label]
        ratios = []
        for masters in (3, 5):
            ms = _median_ms(results, lib, masters)
            lock = _median_ms(results, "ours", masters)
            cells.append("—" if ms is None else f"{1000 / ms:.0f}")
            ratio = _ratio(ms, lock)
            ratios.append("—" if ratio is None else f"{ratio:.2f}x")
        lines.append("| " + " | ".join([*cells, " / ".join(ratios)]) + " |")
    return "\n".join(lines)


def _median_ms(results: dict[tuple[str, int], Result], lib: str, masters: int) -> float | None:
    result = results.get((lib, masters))
    value = None if result is None else result.pct(50)
    return None if value is None else value * 1000


def queue_table(bench: Bench, libs: Sequence[str]) -> str:
    """One row per line length, one column per library measured (ours: see the module)."""
    head = ["waiters on one key (3 masters)"]
    for lib in libs:
        head += [f"{LIBRARIES[lib].label}: hand-off p50 / p90 / max (ms)", "timed out"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    started = time.monotonic()
    for waiters in QUEUES:
        cells = [str(waiters)]
        for lib in libs:
            result = queue(bench, lib, waiters=waiters)
            shown = "— | —" if result is None else show_queue(result)
            _progress(started, f"{lib:<10} {waiters} waiters: {shown}")
            cells.append(shown)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@_guarded
def hung(bench: Bench, lib: str) -> Result | None:
    """Acquire latency while one of five masters is SIGSTOPped (connections warmed first)."""
    library = LIBRARIES[lib]
    if not (library.multi and library.lock):
        return None
    budget = bench.budget
    with bench.worker(lib, bench.direct) as worker:
        worker.call(SLACK, "pairs", WARMUP, SLACK)
        bench.group[HUNG].pause()
        try:
            answer = worker.call(
                budget.hung_seconds + SLACK, "acquires", budget.hung, budget.hung_seconds
            )
        finally:
            bench.group[HUNG].resume()
    return Result.of(answer, budget.hung)


# --- the table ---------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    """Milliseconds; three decimals under one (a fast machine takes a lock in 0.04 ms, where
    two decimals would round a third of the figure away)."""
    if seconds is None:
        return "—"
    ms = seconds * 1000
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}"


def _count(result: Result, always: bool) -> str:
    """The sample count, shown when asked or when the time cap cut the cell short."""
    parts = []
    if always or len(result.samples) < result.wanted:
        parts.append(f"n={len(result.samples)}")
    if result.failed:
        parts.append(f"{result.failed} failed")
    return f" ({', '.join(parts)})" if parts else ""


def show_median(result: Result) -> str:
    return result.note or _ms(result.pct(50)) + _count(result, always=False)


def show_spread(result: Result, points: Sequence[float]) -> str:
    """Several percentiles (100 is the maximum), with the sample count."""
    shown = " / ".join(_ms(result.pct(p)) for p in points)
    return result.note or shown + _count(result, always=True)


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    measure: Callable[[Bench, str], Result | None]
    show: Callable[[Result], str]
    interleaved: bool = False  # measured in passes, alternating with the other such cells


def columns() -> list[Column]:
    """The table's columns, in order; ``key`` names them for the ratios below the table."""
    cols = []
    for delayed, suffix in ((False, ""), (True, " +1 ms")):
        for n in (1, 3, 5):
            measure = functools.partial(uncontended, masters=n, delayed=delayed)
            label = f"{n} master{'s' if n > 1 else ''}{suffix}"
            key = f"{'d' if delayed else 'u'}{n}"
            cols.append(Column(key, label, measure, show_median, interleaved=True))
    spread = functools.partial
    return [
        *cols,
        Column(
            "handoff",
            "hand-off p50 / p90 (3 masters)",
            handoff,
            spread(show_spread, points=(50, 90)),
        ),
        Column(
            "hung",
            "1 of 5 hung: acquire p50 / p99 / max",
            hung,
            spread(show_spread, points=(50, 99, 100)),
        ),
    ]


Results: TypeAlias = dict[tuple[str, str], Result | None]


def _progress(started: float, what: str) -> None:
    print(f"{time.monotonic() - started:5.0f} s  {what}", file=sys.stderr)


def run_all(bench: Bench, libs: Sequence[str], cols: Sequence[Column]) -> Results:
    """Measure every cell, reporting progress on stderr. Uncontended cells run in passes,
    each pass visiting every such cell in a rotated library order."""
    results: Results = {}
    started = time.monotonic()
    for n in range(bench.budget.passes):
        order = [*libs[n % len(libs) :], *libs[: n % len(libs)]]
        for col in (col for col in cols if col.interleaved):
            for lib in order:
                _measure_into(results, bench, col, lib)
        _progress(started, f"uncontended pass {n + 1}/{bench.budget.passes} done")
    bench.release_kept()  # idle workers would only hold connections open from here on
    for col in (col for col in cols if not col.interleaved):
        for lib in libs:
            _measure_into(results, bench, col, lib)
    for col in cols:
        for lib in libs:
            result = results[lib, col.key]
            _progress(
                started, f"{lib:<10} {col.header}: {'n/a' if result is None else col.show(result)}"
            )
    return results


def _measure_into(results: Results, bench: Bench, col: Column, lib: str) -> None:
    """One cell, or one more pass of it; a cell that failed once is not asked again."""
    before = results.get((lib, col.key))
    if before is not None and before.note:
        return
    result = col.measure(bench, lib)
    results[lib, col.key] = result if before is None or result is None else before.merge(result)


def table(results: Results, libs: Sequence[str], cols: Sequence[Column]) -> str:
    head = ["library (ms)", *(col.header for col in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for lib in libs:
        cells = [LIBRARIES[lib].label]
        for col in cols:
            result = results[lib, col.key]
            cells.append("—" if result is None else col.show(result))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- what the targets name -------------------------------------------------------


def _ms_at(results: Results, lib: str, key: str, p: float = 50) -> float | None:
    """A cell's ``p``-th percentile in milliseconds, or None if it was not measured."""
    result = results.get((lib, key))
    value = None if result is None else result.pct(p)
    return None if value is None else value * 1000


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _judge(
    what: str,
    value: float | None,
    unit: str,
    *,
    at_most: float | None = None,
    at_least: float | None = None,
) -> str:
    """One line below the table: the figure, and whether it meets its target."""
    if value is None:
        return f"- {what}: not measured"
    line = f"- {what}: {value:.2f}{unit}"
    if at_most is not None:
        return line + f" (target <= {at_most:g}{unit}: {'met' if value <= at_most else 'MISSED'})"
    if at_least is not None:
        return line + f" (target >= {at_least:g}{unit}: {'met' if value >= at_least else 'MISSED'})"
    return line


def targets(results: Results) -> list[str]:
    """The ratios and figures the issue sets targets for, each judged met or missed."""
    ours5 = _ms_at(results, "ours", "u5")
    peers = [(_ms_at(results, lib, "u5"), lib) for lib in ("pottery", "redlock-ng")]
    fastest_ms, fastest = min(((v, lib) for v, lib in peers if v is not None), default=(None, "-"))
    timeout_ms = MASTER_TIMEOUT * 1000
    return [
        _judge(
            "ours, 5 masters / redis-py `Lock`, 1 master",
            _ratio(ours5, _ms_at(results, "redis-py", "u1")),
            "x",
            at_most=1.5,
        ),
        _judge(
            "bare scatter-gather, 5 masters / redis-py `Lock` (reference; the issue saw 1.3x)",
            _ratio(_ms_at(results, "scatter", "u5"), _ms_at(results, "redis-py", "u1")),
            "x",
        ),
        _judge(
            f"fastest multi-master peer ({fastest}), 5 masters / ours",
            _ratio(fastest_ms, ours5),
            "x",
            at_least=3,
        ),
        _judge(
            "ours, 5 masters +1 ms / ours, 1 master +1 ms",
            _ratio(_ms_at(results, "ours", "d5"), _ms_at(results, "ours", "d1")),
            "x",
            at_most=1.3,
        ),
        _judge(
            "bare scatter-gather, 5 masters +1 ms / 1 master +1 ms (the floor under this proxy)",
            _ratio(_ms_at(results, "scatter", "d5"), _ms_at(results, "scatter", "d1")),
            "x",
        ),
        *(
            _judge(
                f"ours fenced / unfenced, {n} masters",
                _ratio(_ms_at(results, "ours", f"u{n}"), _ms_at(results, "unfenced", f"u{n}")),
                "x",
                at_most=1.1,
            )
            for n in (3, 5)
        ),
        _judge("our hand-off p50, 3 masters", _ms_at(results, "ours", "handoff"), " ms", at_most=2),
        _judge(
            f"our acquire p99, 1 of 5 masters hung (master_timeout {timeout_ms:.0f} ms)",
            _ms_at(results, "ours", "hung", 99),
            " ms",
            at_most=timeout_ms + 5,
        ),
    ]


# --- the machine, and main ---------------------------------------------------------------


def machine(group: RedisGroup) -> str:
    """What the numbers were measured on, printed above the table (with the load average:
    on a shared 2-core machine, another busy process shows up in every cell)."""
    with redis.Redis.from_url(group.urls[0]) as client:
        server = client.info("server")["redis_version"]
    hiredis = "yes" if redis.utils.HIREDIS_AVAILABLE else "no"
    return (
        f"{host_line()}; redis-py {redis.__version__} (hiredis: {hiredis}); "
        f"redis-server {server} (local, loopback); pottery {version('pottery')}, "
        f"redlock-ng {version('redlock-ng')}, celery_redlock {version('celery_redlock')}."
    )


def legend(budget: Budget, load: tuple[float, float]) -> str:
    return (
        f"Milliseconds. Uncontended: median of up to {budget.pairs} acquire+release pairs per"
        f" cell ({budget.delayed} with +{DELAY * 1000:.0f} ms each way on every master through a"
        f" user-space proxy), in {budget.passes} interleaved passes, each cell capped at"
        f" {budget.pair_seconds:.0f} s (n shown when the cap came first). Hand-off: up to"
        f" {budget.handoffs} samples in {budget.handoff_seconds:.0f} s, the waiter in its own"
        f" process; redis-py on its one master. Hung: acquires for {budget.hung_seconds:.0f} s"
        f" (at most {budget.hung}) with master {HUNG} SIGSTOPped. Every library: per-master"
        f" timeout {MASTER_TIMEOUT * 1000:.0f} ms, TTL {TTL:.0f} s. 1-minute load average"
        f" {load[0]:.2f} at start, {load[1]:.2f} at end (the run itself adds about 1)."
    )


#: What ``--only`` can pick: the side-by-side table, or the queue table (ours only).
TABLES = ("lock", "queue", "permits")
QUEUE_LIBS = ("ours",)


def queue_legend(budget: Budget, load: tuple[float, float]) -> str:
    return (
        f"Waiters in line: each a process blocked with a {WAIT_LIMIT:.0f} s timeout on one"
        f" key; each new holder holds {QUEUE_HOLD * 1000:.0f} ms and releases. Up to"
        f" {budget.handoffs} hand-offs per row in {budget.handoff_seconds:.0f} s, the line"
        " formed anew each time it runs out; timed out: waits that ended without the lock."
        f" 1-minute load average {load[0]:.2f} at start, {load[1]:.2f} at end."
    )


def permits_legend(budget: Budget, load: tuple[float, float]) -> str:
    return (
        "Permits: a semaphore's permit taken and released with nobody else around, at each"
        f" limit, beside our lock (fenced, as both are by default); medians of up to"
        f" {budget.pairs} pairs per cell in {budget.passes} interleaved passes. 1-minute load"
        f" average {load[0]:.2f} at start, {load[1]:.2f} at end."
    )


def parse_args(argv: Sequence[str] | None) -> tuple[Budget, tuple[str, ...]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="a ~30 s smoke run")
    parser.add_argument("--iterations", type=int, help="cap every cell at this many samples")
    parser.add_argument("--only", choices=TABLES, help="print this table alone")
    args = parser.parse_args(argv)
    budget = QUICK if args.quick else FULL
    if args.iterations:
        n = args.iterations
        budget = replace(budget, pairs=n, delayed=n, handoffs=n, hung=n)
    return budget, (args.only,) if args.only else TABLES


def main(argv: Sequence[str] | None = None) -> None:
    budget, tables = parse_args(argv)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["redis", "celery_redlock", "pottery", "redlock"])
    libs = available(list(LIBRARIES), LIBRARIES)
    cols = columns()
    with RedisGroup(5) as group, contextlib.ExitStack() as stack:
        proxies = [
            stack.enter_context(FaultProxy((HOST, port), delay=DELAY)) for port in group.ports
        ]
        bench = Bench(ctx, group, group.urls, [proxy.url for proxy in proxies], budget)
        header, load = machine(group), os.getloadavg()[0]
        printed: list[str] = []
        try:
            if "lock" in tables:
                results = run_all(bench, libs, cols)
                about = legend(budget, (load, os.getloadavg()[0]))
                printed += [about, "", table(results, libs, cols), "", *targets(results), ""]
            if "permits" in tables:
                start = os.getloadavg()[0]
                lines = permits_table(bench)
                about = permits_legend(budget, (start, os.getloadavg()[0]))
                printed += [about, "", lines, ""]
            if "queue" in tables:
                start = os.getloadavg()[0]
                lines = queue_table(bench, QUEUE_LIBS)
                about = queue_legend(budget, (start, os.getloadavg()[0]))
                printed += [about, "", lines, ""]
        finally:
            bench.release_kept()
    print(header, "", *printed, sep="\n")


if __name__ == "__main__":
    main()
