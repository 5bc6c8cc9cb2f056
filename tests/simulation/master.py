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

A semaphore's permit (``protocol.PERMIT``) is ACQUIRE on each slot in turn, after a re-arm
of a slot that holds our token already; its waiters stand in the semaphore's one line.
``NAIVE_PERMITS`` swaps it for the unsafe rule the design exists to avoid, for the test
that the simulator catches it: admit while fewer than ``limit`` holders are on this
master, whichever slot they are in (see :meth:`SimMaster._naive_permit`).
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
    #: The naive semaphore (a count of holders per master), for the mutation test only.
    NAIVE_PERMITS: ClassVar[bool] = False
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
        for key in (call.key, *call.slots, call.line):
            self._expire(key, now)
        if self.NAIVE_PERMITS and call.verb in (Verb.EXTEND, Verb.RELEASE, Verb.FENCE):
            call = call._replace(key=self._filed(call.key, call.token, now))
        if call.verb is Verb.ACQUIRE:
            return self._acquire(call, now, now_us), None
        if call.verb is Verb.QUEUED:
            return self._queued(call, now, now_us), None
        if call.verb is Verb.PERMIT or call.slots:
            return self._permit(call, now, now_us), None
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
            return 1, self._wake(call.line or call.key) if call.verb is Verb.RELEASE else None
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

    def _permit(self, call: Call, now: int, now_us: int) -> Any:
        """A semaphore's UNDO: each slot that holds our token deleted; their count.

        PERMIT: our own slot re-armed if we hold one, else ACQUIRE on each slot in the
        order given until one grants or abstains; a grant's position in that order fifth,
        else the refusal with the soonest expiry; then the waiter's place in the line."""
        if call.verb is Verb.UNDO:  # a semaphore's: every slot holding our token
            undone = [s for s in call.slots if self.keys.get(s, ("", 0))[0] == call.token]
            for slot in undone:
                del self.keys[slot]
            return len(undone)
        if self.NAIVE_PERMITS:
            reply = self._naive_permit(call, now, now_us)
        else:
            reply = self._first_free_slot(call, now, now_us)
        self._in_line(call, call.key, reply[0], now)
        return reply

    def _first_free_slot(self, call: Call, now: int, now_us: int) -> list[int]:
        ours = [i for i, s in enumerate(call.slots) if self.keys.get(s, ("", 0))[0] == call.token]
        soonest: list[int] | None = None
        for position in ours[:1] or range(len(call.slots)):
            tried = self._acquire(call._replace(key=call.slots[position]), now, now_us)
            if tried[0] == 1:
                return [*tried, position]
            if tried[0] == 2:  # abstains: the restart guard is every slot's
                return tried
            if soonest is None or 0 <= tried[1] < soonest[1] or soonest[1] < 0:
                soonest = tried
        assert soonest is not None
        return soonest

    def _naive_permit(self, call: Call, now: int, now_us: int) -> list[int]:
        """The unsafe rule: grant while fewer than ``limit`` slots here are held, telling
        every client it has the slot it asked for first (so that a quorum of admissions
        wins, whichever slot each master filed it under): with 3 masters and 2 permits,
        masters admitting {A, B}, {B, C} and {A, C} give all three a majority."""
        held = [s for s in call.slots if s in self.keys]
        mine = [s for s in held if self.keys[s][0] == call.token]
        free = [s for s in call.slots if s not in self.keys]
        if not mine and not free:
            return [0, min(self.keys[s][1] - now for s in held), 0]
        tried = self._acquire(call._replace(key=(mine or free)[0]), now, now_us)
        if tried[0] != 1:  # abstains: the restart guard is kept, only the count is naive
            return tried
        asked = call.slots[0]
        fence = self._count(asked, now, (self._counter(asked) or 0) + 1) if call.fencing else 0
        return [1, 0, 0, fence, 0]

    def _filed(self, key: str, token: str, now: int) -> str:
        """The naive semaphore's slot that holds ``token`` here, for the lease's key (the
        slot the client asked for first, which may not be where this master filed it)."""
        base, sep, _slot = key.rpartition(":permit:")
        for filed, (held_by, expiry) in self.keys.items():
            if sep and held_by == token and now <= expiry and filed.startswith(base + sep):
                return filed
        return key

    def _in_line(self, call: Call, name: str, won: int, now: int) -> None:
        """A waiter leaves the line when granted, joins it (or keeps its place) if refused;
        the line lives on for QUEUE_TTL_MS after each refusal."""
        if not call.waiter:
            return
        line, _expiry = self.lines.get(name, ({}, 0))
        if won == 1:
            line.pop(call.waiter, None)
        elif won == 0:
            self.joined += 1
            line.setdefault(call.waiter, self.joined)
        if line:
            self.lines[name] = (line, now + QUEUE_TTL_MS if won == 0 else _expiry)
        else:
            self.lines.pop(name, None)

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
