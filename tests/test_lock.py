"""Redlock against real masters: exclusion, renewal, and every way a master can fail."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable

import pytest
import redis

from celery_redlock import Lock, LockLost, LockNotAcquired, QuorumUnavailable, Redlock
from celery_redlock._core import quorum
from celery_redlock._core.protocol import Outcome
from celery_redlock.testing import RedisGroup, RedisServer
from tests.stalls import hung


def keys_on(group: RedisGroup, key: str) -> list[bytes | None]:
    """What each master stores under ``key`` (None where absent or unreachable)."""
    values: list[bytes | None] = []
    for server in group:
        if not server.running or server.paused:
            values.append(None)
            continue
        with server.client() as client:
            values.append(client.get(key))
    return values


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def assert_no_overlap(intervals: list[tuple[float, float]]) -> None:
    ordered = sorted(intervals)
    for (_s1, e1), (s2, _e2) in itertools.pairwise(ordered):
        assert s2 >= e1, f"two holders overlapped: one ended at {e1}, the next began at {s2}"


# --- the basics ---------------------------------------------------------------------------


def test_acquire_sets_our_token_on_every_master_and_release_removes_it(
    dlm: Redlock, shared5: RedisGroup, resource: str
) -> None:
    lock = dlm.acquire(resource, 10)
    assert lock is not None
    assert lock.valid
    assert 9 < lock.validity <= 10
    assert len(lock.token) == 32  # 128 bits, hex
    key = dlm.settings.key(resource)
    assert wait_for(lambda: keys_on(shared5, key) == [lock.token.encode()] * 5)
    assert lock.release() is True
    assert not lock.valid
    assert wait_for(lambda: keys_on(shared5, key) == [None] * 5)


def test_a_held_resource_is_refused_and_the_with_block_never_runs(
    dlm: Redlock, resource: str
) -> None:
    holder = dlm.acquire(resource, 10)
    assert holder is not None
    assert dlm.acquire(resource, 10) is None
    ran = False
    with pytest.raises(LockNotAcquired), dlm.lock(resource, 10):
        ran = True
    assert not ran
    holder.release()
    with dlm.lock(resource, 10) as lock:
        assert lock.valid
    assert not dlm.locked(resource)


def test_tokens_are_unique(dlm: Redlock, resource: str) -> None:
    tokens = set()
    for _ in range(50):
        lock = dlm.acquire(resource, 10)
        assert lock is not None
        tokens.add(lock.token)
        lock.release()
    assert len(tokens) == 50


def test_locked_is_a_quorum_view(dlm: Redlock, shared5: RedisGroup, resource: str) -> None:
    key = dlm.settings.key(resource)
    for server in list(shared5)[:2]:
        with server.client() as client:
            client.set(key, "stranger", px=10_000)
    assert not dlm.locked(resource)  # two of five is not a quorum
    with shared5[2].client() as client:
        client.set(key, "stranger", px=10_000)
    assert dlm.locked(resource)
    assert dlm.acquire(resource, 10) is None


def test_release_by_resource_and_token_from_another_manager(
    dlm: Redlock, shared5: RedisGroup, resource: str
) -> None:
    lock = dlm.acquire(resource, 10)
    assert lock is not None
    with Redlock(shared5.urls) as other:
        assert other.release(resource, "not-the-token") is False
        assert other.locked(resource)
        assert other.release(resource, lock.token) is True
        assert not other.locked(resource)


def test_an_expired_lock_cannot_release_or_extend_the_next_owners_lock(
    dlm: Redlock, resource: str
) -> None:
    old = dlm.acquire(resource, 0.3)
    assert old is not None
    assert wait_for(lambda: not old.valid)
    new = dlm.acquire(resource, 10, blocking=True, timeout=5)
    assert new is not None
    assert old.release() is False
    assert dlm.locked(resource)
    with pytest.raises(LockLost):
        old.extend()
    assert new.valid
    new.release()


def test_extend_renews_validity_and_fails_after_expiry(dlm: Redlock, resource: str) -> None:
    lock = dlm.acquire(resource, 1)
    assert lock is not None
    assert lock.extend(5) > 4
    assert lock.validity > 4
    lock.release()
    with pytest.raises(LockLost, match="released"):
        lock.extend()
    short = dlm.acquire(resource, 0.2)
    assert short is not None
    assert wait_for(lambda: not short.valid)
    with pytest.raises(LockLost, match="expired"):
        short.extend()


def test_lost_script_cache_is_reloaded(dlm: Redlock, shared5: RedisGroup, resource: str) -> None:
    lock = dlm.acquire(resource, 10)
    assert lock is not None
    for server in shared5:
        with server.client() as client:
            client.script_flush()
    assert lock.extend(10) > 9
    assert lock.release() is True
    again = dlm.acquire(resource, 10)
    assert again is not None
    again.release()


# --- mutual exclusion under contention ----------------------------------------------------


def test_threads_never_overlap(dlm: Redlock, shared5: RedisGroup, resource: str) -> None:
    intervals: list[tuple[float, float]] = []
    counter_key = f"{resource}:counter"
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with shared5[0].client() as client:
                for _ in range(40):
                    with dlm.lock(resource, 5, blocking=True, timeout=30):
                        start = time.monotonic()
                        value = int(client.get(counter_key) or 0)  # a racy read-modify-write
                        client.set(counter_key, value + 1)
                        intervals.append((start, time.monotonic()))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(intervals) == 240
    assert_no_overlap(intervals)
    with shared5[0].client() as client:
        assert int(client.get(counter_key) or 0) == 240  # no lost update


def _contend(
    urls: list[str], resource: str, rounds: int, out: multiprocessing.Queue[object]
) -> None:
    dlm = Redlock(urls)
    counter = redis.Redis.from_url(urls[0])
    intervals = []
    for _ in range(rounds):
        with dlm.lock(resource, 5, blocking=True, timeout=60):
            start = time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes
            counter.set(f"{resource}:n", int(counter.get(f"{resource}:n") or 0) + 1)
            intervals.append((start, time.monotonic()))
    out.put(intervals)
    counter.close()
    dlm.close()


def test_processes_never_overlap(shared5: RedisGroup, resource: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[list[tuple[float, float]]] = ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(shared5.urls, resource, 60, out)) for _ in range(4)]
    for proc in procs:
        proc.start()
    results = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    intervals = [(start, end) for r in results for start, end in r]
    assert len(intervals) == 240
    assert_no_overlap(intervals)
    with shared5[0].client() as client:
        assert int(client.get(f"{resource}:n") or 0) == 240


# --- waiting ------------------------------------------------------------------------------


def test_a_blocked_waiter_wakes_on_the_release_message(
    dlm: Redlock, resource: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With the fallback poll pushed out to a minute, only the message can wake the waiter.
    monkeypatch.setattr(quorum, "FALLBACK_POLL", 60.0)
    holder = dlm.acquire(resource, 60)
    assert holder is not None
    got: list[Lock | None] = []
    waiter = threading.Thread(
        target=lambda: got.append(dlm.acquire(resource, 10, blocking=True, timeout=30))
    )
    waiter.start()
    time.sleep(0.3)
    released_at = time.monotonic()
    holder.release()
    waiter.join(30)
    assert got
    assert got[0] is not None
    assert time.monotonic() - released_at < 10  # far before the 60 s holder TTL
    got[0].release()


def test_a_blocked_waiter_takes_over_when_the_holder_expires(dlm: Redlock, resource: str) -> None:
    holder = dlm.acquire(resource, 0.5)  # never released: it must expire
    assert holder is not None
    lock = dlm.acquire(resource, 10, blocking=True, timeout=10)
    assert lock is not None
    assert not holder.valid
    lock.release()


def test_blocking_gives_up_at_the_timeout(dlm: Redlock, resource: str) -> None:
    holder = dlm.acquire(resource, 30)
    assert holder is not None
    start = time.monotonic()
    assert dlm.acquire(resource, 10, blocking=True, timeout=0.5) is None
    assert time.monotonic() - start >= 0.5
    holder.release()


# --- renewal ------------------------------------------------------------------------------


def test_auto_renewal_keeps_a_lock_past_its_ttl(dlm: Redlock, resource: str) -> None:
    lock = dlm.acquire(resource, 0.6, auto_renew=True)
    assert lock is not None
    time.sleep(2.0)
    assert lock.valid
    assert dlm.acquire(resource, 1) is None
    assert lock.release()
    assert not dlm.locked(resource)


class _CountingCondition(threading.Condition):
    """A Condition that counts its notify() calls: how often the renewal thread is woken."""

    def __init__(self) -> None:
        super().__init__()
        self.notified = 0

    def notify(self, n: int = 1) -> None:
        self.notified += 1
        super().notify(n)


def test_a_lock_per_task_does_not_wake_the_renewal_thread_each_time(
    dlm: Redlock, resource: str
) -> None:
    """One short auto-renewed lock after another (a worker's tasks) must not cost a thread
    wake-up each: the renewal thread only needs waking for a lock due sooner than it
    means to look anyway. It once was woken for every lock (a GIL hand-off per task)."""
    counting = _CountingCondition()
    dlm._watchdog._cond = counting
    for i in range(30):
        lock = dlm.acquire(f"{resource}:{i}", 30, auto_renew=True)
        assert lock is not None
        assert lock.release()
    assert counting.notified <= 1
    # A lock due sooner than everything else still wakes it, and is renewed in time.
    lock = dlm.acquire(resource, 0.6, auto_renew=True)
    assert lock is not None
    assert counting.notified >= 1
    time.sleep(1.2)
    assert lock.valid
    assert lock.release()


def test_released_locks_do_not_pile_up_in_the_renewal_heap(dlm: Redlock, resource: str) -> None:
    """A released lock leaves the renewal heap when it reaches the top; one task's lock
    after another must not keep the lot (a worker at 1,500 tasks/s kept 15,000, with their
    leases and votes, until each came due), also while a long-held lock sits at the top."""
    heap = dlm._watchdog._heap
    for i in range(100):
        lock = dlm.acquire(f"{resource}:{i}", 30, auto_renew=True)
        assert lock is not None
        assert lock.release()
    assert len(heap) <= 1
    held = dlm.acquire(resource, 30, auto_renew=True)  # due first: at the top from now on
    assert held is not None
    sizes = []
    for i in range(500):
        lock = dlm.acquire(f"{resource}:later:{i}", 60, auto_renew=True)
        assert lock is not None
        assert lock.release()
        sizes.append(len(heap))
    assert max(sizes) <= 2 * 64  # swept whenever it doubles past the minimum
    assert any(entry[2] is held for entry in heap)  # the held lock is still renewed
    assert held.release()


def test_renewal_stops_at_max_hold(dlm: Redlock, resource: str) -> None:
    reported: list[LockLost] = []
    lock = dlm.acquire(
        resource, 0.6, auto_renew=True, max_hold=1.0, on_lost=lambda _l, e: reported.append(e)
    )
    assert lock is not None
    assert wait_for(lambda: not lock.valid, timeout=10)
    # It ran out as asked: the handle says it expired, renewal reported no loss.
    assert lock.lost is not None
    assert "expired" in str(lock.lost)
    assert reported == []
    # Validity ends a drift allowance before the keys do; then the resource is free.
    assert dlm.acquire(resource, 1, blocking=True, timeout=5) is not None


def test_renewal_reports_loss_when_masters_go_away(fresh3: RedisGroup) -> None:
    dlm = Redlock(fresh3.urls)
    lost: list[LockLost] = []
    lock = dlm.acquire("job", 0.9, auto_renew=True, on_lost=lambda _lock, err: lost.append(err))
    assert lock is not None
    fresh3[0].kill()
    fresh3[1].kill()
    assert wait_for(lambda: bool(lost), timeout=10)
    assert not lock.valid
    assert lock.lost is lost[0]
    assert "job" in str(lost[0])
    dlm.close()


def test_renewal_reports_loss_when_the_key_is_taken_over(fresh3: RedisGroup) -> None:
    dlm = Redlock(fresh3.urls)
    lost: list[LockLost] = []
    lock = dlm.acquire("job", 0.9, auto_renew=True, on_lost=lambda _lock, err: lost.append(err))
    assert lock is not None
    for server in fresh3:
        with server.client() as client:
            client.set(lock.key, "usurper", px=60_000)
    assert wait_for(lambda: bool(lost), timeout=10)
    assert "lost" in str(lost[0])
    assert lock.release() is False
    with fresh3[0].client() as client:
        assert client.get(lock.key) == b"usurper"  # the usurper's key is left alone
    dlm.close()


# --- failures -----------------------------------------------------------------------------


def test_a_killed_minority_does_not_stop_acquisition(fresh5: RedisGroup) -> None:
    fresh5[0].kill()
    fresh5[1].kill()
    with Redlock(fresh5.urls) as dlm:
        lock = dlm.acquire("r", 10)
        assert lock is not None
        errors = [v for v in lock.votes if v.outcome is Outcome.ERROR]
        assert len(errors) >= 2
        assert lock.release()


def test_a_hung_minority_never_holds_up_acquisition(fresh5: RedisGroup) -> None:
    """Each round settles on the three masters that answer, and every call returns while
    the two others are still hung: an ordering, not a speed (a stalled socket would block
    for ever; a duration would fail whenever a busy machine stalls the test)."""
    with Redlock(fresh5.urls, master_timeout=0.2) as dlm:
        warm = dlm.acquire("r", 10)  # connections open before the masters hang
        assert warm is not None
        warm.release()
        with hung(list(fresh5)[:2]) as stalled:
            for _ in range(5):
                lock = dlm.acquire("r", 10)
                assert lock is not None
                assert [v.outcome for v in lock.votes] == [Outcome.ERROR] * 2 + [Outcome.YES] * 3
                lock.release()
        assert not stalled.is_set()


def test_a_majority_down_is_an_outage_and_leaves_no_keys(fresh5: RedisGroup) -> None:
    for server in list(fresh5)[:3]:
        server.kill()
    with Redlock(fresh5.urls, retry_count=1) as dlm:
        with pytest.raises(QuorumUnavailable) as err:
            dlm.acquire("r", 10)
        assert err.value.resource == "r"
        assert len(err.value.votes) == 5
        assert "Connection refused" in str(err.value) or "skipped" in str(err.value)
        key = dlm.settings.key("r")
        assert wait_for(lambda: keys_on(fresh5, key) == [None] * 5)
        with pytest.raises(QuorumUnavailable):
            dlm.acquire("r", 10, blocking=True, timeout=5)


def test_a_hung_majority_is_an_outage_within_a_bound(fresh3: RedisGroup) -> None:
    """The outage is reported while the majority is still hung (see stalls.hung)."""
    with (
        hung(list(fresh3)[:2]) as stalled,
        Redlock(fresh3.urls, master_timeout=0.1, retry_count=1) as dlm,
    ):
        with pytest.raises(QuorumUnavailable) as err:
            dlm.acquire("r", 10)
        assert [v.outcome for v in err.value.votes][:2] == [Outcome.ERROR] * 2
    assert not stalled.is_set()


def test_masters_coming_back_are_used_again(fresh3: RedisGroup) -> None:
    # A short restart guard: the restarted masters sit out 0.5 s, then vote again.
    with Redlock(fresh3.urls, retry_count=0, restart_guard=1) as dlm:
        fresh3[0].kill()
        fresh3[1].kill()
        with pytest.raises(QuorumUnavailable):
            dlm.acquire("r", 1)
        fresh3[0].restart()
        fresh3[1].restart()
        assert wait_for(lambda: _acquires(dlm, "r"), timeout=10)


def _acquires(dlm: Redlock, resource: str) -> bool:
    try:
        lock = dlm.acquire(resource, 1)
    except QuorumUnavailable:
        return False
    if lock is None:
        return False
    lock.release()
    return True


def test_a_replica_or_a_wrong_password_is_an_error_vote_with_its_cause() -> None:
    with (
        RedisServer() as primary,
        RedisServer(extra_args=["--replicaof", "127.0.0.1", "1"]) as replica,
        RedisServer(password="right") as guarded,
    ):
        wrong = guarded.url.replace("right", "wrong")
        with Redlock([primary.url, replica.url, wrong], retry_count=0) as dlm:
            with pytest.raises(QuorumUnavailable) as err:
                dlm.acquire("r", 10)
            text = str(err.value)
            assert "READONLY" in text or "read only" in text.lower()
            assert "wrong" not in text.replace("wrong password", "")
            assert "right" not in text


def test_something_that_is_not_redis_is_an_error_vote() -> None:
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        with (
            RedisServer() as one,
            Redlock([one.url, f"redis://127.0.0.1:{port}/0"], retry_count=0) as dlm,
            pytest.raises(QuorumUnavailable),
        ):
            dlm.acquire("r", 10)
    finally:
        listener.close()


def test_a_forked_child_uses_its_own_connections(dlm: Redlock, resource: str) -> None:
    lock = dlm.acquire(resource, 10)
    assert lock is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            child = dlm.acquire(resource + ":child", 10)
            code = 0 if child is not None and child.release() else 1
            code = code or (2 if dlm.acquire(resource, 10) is not None else 0)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lock.extend(10) > 9  # the parent's connections survived the child
    assert lock.release()


def test_a_hung_master_is_detected_even_when_every_round_settles_without_it(
    fresh5: RedisGroup,
) -> None:
    """Rounds that reach a quorum without the hung master must still notice it hangs,
    before our commands fill its socket buffers and stall a send (found by the benchmark)."""
    with Redlock(fresh5.urls, master_timeout=0.2) as dlm:
        warm = dlm.acquire("r", 10)
        assert warm is not None
        warm.release()
        fresh5[0].pause()
        votes_on_hung: list[str] = []
        deadline = time.monotonic() + 1.5
        pairs = 0
        while time.monotonic() < deadline:
            lock = dlm.acquire("r", 10)
            assert lock is not None, "an uncontended acquire failed"
            votes_on_hung.append(str(lock.votes[0]))
            assert lock.release()
            pairs += 1
        fresh5[0].resume()
    assert pairs > 10
    assert any("hangs" in v or "skipped" in v for v in votes_on_hung), votes_on_hung[-3:]


def test_a_release_reaches_a_master_in_its_cool_down(fresh3: RedisGroup) -> None:
    """A master that missed one reply is skipped for a while; our key on it must still be
    deleted by the release (it was left there until expiry, a master short of the
    resource's fault tolerance: with a second hiccup nobody could lock it)."""
    with Redlock(fresh3.urls, master_timeout=0.2) as dlm:
        key = dlm.settings.key("r")
        with fresh3[0].client() as client:  # masters 0 and 1 disagree on "other", so...
            client.set(dlm.settings.key("other"), "someone", px=60_000)
        for _attempt in range(5):  # a loaded machine may let the 0.1 s cool-down pass
            lock = dlm.acquire("r", 30)
            assert lock is not None
            assert wait_for(lambda: None not in keys_on(fresh3, key), timeout=5)
            fresh3[2].pause()
            assert not dlm.locked("other")  # ...this waits for master 2, which times out
            fresh3[2].resume()
            with fresh3[2].client() as client:
                client.ping()  # it has answered our late call too: slow, not hung
            cooling = dlm.roster.health[2].down_until > dlm.clock() + 0.02
            assert lock.release()
            if cooling:
                break
            assert wait_for(lambda: keys_on(fresh3, key) == [None] * 3, timeout=5)
        assert cooling, "master 2 was never in its cool-down when released: proves nothing"
        assert wait_for(lambda: keys_on(fresh3, key) == [None] * 3, timeout=5)


def test_a_release_answered_after_its_round_still_runs(fresh3: RedisGroup) -> None:
    """A master too slow for the round still runs the release: its scripts were loaded
    when we connected, so the late reply is not a NOSCRIPT nobody reads (the first
    release on a connection used to be dropped that way, leaving our key until expiry)."""
    with Redlock(fresh3.urls) as dlm:
        lock = dlm.acquire("r", 30)
        assert lock is not None
        key = dlm.settings.key("r")
        assert wait_for(lambda: None not in keys_on(fresh3, key), timeout=5)
        fresh3[2].pause()
        assert lock.release()  # settled by masters 0 and 1
        fresh3[2].resume()
        assert wait_for(lambda: keys_on(fresh3, key) == [None] * 3, timeout=5)


def test_a_late_noscript_sends_the_release_again_with_its_source(fresh3: RedisGroup) -> None:
    """Scripts flushed behind our back: the late NOSCRIPT to a release is read when the
    connection is next used, and the release is sent again with the script's source."""
    with Redlock(fresh3.urls) as dlm:
        lock = dlm.acquire("r", 30)
        assert lock is not None
        key = dlm.settings.key("r")
        assert wait_for(lambda: None not in keys_on(fresh3, key), timeout=5)
        with fresh3[2].client() as client:
            client.script_flush()
        fresh3[2].pause()
        assert lock.release()  # settled by masters 0 and 1; master 2 will say NOSCRIPT
        fresh3[2].resume()
        time.sleep(0.05)
        assert keys_on(fresh3, key)[2] is not None  # the premise: not run
        assert not dlm.locked("other")  # the next round on that connection reads it...
        assert wait_for(lambda: keys_on(fresh3, key) == [None] * 3, timeout=5)  # ...sends it


class _Cut(Exception):
    """Raised from a signal handler into a round, as a soft time limit would be."""


def test_a_round_cut_off_midway_never_lends_its_replies_to_the_next_call(
    fresh3: RedisGroup,
) -> None:
    """Replies still on their way when a round is cut off (a soft time limit, gevent's
    Timeout, KeyboardInterrupt) must not be read as the next call's answers: here they
    would make a resource held by someone else look free to us."""

    def cut(_signum: int, _frame: object) -> None:
        raise _Cut

    with Redlock(fresh3.urls, master_timeout=5) as dlm:
        warm = dlm.acquire("warm", 10)  # connections open
        assert warm is not None
        warm.release()
        fresh3[1].pause()
        fresh3[2].pause()
        previous = signal.signal(signal.SIGALRM, cut)
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(_Cut):
                dlm.acquire("first", 30)  # waits for masters 1 and 2 when it is cut off
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        fresh3[1].resume()
        fresh3[2].resume()  # both now say yes to "first", on the connections cut off
        key = dlm.settings.key("held")
        for server in fresh3:
            with server.client() as client:
                client.set(key, "someone-else", px=30_000)
        time.sleep(0.1)
        assert dlm.acquire("held", 30) is None


def test_holder_names_the_owner_a_quorum_agrees_on(fresh3: RedisGroup) -> None:
    with Redlock(fresh3.urls) as dlm:
        assert dlm.holder("job") is None
        lock = dlm.acquire("job", 10, owner="task-7@worker-2")
        assert lock is not None
        assert dlm.holder("job") == "task-7@worker-2"
        assert lock.token.partition(":")[0] not in (dlm.holder("job") or "")
        lock.release()
        key = dlm.settings.key("job")
        for server, owner in zip(fresh3, ["a", "b", "c"], strict=True):
            with server.client() as client:
                client.set(key, f"secret:{owner}", px=10_000)
        assert dlm.holder("job") is None  # three owners, no quorum for any


def test_a_loss_nobody_listens_for_is_logged_at_error(
    fresh3: RedisGroup, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="celery_redlock"), Redlock(fresh3.urls) as dlm:
        lock = dlm.acquire("job", 0.9, auto_renew=True)
        assert lock is not None
        fresh3[0].kill()
        fresh3[1].kill()
        # The renewal thread marks the lock lost, then logs: wait for the log line itself.
        assert wait_for(lambda: "lock on 'job' lost" in caplog.text, timeout=10)
    assert lock.lost is not None
