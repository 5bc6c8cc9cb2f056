"""Faults caused the real way, on a schedule drawn from a seed, while clients run.

Masters are real ``redis-server`` processes: SIGKILL and a restart on the same port (empty,
without persistence), SIGSTOP and SIGCONT. Network faults go through a
:class:`~celery_redlock.testing.FaultProxy` in front of each master: added latency,
a black hole (bytes held, delivered late on heal), connections reset. A client process is
SIGSTOPped for longer than the TTL, so that a holder outlives its validity.

At most ``max_out`` masters are impaired at once, so that the cluster keeps a quorum and
the run measures safety under faults rather than a dead cluster. A master killed and
restarted at once is out only while it boots, unless ``pace_guard`` says to count its
restart guard too (the fair comparison with delayed restarts).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from celery_redlock.testing import FaultProxy, RedisServer


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Mean seconds between faults of each kind (0: never) and how long each lasts."""

    restart_every: float = 0.0
    restart_delay: float = 0.0  # a killed master stays down this long (0: at once)
    pace_guard: float = 0.0  # count a restarted master as out for this long after
    max_out: int = 2
    pause_every: float = 0.0
    pause_for: tuple[float, float] = (0.2, 1.5)
    latency_every: float = 0.0
    latency: tuple[float, float] = (0.005, 0.15)
    latency_for: tuple[float, float] = (0.5, 2.0)
    blackhole_every: float = 0.0
    blackhole_for: tuple[float, float] = (0.2, 1.5)
    reset_every: float = 0.0
    client_pause_every: float = 0.0
    client_pause_for: tuple[float, float] = (1.5, 2.5)  # seconds


@dataclass(frozen=True, slots=True)
class FaultEvent:
    """One fault as injected: what, on which target, from when to when (CLOCK_MONOTONIC)."""

    kind: str
    target: int
    start: float
    end: float


#: The kinds, in the order the summary lists them.
KINDS = (
    "master kill+restart",
    "master SIGSTOP/SIGCONT",
    "proxy latency",
    "proxy blackhole",
    "proxy reset",
    "client SIGSTOP",
)


def _start(server: RedisServer) -> None:
    server.start()


def signal_client(pid: int, sig: signal.Signals) -> None:
    """Signal a client process that may have exited already."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@dataclass
class Injector:
    """Runs a :class:`FaultPlan` against masters, proxies and client pids until a deadline."""

    plan: FaultPlan
    servers: Sequence[RedisServer]
    proxies: Sequence[FaultProxy]
    clients: Sequence[int]  # pids
    rng: random.Random
    #: indices of the client processes holding a lock right now
    holding: Callable[[], Sequence[int]] = list
    events: list[FaultEvent] = field(default_factory=list)
    _out_until: list[float] = field(default_factory=list)
    _undo: list[tuple[float, int, Callable[[], None]]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _client_busy_until: float = 0.0

    def __post_init__(self) -> None:
        self._out_until = [0.0] * len(self.servers)

    def run(self, until: float) -> Counter[str]:
        """Inject faults until ``until``, then undo every fault still in force."""
        p = self.plan
        kinds: list[tuple[float, Callable[[float], None]]] = [
            (p.restart_every, self._restart),
            (p.pause_every, self._pause),
            (p.latency_every, self._latency),
            (p.blackhole_every, self._blackhole),
            (p.reset_every, self._reset),
            (p.client_pause_every, self._client_pause),
        ]
        due = [(self._gap(every), i) for i, (every, _) in enumerate(kinds) if every]
        now = time.monotonic()
        due = [(now + gap, i) for gap, i in due]
        heapq.heapify(due)
        try:
            while True:
                self._run_undos(time.monotonic())
                next_at = min([until, *(t for t, _ in due[:1]), *(t for t, _, _ in self._undo[:1])])
                time.sleep(max(0.0, next_at - time.monotonic()))
                now = time.monotonic()
                if now >= until:
                    break
                while due and due[0][0] <= now:
                    _, i = heapq.heappop(due)
                    every, inject = kinds[i]
                    inject(now)
                    heapq.heappush(due, (now + self._gap(every), i))
        finally:
            self.heal()
        return Counter(event.kind for event in self.events)

    def heal(self) -> None:
        """Undo everything still in force, each when it is due, and make sure every master
        runs again.

        Not sooner: clients still finishing their last attempt after the stop time count on
        the phase's assumptions as much as any other. A master restarted before its delay
        is up would come back empty under a lease it granted, which is the very hazard the
        delay rules out (a CI run saw that overlap in ``restart-delayed``).
        """
        while self._undo:
            time.sleep(max(0.0, self._undo[0][0] - time.monotonic()))
            self._run_undos(time.monotonic())
        for server in self.servers:
            if not server.running:
                server.start()
            server.resume()

    # --- scheduling -----------------------------------------------------------------------

    def _gap(self, every: float) -> float:
        return self.rng.expovariate(1 / every)

    def _later(self, seconds: float, undo: Callable[[], None]) -> float:
        at = time.monotonic() + seconds
        heapq.heappush(self._undo, (at, next(self._seq), undo))
        return at

    def _run_undos(self, now: float) -> None:
        while self._undo and self._undo[0][0] <= now:
            _, _, undo = heapq.heappop(self._undo)
            undo()

    def _free_master(self, now: float) -> int | None:
        """A master not impaired now, if fewer than ``max_out`` are."""
        free = [i for i, t in enumerate(self._out_until) if t <= now]
        if len(self._out_until) - len(free) >= self.plan.max_out or not free:
            return None
        return self.rng.choice(free)

    def _record(self, kind: str, target: int, start: float, end: float) -> None:
        self.events.append(FaultEvent(kind, target, start, end))
        if kind != "client SIGSTOP":
            self._out_until[target] = end

    # --- the faults ----------------------------------------------------------------------

    def _restart(self, now: float) -> None:
        i = self._free_master(now)
        if i is None:
            return
        server = self.servers[i]
        server.kill()
        if self.plan.restart_delay:
            back = self._later(self.plan.restart_delay, functools.partial(_start, server))
        else:
            server.start()
            back = time.monotonic()
        self._record("master kill+restart", i, now, back + self.plan.pace_guard)

    def _pause(self, now: float) -> None:
        i = self._free_master(now)
        if i is None:
            return
        self.servers[i].pause()
        end = self._later(self.rng.uniform(*self.plan.pause_for), self.servers[i].resume)
        self._record("master SIGSTOP/SIGCONT", i, now, end)

    def _latency(self, now: float) -> None:
        i = self._free_master(now)
        if i is None or not self.proxies:
            return
        proxy = self.proxies[i]
        proxy.delay = self.rng.uniform(*self.plan.latency)
        end = self._later(self.rng.uniform(*self.plan.latency_for), proxy.heal)
        self._record("proxy latency", i, now, end)

    def _blackhole(self, now: float) -> None:
        i = self._free_master(now)
        if i is None or not self.proxies:
            return
        self.proxies[i].blackhole()
        end = self._later(self.rng.uniform(*self.plan.blackhole_for), self.proxies[i].heal)
        self._record("proxy blackhole", i, now, end)

    def _reset(self, now: float) -> None:
        i = self._free_master(now)
        if i is None or not self.proxies:
            return
        self.proxies[i].drop_connections()
        self._record("proxy reset", i, now, now)

    def _client_pause(self, now: float) -> None:
        """SIGSTOP a client process that holds a lock (one at a time), for longer than the
        TTL: its holder outlives its validity while the others carry on."""
        holding = self.holding()
        if now < self._client_busy_until or not holding:
            return
        index = self.rng.choice(sorted(holding))
        pid = self.clients[index]
        signal_client(pid, signal.SIGSTOP)
        seconds = self.rng.uniform(*self.plan.client_pause_for)
        end = self._later(seconds, functools.partial(signal_client, pid, signal.SIGCONT))
        self._client_busy_until = end
        self._record("client SIGSTOP", index, now, end)
