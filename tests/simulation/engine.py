"""The simulator's machinery: true time, the clocks processes read, and a lossy network.

True time is the simulator's own and no process can read it. Each process reads a
:class:`Clock` that runs at its own rate (drift) from its own origin. The network
delivers each message after a random latency, keeps order per connection (TCP), may drop
a message (a connection that hangs) and holds everything to or from a partitioned master
until the partition heals (bytes queued in kernel buffers, delivered late).
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

Action = Callable[[], None]


class Loop:
    """Pending events in true-time order; ties run in the order they were scheduled, so
    a seed replays exactly."""

    def __init__(self) -> None:
        self.now = 0.0
        self.events = 0
        self._heap: list[tuple[float, int, Action]] = []
        self._seq = 0

    def at(self, when: float, action: Action) -> None:
        """Run ``action`` at true time ``when`` (never before now)."""
        self._seq += 1
        heapq.heappush(self._heap, (when if when > self.now else self.now, self._seq, action))

    def soon(self, action: Action) -> None:
        """Run ``action`` after whatever is already due now (no recursion in the caller)."""
        self.at(self.now, action)

    def run(self, until: float, max_events: int) -> None:
        """Run events up to true time ``until``, or until ``max_events`` have run (a
        schedule whose clients spin must not eat the whole budget)."""
        heap = self._heap
        while heap and heap[0][0] <= until and self.events < max_events:
            when, _seq, action = heapq.heappop(heap)
            self.now = when
            self.events += 1
            action()


@dataclass(frozen=True, slots=True)
class Clock:
    """A process's clock: ``origin + rate * true_time`` (rate 1.01 runs 1% fast)."""

    rate: float
    origin: float

    def read(self, true_time: float) -> float:
        return self.origin + self.rate * true_time

    def true_at(self, reading: float) -> float:
        """When (in true time) this clock shows ``reading``."""
        return (reading - self.origin) / self.rate


@dataclass(frozen=True, slots=True)
class NetParams:
    """Latency ``uniform(*latency)``, plus with probability ``slow`` an exponential extra
    of mean ``slow_mean`` (the tail that makes rounds time out); ``drop``: a message lost."""

    latency: tuple[float, float] = (0.0005, 0.003)
    slow: float = 0.0
    slow_mean: float = 0.05
    drop: float = 0.0


@dataclass(slots=True)
class Network:
    """Message delivery with per-connection order and partitions per master."""

    loop: Loop
    rng: random.Random
    params: NetParams
    #: per master, the (start, end) true-time intervals during which it is cut off
    partitions: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    _last: dict[Hashable, float] = field(default_factory=dict)

    def latency(self) -> float:
        p, rng = self.params, self.rng
        lo, hi = p.latency
        delay = lo + (hi - lo) * rng.random()
        if p.slow and rng.random() < p.slow:
            delay += rng.expovariate(1 / p.slow_mean)
        return delay

    def deliver(self, link: Hashable, master: int, action: Action) -> None:
        """Run ``action`` at the far end of ``link`` (a connection to or from ``master``)."""
        if self.params.drop and self.rng.random() < self.params.drop:
            return
        due = self.loop.now + self.latency()
        if self.partitions:
            due = self._held(master, self.loop.now, due)
        due = max(due, self._last.get(link, 0.0))  # TCP: never overtake an earlier message
        self._last[link] = due
        self.loop.at(due, action)

    def _held(self, master: int, sent: float, due: float) -> float:
        """A message sent into, or due during, a partition arrives once it heals."""
        for start, end in self.partitions.get(master, ()):
            if start <= sent < end or start <= due < end:
                return end + self.latency()
        return due
