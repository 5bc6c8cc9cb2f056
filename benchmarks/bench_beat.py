"""Tick-to-publish latency of celery beat, with and without the leader lease, in one run.

Each scheduler ticks an entry that is always due, publishing to a real Redis broker; we
time every ``tick()`` that sent a message. The lease is renewed inside the tick when a
third of it has passed, so its cost shows up in the tail, not in every tick.

    python -m benchmarks.bench_beat [--ticks N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery
from celery.beat import PersistentScheduler

from celery_redlock.beat import RedlockScheduler
from celery_redlock.testing import RedisGroup, RedisServer


def make_app(broker: str, masters: list[str], lease: float) -> Any:
    app = Celery("bench_beat", broker=broker)
    app.conf.update(
        redlock_masters=masters,
        redlock_beat_lease=lease,
        beat_schedule={"due": {"task": "bench.noop", "schedule": timedelta(microseconds=1)}},
    )
    return app


def time_ticks(scheduler: Any, ticks: int) -> list[float]:
    """Milliseconds per tick that published (a tick returning 0 sent its due entry)."""
    sent: list[float] = []
    while len(sent) < ticks:
        start = time.perf_counter()
        delay = scheduler.tick()
        elapsed = (time.perf_counter() - start) * 1000
        if delay == 0:
            sent.append(elapsed)
    return sent


def measure(kind: type[Any], app: Any, ticks: int, tmp: Path) -> list[float]:
    scheduler = kind(app=app, schedule_filename=str(tmp / kind.__name__))
    try:
        time_ticks(scheduler, 50)  # warm: connections, heap, the lease won
        return time_ticks(scheduler, ticks)
    finally:
        scheduler.close()


def row(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return f"| {name} | {len(samples)} | {statistics.median(samples):.3f} | {p99:.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ticks", type=int, default=2000)
    parser.add_argument("--lease", type=float, default=1.0)
    args = parser.parse_args()
    with RedisGroup(3) as masters, RedisServer() as broker, tempfile.TemporaryDirectory() as d:
        app = make_app(broker.url, masters.urls, args.lease)
        plain = measure(PersistentScheduler, app, args.ticks, Path(d))
        leased = measure(RedlockScheduler, app, args.ticks, Path(d))
    print(f"Beat tick-to-publish, 3 masters, lease {args.lease} s (renewed every third)\n")
    print("| scheduler | ticks | median ms | p99 ms |")
    print("|---|---|---|---|")
    print(row("PersistentScheduler (no lease)", plain))
    print(row("RedlockScheduler (leader lease)", leased))
    ratio = statistics.median(leased) / statistics.median(plain)
    print(f"\nmedian ratio leased/plain: {ratio:.2f}")


if __name__ == "__main__":
    main()
