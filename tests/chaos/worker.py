"""A chaos client process: threads contending for a few resources with the real Redlock.

Started with the ``spawn`` method (a clean interpreter, as a worker fleet would be). Every
thread appends its history to a file of its own, one JSON object per line, flushed at
once, so a process that is SIGSTOPped or killed loses nothing it had already seen:

- ``acq``: a lease handed over: token, key, holder, ``start`` (CLOCK_MONOTONIC read right
  after ``acquire`` returned), ``until`` (the lease's ``valid_until``, same clock), its
  ``fence`` and ``asked``, when its winning round began (``valid_until`` less the TTL
  net of drift, as the algorithm counts it: no grant it was minted from came earlier);
- ``end``: the holder stops: ``end`` read *before* ``release`` is called, and the lease's
  ``until`` then (renewals may have moved it);
- ``stats``: what the thread's attempts came to, once, at the end.

``time.monotonic`` is CLOCK_MONOTONIC, one clock for every process on a Linux host, so
these times compare across processes without any translation.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from celery_redlock import Lock, LockLost, QuorumUnavailable, Redlock
from celery_redlock._core import quorum


@dataclass(frozen=True, slots=True)
class ClientPlan:
    """What one client process does; picklable, handed over at spawn."""

    name: str = ""
    urls: tuple[str, ...] = ()
    directory: str = ""
    resources: tuple[str, ...] = ("a", "b")
    threads: int = 2
    ttl: float = 1.0
    restart_guard: float = 1.0
    master_timeout: float = 0.1
    hold: tuple[float, float] = (0.1, 0.9)  # seconds, uniform
    think: tuple[float, float] = (0.0, 0.05)
    blocking: float = 0.5  # share of acquisitions that wait (up to ``wait``)
    wait: float = 1.0
    auto_renew: float = 0.0  # share of acquisitions renewed automatically
    seed: int = 0


@dataclass(slots=True)
class Tally:
    """One thread's attempts: won, refused (held by another), lost to an outage,
    and locks whose renewal reported them lost."""

    holder: str
    acquired: int = 0
    refused: int = 0
    outages: int = 0
    lost: int = 0
    errors: list[str] = field(default_factory=list)


def main(plan: ClientPlan) -> None:
    """The process's entry point: say it is ready, wait for the common start and stop times
    (``go.json``, CLOCK_MONOTONIC), run the threads until then, and exit."""
    # Renewal losses are expected here and counted; keep them off the runner's terminal.
    logging.getLogger("celery_redlock").addHandler(logging.NullHandler())
    dlm = Redlock(
        list(plan.urls),
        restart_guard=plan.restart_guard,
        master_timeout=plan.master_timeout,
    )
    directory = Path(plan.directory)
    (directory / f"{plan.name}.ready").touch()
    go = directory / "go.json"
    while not go.exists():
        time.sleep(0.01)
    times = json.loads(go.read_text())
    threads = [
        threading.Thread(
            target=contend,
            args=(dlm, plan, i, times["start"], times["until"]),
            name=f"{plan.name}.t{i}",
        )
        for i in range(plan.threads)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    dlm.close()


def contend(dlm: Redlock, plan: ClientPlan, index: int, start: float, until: float) -> None:
    """One thread: think, try to lock, hold, release; record everything."""
    holder = f"{plan.name}.t{index}"
    rng = random.Random(f"{plan.seed}:{holder}")
    tally = Tally(holder)
    path = Path(plan.directory) / f"{holder}.jsonl"
    with path.open("a", buffering=1) as log:
        time.sleep(max(0.0, start - time.monotonic()))
        while time.monotonic() < until:
            guarded_attempt(dlm, plan, rng, tally, log)
        write(log, "stats", **asdict(tally))


def guarded_attempt(
    dlm: Redlock, plan: ClientPlan, rng: random.Random, tally: Tally, log: TextIO
) -> None:
    """An attempt whose unexpected errors are recorded (the runner fails on any) rather
    than ending the thread."""
    try:
        attempt(dlm, plan, rng, tally, log)
    except Exception as exc:
        tally.errors.append(f"{type(exc).__name__}: {exc}")


def attempt(dlm: Redlock, plan: ClientPlan, rng: random.Random, tally: Tally, log: TextIO) -> None:
    """One acquisition attempt, and the hold if it won."""
    time.sleep(rng.uniform(*plan.think))
    resource = rng.choice(plan.resources)
    blocking = rng.random() < plan.blocking
    renew = rng.random() < plan.auto_renew
    try:
        lock = dlm.acquire(
            resource,
            plan.ttl,
            blocking=blocking,
            timeout=plan.wait if blocking else None,
            auto_renew=renew,
        )
    except QuorumUnavailable:
        tally.outages += 1
        return
    if lock is None:
        tally.refused += 1
        return
    start = time.monotonic()
    tally.acquired += 1
    until = valid_until(lock)
    write(
        log,
        "acq",
        token=lock.token,
        key=lock.key,
        holder=tally.holder,
        start=start,
        until=until,
        fence=lock.fence,
        asked=until - quorum.valid_until(0.0, plan.ttl, dlm.settings.drift_factor) - 1e-6,
    )
    time.sleep(rng.uniform(*plan.hold))
    end = time.monotonic()
    write(log, "end", token=lock.token, end=end, until=valid_until(lock))
    if isinstance(lock.lost, LockLost):
        tally.lost += 1
    lock.release()


def valid_until(lock: Lock) -> float:
    """The lease's own deadline on CLOCK_MONOTONIC: exactly what the library promised
    (``validity`` would round it through a second clock reading)."""
    return float(lock._lease.valid_until)


def write(log: TextIO, event: str, **fields: Any) -> None:
    log.write(json.dumps({"e": event, **fields}) + "\n")
