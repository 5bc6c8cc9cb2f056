"""Quorum semaphores against real masters: ``limit`` permits, each a lock on one slot key.

What is asserted is who got a permit and who did not, and what the masters store; never
how long anything took, so a loaded machine can slow these tests but not fail them.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable

import pytest

from celery_redlock import (
    AsyncRedlock,
    ConfigurationError,
    Lock,
    LockLost,
    LockNotAcquired,
    QuorumUnavailable,
    Redlock,
)
from celery_redlock._core import quorum
from celery_redlock._core.protocol import Outcome, Verb, permit_key, permit_line, queue_key
from celery_redlock._core.quorum import Vote
from celery_redlock.testing import RedisGroup


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until true (for undos, which are sent without waiting)."""
    pause = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return True
        pause.wait(0.01)
    return predicate()


def slots_on(group: RedisGroup, key: str, limit: int) -> list[list[bytes | None]]:
    """What each master stores under each of the semaphore's slot keys."""
    stored = []
    for server in group:
        with server.client() as client:
            stored.append([client.get(permit_key(key, i)) for i in range(limit)])
    return stored


def take(dlm: Redlock, resource: str, limit: int, clients: int) -> list[Lock | None]:
    return [dlm.semaphore(resource, 30, limit=limit) for _ in range(clients)]


# --- N permits, then None ---------------------------------------------------------------


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_limit_plus_one_clients_get_limit_permits_and_the_last_none(
    dlm: Redlock, shared5: RedisGroup, resource: str, limit: int
) -> None:
    permits = take(dlm, resource, limit, limit + 1)
    held = [p for p in permits if p is not None]
    assert len(held) == limit
    assert permits[-1] is None
    # each permit is a lease on its own slot, held by a quorum (here: every master)
    assert sorted(p.key for p in held) == sorted(
        permit_key(dlm.settings.key(resource), i) for i in range(limit)
    )
    for permit in held:
        assert permit.valid
        assert all(
            stored[int(permit.key.rsplit(":", 1)[1])] == permit.token.encode()
            for stored in slots_on(shared5, dlm.settings.key(resource), limit)
        )
    for permit in held:
        assert permit.release()


def test_releasing_one_permit_frees_exactly_one(dlm: Redlock, resource: str) -> None:
    first, second = take(dlm, resource, 2, 2)
    assert first is not None
    assert second is not None
    assert dlm.semaphore(resource, 30, limit=2) is None
    assert first.release()
    third = dlm.semaphore(resource, 30, limit=2)
    assert third is not None
    assert third.key == first.key  # the slot the release freed
    assert dlm.semaphore(resource, 30, limit=2) is None
    assert second.release()
    assert third.release()


def test_the_context_manager_raises_when_all_permits_are_held(dlm: Redlock, resource: str) -> None:
    with dlm.permit(resource, 30, limit=1) as permit:
        assert permit.valid
        with (
            pytest.raises(LockNotAcquired, match="all 1 permits"),
            dlm.permit(resource, 30, limit=1),
        ):
            pytest.fail("entered without a permit")
    assert permit.released
    with dlm.permit(resource, 30, limit=1) as again:
        assert again.key == permit.key


def test_limit_one_behaves_as_a_lock(dlm: Redlock, resource: str) -> None:
    """One holder at a time; extend and release owner-checked; a fence that rises."""
    permit = dlm.semaphore(resource, 30, limit=1)
    assert permit is not None
    assert dlm.semaphore(resource, 30, limit=1) is None
    assert permit.extend(20) > 0
    # nobody else's token releases or extends the slot
    assert not dlm.release(resource, permit.token)  # the resource's lock key is not the slot
    assert permit.fence is not None
    assert permit.release()
    assert not permit.release()
    with pytest.raises(LockLost):
        permit.extend()
    after = dlm.semaphore(resource, 30, limit=1)
    assert after is not None
    assert after.fence is not None
    assert after.fence > permit.fence
    after.release()


def test_a_lock_and_a_semaphore_on_one_resource_are_independent(
    dlm: Redlock, resource: str
) -> None:
    lock = dlm.acquire(resource, 30)
    permit = dlm.semaphore(resource, 30, limit=1)
    assert lock is not None
    assert permit is not None
    assert lock.key != permit.key
    lock.release()
    permit.release()


def test_fences_rise_per_slot(dlm: Redlock, resource: str) -> None:
    seen: dict[str, list[int]] = {}
    for _ in range(3):
        permits = take(dlm, resource, 2, 2)
        for permit in permits:
            assert permit is not None
            assert permit.fence is not None
            seen.setdefault(permit.key, []).append(permit.fence)
        for permit in permits:
            assert permit is not None
            permit.release()
    assert len(seen) == 2
    for fences in seen.values():
        assert fences == sorted(set(fences))  # strictly rising on each slot


def test_auto_renewal_keeps_a_permit_past_its_ttl(dlm: Redlock, resource: str) -> None:
    permit = dlm.semaphore(resource, 1, limit=1, auto_renew=True, renew_every=0.1)
    assert permit is not None
    done = threading.Event()
    done.wait(1.5)  # past the TTL: only renewals keep it (each has 0.9 s to land)
    assert permit.valid
    assert permit.lost is None
    assert dlm.semaphore(resource, 30, limit=1) is None
    permit.release()


def test_a_lost_permit_is_reported_by_its_renewal(fresh3: RedisGroup, resource: str) -> None:
    lost = threading.Event()
    errors: list[LockLost] = []

    def on_lost(_lock: object, error: LockLost) -> None:
        errors.append(error)
        lost.set()

    with Redlock(fresh3.urls) as dlm:
        permit = dlm.semaphore(
            resource, 3, limit=2, auto_renew=True, renew_every=0.05, on_lost=on_lost
        )
        assert permit is not None
        for server in fresh3:
            with server.client() as client:
                client.set(permit.key, "someone-else")  # every master gave the slot away
        assert lost.wait(30)
        assert not permit.valid
        assert isinstance(permit.lost, LockLost)
        assert errors[0].resource == resource
        with pytest.raises(LockLost):
            permit.extend()
        assert not permit.release()  # owner-checked: the other holder's slot stays
        for server in fresh3:
            with server.client() as client:
                assert client.get(permit.key) == b"someone-else"


# --- votes are counted per slot ---------------------------------------------------------


def hold_slots(group: RedisGroup, key: str, held: list[list[int]]) -> None:
    """Write a foreign holder into the given slots of each master, as others' permits."""
    for server, slots in zip(group, held, strict=True):
        with server.client() as client:
            for slot in slots:
                client.set(permit_key(key, slot), "another-holder", px=60_000)


def test_grants_of_different_slots_are_no_permit(fresh3: RedisGroup, resource: str) -> None:
    """The case a count of holders per master gets wrong: with 3 permits, each master has
    one free slot, a different one on each. Every master grants, no slot has a quorum: no
    permit (a count per master would admit us everywhere), and every grant is undone."""
    with Redlock(fresh3.urls, retry_count=2, retry_delay=0.01) as dlm:
        key = dlm.settings.key(resource)
        hold_slots(fresh3, key, [[0, 1], [1, 2], [0, 2]])
        assert dlm.semaphore(resource, 30, limit=3) is None
        assert dlm.semaphore(resource, 30, limit=3, blocking=True, timeout=0.3) is None
        expected = [[b"another-holder", b"another-holder", None], [None] + [b"another-holder"] * 2]
        expected.append([b"another-holder", None, b"another-holder"])
        assert wait_for(lambda: slots_on(fresh3, key, 3) == expected)


def test_the_slot_a_quorum_granted_wins_and_the_others_are_undone(
    fresh3: RedisGroup, resource: str
) -> None:
    """Two masters have a different slot held: whichever order the client tries, one
    slot gets a quorum of grants and the permit is its; the master that granted the other
    slot has that grant undone, so each master holds our token on the won slot at most."""
    with Redlock(fresh3.urls) as dlm:
        key = dlm.settings.key(resource)
        hold_slots(fresh3, key, [[0], [1], []])
        permit = dlm.semaphore(resource, 30, limit=2)
        assert permit is not None
        won = int(permit.key.rsplit(":", 1)[1])
        token = permit.token.encode()

        def other_slot_undone() -> bool:
            return all(stored[1 - won] != token for stored in slots_on(fresh3, key, 2))

        assert wait_for(other_slot_undone)
        assert sum(stored[won] == token for stored in slots_on(fresh3, key, 2)) == 2
        assert permit.release()


# --- the algorithm alone, fed votes (no masters) ----------------------------------------


YES, NO, ERROR = Outcome.YES, Outcome.NO, Outcome.ERROR


def first_round(limit: int, retry_count: int = 0) -> tuple[quorum.Algorithm, quorum.Round]:
    req = quorum.AcquireRequest("r", "k", 10.0, limit=limit)
    policy = quorum.Policy(3, 0.01, retry_count, 0.01)
    ctx = quorum.Context(lambda: 0.0, random.Random(0), lambda: "t")
    algorithm = quorum.acquire(req, policy, ctx)
    effect = next(algorithm)
    assert isinstance(effect, quorum.Round)
    return algorithm, effect


def test_each_attempt_asks_every_master_for_the_slots_in_one_rotated_order() -> None:
    _algorithm, rnd = first_round(4)
    call = rnd.call
    assert call.verb is Verb.PERMIT
    assert rnd.targets is None  # every master, one script each
    first = int(call.slots[0].rsplit(":", 1)[1])
    assert call.slots == tuple(permit_key("k", (first + i) % 4) for i in range(4))
    assert call.key == permit_line("k")


def test_a_quorum_of_one_slot_wins_and_the_other_grant_is_undone() -> None:
    algorithm, rnd = first_round(3)
    a, b, _c = rnd.call.slots
    undo = algorithm.send(
        [Vote("m0", YES, slot=b), Vote("m1", YES, slot=a), Vote("m2", YES, slot=b)]
    )
    assert isinstance(undo, quorum.Round)
    assert (undo.call.verb, undo.targets, undo.wait) == (Verb.UNDO, (1,), False)
    assert set(undo.call.slots) == set(rnd.call.slots) - {b}
    with pytest.raises(StopIteration) as won:
        algorithm.send([])
    lease = won.value.value
    assert (lease.key, lease.line) == (b, permit_line("k"))
    assert [v.outcome for v in lease.votes] == [YES, NO, YES]  # m1 voted for another slot


def test_grants_spread_over_slots_are_a_split_not_a_permit() -> None:
    algorithm, rnd = first_round(3)
    a, b, c = rnd.call.slots
    undo = algorithm.send(
        [Vote("m0", YES, slot=a), Vote("m1", YES, slot=b), Vote("m2", YES, slot=c)]
    )
    assert isinstance(undo, quorum.Round)
    assert (undo.call.verb, undo.targets, undo.call.slots) == (Verb.UNDO, (0, 1, 2), (a, b, c))
    with pytest.raises(StopIteration) as lost:
        algorithm.send([])
    assert lost.value.value is None  # non-blocking, no retries left: not an outage


def test_all_slots_refused_by_a_quorum_is_held_and_too_few_answers_an_outage() -> None:
    algorithm, _rnd = first_round(2)
    undo = algorithm.send([Vote("m0", NO, 50), Vote("m1", NO, 80), Vote("m2", ERROR, error="down")])
    assert isinstance(undo, quorum.Round)
    assert undo.targets == (2,)  # the master we did not hear from may have granted one
    with pytest.raises(StopIteration) as held:
        algorithm.send([])
    assert held.value.value is None
    algorithm, _rnd = first_round(2)
    undo = algorithm.send(
        [Vote("m0", NO, 50), Vote("m1", ERROR, error="down"), Vote("m2", ERROR, error="down")]
    )
    assert isinstance(undo, quorum.Round)
    assert undo.call.verb is Verb.UNDO
    with pytest.raises(QuorumUnavailable):
        algorithm.send([])


# --- outages and slow masters -----------------------------------------------------------


def test_a_majority_down_is_an_outage_not_all_permits_taken(
    fresh3: RedisGroup, resource: str
) -> None:
    with Redlock(fresh3.urls, retry_count=1, retry_delay=0.01) as dlm:
        fresh3[0].kill()
        fresh3[1].kill()
        with pytest.raises(QuorumUnavailable):
            dlm.semaphore(resource, 10, limit=3)
        with pytest.raises(QuorumUnavailable), dlm.permit(resource, 10, limit=3):
            pytest.fail("entered without a permit")


def test_a_paused_master_does_not_break_it(fresh3: RedisGroup, resource: str) -> None:
    with Redlock(fresh3.urls) as dlm:
        fresh3[2].pause()
        try:
            permits = take(dlm, resource, 2, 3)
            assert [p is not None for p in permits] == [True, True, False]
            for permit in permits:
                if permit is not None:
                    assert permit.release()
        finally:
            fresh3[2].resume()


def test_the_restart_guard_is_honoured(fresh3: RedisGroup, resource: str) -> None:
    """Masters that restarted empty abstain, whichever slot a permit would take."""
    with Redlock(fresh3.urls, restart_guard=30) as dlm:
        for server in list(fresh3)[:2]:
            with server.client() as client:
                client.flushall()
        with pytest.raises(QuorumUnavailable):
            dlm.semaphore(resource, 10, limit=2)


def test_a_blocked_waiter_is_woken_by_the_release_of_any_slot(
    dlm: Redlock, shared5: RedisGroup, resource: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waiter stands in the semaphore's one line on every master; with the timed poll
    pushed past both the holders' TTL and its own timeout, only a release's wake-up can
    hand it the permit before its timeout ends."""
    monkeypatch.setattr(quorum, "FALLBACK_POLL", 600.0)
    permits = take(dlm, resource, 2, 2)
    got: list[Lock | None] = []
    waiter = threading.Thread(
        target=lambda: got.append(dlm.semaphore(resource, 60, limit=2, blocking=True, timeout=30))
    )
    waiter.start()
    line = queue_key(permit_line(dlm.settings.key(resource)))

    def in_line() -> bool:
        counts = []
        for server in shared5:
            with server.client() as client:
                counts.append(client.zcard(line))
        return all(counts)

    deadline = threading.Event()
    while not in_line():
        assert waiter.is_alive()
        assert not deadline.wait(0.01)
    second = permits[1]
    assert second is not None
    assert second.release()
    waiter.join()
    assert got[0] is not None
    assert got[0].key == second.key
    for permit in (permits[0], got[0]):
        assert permit is not None
        permit.release()


# --- asyncio --------------------------------------------------------------------------------


def test_the_asyncio_twin(shared5: RedisGroup, resource: str) -> None:
    async def main() -> None:
        async with AsyncRedlock(shared5.urls) as dlm:
            permits = [await dlm.semaphore(resource, 30, limit=2) for _ in range(3)]
            assert [p is not None for p in permits] == [True, True, False]
            with pytest.raises(LockNotAcquired):
                async with dlm.permit(resource, 30, limit=2):
                    pytest.fail("entered without a permit")
            first = permits[0]
            assert first is not None
            assert await first.release()
            async with dlm.permit(resource, 30, limit=2) as permit:
                assert permit.key == first.key
            for p in permits[1:2]:
                assert p is not None
                await p.release()

    asyncio.run(main())


# --- bad limits -----------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1, 1001, True, 2.0, "2", None])
def test_bad_limits_are_refused_naming_limit(dlm: Redlock, resource: str, limit: object) -> None:
    with pytest.raises(ConfigurationError, match="limit must be an integer from 1 to 1000"):
        dlm.semaphore(resource, 10, limit=limit)  # type: ignore[arg-type]


def test_bad_limits_are_refused_by_the_asyncio_twin(shared5: RedisGroup, resource: str) -> None:
    async def main() -> None:
        async with AsyncRedlock(shared5.urls) as dlm:
            with pytest.raises(ConfigurationError, match="limit"):
                await dlm.semaphore(resource, 10, limit=0)

    asyncio.run(main())


def test_a_thousand_slots_work(dlm: Redlock, resource: str) -> None:
    permit = dlm.semaphore(resource, 10, limit=1000, owner="many")
    assert permit is not None
    assert permit.owner == "many"
    permit.release()
