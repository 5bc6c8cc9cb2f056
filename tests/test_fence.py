"""Fences minted on the quorum, against real masters: always higher than every earlier
lock's, whatever the masters' counters say (apart, reset, expired, flushed or hostile),
and no round more than acquire + release while the masters agree."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from celery_redlock import AsyncRedlock, ConfigurationError, QuorumUnavailable, Redlock
from celery_redlock._core import quorum
from celery_redlock._core.health import COOLDOWN_START
from celery_redlock._core.protocol import FENCE_TTL_MS, Verb, fence_key
from celery_redlock._core.quorum import Round
from celery_redlock.testing import RedisGroup, RedisServer


def counters(group: RedisGroup | list[RedisServer], resource: str) -> list[int | None]:
    """Each master's counter for ``resource`` (None where it has none)."""
    values = [server.client().get(fence_key(f"redlock:{resource}")) for server in group]
    return [None if v is None else int(v) for v in values]


def rounds_of(dlm: Redlock, resource: str) -> tuple[int, list[Round]]:
    """Acquire ``resource`` (then release it); its fence and the rounds the algorithm
    asked for, as the driver ran them."""
    req, _renewal = dlm._acquisition(resource, 5, {"fencing": True})
    seen: list[Round] = []

    def recording(algorithm: quorum.Algorithm) -> quorum.Algorithm:
        result: Any = None
        try:
            while True:
                effect = algorithm.send(result)
                if isinstance(effect, Round):
                    seen.append(effect)
                result = yield effect
        except StopIteration as stop:
            return stop.value

    lease = dlm.run(recording(quorum.acquire(req, dlm.policy, dlm._ctx)))
    assert lease is not None
    assert lease.fence is not None
    dlm.release(resource, lease.token)
    return lease.fence, seen


def fences(dlm: Redlock, resource: str, n: int) -> list[int]:
    minted = []
    for _ in range(n):
        lock = dlm.acquire(resource, 1)
        assert lock is not None
        assert lock.fence is not None
        minted.append(lock.fence)
        lock.release()
    return minted


def test_every_lock_has_a_higher_fence_than_the_one_before(
    dlm: Redlock, shared5: RedisGroup, resource: str
) -> None:
    other = Redlock(shared5.urls)
    minted = fences(dlm, resource, 3) + fences(other, resource, 3) + fences(dlm, resource, 3)
    other.close()
    assert minted == sorted(set(minted))  # strictly increasing, across managers
    assert all(0 < f < 2**53 for f in minted)
    # Every master saw every grant: their counters agree on the last fence.
    assert counters(shared5, resource) == [minted[-1]] * 5
    ttls = [s.client().pttl(fence_key(f"redlock:{resource}")) for s in shared5]
    assert all(FENCE_TTL_MS - 60_000 < t <= FENCE_TTL_MS for t in ttls)


def test_the_asyncio_driver_mints_from_the_same_counters(
    shared5: RedisGroup, resource: str
) -> None:
    sync = Redlock(shared5.urls)

    async def minted() -> list[int | None]:
        async with AsyncRedlock(shared5.urls) as dlm:
            out = []
            for _ in range(2):
                lock = await dlm.acquire(resource, 5)
                assert lock is not None
                out.append(lock.fence)
                await lock.release()
            return out

    first = fences(sync, resource, 1)
    between = [f for f in asyncio.run(minted()) if f is not None]
    last = fences(sync, resource, 1)
    sync.close()
    assert len(between) == 2
    assert first + between + last == sorted(set(first + between + last))


def test_agreeing_masters_cost_no_round_more(fresh3: RedisGroup, resource: str) -> None:
    """A lock whose grants agree takes one round, fence included; the fence is written
    back in one more only when they disagree, and only to the masters that may be behind."""
    dlm = Redlock(fresh3.urls)
    key = fence_key(f"redlock:{resource}")
    for server in fresh3:
        server.client().set(key, 7_000, px=FENCE_TTL_MS)
    fence, rounds = rounds_of(dlm, resource)
    assert fence == 7_001  # whichever two answered first: they agree
    assert [r.call.verb for r in rounds] == [Verb.ACQUIRE]

    # No two masters agree now, whichever two the round hears first.
    for server, value in zip(fresh3, (8_000, 9_000, 7_500), strict=True):
        server.client().set(key, value, px=FENCE_TTL_MS)
    fence, rounds = rounds_of(dlm, resource)
    assert [r.call.verb for r in rounds] == [Verb.ACQUIRE, Verb.FENCE]
    assert fence in (8_001, 9_001)  # the highest the round heard
    assert rounds[1].call.fence == fence
    highest = 1 if fence == 9_001 else 0
    assert highest not in (rounds[1].targets or ())  # the master that counted it is not told
    assert sum(c is not None and c >= fence for c in counters(fresh3, resource)) >= 2
    dlm.close()


def test_a_fence_stays_above_the_highest_counter_when_that_master_is_gone(
    fresh3: RedisGroup, resource: str
) -> None:
    """The masters' counters apart (one missed grants, one counted lost rounds): the
    fence is the highest the granting masters reached, and written back, so that the next
    lock is higher still when the master that counted highest is gone. The highest grant
    alone, without the write-back, would give the next lock a lower fence here (from the
    third master's 3000 and the first's 1000)."""
    dlm = Redlock(fresh3.urls)
    key = fence_key(f"redlock:{resource}")
    for server, value in zip(fresh3, (1_000, 5_000, 3_000), strict=True):
        server.client().set(key, value, px=FENCE_TTL_MS)
    fresh3[0].pause()  # the round must hear both others
    try:
        first = fences(dlm, resource, 1)[0]
    finally:
        fresh3[0].resume()
    assert first == 5_001
    assert counters(fresh3, resource)[1:] == [5_001, 5_001]
    # The paused master ran the first lock's acquire on resuming, after its release had
    # given up on it: its key lives out its TTL. Then its cool-down must be over.
    deadline = time.monotonic() + 10
    while fresh3[0].client().exists(f"redlock:{resource}") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(COOLDOWN_START * 5)
    fresh3[1].pause()
    try:
        second = fences(dlm, resource, 1)[0]
    finally:
        fresh3[1].resume()
    # 5002, or more where lost rounds (the cool-down not yet over) counted on the third
    # master first: above the first lock's fence either way.
    assert second > first
    dlm.close()


def test_a_master_that_restarts_empty_mints_no_lower_fence(
    fresh3: RedisGroup, resource: str
) -> None:
    """Restarted without its data, a master sits out its guard, then seeds its counter
    from its clock: above every fence handed out before the restart."""
    dlm = Redlock(fresh3.urls, restart_guard=1.5, retry_count=0)
    before = fences(dlm, resource, 2)
    for server in (fresh3[0], fresh3[1]):
        server.kill()
        server.restart()
    with pytest.raises(QuorumUnavailable, match="too few masters answered"):
        dlm.acquire(resource, 1)  # a majority abstains through its guard
    time.sleep(1.6)
    after = fences(dlm, resource, 1)
    assert after[0] > before[-1]
    # Seeded to the microsecond (the guard just ended), the masters may disagree: the
    # fence is written back until a quorum holds it.
    assert sum(c is not None and c >= after[0] for c in counters(fresh3, resource)) >= 2
    dlm.close()


def test_counters_lost_everywhere_reseed_above_every_fence_handed_out(
    fresh3: RedisGroup, resource: str
) -> None:
    """Every counter gone (expired, as after ten idle minutes; here after 1 ms, a second
    before the next lock): each master seeds from its clock, past the old fences."""
    dlm = Redlock(fresh3.urls)
    old = fences(dlm, resource, 3)
    for server in fresh3:
        server.client().pexpire(fence_key(f"redlock:{resource}"), 1)
    time.sleep(1.05)  # the seed is the clock's whole seconds: a later second than old's
    new = fences(dlm, resource, 1)
    assert new[0] > old[-1]
    dlm.close()


def test_a_flushed_majority_abstains_then_fences_higher(fresh3: RedisGroup, resource: str) -> None:
    """FLUSHALL takes the boot marker with the counters: the guard applies, then the
    counters seed from the clock, above the fences handed out before."""
    dlm = Redlock(fresh3.urls, restart_guard=1.5, retry_count=0)
    old = fences(dlm, resource, 2)
    for server in fresh3:
        server.client().flushall()
    with pytest.raises(QuorumUnavailable, match="too few masters answered"):
        dlm.acquire(resource, 1)
    time.sleep(1.6)
    new = fences(dlm, resource, 1)
    assert new[0] > old[-1]
    dlm.close()


def test_a_counter_that_is_no_count_is_an_error_vote_naming_it(
    fresh3: RedisGroup, resource: str
) -> None:
    """Overwriting it could mint a fence below one handed out: the master refuses,
    before it takes the lock, and says which key holds what."""
    dlm = Redlock(fresh3.urls, retry_count=0)
    key = fence_key(f"redlock:{resource}")
    fresh3[0].client().set(key, "not a number")
    lock = dlm.acquire(resource, 5)  # two good masters still make a quorum
    assert lock is not None
    assert lock.fence is not None
    assert fresh3[0].client().get(f"redlock:{resource}") is None  # nothing taken there
    lock.release()
    fresh3[2].pause()  # now the round must read the bad master's vote
    try:
        with pytest.raises(QuorumUnavailable) as caught:
            dlm.acquire(resource, 5)
    finally:
        fresh3[2].resume()
    assert f"fence counter {key} holds 'not a number'" in str(caught.value).replace('"', "'")
    assert "not a count below 2^53" in str(caught.value)

    for i in (1, 2):
        fresh3[i].client().set(key, str(2**53))  # past what the counters may reach
    with pytest.raises(QuorumUnavailable) as caught:
        dlm.acquire(resource, 5)
    assert "not a count below 2^53" in str(caught.value)
    dlm.close()


def test_fencing_off_mints_nothing_and_keeps_no_counter(shared5: RedisGroup, resource: str) -> None:
    dlm = Redlock(shared5.urls, fencing=False)
    lock = dlm.acquire(resource, 5)
    assert lock is not None
    assert lock.fence is None
    lock.release()
    assert counters(shared5, resource) == [None] * 5
    # Asked for per call, a manager with fencing off mints anyway (and the reverse).
    lock = dlm.acquire(resource, 5, fencing=True)
    assert lock is not None
    assert lock.fence is not None
    lock.release()
    dlm.close()
    on = Redlock(shared5.urls)
    lock = on.acquire(resource, 5, fencing=False)
    assert lock is not None
    assert lock.fence is None
    lock.release()
    on.close()


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_fencing_must_be_true_or_false(shared5: RedisGroup, value: object) -> None:
    with pytest.raises(ConfigurationError, match="fencing must be True or False"):
        Redlock(shared5.urls, fencing=value)


def test_fencing_per_call_must_be_true_or_false(dlm: Redlock, resource: str) -> None:
    with pytest.raises(ConfigurationError, match="fencing must be True or False"):
        dlm.acquire(resource, 5, fencing="no")  # type: ignore[arg-type]
