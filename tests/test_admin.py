"""Operator views against real masters: status, listing, forced release, arming."""

from __future__ import annotations

import contextlib
import time

from celery_redlock import QuorumUnavailable, Redlock
from celery_redlock._core.protocol import BOOT_KEY
from celery_redlock.admin import arm, force_release, list_locks, master_status
from celery_redlock.testing import RedisGroup, RedisServer


def test_status_reports_reachability_persistence_and_the_guard(fresh3: RedisGroup) -> None:
    fresh3[1].kill()
    fresh3[2].kill()
    fresh3[2].restart()  # back, empty: it will abstain once a client touches it
    with Redlock(fresh3.urls, restart_guard=30, retry_count=0) as dlm:
        with contextlib.suppress(QuorumUnavailable):  # only the marker it sets matters
            dlm.acquire("x", 10)
        first, down, restarted = master_status(dlm)
    assert first.reachable
    assert first.version
    assert first.role == "master"
    assert first.latency_ms is not None
    assert first.clock_offset_ms is not None
    assert abs(first.clock_offset_ms) < 1000
    assert first.appendonly is False
    assert first.guard_left == 0
    assert not down.reachable
    assert down.error is not None
    assert "refused" in down.error.lower()
    assert restarted.guard_left is not None
    assert 20 < restarted.guard_left <= 30
    assert any("abstaining" in p for p in restarted.problems)
    assert not restarted.can_vote
    assert first.can_vote
    assert first.mode == "standalone"
    assert first.maxmemory == 0
    assert first.run_id
    assert first.run_id != restarted.run_id


def test_status_warns_when_neither_guard_nor_fsync_protects(fresh3: RedisGroup) -> None:
    with Redlock(fresh3.urls, restart_guard=0) as dlm:
        assert all(any("fsync" in w for w in s.warnings) for s in master_status(dlm))
    with RedisGroup(3, appendonly=True) as durable, Redlock(durable.urls, restart_guard=0) as dlm:
        assert not any(s.warnings for s in master_status(dlm))


def test_list_shows_owner_and_time_left_but_never_the_secret(fresh3: RedisGroup) -> None:
    with Redlock(fresh3.urls) as dlm:
        lock = dlm.acquire("report", 30, owner="task-1@host-a")
        assert lock is not None
        assert lock.owner == "task-1@host-a"
        (info,) = list_locks(dlm)
        assert info.key == "redlock:report"
        assert info.owner == "task-1@host-a"
        assert info.held_by_quorum(dlm.quorum)
        assert all(25_000 < ms <= 30_000 for ms in info.pttl_ms.values())
        secret = lock.token.partition(":")[0]
        assert secret not in repr(info)
        assert list_locks(dlm, starting="other") == []


def test_force_release_frees_a_lock_whoever_holds_it(fresh3: RedisGroup) -> None:
    with Redlock(fresh3.urls) as dlm:
        assert dlm.acquire("stuck", 30) is not None
        assert force_release(dlm, "stuck").released >= dlm.quorum  # the third may lag its SET
        assert not dlm.locked("stuck")


def test_arm_marks_only_masters_without_a_marker() -> None:
    with (
        RedisServer(armed=False) as new,
        RedisServer() as armed_at_birth,
        Redlock([new.url, armed_at_birth.url, "redis://127.0.0.1:1/0"]) as dlm,
    ):
        assert arm(dlm) == [dlm.masters[0]]
        assert arm(dlm) == []
        lock = dlm.acquire("x", 10)  # no guard to sit out: both masters vote
        assert lock is not None


def test_status_reports_a_longer_guard_declared_by_another_client(fresh3: RedisGroup) -> None:
    """The master enforces the longest guard any client declared: status counts the
    guard left from it, not from ours, and says that the clients disagree."""
    with fresh3[0].client() as client:
        seconds, _micros = client.time()
        client.set(BOOT_KEY, f"{seconds * 1000 - 10_000}.30000")  # 10 s ago; guard 30 s
        marked = time.monotonic()
        with Redlock(fresh3.urls, restart_guard=5) as dlm:
            (first, *_rest) = master_status(dlm)
        since = time.monotonic() - marked + 1  # + the whole second TIME truncated
    assert first.stored_guard == 30
    assert first.guard_left is not None
    # The master's 30 s, not our 5 s: 20 s left, less however long this machine took.
    assert 20 - since <= first.guard_left <= 20
    assert any("restart guard of 30 s, longer than ours (5 s)" in w for w in first.warnings)
    assert any("abstaining after a restart" in p for p in first.problems)
