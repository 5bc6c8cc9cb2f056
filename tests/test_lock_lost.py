"""A lost lock, as the core's handles report it: ``check()`` raises once it is lost (and
not before), and ``lost`` says expired as soon as the validity has run out, whether or
not the renewal thread has noticed yet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from celery_redlock import AsyncRedlock, LockLost, Redlock
from celery_redlock.testing import RedisGroup


class Clock:
    """The monotonic clock, which the test can move forward: a process paused past its
    lease, as its locks see it, without pausing anything."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


def wait_for(condition: Callable[[], object], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {condition}"
        time.sleep(0.01)


def on_masters(group: RedisGroup, key: str) -> list[object]:
    return [master.client().get(key) for master in group]


def test_check_passes_while_held_and_raises_the_recorded_loss_after(
    dlm: Redlock, shared5: RedisGroup, resource: str
) -> None:
    reported: list[LockLost] = []
    lock = dlm.acquire(
        resource, 30, auto_renew=True, renew_every=0.05, on_lost=lambda _l, e: reported.append(e)
    )
    assert lock is not None
    lock.check()  # held: nothing happens
    assert lock.lost is None
    for master in shared5:
        master.client().delete(lock.key)  # what a failover losing the key would do
    wait_for(lambda: reported)
    with pytest.raises(LockLost) as raised:
        lock.check()
    assert raised.value is reported[0] is lock.lost
    assert not lock.valid
    assert "lost" in repr(lock)
    with pytest.raises(LockLost):
        lock.check()  # again: a loss does not heal
    assert not lock.release()  # nothing of ours left to delete


def test_lost_reports_expiry_before_the_renewal_thread_runs(shared5: RedisGroup) -> None:
    clock = Clock()
    with Redlock(shared5.urls, clock=clock) as dlm:
        # Renewal is due 10 s after the acquisition, on this clock as on the watchdog's.
        lock = dlm.acquire("lost:expiry", 30, auto_renew=True)
        assert lock is not None
        lock.check()
        clock.offset += 31  # past the validity: as if the process had been paused
        assert not lock.valid
        lost = lock.lost
        assert lost is not None
        assert "expired" in str(lost)
        assert "lost" in repr(lock)
        with pytest.raises(LockLost, match="expired"):
            lock.check()
        # Expired in our belief; the masters' keys (real TTL) are still our token, and the
        # release deletes exactly those.
        assert on_masters(shared5, lock.key) == [lock.token.encode()] * 5
        assert lock.release()
        assert lock.lost is None  # released: nothing held, nothing lost
        with pytest.raises(LockLost, match="released"):
            lock.check()


def test_the_async_handle_checks_without_awaiting(shared5: RedisGroup) -> None:
    clock = Clock()

    async def main() -> None:
        async with AsyncRedlock(shared5.urls, clock=clock) as dlm:
            lock = await dlm.acquire("lost:async", 30, auto_renew=True)
            assert lock is not None
            lock.check()
            clock.offset += 31
            with pytest.raises(LockLost, match="expired"):
                lock.check()
            assert lock.lost is not None
            assert await lock.release()

    asyncio.run(main())


def test_an_extend_after_the_validity_ran_out_does_not_make_it_held_again(
    shared5: RedisGroup,
) -> None:
    clock = Clock()
    with Redlock(shared5.urls, clock=clock) as dlm:
        lock = dlm.acquire("lost:late", 30)
        assert lock is not None
        clock.offset += 31
        with pytest.raises(LockLost, match="expired"):
            lock.extend()
        assert lock.lost is not None
        assert not lock.valid
        assert lock.release()
