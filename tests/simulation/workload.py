"""What a simulated client does: contend for a few resources, hold, renew, release.

Holds are drawn up to past the TTL on purpose: a holder that keeps working after its
validity ran out is still only credited with its validity window, and holders that stay
until the last moment are what expose drift and restarts. Renewals use the real
``extend``, some to a shorter TTL (as the watchdog's last renewal before ``max_hold``);
a holder told ``LockLost`` stops at once, and after an extend that could not tell, it
counts on what the algorithm says it may (the shorter of the two validities).
"""

from __future__ import annotations

from dataclasses import dataclass

from celery_redlock._core import quorum
from celery_redlock.exceptions import LockLost, QuorumUnavailable
from tests.simulation.driver import Freeze, Run, SimClient, Sleep, Workload

KEY_PREFIX = "redlock:"


@dataclass(frozen=True, slots=True)
class Habits:
    """How clients behave, in multiples of the TTL where it is a duration."""

    resources: tuple[str, ...] = ("a",)
    ttl: float = 1.0
    guard: float = 1.0
    blocking: float = 0.5  # share of acquisitions that wait for the holder
    think: float = 0.3  # most idle time between attempts
    hold: float = 1.2  # most time held after the last renewal
    renewals: int = 2  # most renewals per hold
    freeze_holder: float = 0.05  # chance a holder is frozen for 0.5 to 2 TTLs mid-hold
    shorten: float = 0.25  # chance a renewal asks for 0.2 to 1 TTL instead of the TTL
    limit: int = 0  # every acquisition a semaphore's permit, of this many (0: locks)


def workload(client: SimClient, policy: quorum.Policy, habits: Habits) -> Workload:
    """Forever: think, try to lock one resource, and if won, hold it."""
    rng, ttl = client.rng, habits.ttl
    while True:
        yield Sleep(rng.uniform(0, habits.think * ttl))
        resource = rng.choice(habits.resources)
        blocking = rng.random() < habits.blocking
        timeout = rng.uniform(0, 3 * ttl) if blocking else None
        req = quorum.AcquireRequest(
            resource,
            KEY_PREFIX + resource,
            ttl,
            blocking,
            timeout,
            habits.guard,
            fencing=True,
            limit=habits.limit,
        )
        try:
            lease = yield Run(quorum.acquire(req, policy, client.context))
        except QuorumUnavailable:
            client.stats.outages += 1
            continue
        if lease is None:
            client.stats.refused += 1
            continue
        yield from hold(client, lease, policy, habits)


def hold(client: SimClient, lease: quorum.Lease, policy: quorum.Policy, habits: Habits) -> Workload:
    """Use the lock, renewing it a few times, then release it."""
    rng, ttl, history = client.rng, habits.ttl, client.world.history
    client.stats.acquired += 1
    history.acquired(client, lease, client.world.loop.now)
    for _ in range(rng.randint(0, habits.renewals)):
        yield Sleep(rng.uniform(0, 0.7 * ttl))
        if rng.random() < habits.freeze_holder:
            yield Freeze(rng.uniform(0.5, 2.0) * ttl)
        renew_to = ttl * rng.uniform(0.2, 1.0) if rng.random() < habits.shorten else ttl
        # As the handles do (HandleBase._extension): while the extend is out, a master may
        # already have applied it, so only the shorter validity is believed.
        now = client.context.clock()
        history.extended(client, quorum.unsure(lease, now, renew_to, policy.drift_factor))
        extension = yield Run(quorum.extend(lease, renew_to, policy, client.context))
        lease = extension.lease
        if isinstance(extension.error, LockLost):
            client.stats.lost += 1
            history.ended(lease.token, client.world.loop.now)
            return
        history.extended(client, lease)  # renewed, or (an outage) what may still be believed
    yield Sleep(rng.uniform(0, habits.hold * ttl))
    history.ended(lease.token, client.world.loop.now)
    yield Run(quorum.release(lease.key, lease.token, policy, lease.line))
