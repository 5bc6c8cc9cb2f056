"""A master that restarts empty must not hand out a lock that others still hold."""

from __future__ import annotations

import time

import pytest

from celery_redlock import ConfigurationError, LockLost, QuorumUnavailable, Redlock
from celery_redlock._scripts import BOOT_KEY, Outcome
from celery_redlock.testing import RedisGroup, RedisServer


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
            assert client.get(BOOT_KEY) == b"0"


def test_ttls_longer_than_the_guard_are_refused() -> None:
    dlm = Redlock(["redis://127.0.0.1:1/0"], restart_guard=10)
    with pytest.raises(ConfigurationError, match="restart_guard"):
        dlm.acquire("job", 11)
    # With the guard off, any TTL goes (operators then own delayed restarts).
    Redlock(["redis://127.0.0.1:1/0"], restart_guard=0).settings.ttl(3600)
