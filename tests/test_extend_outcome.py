"""An extend whose replies come too late, although the masters applied it: the handle may
only believe the shorter of its old validity and the one asked for, counted from before
the round. Real masters behind FaultProxy, both drivers, explicit extends and the
watchdog's last renewal before ``max_hold`` (which shortens the TTL)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import pytest

from celery_redlock import AsyncRedlock, QuorumUnavailable, Redlock
from celery_redlock.testing import FaultProxy, RedisGroup

#: Each way: a command reaches its master after this, well past the round's timeout.
LATE = 0.3
TIMEOUT = 0.2


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Whether ``predicate`` came true within ``timeout`` (asked once more per poll only)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@contextlib.contextmanager
def proxied(group: RedisGroup) -> Iterator[list[FaultProxy]]:
    proxies = [FaultProxy(("127.0.0.1", server.port)) for server in group]
    with contextlib.ExitStack() as stack:
        for proxy in proxies:
            stack.enter_context(proxy)
        yield proxies


def took(other: Redlock) -> bool:
    """Whether ``other`` (the client that is not under test) took ``r``; an outage on a
    loaded machine is a "not yet", asked again, never the answer."""
    try:
        return other.acquire("r", 5) is not None
    except QuorumUnavailable:
        return False


async def took_async(other: AsyncRedlock) -> bool:
    try:
        return await other.acquire("r", 5) is not None
    except QuorumUnavailable:
        return False


def slow_down(proxies: list[FaultProxy]) -> None:
    for proxy in proxies:
        proxy.delay = LATE


def key_ttls(group: RedisGroup, key: str) -> list[int]:
    ttls = []
    for server in group:
        with server.client() as client:
            ttls.append(int(client.pttl(key)))
    return ttls


def test_a_shortened_extend_answered_late_leaves_the_shorter_validity(
    fresh3: RedisGroup,
) -> None:
    with (
        proxied(fresh3) as proxies,
        Redlock([p.url for p in proxies], master_timeout=TIMEOUT, retry_count=0) as dlm,
        Redlock(fresh3.urls, retry_count=0) as other,
    ):
        lock = dlm.acquire("r", 20)
        assert lock is not None
        slow_down(proxies)
        with pytest.raises(QuorumUnavailable):
            lock.extend(1.5)
        assert lock.validity <= 1.5
        # The masters did apply it, late: the keys now expire in 1.5 s, not 20.
        assert wait_for(lambda: all(0 < t <= 1500 for t in key_ttls(fresh3, lock.key)))
        assert wait_for(lambda: took(other))
        assert not lock.valid  # the other client holds it: we must not believe we do


def test_a_longer_extend_answered_late_keeps_the_old_validity(fresh3: RedisGroup) -> None:
    with (
        proxied(fresh3) as proxies,
        Redlock([p.url for p in proxies], master_timeout=TIMEOUT, retry_count=0) as dlm,
    ):
        lock = dlm.acquire("r", 5)
        assert lock is not None
        before = lock._lease.valid_until
        slow_down(proxies)
        with pytest.raises(QuorumUnavailable):
            lock.extend(15)
        assert lock._lease.valid_until == before


def test_the_watchdogs_last_renewal_answered_late_leaves_the_shorter_validity(
    fresh3: RedisGroup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="celery_redlock")
    with (
        proxied(fresh3) as proxies,
        Redlock([p.url for p in proxies], master_timeout=TIMEOUT, retry_count=0) as dlm,
        Redlock(fresh3.urls, retry_count=0) as other,
    ):
        # The first renewal (after 1 s) asks for what is left of max_hold: 0.8 s.
        lock = dlm.acquire("r", 20, auto_renew=True, renew_every=1, max_hold=1.8)
        assert lock is not None
        slow_down(proxies)
        assert wait_for(lambda: took(other))
        assert "renewing lock on 'r' failed" in caplog.text  # the renewal did go late
        assert not lock.valid


def test_the_asyncio_driver_believes_the_shorter_validity_too(fresh3: RedisGroup) -> None:
    async def main() -> None:
        async with (
            AsyncRedlock([p.url for p in proxies], master_timeout=TIMEOUT, retry_count=0) as dlm,
            AsyncRedlock(fresh3.urls, retry_count=0) as other,
        ):
            lock = await dlm.acquire("r", 20)
            assert lock is not None
            slow_down(proxies)
            with pytest.raises(QuorumUnavailable):
                await lock.extend(1.5)
            assert lock.validity <= 1.5
            while not all(0 < t <= 1500 for t in key_ttls(fresh3, lock.key)):
                await asyncio.sleep(0.01)
            while not await took_async(other):
                await asyncio.sleep(0.01)
            assert not lock.valid

    with proxied(fresh3) as proxies:
        asyncio.run(asyncio.wait_for(main(), 20))


def test_the_asyncio_watchdogs_last_renewal_leaves_the_shorter_validity(
    fresh3: RedisGroup, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="celery_redlock")

    async def main() -> None:
        async with (
            AsyncRedlock([p.url for p in proxies], master_timeout=TIMEOUT, retry_count=0) as dlm,
            AsyncRedlock(fresh3.urls, retry_count=0) as other,
        ):
            lock = await dlm.acquire("r", 20, auto_renew=True, renew_every=1, max_hold=1.8)
            assert lock is not None
            slow_down(proxies)
            while not await took_async(other):
                await asyncio.sleep(0.01)
            assert "renewing lock on 'r' failed" in caplog.text
            assert not lock.valid

    with proxied(fresh3) as proxies:
        asyncio.run(asyncio.wait_for(main(), 20))
