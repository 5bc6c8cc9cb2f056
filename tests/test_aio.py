"""AsyncRedlock passes the same scenarios as Redlock, against real masters."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from celery_redlock import (
    AsyncLock,
    AsyncRedlock,
    LockLost,
    LockNotAcquired,
    QuorumUnavailable,
    Redlock,
)
from celery_redlock._core import quorum, replies
from celery_redlock._core.protocol import Call, Outcome, Verb
from celery_redlock.testing import FaultProxy, RedisGroup
from tests.stalls import hung

T = TypeVar("T")


def run(main: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(main())  # type: ignore[arg-type]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        await asyncio.sleep(0.01)
    return predicate()


def test_acquire_refuse_release(shared5: RedisGroup, resource: str) -> None:
    async def main() -> None:
        async with AsyncRedlock(shared5.urls) as dlm:
            lock = await dlm.acquire(resource, 10)
            assert lock is not None
            assert lock.valid
            assert await dlm.acquire(resource, 10) is None
            assert await dlm.locked(resource)
            ran = False
            with pytest.raises(LockNotAcquired):
                async with dlm.lock(resource, 10):
                    ran = True
            assert not ran
            assert await lock.release()
            assert not await dlm.locked(resource)
            async with dlm.lock(resource, 10) as held:
                assert held.valid
            other = await dlm.acquire(resource, 10)
            assert other is not None
            assert await dlm.release(resource, "wrong") is False
            assert await dlm.release(resource, other.token) is True

    run(main)


def test_tasks_never_overlap(shared5: RedisGroup, resource: str) -> None:
    intervals: list[tuple[float, float]] = []

    async def worker(dlm: AsyncRedlock) -> None:
        for _ in range(25):
            async with dlm.lock(resource, 5, blocking=True, timeout=30):
                start = time.monotonic()
                await asyncio.sleep(0.001)
                intervals.append((start, time.monotonic()))

    async def main() -> None:
        async with AsyncRedlock(shared5.urls) as dlm:
            await asyncio.gather(*(worker(dlm) for _ in range(6)))

    run(main)
    ordered = sorted(intervals)
    assert len(ordered) == 150
    for (_s1, e1), (s2, _e2) in itertools.pairwise(ordered):
        assert s2 >= e1


def test_a_blocked_waiter_wakes_on_the_release_message(
    shared5: RedisGroup, resource: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(quorum, "FALLBACK_POLL", 60.0)

    async def main() -> float:
        async with AsyncRedlock(shared5.urls) as dlm:
            holder = await dlm.acquire(resource, 60)
            assert holder is not None
            waiter = asyncio.ensure_future(dlm.acquire(resource, 10, blocking=True, timeout=30))
            await asyncio.sleep(0.3)
            released_at = time.monotonic()
            await holder.release()
            lock = await waiter
            assert lock is not None
            await lock.release()
            return time.monotonic() - released_at

    assert run(main) < 10  # far before the holder's 60 s TTL: woken by the message


def test_both_drivers_spell_a_key_alike_whatever_the_client_encoding(
    shared5: RedisGroup, resource: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Masters given with ``encoding="latin-1"``: a non-ASCII resource must still be one
    key for both drivers (UTF-8, as the sync driver packs it), and a sync waiter must hear
    its release. With the client's encoding, the asyncio driver took a lock the sync one
    held, and the waiter only woke at its fallback poll."""
    monkeypatch.setattr(quorum, "FALLBACK_POLL", 60.0)
    masters = [{"host": "127.0.0.1", "port": port, "encoding": "latin-1"} for port in shared5.ports]
    name = f"{resource}:caf\u00e9"
    with Redlock(masters) as dlm:
        holder = dlm.acquire(name, 30)
        assert holder is not None
        with shared5[0].client() as client:
            assert client.exists(dlm.settings.key(name).encode())

        async def from_asyncio() -> None:
            async with AsyncRedlock(masters) as adlm:
                assert await adlm.acquire(name, 30) is None
                assert await adlm.locked(name)

        run(from_asyncio)
        waiter = Redlock(masters)
        try:
            releasing = threading.Timer(0.3, holder.release)
            releasing.start()
            lock = waiter.acquire(name, 10, blocking=True, timeout=20)
            assert lock is not None  # woken by the release message, not the 60 s poll
            assert lock.release()
            releasing.join()  # its round may still be reading replies: never close under it
        finally:
            waiter.close()


def test_extend_and_expiry(shared5: RedisGroup, resource: str) -> None:
    async def main() -> None:
        async with AsyncRedlock(shared5.urls) as dlm:
            lock = await dlm.acquire(resource, 0.3)
            assert lock is not None
            assert await lock.extend(5) > 4
            await lock.release()
            short = await dlm.acquire(resource, 0.2)
            assert short is not None
            assert await until(lambda: not short.valid)
            with pytest.raises(LockLost):
                await short.extend()

    run(main)


def test_auto_renewal_and_loss(fresh3: RedisGroup) -> None:
    lost: list[LockLost] = []

    async def main() -> None:
        async with AsyncRedlock(fresh3.urls) as dlm:
            lock = await dlm.acquire(
                "job", 0.6, auto_renew=True, on_lost=lambda _l, err: lost.append(err)
            )
            assert lock is not None
            await asyncio.sleep(1.5)
            assert lock.valid
            assert await dlm.acquire("job", 1) is None
            fresh3[0].kill()
            fresh3[1].kill()
            assert await until(lambda: bool(lost))
            assert not lock.valid
            await lock.release()

    run(main)
    assert "job" in str(lost[0])


def test_a_hung_minority_and_a_killed_majority(fresh5: RedisGroup) -> None:
    async def main() -> None:
        async with AsyncRedlock(fresh5.urls, master_timeout=0.2, retry_count=1) as dlm:
            warm: AsyncLock | None = await dlm.acquire("r", 10)
            assert warm is not None
            await warm.release()
            with hung(list(fresh5)[:2]) as stalled:  # returns while they hang: an ordering
                lock = await dlm.acquire("r", 10)
                assert lock is not None
                assert [v.outcome for v in lock.votes][:2] == [Outcome.ERROR] * 2
                await lock.release()
                fresh5[2].kill()
                with pytest.raises(QuorumUnavailable) as err:
                    await dlm.acquire("r", 10)
                assert sum(v.outcome is Outcome.ERROR for v in err.value.votes) >= 3
            assert not stalled.is_set()

    run(main)


@pytest.mark.parametrize("clean_up", ["release", "undo"])
def test_a_clean_up_reaches_a_master_in_its_cool_down(fresh3: RedisGroup, clean_up: str) -> None:
    """As in the sync driver: a master skipped after a failure still gets an owner-checked
    delete (a release, or the undo of a lost round) over a connection already open, so our
    key does not stay on it until expiry."""

    async def main() -> None:
        async with AsyncRedlock(fresh3.urls) as dlm:
            lock = await dlm.acquire("r", 30)  # leaves a connection idle on every master
            assert lock is not None
            key = dlm.settings.key("r")
            with fresh3[2].client() as client:
                assert await until(lambda: client.exists(key) == 1, timeout=5)
                await asyncio.sleep(0.05)  # its exchange done, the connection back as idle
                dlm.roster.health[2].failed(dlm.clock(), "a hiccup")
                if clean_up == "release":
                    assert dlm.roster.health[2].skip_reason(dlm.clock()) is not None
                    assert await lock.release()
                else:
                    undo = quorum.Round(Call(Verb.UNDO, key, lock.token), wait=False)
                    await dlm._driver.round(undo)
                assert await until(lambda: client.exists(key) == 0, timeout=5)

    run(main)


def test_a_release_answered_after_its_round_still_runs(fresh3: RedisGroup) -> None:
    """As in the sync driver: a master too slow for the release's round (and for its
    timeout) still runs it once it answers: no NOSCRIPT that nobody reads.

    What is asserted is where the key went, not what ``release()`` returned: on a loaded
    machine the two live masters may miss the timeout too (their deletes still run), and
    the paused master is past its timeout by construction (paused for longer)."""

    async def main() -> None:
        async with AsyncRedlock(fresh3.urls, master_timeout=0.5) as dlm:
            lock = await dlm.acquire("r", 30)
            assert lock is not None
            key = dlm.settings.key("r")
            clients = [server.client() for server in fresh3]
            try:
                assert await until(lambda: clients[2].exists(key) == 1, timeout=5)
                fresh3[2].pause()
                await lock.release()
                live = clients[:2]
                assert await until(lambda: not any(c.exists(key) for c in live), timeout=5)
                await asyncio.sleep(0.8)  # master 2 stays silent past its timeout
                fresh3[2].resume()
                assert await until(lambda: clients[2].exists(key) == 0, timeout=5)
            finally:
                for client in clients:
                    client.close()

    run(main)


def test_the_per_master_timeout_bounds_replies_not_connecting(fresh3: RedisGroup) -> None:
    """As in the sync driver, a new connection's set-up (here a SELECT, 60 ms through the
    proxy) does not eat the 100 ms a round waits for replies (60 ms more): counted
    together, the two slow masters failed every first round and the lock was an outage."""
    slow = [FaultProxy(("127.0.0.1", server.port), delay=0.03) for server in list(fresh3)[:2]]
    with slow[0], slow[1]:
        urls = [f"{proxy.url}/1" for proxy in slow] + [f"{fresh3[2].url[:-2]}/1"]
        with Redlock(urls, master_timeout=0.1, retry_count=0, restart_guard=0) as dlm:
            lock = dlm.acquire("r", 10)
            assert lock is not None  # the sync driver: connects before the deadline starts
            lock.release()

        async def main() -> None:
            async with AsyncRedlock(
                urls, master_timeout=0.1, retry_count=0, restart_guard=0
            ) as dlm:
                lock = await dlm.acquire("r", 10)
                assert lock is not None
                assert sum(v.outcome is Outcome.YES for v in lock.votes) >= 2
                assert await lock.release()

        run(main)


async def _answer(dlm: AsyncRedlock, resource: str) -> AsyncLock | None:
    """An acquire's answer, asking again while the masters do not give one: a reconnect
    that misses the 0.1 s per-master timeout on a loaded machine is an outage, which says
    nothing either way about whether the connections outlived the restart."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return await dlm.acquire(resource, 30)
        except QuorumUnavailable:  # noqa: PERF203 - asked again, seldom
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


def test_connections_outlive_a_master_restart() -> None:
    async def main() -> None:
        with RedisGroup(3, appendonly=True) as group:
            async with AsyncRedlock(group.urls, retry_count=0) as dlm:
                held = await dlm.acquire("job", 30)
                assert held is not None
                for server in group:
                    server.restart()  # our pooled connections are now dead
                assert await _answer(dlm, "job") is None  # held, not an outage
                assert await held.release()

    run(main)


def test_an_operation_cancelled_mid_round_closes_its_connections(fresh3: RedisGroup) -> None:
    """Cancelled while two masters owe their replies (paused), an acquire closes those
    connections: once the masters answer, their late replies are never read as the
    answers to the next call (an acquire's reply read as PTTL's would be an ERROR vote)."""

    async def main() -> None:
        async with AsyncRedlock(fresh3.urls, master_timeout=5.0, retry_count=0) as dlm:
            warm = await dlm.acquire("warm", 10)  # an idle connection to every master
            assert warm is not None
            await warm.release()
            driver = dlm._driver
            assert await until(lambda: not driver._background)
            for idle in driver._idle:  # one each: the round below takes it
                while len(idle) > 1:
                    await idle.pop().aclose(1.0)
            fresh3[1].pause()
            fresh3[2].pause()
            try:
                cut = asyncio.ensure_future(dlm.acquire("r", 10))
                await asyncio.sleep(0.3)  # sent, and waiting for masters 1 and 2
                assert not cut.done()
                cut.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cut
            finally:
                fresh3[1].resume()
                fresh3[2].resume()
            assert not any(conn.usable() for i in (1, 2) for conn in driver._idle[i])
            await asyncio.sleep(0.2)  # the late replies are on their way (to closed sockets)
            key = dlm.settings.key("nothing-here")
            votes = await dlm._driver.round(quorum.Round(Call(Verb.INSPECT, key)))
            # the round may settle on two of them: the third is then not read
            heard = [v for v in votes if v.error != replies.SETTLED_WITHOUT]
            assert len(heard) >= 2
            assert all(v.outcome is Outcome.NO for v in heard), [v.error for v in votes]

    run(main)


def test_a_noscript_answered_to_a_release_after_its_round_sends_it_again(
    fresh3: RedisGroup,
) -> None:
    """Scripts flushed behind our back, and the master slower than the round's deadline:
    its NOSCRIPT to the release still arrives within one more timeout, and the release is
    sent again with the script's source, as the sync driver does (it used to be dropped
    with the connection at the deadline, leaving our key there until it expired)."""
    timeout = 2.0

    def keys(key: str) -> list[bytes | None]:
        values = []
        for server in fresh3:
            with server.client() as client:
                values.append(client.get(key))
        return values

    async def main() -> None:
        async with AsyncRedlock(fresh3.urls, master_timeout=timeout) as dlm:
            lock = await dlm.acquire("r", 30)
            assert lock is not None
            key = dlm.settings.key("r")
            assert await until(lambda: None not in keys(key))
            with fresh3[2].client() as client:
                client.script_flush()
            fresh3[2].pause()
            sent = time.monotonic()
            assert await lock.release()  # settled by masters 0 and 1
            await asyncio.sleep(timeout + 0.5 - (time.monotonic() - sent))  # past its deadline
            fresh3[2].resume()
            resumed = time.monotonic() - sent
            if not await until(lambda: keys(key) == [None] * 3, timeout=5):
                if resumed > 2 * timeout - 0.5:  # a stall: resumed past the grace itself
                    pytest.skip(f"the machine stalled: master resumed {resumed:.2f} s late")
                pytest.fail(f"the release never reached master 2: {keys(key)}")

    run(main)
