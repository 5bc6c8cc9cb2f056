"""A simulated Redis master that runs the wire protocol's scripts with their exact semantics.

It answers in the raw reply shapes a real master sends (``[1, 0, guard, fence]``,
``[0, pttl, guard]``, ``[2, ms, guard]``, ``1``/``0``, a PTTL), so the drivers' own
:meth:`Call.parse` reads them. Time
is its own clock in whole milliseconds, as Redis's: a key set at ``T`` with ``PX ttl`` lives
while ``now <= T + ttl`` (Redis expires when ``now > when``), which is where the 1 ms of
expiry slack in :data:`~celery_redlock._core.quorum.CLOCK_PRECISION` comes from.

Fence counters are kept as ``protocol.ACQUIRE`` and ``protocol.FENCE`` keep them: one per
key, counted up by each fenced grant, re-armed for ``FENCE_TTL_MS`` (or a schedule's
shorter ``fence_ttl_ms``) by every write, seeded when absent from the master's clock in
microseconds: whole seconds' worth, except within ``PRECISE_SEED_MS`` of its restart guard's
end.

Crashes lose every key, counter and the boot marker unless the master is persistent (AOF with
fsync always: nothing acknowledged is lost, expiry times are absolute and keep running
while it is down). A paused master (SIGSTOP) queues what arrives and answers it on resume.

Each key's line of waiters (``protocol.QUEUED`` and ``RELEASE``) is kept as the scripts
keep it: joined in arrival order, left when granted, and a release wakes the oldest entry
that has a subscriber, dropping the ones nobody hears (PUBLISH counts who heard).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from celery_redlock._core.protocol import FENCE_TTL_MS, QUEUE_TTL_MS, Call, Verb
from tests.simulation.engine import Action, Clock


@dataclass(slots=True)
class SimMaster:
    """One master's data and process state."""

    index: int
    clock: Clock
    persistent: bool = False
    name: str = ""
    #: how long a fence counter outlives its last write (ms): the scripts' FENCE_TTL_MS,
    #: unless a schedule shortens it to see counters expire within its horizon
    fence_ttl_ms: int = FENCE_TTL_MS
    #: As ACQUIRE's: a seed keeps its microseconds this long after the guard's end (a
    #: class attribute, so that a test can take it away and watch fences repeat).
    PRECISE_SEED_MS: ClassVar[int] = 1000
    #: key -> (token, expiry in the master's ms)
    keys: dict[str, tuple[str, int]] = field(default_factory=dict)
    #: key -> (its fence counter, expiry in the master's ms)
    fences: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: the boot marker: 0 as an operator arms a brand-new master; None once data was lost
    boot: int | None = 0
    #: the longest restart guard (ms) declared to it, kept in the marker with ``boot``
    guard: int = 0
    up: bool = True
    paused: bool = False
    #: bumped by each crash: connections opened before it are dead
    incarnation: int = 0
    backlog: list[Action] = field(default_factory=list)
    #: channel -> client id -> that client's listener id
    subscribers: dict[str, dict[int, int]] = field(default_factory=dict)
    #: key -> its line of waiters: (channel -> place in line, expiry in the master's ms)
    lines: dict[str, tuple[dict[str, int], int]] = field(default_factory=dict)
    joined: int = 0  # arrivals in line so far: the place of the next one

    def __post_init__(self) -> None:
        self.name = self.name or f"m{self.index}"

    def now_ms(self, true_time: float) -> int:
        return math.floor(self.clock.read(true_time) * 1000)

    # --- process state -------------------------------------------------------------------

    def crash(self) -> None:
        """SIGKILL: connections die; without persistence so does every key and the marker."""
        self.up = False
        self.paused = False
        self.incarnation += 1
        self.backlog.clear()
        self.subscribers.clear()
        if not self.persistent:
            self.keys.clear()
            self.fences.clear()
            self.lines.clear()
            self.boot = None
            self.guard = 0

    def restart(self) -> None:
        self.up = True

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> list[Action]:
        """SIGCONT: returns what queued meanwhile, to be answered in arrival order."""
        self.paused = False
        queued, self.backlog = self.backlog, []
        return queued

    # --- the scripts ---------------------------------------------------------------------

    def execute(self, call: Call, true_time: float) -> tuple[Any, str | None]:
        """Run one call atomically; returns (raw reply, the channel a release woke)."""
        now = self.now_ms(true_time)
        now_us = math.floor(self.clock.read(true_time) * 1_000_000)
        self._expire(call.key, now)
        if call.verb is Verb.ACQUIRE:
            return self._acquire(call, now, now_us), None
        if call.verb is Verb.QUEUED:
            return self._queued(call, now, now_us), None
        entry = self.keys.get(call.key)
        ours = entry is not None and entry[0] == call.token
        if call.verb is Verb.FENCE:
            if not ours:
                return 0, None
            return self._count(call.key, now, max(self._counter(call.key) or 0, call.fence)), None
        if call.verb is Verb.EXTEND:
            if ours:
                self.keys[call.key] = (call.token, now + call.ttl_ms)
            return int(ours), None
        if call.verb in (Verb.RELEASE, Verb.UNDO):
            if not ours:
                return 0, None
            del self.keys[call.key]
            return 1, self._wake(call.key) if call.verb is Verb.RELEASE else None
        return (-2 if entry is None else entry[1] - now), None

    def _acquire(self, call: Call, now: int, now_us: int) -> list[int]:
        """ACQUIRE, line by line: the guard (BOOT_KEY, keeping the longest declared), SET NX
        PX, or re-arm our own key; the master's guard third where it is longer (else 0),
        and a grant's fence counter fourth (counted one up, unless re-armed)."""
        longer = 0
        precise = False  # a seed keeps its microseconds in the second after the guard
        counter = self._counter(call.key) if call.fencing else None
        if call.guard_ms > 0:
            if self.boot is None:
                self.boot = now
            self.guard = max(self.guard, call.guard_ms)
            longer = self.guard if self.guard > call.guard_ms else 0
            if now < self.boot + self.guard:
                return [2, self.boot + self.guard - now, longer]
            precise = now < self.boot + self.guard + self.PRECISE_SEED_MS
        entry = self.keys.get(call.key)
        if entry is None or entry[0] == call.token:
            self.keys[call.key] = (call.token, now + call.ttl_ms)
            if not call.fencing:
                return [1, 0, longer, 0]
            step = 1 if entry is None else 0
            seed = now_us if precise else now_us // 1_000_000 * 1_000_000
            fence = seed if counter is None else counter + step
            return [1, 0, longer, self._count(call.key, now, fence)]
        return [0, entry[1] - now, longer]

    def _counter(self, key: str) -> int | None:
        return self.fences[key][0] if key in self.fences else None

    def _count(self, key: str, now: int, fence: int) -> int:
        self.fences[key] = (fence, now + self.fence_ttl_ms)
        return fence

    def _queued(self, call: Call, now: int, now_us: int) -> list[int]:
        """QUEUED: ACQUIRE, then leave the line if granted, join it (or keep the place in
        it) if refused; the line lives on for QUEUE_TTL_MS."""
        reply = self._acquire(call, now, now_us)
        line, _expiry = self.lines.get(call.key, ({}, 0))
        if reply[0] == 1:
            line.pop(call.waiter, None)
        elif reply[0] == 0:
            self.joined += 1
            line.setdefault(call.waiter, self.joined)
        if line:
            self.lines[call.key] = (line, now + QUEUE_TTL_MS if reply[0] == 0 else _expiry)
        else:
            self.lines.pop(call.key, None)
        return reply

    def _wake(self, key: str) -> str | None:
        """RELEASE's wake-up: the oldest of the first ten waiters that has a subscriber;
        the ones before it, heard by nobody, leave the line."""
        line, _expiry = self.lines.get(key, ({}, 0))
        for waiter in sorted(line, key=line.__getitem__)[:10]:
            if self.subscribers.get(waiter):
                return waiter
            del line[waiter]
        if not line:
            self.lines.pop(key, None)
        return None

    def _expire(self, key: str, now: int) -> None:
        entry = self.keys.get(key)
        if entry is not None and now > entry[1]:
            del self.keys[key]
        counter = self.fences.get(key)
        if counter is not None and now > counter[1]:
            del self.fences[key]
        line = self.lines.get(key)
        if line is not None and now > line[1]:
            del self.lines[key]
