"""Schedules: a seed draws a cluster, a workload and a fault plan, runs it, checks it.

Scenarios come in families that share their draws, so a hazard and its mitigation run the
*same* schedule with one thing changed:

- ``safe``: everything the algorithm tolerates at once: latency tails, lost messages,
  partitions, paused masters, frozen clients, crashes (restart-guarded, persistent or
  delayed past the TTL), 1 to 7 masters, clock rates within the drift allowance.
- ``drift`` / ``drift-bounded``: clocks running up to 25% apart, or within 0.5%.
- ``restart`` (guard off, restarts immediate and empty: the known hazard) and its
  mitigations ``restart-guarded`` (the restart guard, at exactly the TTL),
  ``restart-delayed`` (guard off, every crashed master stays down longer than the TTL)
  and ``restart-persistent`` (guard off, AOF with fsync always); ``restart-mixed-guards``
  is ``restart-guarded`` with clients of two TTLs and two restart guards.
- ``restart-short-guard``: ``restart-guarded`` with a guard (and TTL) under a second: a
  counter lost in a restart is re-seeded less than a second after its last fence, which
  only a seed to the microsecond keeps below (``protocol.ACQUIRE``).
- ``clocks-apart``: ``restart-delayed`` on masters whose wall clocks are days apart: the
  lock holds, fences do not (counters are re-seeded from the wall clock).
- ``permits``: ``safe``'s schedules with every client asking for one of 1 to 3 permits
  of a semaphore, and at least one client more than there are permits: no more than the
  limit at once (``history.find_crowds``), besides each slot's own lock promises.

Every client asks for a fence; both promises are checked (no overlap, rising fences).
The masters' wall clocks start within 10 ms of one epoch, as NTP keeps hosts, and some
schedules shorten the fence counters' TTL to 1.1 or 1.5 TTL so that counters expire (and
are re-seeded) during long holds; every one of them stays above the second plus the
clocks' differences that the seeding rule needs, as every restart guard and delay does
except the mixed guards' short ones.

Every TTL-like duration is in TTLs; the TTL is 1 virtual second.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from celery_redlock._core import quorum
from celery_redlock._core.protocol import FENCE_TTL_MS
from tests.history import (
    Crowd,
    Overlap,
    Regression,
    find_crowds,
    find_fence_regressions,
    find_overlaps,
)
from tests.simulation.driver import SimClient
from tests.simulation.engine import Clock, Loop, NetParams, Network
from tests.simulation.master import SimMaster
from tests.simulation.workload import Habits, workload
from tests.simulation.world import World

TTL = 1.0

#: Where the masters' wall clocks stand at true time 0 (seconds since 1970, as Redis's
#: TIME): fences are seeded from them, so their origins matter, not only their rates.
EPOCH = 1.8e9


@dataclass(frozen=True, slots=True)
class Budget:
    """How long each schedule runs: ``horizon`` TTLs of true time, or ``max_events``
    events if it gets there first (clients that spin must not eat the whole budget)."""

    horizon: float = 2.5
    max_events: int = 2_500


#: Short schedules for CI; the soak runs longer ones (more time for faults to compound).
CI = Budget()
SOAK = Budget(horizon=10.0, max_events=40_000)


@dataclass(frozen=True, slots=True)
class Faults:
    """Mean gaps between faults (0: none) and how long each lasts, in TTLs."""

    crash_every: float = 0.0
    restart_after: tuple[float, float] = (0.001, 0.02)
    max_down: int = 1
    persistent: float = 0.0  # chance each master has AOF with fsync always
    pause_every: float = 0.0
    pause_for: tuple[float, float] = (0.05, 0.5)
    partition_every: float = 0.0
    partition_for: tuple[float, float] = (0.05, 0.5)
    freeze_every: float = 0.0
    freeze_for: tuple[float, float] = (0.1, 2.0)


@dataclass(frozen=True, slots=True)
class Params:
    """Everything one schedule is made of, drawn from its seed."""

    masters: int = 5
    clients: int = 3
    master_timeout: float = 0.05
    retry_count: int = 3
    retry_delay: float = 0.1
    spread: float = 0.004  # clock rates are drawn from 1 ± spread
    net: NetParams = field(default_factory=NetParams)
    faults: Faults = field(default_factory=Faults)
    habits: Habits = field(default_factory=Habits)
    #: when set, every other client uses this TTL and restart guard (in TTLs) instead
    short_guard: float = 0.0
    #: the masters' wall clocks start within this many seconds of EPOCH (NTP-kept hosts)
    wall_apart: float = 0.01
    #: how long fence counters outlive their last write, in TTLs (0: FENCE_TTL_MS, which
    #: no schedule outlives); short ones expire within the horizon and are re-seeded
    fence_ttl: float = 0.0

    def habits_of(self, client: int) -> Habits:
        if self.short_guard and client % 2:
            return replace(self.habits, ttl=self.short_guard * TTL, guard=self.short_guard * TTL)
        return self.habits


# --- scenario families ---------------------------------------------------------------------

#: The largest spread for which every pair of clocks stays within the drift allowance:
#: (1 + s) / (1 - s) must stay below TTL / (TTL - drift) = 1 / 0.988.
BOUNDED_SPREAD = 0.005


def _net(rng: random.Random) -> NetParams:
    lo = rng.uniform(0.0002, 0.002)
    return NetParams(
        latency=(lo, lo * rng.uniform(1, 5)),
        slow=rng.choice((0.0, 0.01, 0.05, 0.2)),
        slow_mean=rng.uniform(0.01, 0.1),
        drop=rng.choice((0.0, 0.0, 0.01, 0.05)),
    )


def _habits(rng: random.Random) -> Habits:
    return Habits(
        resources=("a", "b")[: rng.choice((1, 1, 2))],
        guard=TTL * rng.choice((1.0, 1.0, 1.5)),
        blocking=rng.uniform(0, 1),
        think=rng.uniform(0.05, 0.5),
        hold=rng.uniform(0.3, 1.5),
        renewals=rng.randint(0, 3),
        freeze_holder=rng.choice((0.0, 0.05, 0.2)),
    )


def _base(rng: random.Random) -> Params:
    return Params(
        masters=rng.choice((1, 3, 3, 5, 5, 5, 7)),
        clients=rng.randint(2, 5),
        master_timeout=rng.uniform(0.01, 0.1),
        retry_count=rng.randint(0, 3),
        retry_delay=rng.uniform(0.01, 0.2),
        spread=rng.uniform(0, BOUNDED_SPREAD),
        net=_net(rng),
        habits=_habits(rng),
    )


def safe(rng: random.Random) -> Params:
    """Every fault at once, with restarts made safe one of the three ways."""
    p = _base(rng)
    faults = Faults(
        crash_every=rng.choice((0.0, 0.5, 1.0, 3.0)),
        max_down=rng.randint(1, 3),
        pause_every=rng.choice((0.0, 1.0, 3.0)),
        partition_every=rng.choice((0.0, 1.0, 3.0)),
        freeze_every=rng.choice((0.0, 1.0, 3.0)),
    )
    way = rng.choice(("guard", "persistent", "delayed"))
    if way == "persistent":
        faults = replace(faults, persistent=1.0, restart_after=(0.001, 1.5))
        p = replace(p, habits=replace(p.habits, guard=0.0))
    elif way == "delayed":
        faults = replace(faults, restart_after=(1.05, 2.0))
        p = replace(p, habits=replace(p.habits, guard=0.0))
    else:
        faults = replace(faults, persistent=rng.choice((0.0, 0.5)), restart_after=(0.001, 2.0))
    return replace(p, faults=faults, fence_ttl=_fence_ttl(rng))


def _fence_ttl(rng: random.Random) -> float:
    """Production's counter TTL, or one short enough to expire during long holds: still
    more than a second, plus the masters' clock differences, as the seeding rule needs."""
    return rng.choice((0.0, 1.1, 1.5))


def drift(rng: random.Random) -> Params:
    """Clocks running up to 25% apart; holders that hold to the end; waiters that wait."""
    p = _base(rng)
    habits = replace(_habits(rng), hold=1.5, blocking=0.8, think=0.1)
    return replace(p, masters=rng.choice((3, 5)), spread=rng.uniform(0.05, 0.25), habits=habits)


def drift_bounded(rng: random.Random) -> Params:
    return replace(drift(rng), spread=rng.uniform(0, BOUNDED_SPREAD))


def restart(rng: random.Random) -> Params:
    """Masters crash every ~0.15 TTL and come straight back empty; the guard is off."""
    p = _base(rng)
    habits = replace(_habits(rng), guard=0.0, hold=1.5, think=0.05, blocking=0.3)
    faults = Faults(crash_every=rng.uniform(0.08, 0.2), restart_after=(0.001, 0.02))
    p = replace(p, masters=rng.choice((3, 5)), faults=faults, habits=habits)
    return replace(p, fence_ttl=_fence_ttl(rng))


def restart_guarded(rng: random.Random) -> Params:
    p = restart(rng)
    return replace(p, habits=replace(p.habits, guard=TTL))


def restart_delayed(rng: random.Random) -> Params:
    p = restart(rng)
    return replace(p, faults=replace(p.faults, restart_after=(1.05, 1.5), max_down=2))


def restart_persistent(rng: random.Random) -> Params:
    p = restart(rng)
    return replace(p, faults=replace(p.faults, persistent=1.0))


def restart_mixed_guards(rng: random.Random) -> Params:
    """``restart-guarded`` with every other client on a short TTL and a guard to match:
    a short-guard client must not take a key a long-guard client holds from masters that
    restarted empty (and forgot the longer guard). At least two clients, so both kinds run."""
    p = restart_guarded(rng)
    return replace(p, clients=max(p.clients, 2), short_guard=rng.choice((0.2, 0.3, 0.5)))


def restart_short_guard(rng: random.Random) -> Params:
    """``restart-guarded`` with a TTL and a restart guard of 0.3 TTL (settings the lock
    accepts), up to two masters down: a counter lost in a restart is re-seeded less than
    a second after the last fence it counted."""
    p = restart_guarded(rng)
    habits = replace(p.habits, ttl=0.3 * TTL, guard=0.3 * TTL)
    return replace(p, habits=habits, faults=replace(p.faults, max_down=2))


def clocks_apart(rng: random.Random) -> Params:
    """``restart-delayed`` on masters whose wall clocks are up to 11 days apart: the lock
    is as safe (expiry reads only clock rates), but a counter re-seeded (after a restart
    or its expiry) on a master whose clock is behind starts below fences handed out."""
    return replace(restart_delayed(rng), wall_apart=1e6)


def permits(rng: random.Random) -> Params:
    """``safe`` with semaphores: 1 to 3 permits, one to three clients more than that."""
    p = safe(rng)
    limit = rng.choice((1, 2, 3))
    clients = limit + rng.randint(1, 3)
    return replace(p, clients=clients, habits=replace(p.habits, limit=limit))


#: scenario -> (family whose draws it shares, how to draw it, whether it must stay safe)
SCENARIOS: dict[str, tuple[str, Callable[[random.Random], Params], bool]] = {
    "safe": ("safe", safe, True),
    "drift": ("drift", drift, False),
    "drift-bounded": ("drift", drift_bounded, True),
    "restart": ("restart", restart, False),
    "restart-guarded": ("restart", restart_guarded, True),
    "restart-delayed": ("restart", restart_delayed, True),
    "restart-persistent": ("restart", restart_persistent, True),
    "restart-mixed-guards": ("restart", restart_mixed_guards, True),
    "restart-short-guard": ("restart", restart_short_guard, True),
    "clocks-apart": ("restart", clocks_apart, False),
    "permits": ("safe", permits, True),
}


# --- running one schedule ------------------------------------------------------------------


@dataclass(slots=True)
class Result:
    """What one schedule did and whether it kept the promises."""

    scenario: str
    seed: int
    overlaps: list[Overlap]
    windows: int
    regressions: list[Regression]
    grants: int  # fenced leases handed over
    crowds: list[Crowd]  # moments more than a semaphore's limit of permits were valid
    faults: Counter[str]
    outages: int
    events: int
    budget: Budget = CI
    log: list[str] | None = None

    def replay(self) -> str:
        soak = " --soak" if self.budget == SOAK else ""
        return (
            f"python -m tests.simulation --scenario {self.scenario} --seed {self.seed}"
            f"{soak} --trace"
        )


def draw(scenario: str, seed: int) -> tuple[Params, random.Random]:
    family, make, _safe = SCENARIOS[scenario]
    rng = random.Random(f"{family}:{seed}")
    return make(rng), rng


def run(scenario: str, seed: int, budget: Budget = CI, *, trace: bool = False) -> Result:
    """Run one schedule to its horizon and check every validity window."""
    params, rng = draw(scenario, seed)
    loop = Loop()
    net = Network(loop, random.Random(rng.getrandbits(64)), params.net)
    fence_ttl_ms = quorum.ttl_ms(params.fence_ttl * TTL) if params.fence_ttl else FENCE_TTL_MS
    masters = [
        SimMaster(
            i,
            _wall_clock(rng, params.spread, params.wall_apart),
            rng.random() < params.faults.persistent,
            fence_ttl_ms=fence_ttl_ms,
        )
        for i in range(params.masters)
    ]
    world = World(loop, net, masters, params.master_timeout, log=[] if trace else None)
    policy = quorum.Policy(params.masters, 0.01, params.retry_count, params.retry_delay)
    clients = [
        SimClient(world, c, _clock(rng, params.spread, 1e3), random.Random(rng.getrandbits(64)))
        for c in range(params.clients)
    ]
    horizon = budget.horizon * TTL
    faults = plan_faults(world, clients, params.faults, horizon, random.Random(rng.getrandbits(64)))
    for client in clients:
        client.start(workload(client, policy, params.habits_of(client.id)))
    loop.run(horizon, budget.max_events)
    windows = world.history.close_all(loop.now)
    return Result(
        scenario,
        seed,
        find_overlaps(windows),
        len(windows),
        find_fence_regressions(world.history.grants),
        len(world.history.grants),
        find_crowds(windows, params.habits.limit) if params.habits.limit else [],
        faults,
        sum(c.stats.outages for c in clients),
        loop.events,
        budget,
        world.log,
    )


def _clock(rng: random.Random, spread: float, origin: float) -> Clock:
    """A clock reading somewhere in ``[origin, 2 * origin)`` at true time 0 (a client's
    monotonic clock: its origin means nothing)."""
    return Clock(rng.uniform(1 - spread, 1 + spread), origin * (1 + rng.random()))


def _wall_clock(rng: random.Random, spread: float, apart: float) -> Clock:
    """A master's wall clock: ``EPOCH`` plus up to ``apart`` seconds at true time 0."""
    return Clock(rng.uniform(1 - spread, 1 + spread), EPOCH + apart * rng.random())


# --- the fault plan ------------------------------------------------------------------------


def plan_faults(
    world: World, clients: list[SimClient], f: Faults, horizon: float, rng: random.Random
) -> Counter[str]:
    """Schedule every fault of the run up front (so the seed alone decides them)."""
    return Counter(
        {
            "crash+restart": _plan_crashes(world, f, horizon, rng),
            "pause": _plan_pauses(world, f, horizon, rng),
            "partition": _plan_partitions(world, f, horizon, rng),
            "client freeze": _plan_freezes(world, clients, f, horizon, rng),
        }
    )


def _plan_crashes(world: World, f: Faults, horizon: float, rng: random.Random) -> int:
    """Crash a master that is up, never more than ``max_down`` at once; restart it later."""
    n, count = len(world.masters), 0
    down: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    for t in _times(rng, f.crash_every, horizon):
        up = [i for i in range(n) if not any(a <= t < b for a, b in down[i])]
        if n - len(up) >= f.max_down or not up:
            continue
        i = rng.choice(up)
        back = t + rng.uniform(*f.restart_after) * TTL
        down[i].append((t, back))
        world.loop.at(t, functools.partial(world.crash, i))
        world.loop.at(back, functools.partial(world.restart, i))
        count += 1
    return count


def _plan_pauses(world: World, f: Faults, horizon: float, rng: random.Random) -> int:
    times = _times(rng, f.pause_every, horizon)
    for t in times:
        i, end = rng.randrange(len(world.masters)), t + rng.uniform(*f.pause_for) * TTL
        world.loop.at(t, functools.partial(world.pause, i))
        world.loop.at(end, functools.partial(world.resume, i))
    return len(times)


def _plan_partitions(world: World, f: Faults, horizon: float, rng: random.Random) -> int:
    times = _times(rng, f.partition_every, horizon)
    for t in times:
        i, end = rng.randrange(len(world.masters)), t + rng.uniform(*f.partition_for) * TTL
        world.net.partitions.setdefault(i, []).append((t, end))
    return len(times)


def _plan_freezes(
    world: World, clients: list[SimClient], f: Faults, horizon: float, rng: random.Random
) -> int:
    times = _times(rng, f.freeze_every, horizon)
    for t in times:
        client, seconds = rng.choice(clients), rng.uniform(*f.freeze_for) * TTL
        world.loop.at(t, functools.partial(client.freeze, seconds))
    return len(times)


def _times(rng: random.Random, every: float, horizon: float) -> list[float]:
    """Times of a Poisson process with mean gap ``every`` TTLs (none if 0)."""
    times: list[float] = []
    t = 0.0
    while every:
        t += rng.expovariate(1 / (every * TTL))
        if t >= horizon:
            break
        times.append(t)
    return times
