"""A master that restarts empty must not hand out a lock that others still hold."""

from __future__ import annotations

import time

import pytest

from celery_redlock import ConfigurationError, Lock, LockLost, QuorumUnavailable, Redlock
from celery_redlock._core.protocol import BOOT_KEY, Marker, Outcome, parse_marker
from celery_redlock.testing import FaultProxy, RedisGroup, RedisServer


def restart_empty(*servers: RedisServer) -> None:
    """Restart without persistence, one after the other: never a majority down at once."""
    for server in servers:
        server.kill()
        server.restart()


def test_without_the_guard_a_restart_lets_a_second_holder_in(fresh3: RedisGroup) -> None:
    """The hazard is real: this is what every peer does (issue 7's measurements)."""
    a = Redlock(fresh3.urls, restart_guard=0)
    b = Redlock(fresh3.urls, restart_guard=0)
    held = a.acquire("job", 30)
    assert held is not None
    restart_empty(fresh3[0], fresh3[1])
    intruder = b.acquire("job", 30)
    assert intruder is not None  # two holders: A still believes it holds the lock
    assert held.valid
    a.close()
    b.close()


def test_with_the_guard_the_same_schedule_admits_nobody(fresh3: RedisGroup) -> None:
    a = Redlock(fresh3.urls, restart_guard=30)
    b = Redlock(fresh3.urls, restart_guard=30, retry_count=0)
    held = a.acquire("job", 30)
    assert held is not None
    restart_empty(fresh3[0], fresh3[1])
    with pytest.raises(QuorumUnavailable) as err:
        b.acquire("job", 30)
    abstained = [v for v in err.value.votes if v.outcome is Outcome.ABSTAIN]
    assert len(abstained) == 2
    assert all(v.pttl_ms is not None and 25_000 < v.pttl_ms <= 30_000 for v in abstained)
    assert "abstains after a restart" in str(err.value)
    a.close()
    b.close()


def test_the_holder_learns_of_the_loss_at_its_next_renewal(fresh3: RedisGroup) -> None:
    a = Redlock(fresh3.urls, restart_guard=10)
    lost: list[LockLost] = []
    held = a.acquire("job", 1.5, auto_renew=True, on_lost=lambda _l, e: lost.append(e))
    assert held is not None
    restart_empty(fresh3[0], fresh3[1])
    deadline = time.monotonic() + 10
    while not lost and time.monotonic() < deadline:
        time.sleep(0.02)
    assert lost, "the renewal should have found its key gone on a majority"
    assert not held.valid
    a.close()


def test_a_guarded_master_rejoins_once_its_guard_has_passed(fresh3: RedisGroup) -> None:
    with Redlock(fresh3.urls, restart_guard=1.5, retry_count=0) as dlm:
        restart_empty(fresh3[0], fresh3[1])
        with pytest.raises(QuorumUnavailable):
            dlm.acquire("job", 1)
        time.sleep(1.6)
        lock = dlm.acquire("job", 1)
        assert lock is not None
        assert [v.outcome for v in lock.votes].count(Outcome.YES) >= 2


def test_a_flushall_is_treated_like_a_restart(fresh3: RedisGroup) -> None:
    with Redlock(fresh3.urls, restart_guard=30, retry_count=0) as dlm:
        for server in list(fresh3)[:2]:
            with server.client() as client:
                client.flushall()
        with pytest.raises(QuorumUnavailable):
            dlm.acquire("job", 10)


def test_persistence_keeps_the_boot_marker_so_a_clean_restart_costs_nothing() -> None:
    with RedisGroup(3, appendonly=True) as group, Redlock(group.urls, retry_count=0) as dlm:
        held = dlm.acquire("job", 30)
        assert held is not None
        for server in group:
            server.restart()  # data (and the marker) survive: no guard needed or applied
        assert dlm.acquire("job", 30) is None  # the lock survived too: still held
        assert held.release()
        again = dlm.acquire("job", 30)
        assert again is not None
        with group[0].client() as client:
            assert parse_marker(client.get(BOOT_KEY)) == (0, 60_000)  # armed; guard declared


def test_ttls_longer_than_the_guard_are_refused() -> None:
    dlm = Redlock(["redis://127.0.0.1:1/0"], restart_guard=10)
    with pytest.raises(ConfigurationError, match="restart_guard"):
        dlm.acquire("job", 11)
    # With the guard off, any TTL goes (operators then own delayed restarts).
    Redlock(["redis://127.0.0.1:1/0"], restart_guard=0).settings.ttl(3600)


# --- clients with different guards ----------------------------------------------------------


def _marker(server: RedisServer) -> Marker | None:
    with server.client() as client:
        return parse_marker(client.get(BOOT_KEY))


def _refusal(dlm: Redlock, resource: str, ttl: float, held: Lock) -> QuorumUnavailable:
    """Why ``dlm`` could not take ``resource``, asserting it did not take it from ``held``."""
    try:
        intruder = dlm.acquire(resource, ttl)
    except QuorumUnavailable as exc:
        return exc
    assert intruder is None or not held.valid, "two holders at once"
    raise AssertionError("expected QuorumUnavailable")


def test_a_short_guard_client_learns_the_longer_guard_from_the_masters(fresh3: RedisGroup) -> None:
    """A guard-60 s client holds the key; two masters restart empty (and forget the 60 s
    they were told). A guard-2 s client used to take the key from them once its own 2 s
    had passed. The master that kept its data reports its 60 s guard, the short-guard
    client declares it from then on, and the restarted masters apply it."""
    with (
        Redlock(fresh3.urls, restart_guard=60) as a,
        Redlock(fresh3.urls, restart_guard=2, retry_count=0, master_timeout=1.0) as b,
    ):
        held = a.acquire("job", 60)
        assert held is not None
        restart_empty(fresh3[0], fresh3[1])
        with pytest.raises(QuorumUnavailable) as first:
            b.acquire("job", 2)
        assert [v.outcome for v in first.value.votes[:2]] == [Outcome.ABSTAIN] * 2
        time.sleep(2.2)
        later = _refusal(b, "job", 2, held)
        assert first.value.votes[2].guard_ms == 60_000  # the survivor's guard, reported
        abstained = [v for v in later.votes[:2] if v.outcome is Outcome.ABSTAIN]
        assert all(v.pttl_ms is not None and v.pttl_ms > 50_000 for v in abstained)
        assert len(abstained) == 2
        assert held.valid
    for server in list(fresh3)[:2]:
        marker = _marker(server)
        assert marker is not None
        assert marker.guard_ms == 60_000  # remembered by the restarted masters too


def test_a_grant_from_a_master_that_knew_only_a_shorter_guard_is_not_counted(
    fresh3: RedisGroup,
) -> None:
    """The restarted masters' markers were set by a guard-2 s client that never met the
    longer guard; after 2 s they grant to any guard-2 s client. A client meeting them
    for the first time, with the 60 s survivor in the same round, must not count those
    grants (its keys there are undone), and its next round declares 60 s to them."""
    with Redlock(fresh3.urls, restart_guard=60) as a:
        held = a.acquire("job", 60)
        assert held is not None
        restart_empty(fresh3[0], fresh3[1])
        restarted = [fresh3[0].url, fresh3[1].url]
        with (
            Redlock(restarted, restart_guard=2, retry_count=0) as blind,
            pytest.raises(QuorumUnavailable),
        ):
            blind.acquire("elsewhere", 2)  # sets their markers with a 2 s guard
        time.sleep(2.2)
        # The restarted masters answer 50 ms late, so that the survivor's reply is in
        # before their grants make a quorum: a round settles at a quorum of grants, and
        # a survivor answering later than that is the case README's "Restart safety"
        # leaves open.
        with (
            FaultProxy(("127.0.0.1", fresh3[0].port), delay=0.05) as slow0,
            FaultProxy(("127.0.0.1", fresh3[1].port), delay=0.05) as slow1,
            Redlock(
                [slow0.url, slow1.url, fresh3[2].url],
                restart_guard=2,
                retry_count=0,
                master_timeout=1.0,
            ) as b,
        ):
            err = _refusal(b, "job", 2, held)
            votes = err.votes
            assert [v.outcome for v in votes] == [Outcome.ABSTAIN, Outcome.ABSTAIN, Outcome.NO]
            assert "its restart guard is shorter than another master's (60000 ms)" in str(err)
            with pytest.raises(QuorumUnavailable) as again:
                b.acquire("job", 2)
            assert all(v.pttl_ms and v.pttl_ms > 50_000 for v in again.value.votes[:2])
        for server in list(fresh3)[:2]:
            with server.client() as client:
                assert client.get("redlock:job") is None  # the uncounted grants were undone
            marker = _marker(server)
            assert marker is not None
            assert marker.guard_ms == 60_000
        assert held.valid


def test_the_master_applies_the_longest_guard_declared_to_it(fresh3: RedisGroup) -> None:
    """The script enforces the longer of the declared guard and the marker's, and keeps
    markers in the old format (boot time alone) readable."""
    with fresh3[0].client() as client:
        seconds, _micros = client.time()
        client.set(BOOT_KEY, str(seconds * 1000 - 10_000))  # old format, 10 s ago
    with Redlock([fresh3[0].url], restart_guard=5) as short:
        assert short.acquire("job", 1) is not None  # 10 s > 5 s: the old marker counts
    assert _marker(fresh3[0]) == (seconds * 1000 - 10_000, 5_000)
    with Redlock([fresh3[0].url], restart_guard=30, retry_count=0) as long:
        with pytest.raises(QuorumUnavailable) as err:
            long.acquire("job2", 1)
        assert 15_000 < (err.value.votes[0].pttl_ms or 0) <= 20_000
    with Redlock([fresh3[0].url], restart_guard=5, retry_count=0) as short:
        with pytest.raises(QuorumUnavailable) as err:
            short.acquire("job3", 1)  # the master's 30 s, not the caller's 5 s
        vote = err.value.votes[0]
        assert vote.guard_ms == 30_000
        assert 15_000 < (vote.pttl_ms or 0) <= 20_000


def test_a_guard_off_client_does_not_touch_the_marker(fresh3: RedisGroup) -> None:
    with Redlock(fresh3.urls, restart_guard=0) as dlm:
        assert dlm.acquire("job", 5) is not None
    assert _marker(fresh3[0]) == (0, 0)  # armed, and nobody declared a guard


#: The guard check of celery_redlock 0.1's acquire script, as released: it reads the
#: marker with ``tonumber`` and resets a marker it cannot read.
_ACQUIRE_0_1_GUARD = """
local guard = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local boot = tonumber(redis.call('GET', KEYS[2]))
if not boot then
    boot = now
    redis.call('SET', KEYS[2], string.format('%.0f', now))
end
if now < boot + guard then
    return {2, boot + guard - now}
end
return {1, 0}
"""


def test_a_0_1_client_reads_a_marker_with_a_guard_as_its_boot_time(fresh3: RedisGroup) -> None:
    """A rolling upgrade: the marker a new client wrote (boot time and declared guard) is
    still a boot time to a client of 0.1, which neither resets it nor abstains."""
    with Redlock([fresh3[0].url], restart_guard=60) as new:
        assert new.acquire("job", 5) is not None  # armed at 0: the marker gains the guard
    written = _marker(fresh3[0])
    assert written == (0, 60_000)
    with fresh3[0].client() as client:
        raw = client.get(BOOT_KEY)
        reply = client.eval(_ACQUIRE_0_1_GUARD, 2, "redlock:job2", BOOT_KEY, "t", 5000, 60_000)
        assert reply == [1, 0]  # boot 0 (plus under a millisecond) is long past the guard
        assert client.get(BOOT_KEY) == raw  # not reset
