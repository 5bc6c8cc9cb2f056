"""The standard phases, sized to a total duration (CI: ~40 s; ``make chaos``: minutes).

- ``mixed``: every fault at once behind fault proxies, restart guard on (= TTL, the
  tightest the settings allow): master kill+restart, SIGSTOP/SIGCONT, latency, black holes,
  connection resets, and client processes SIGSTOPped past their holders' validity.
- ``restart-unguarded``: the known hazard (issue 7): masters SIGKILLed and restarted empty
  at once, ~130 times per 30 s, during long holds, guard OFF. Overlaps are expected here
  and counted apart: the assumptions (persistence or delayed restarts) are broken.
- ``restart-guarded``: the same restarts with the guard ON: no overlap allowed.
- ``restart-delayed``: guard off, but every killed master stays down for 1.2 TTL, at most
  two at a time: the operators' mitigation from the Redlock description.
- ``restart-paced``: guard on and immediate restarts, but no more than two masters down or
  in their guard window at once: the same pace as ``restart-delayed``, so the two
  phases' acquisitions per second compare the guard with delayed restarts fairly.
- ``high-rate``: many more, much shorter holds (more processes, threads and resources)
  under ``mixed``'s faults that need no proxy (master kill+restart with the guard on,
  SIGSTOP/SIGCONT, client processes SIGSTOPped past their holders' validity), since the
  proxies would bound the rate: most of a run's acquisitions, and so most of the fences
  the checker compares, come from here.

Every acquisition is fenced (the default), and every phase is checked for fences that
do not rise as well as for overlaps.
"""

from __future__ import annotations

from dataclasses import replace

from tests.chaos.faults import FaultPlan
from tests.chaos.runner import Phase
from tests.chaos.worker import ClientPlan

#: Issue 7's rate: about 130 restart events in 30 seconds.
RESTART_EVERY = 30 / 130
RESTART_TTL = 2.0

MIXED_CLIENTS = ClientPlan(
    resources=("a", "b"),
    ttl=1.0,
    restart_guard=1.0,
    hold=(0.05, 0.9),
    blocking=0.5,
    wait=1.0,
    auto_renew=0.3,
)

MIXED_FAULTS = FaultPlan(
    restart_every=2.0,
    pause_every=2.0,
    latency_every=1.5,
    blackhole_every=2.0,
    reset_every=3.0,
    client_pause_every=2.5,
    client_pause_for=(1.5, 2.5),
)

#: Long holds (up to 90% of the TTL) are what a restart in the middle of one exposes.
RESTART_CLIENTS = ClientPlan(
    resources=("a", "b"),
    ttl=RESTART_TTL,
    restart_guard=0.0,
    hold=(0.5, 1.8),
    think=(0.0, 0.02),
    blocking=0.3,
    wait=1.0,
    auto_renew=0.3,
)

RESTART_FAULTS = FaultPlan(restart_every=RESTART_EVERY, max_out=2)


#: Holds of a few milliseconds over eight resources: thousands of fences per phase.
RATE_CLIENTS = replace(
    MIXED_CLIENTS,
    resources=tuple("abcdefgh"),
    threads=4,
    hold=(0.0, 0.01),
    think=(0.0, 0.002),
    blocking=0.3,
    wait=0.5,
    auto_renew=0.1,
)


def standard(total: float) -> list[Phase]:
    """The six phases, sharing ``total`` seconds in units (the guarded restart phase gets
    1.25 units, the paced one 0.75, the high-rate one 1.5)."""
    unit = total / 6.5
    guarded = replace(RESTART_CLIENTS, restart_guard=RESTART_TTL)
    return [
        Phase("mixed", "every fault, guard on", unit, MIXED_CLIENTS, MIXED_FAULTS, proxied=True),
        Phase(
            "restart-unguarded",
            "immediate empty restarts, guard OFF",
            unit,
            RESTART_CLIENTS,
            RESTART_FAULTS,
            assumptions_hold=False,
        ),
        Phase(
            "restart-guarded",
            "immediate empty restarts, guard on",
            unit * 1.25,
            guarded,
            RESTART_FAULTS,
        ),
        Phase(
            "restart-delayed",
            "restarts delayed 1.2 TTL, guard off",
            unit,
            RESTART_CLIENTS,
            replace(RESTART_FAULTS, restart_delay=1.2 * RESTART_TTL),
        ),
        Phase(
            "restart-paced",
            "immediate restarts, guard on, <=2 out",
            unit * 0.75,
            guarded,
            replace(RESTART_FAULTS, pace_guard=RESTART_TTL + 0.1),
        ),
        Phase(
            "high-rate",
            "master/client faults, short holds",
            unit * 1.5,
            RATE_CLIENTS,
            MIXED_FAULTS,
            processes=4,
        ),
    ]
