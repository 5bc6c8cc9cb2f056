"""Blocked waiters, against real masters and both drivers: a release hands the lock to
the oldest waiter alone, and waiting still works where pub/sub is denied (an ACL).

Waiters are sequenced by where the masters say they stand in line (a waiter joins it by
the attempt it makes after subscribing, then sleeps), never by sleeping, and the fallback
poll is pushed out to a minute wherever only a wake-up may end a wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest
import redis

from celery_redlock import AsyncRedlock, Redlock
from celery_redlock._core import quorum
from celery_redlock._core.protocol import RELEASE, Outcome, Verb, queue_key
from celery_redlock._core.quorum import Listen, Round, Vote, Wait
from celery_redlock._core.settings import LockSettings
from celery_redlock.testing import FaultProxy, RedisGroup, RedisServer

REDIS_7 = "/usr/bin/redis-server"
BINARIES = [
    pytest.param(None, id="default"),
    pytest.param(
        REDIS_7,
        id="redis7",
        marks=pytest.mark.skipif(not os.access(REDIS_7, os.X_OK), reason="no Redis 7 here"),
    ),
]

#: An ACL user made the ordinary way, without channels (Redis 7's default for new users,
#: ``acl-pubsub-default resetchannels``; spelled out so that 6.2 does the same).
NO_CHANNELS = ("~*", "resetchannels", "+@all")
#: A user with every channel but without PUBLISH: subscribing works, announcing does not.
NO_PUBLISH = ("~*", "allchannels", "+@all", "-publish")

#: What each user's masters are warned of (docs/errors.md), by the first side to notice:
#: the waiter subscribing, or the holder releasing.
WHY = {
    NO_CHANNELS: "subscribe refused: NoPermissionError: this user has no permissions to"
    " access one of the channels used as arguments",
    NO_PUBLISH: "not announced: The user executing the script can't run this command or subcommand",
}


def until(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.005)
    return predicate()


@contextlib.contextmanager
def masters(binary: str | None, n: int = 3) -> Iterator[list[RedisServer]]:
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(RedisServer(binary=binary)) for _ in range(n)]


class Monitor(threading.Thread):
    """MONITOR on one master: which connections sent which scripts, as they ran."""

    def __init__(self, server: RedisServer) -> None:
        super().__init__(daemon=True)
        self._client = redis.Redis(port=server.port)
        self._monitor = self._client.monitor()  # type: ignore[no-untyped-call]
        self._monitor.__enter__()
        self.seen: list[tuple[str, str]] = []  # (client port, command)

    def run(self) -> None:
        with contextlib.suppress(redis.RedisError, OSError, ValueError, AttributeError):
            while True:
                command = self._monitor.next_command()
                self.seen.append((command["client_port"], command["command"]))

    def attempts(self) -> set[str]:
        """The connections that sent a script other than a release: acquire attempts."""
        return {
            port
            for port, command in self.seen
            if command.startswith("EVALSHA") and RELEASE.sha not in command
        }

    def close(self) -> None:
        self._monitor.connection.disconnect()
        self.join(10)
        self._client.close()


def in_line(servers: list[RedisServer], key: str) -> list[list[bytes]]:
    lines = []
    for server in servers:
        with server.client() as client:
            lines.append(client.zrange(queue_key(key), 0, -1))
    return lines


# --- both drivers behind one blocking interface -------------------------------------------


class Held(Protocol):
    def release(self) -> bool: ...


class Driver(Protocol):
    def acquire(self, resource: str, ttl: float, timeout: float | None = None) -> Held | None:
        """Non-blocking when ``timeout`` is None, else blocking up to it."""

    def close(self) -> None: ...


class SyncDriver:
    def __init__(self, urls: list[str]) -> None:
        self._dlm = Redlock(urls)

    def acquire(self, resource: str, ttl: float, timeout: float | None = None) -> Held | None:
        blocking = timeout is not None
        return self._dlm.acquire(resource, ttl, blocking=blocking, timeout=timeout)

    def close(self) -> None:
        self._dlm.close()


class AsyncDriver:
    """An AsyncRedlock on an event loop of its own thread, called from any thread."""

    def __init__(self, urls: list[str]) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._dlm: AsyncRedlock = self._call(self._make(urls))

    @staticmethod
    async def _make(urls: list[str]) -> AsyncRedlock:
        return AsyncRedlock(urls)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def acquire(self, resource: str, ttl: float, timeout: float | None = None) -> Held | None:
        blocking = timeout is not None
        lock = self._call(self._dlm.acquire(resource, ttl, blocking=blocking, timeout=timeout))
        return None if lock is None else _AsyncHeld(self, lock)

    def close(self) -> None:
        self._call(self._dlm.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class _AsyncHeld:
    def __init__(self, driver: AsyncDriver, lock: Any) -> None:
        self._driver = driver
        self._lock = lock

    def release(self) -> bool:
        return bool(self._driver._call(self._lock.release()))


DRIVERS = [pytest.param(SyncDriver, id="sync"), pytest.param(AsyncDriver, id="asyncio")]


class Waiter(threading.Thread):
    """A blocking acquire in a thread: its lock, or the exception it raised."""

    def __init__(
        self,
        driver: Driver,
        resource: str,
        timeout: float,
        then: Callable[[Held], None] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.driver, self.resource, self.timeout, self.then = driver, resource, timeout, then
        self.lock: Held | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.lock = self.driver.acquire(self.resource, 30, timeout=self.timeout)
            if self.lock is not None and self.then is not None:
                self.then(self.lock)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


def start_waiting(servers: list[RedisServer], waiter: Waiter, place: int) -> None:
    """Start ``waiter`` and return once it stands ``place``-th in line on every master
    (it then sleeps: it asked after subscribing), or it died, or ten seconds passed."""
    waiter.start()
    key = f"redlock:{waiter.resource}"
    until(
        lambda: all(len(line) >= place for line in in_line(servers, key)) or not waiter.is_alive(),
        timeout=10,
    )


# --- an ACL user without pub/sub ----------------------------------------------------------


@pytest.mark.parametrize("driver_class", DRIVERS)
@pytest.mark.parametrize("rules", [NO_CHANNELS, NO_PUBLISH], ids=["no-channels", "no-publish"])
@pytest.mark.parametrize("binary", BINARIES)
def test_a_user_without_pub_sub_still_waits_and_releases(
    binary: str | None,
    rules: tuple[str, ...],
    driver_class: Callable[[list[str]], Driver],
    resource: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The blocked waiter gets the lock after the release, by its timed poll, without an
    exception; the release says True (the keys are gone) and a WARNING per master says
    that waiters there cannot be woken. Before: the sync waiter raised NoPermissionError
    from SUBSCRIBE, and the release returned False (DEL ran, then PUBLISH failed)."""
    with masters(binary) as servers:
        for server in servers:
            with server.client() as client:
                client.execute_command("ACL", "SETUSER", "app", "on", ">s3cret", *rules)
        urls = [f"redis://app:s3cret@127.0.0.1:{server.port}/0" for server in servers]
        driver = driver_class(urls)
        key = f"redlock:{resource}"
        try:
            with caplog.at_level(logging.WARNING, logger="celery_redlock"):
                holder = driver.acquire(resource, 30)
                assert holder is not None
                waiter = Waiter(driver, resource, timeout=30)
                start_waiting(servers, waiter, 1)
                assert waiter.error is None
                assert holder.release() is True
                waiter.join(30)
                assert waiter.error is None
                assert waiter.lock is not None
                assert waiter.lock.release() is True
        finally:
            driver.close()
        for server in servers:
            with server.client() as client:
                assert not client.exists(key)
                assert not client.exists(queue_key(key))  # the waiter left the line
        # Once per master, for every master whose answer came in time (a round settles at
        # a quorum: a master that answered later is heard of at a later release).
        warned = [r.getMessage() for r in caplog.records if "cannot wake" in r.getMessage()]
        expected = [
            f"master redis://127.0.0.1:{server.port}/0 cannot wake blocked waiters"
            f" ({WHY[rules]}): they ask again every 1 s instead; the user needs PUBLISH,"
            " SUBSCRIBE and the channels &redlock:*"
            for server in servers
        ]
        assert len(set(warned)) == len(warned) >= 2
        assert set(warned) <= set(expected)


@pytest.mark.parametrize("driver_class", DRIVERS)
def test_a_waiter_on_masters_with_a_password_is_woken_by_the_release(
    driver_class: Callable[[list[str]], Driver], resource: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waiter's subscriptions log in as the rounds' connections do: the release's
    message wakes it (the fallback poll is a minute away)."""
    monkeypatch.setattr(quorum, "FALLBACK_POLL", 60.0)
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(RedisServer(password="s3cret")) for _ in range(3)]
        driver = driver_class([server.url for server in servers])
        try:
            holder = driver.acquire(resource, 60)
            assert holder is not None
            waiter = Waiter(driver, resource, timeout=30)
            start_waiting(servers, waiter, 1)
            released = time.monotonic()
            assert holder.release()
            waiter.join(30)
            assert waiter.error is None
            assert waiter.lock is not None
            assert time.monotonic() - released < 10
            assert waiter.lock.release()
        finally:
            driver.close()


# --- the lock is handed on, not fought over -------------------------------------------------


@pytest.mark.parametrize("driver_class", DRIVERS)
def test_a_release_wakes_one_waiter_and_the_others_sleep_on(
    driver_class: Callable[[list[str]], Driver], resource: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six waiters blocked; the release wakes the oldest, and while it holds the lock the
    others have sent the masters nothing. Before, every waiter woke and tried (and lost)
    on every release.

    One more may try, once: a master that the release reached only after the new holder
    won elsewhere (and closed its subscriptions) wakes the next waiter in its line. Only
    a minority can lag so (the new holder won on a quorum), so at most 1 + (3 - 2) try.
    """
    monkeypatch.setattr(quorum, "FALLBACK_POLL", 60.0)
    with masters(None) as servers:
        driver = driver_class([server.url for server in servers])
        got = threading.Event()
        done = threading.Event()

        def hold(lock: Held) -> None:
            got.set()
            done.wait(30)
            lock.release()

        try:
            holder = driver.acquire(resource, 60)
            assert holder is not None
            waiters = [Waiter(driver, resource, 30, hold) for _ in range(6)]
            for place, waiter in enumerate(waiters, 1):
                start_waiting(servers, waiter, place)
            monitor = Monitor(servers[0])
            monitor.start()
            assert holder.release()
            assert got.wait(30)
            time.sleep(0.5)  # room for any other waiter to wake and try (none may)
            monitor.close()
            assert 1 <= len(monitor.attempts()) <= 2, monitor.seen
            assert sum(w.lock is not None for w in waiters) == 1
        finally:
            done.set()
            for waiter in waiters:
                waiter.join(30)
            driver.close()


@pytest.mark.parametrize("driver_class", DRIVERS)
def test_waiters_get_the_lock_in_the_order_they_began_waiting(
    driver_class: Callable[[list[str]], Driver], resource: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five waiters in line, each holder releasing at once: the lock goes down the line in
    order, each woken by the release before it (the poll is a minute away). Before, every
    release set all of them racing, in no particular order."""
    monkeypatch.setattr(quorum, "FALLBACK_POLL", 60.0)
    with masters(None) as servers:
        driver = driver_class([server.url for server in servers])
        order: list[int] = []
        try:
            holder = driver.acquire(resource, 60)
            assert holder is not None
            waiters = []
            for n in range(5):

                def record(lock: Held, n: int = n) -> None:
                    order.append(n)
                    assert lock.release()

                waiters.append(Waiter(driver, resource, 30, record))
                start_waiting(servers, waiters[-1], n + 1)
            assert holder.release()
            for waiter in waiters:
                waiter.join(30)
                assert waiter.error is None
        finally:
            driver.close()
        assert order == [0, 1, 2, 3, 4]


def test_a_waiter_that_is_gone_is_skipped(resource: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Oldest in line on every master: a waiter nobody hears (it gave up, or died with its
    connections). The release drops it and wakes the live waiter behind it, which gets the
    lock long before its one-minute poll."""
    monkeypatch.setattr(quorum, "FALLBACK_POLL", 60.0)
    key = f"redlock:{resource}"
    ghost = f"{key}:waiter:{'0' * 32}"
    with masters(None) as servers:
        driver = SyncDriver([server.url for server in servers])
        try:
            holder = driver.acquire(resource, 60)
            assert holder is not None
            for server in servers:
                with server.client() as client:
                    client.zadd(queue_key(key), {ghost: 0})
            waiter = Waiter(driver, resource, 30)
            start_waiting(servers, waiter, 2)
            for line in in_line(servers, key):
                assert len(line) == 2
                assert line[0] == ghost.encode()
            assert holder.release()
            waiter.join(30)
            assert waiter.lock is not None  # woken: the poll was a minute away
            # The ghost is dropped by every master's release. (The waiter left the line
            # where it won; a master its attempt reached first keeps it until it releases.)
            assert until(lambda: all(ghost.encode() not in ln for ln in in_line(servers, key)))
            assert waiter.lock.release()
        finally:
            driver.close()


def test_locking_nobody_waits_for_leaves_no_line(
    shared5: RedisGroup, dlm: Redlock, resource: str
) -> None:
    """Contention without waiting, and a blocking acquire that wins at once, never stand
    in line: no master keeps a line for the key."""
    lock = dlm.acquire(resource, 10)
    assert lock is not None
    assert dlm.acquire(resource, 10) is None
    assert lock.release()
    again = dlm.acquire(resource, 10, blocking=True, timeout=5)
    assert again is not None
    assert again.release()
    assert in_line(list(shared5), dlm.settings.key(resource)) == [[]] * len(shared5)


# --- the algorithm's part, without I/O -----------------------------------------------------


def test_a_woken_waiter_asks_once_a_quorum_of_masters_woke_it() -> None:
    """Refused twice, it listens on a channel of its own and stands in line (QUEUED). Woken
    by one master of three, it waits STRAGGLERS for a second before asking; woken by a
    quorum, it asks at once; after STRAGGLERS with no second copy, it asks anyway."""
    tokens = itertools.count()
    ctx = quorum.Context(lambda: 0.0, random.Random(0), lambda: f"t{next(tokens)}")
    req = quorum.AcquireRequest("r", "redlock:r", 10.0, blocking=True)
    algorithm = quorum.acquire(req, LockSettings().policy(3), ctx)
    held = [Vote(f"m{i}", Outcome.NO, 5000) for i in range(3)]
    assert algorithm.send(None).call.verb is Verb.ACQUIRE  # type: ignore[union-attr]
    listen = algorithm.send(held)
    assert isinstance(listen, Listen)
    assert listen.channel.startswith("redlock:r:waiter:")
    queued = algorithm.send(None)
    assert isinstance(queued, Round)
    assert queued.call.verb is Verb.QUEUED
    assert queued.call.waiter == listen.channel
    for woken, then in ((1, [1]), (2, []), (1, [0])):
        wait = algorithm.send(held)
        assert isinstance(wait, Wait)
        effect = algorithm.send(woken)
        for more in then:
            assert effect == Wait(quorum.STRAGGLERS)
            effect = algorithm.send(more)
        assert isinstance(effect, Round)
        assert effect.call.verb is Verb.QUEUED


def _listen_then_wait(channel: str, seconds: float) -> quorum.Algorithm:
    """Subscribe, then wait for news: the two effects a blocked acquisition yields."""
    yield Listen(channel)
    woken = yield Wait(seconds)
    return woken


@pytest.mark.parametrize("driver", ["sync", "asyncio"])
def test_a_subscription_confirmed_too_late_counts_as_a_wake_up(driver: str) -> None:
    """Masters that confirm a waiter's SUBSCRIBE only after the per-master timeout (listen()
    gave up waiting) may have published a release before it: the late confirmation wakes
    the waiter, so that it asks again, instead of leaving it to its timed poll. Nothing is
    published here, so any wake-up the wait reports is a confirmation's."""
    with RedisGroup(3) as group:
        proxies = [FaultProxy(("127.0.0.1", server.port)) for server in group]
        with contextlib.ExitStack() as stack:
            for proxy in proxies:
                stack.enter_context(proxy)
                proxy.delay = 0.4  # a confirmation takes 0.8 s: four times the timeout
            urls = [proxy.url for proxy in proxies]
            waiting = _listen_then_wait("&late", 10.0)
            if driver == "sync":
                with Redlock(urls, master_timeout=0.2) as dlm:
                    woken = dlm._driver.run(waiting)
            else:

                async def main() -> int:
                    async with AsyncRedlock(urls, master_timeout=0.2) as dlm:
                        result: int = await dlm._driver.run(waiting)
                        return result

                woken = asyncio.run(main())
    assert woken >= 1
