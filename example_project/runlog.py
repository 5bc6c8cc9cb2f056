"""The run log: every task body writes down when it ran, and for which key.

A lock library cannot be its own witness. Each run appends ``(task, key, start, end)`` to
a Redis list, from *inside* the body (after the lock was taken, before it is released), so
anyone can check afterwards that no two runs of one key ever overlapped, without asking
the lock. The demo does exactly that; an operator can do it too (``overlaps(log.runs())``).

Times are ``time.time()``: every process of one host (or containers sharing a kernel)
reads the same clock. Across hosts, compare only with well-synchronised clocks.

A second, live witness: a counter per key, incremented on entry and decremented on exit;
a run that finds it above one records an overlap at once, even before any run ended.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import redis

__all__ = ["Run", "RunLog", "overlaps"]


@dataclass(frozen=True)
class Run:
    """One run of a task body, as it recorded itself."""

    task: str
    key: str
    task_id: str
    pid: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


class RunLog:
    """Runs and notes in one Redis database, under ``namespace:`` keys."""

    def __init__(self, url: str, namespace: str) -> None:
        self.url = url
        self.namespace = namespace
        self._client: redis.Redis | None = None

    def client(self) -> redis.Redis:
        """One client per process: redis-py's pool reconnects by itself after a fork."""
        if self._client is None:
            self._client = redis.Redis.from_url(self.url, socket_timeout=5)
        return self._client

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    @contextlib.contextmanager
    def run(self, task: str, key: str, task_id: str | None) -> Iterator[None]:
        """Record the body run inside this block: live overlap counter, then the interval."""
        client = self.client()
        active = self.key("active", task, key)
        start = time.time()
        if int(client.incr(active)) > 1:
            client.rpush(self.key("overlaps"), f"{task}[{key}]")
        try:
            yield
        finally:
            run = Run(task, key, task_id or "direct", os.getpid(), start, time.time())
            pipe = client.pipeline()
            pipe.decr(active)
            pipe.rpush(self.key("runs"), json.dumps(asdict(run)))
            pipe.execute()

    def note(self, name: str, value: Any) -> None:
        """Append a JSON value to the list ``name`` (progress of a long task, say)."""
        self.client().rpush(self.key("notes", name), json.dumps(value))

    def notes(self, name: str) -> list[Any]:
        raw: list[Any] = self.client().lrange(self.key("notes", name), 0, -1)
        return [json.loads(item) for item in raw]

    def runs(self) -> list[Run]:
        raw: list[Any] = self.client().lrange(self.key("runs"), 0, -1)
        return [Run(**json.loads(item)) for item in raw]

    def count(self) -> int:
        return int(self.client().llen(self.key("runs")))

    def live_overlaps(self) -> list[str]:
        raw: list[Any] = self.client().lrange(self.key("overlaps"), 0, -1)
        return [item.decode() for item in raw]

    def clear(self) -> None:
        """Delete every key of this namespace (the demo cleans up after itself)."""
        client = self.client()
        for key in client.scan_iter(match=f"{self.namespace}:*", count=500):
            client.delete(key)


def overlaps(runs: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of one task and key whose intervals intersect.

    Sorted by start, a run overlaps an earlier one exactly when it starts before the
    latest end seen so far; touching intervals (one ends as the next starts) do not count.
    """
    by_key: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        by_key.setdefault((run.task, run.key), []).append(run)
    found: list[tuple[Run, Run]] = []
    for group in by_key.values():
        group.sort(key=lambda r: r.start)
        latest = group[0]
        for run in group[1:]:
            if run.start < latest.end:
                found.append((latest, run))
            if run.end > latest.end:
                latest = run
    return found
