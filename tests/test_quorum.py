"""The algorithm's decisions, run on simulated masters and a virtual clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_redlock._core import quorum
from celery_redlock._core.protocol import Outcome, Verb
from celery_redlock._core.quorum import AcquireRequest, Count, Verdict, Vote
from celery_redlock._core.settings import LockSettings
from celery_redlock.exceptions import LockLost, QuorumUnavailable
from tests.sim import SimCluster


def request(blocking: bool = False, timeout: float | None = None) -> AcquireRequest:
    return AcquireRequest("res", "k:res", 10.0, blocking, timeout)


@pytest.mark.parametrize(("n", "q"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_quorum_is_a_strict_majority(n: int, q: int) -> None:
    assert quorum.quorum(n) == q


@given(st.integers(1, 15))
def test_two_quorums_always_share_a_master(n: int) -> None:
    assert 2 * quorum.quorum(n) > n


def test_validity_counts_from_before_the_round_and_discounts_drift() -> None:
    # 10 s TTL, drift 1% + 2 ms: good until start + 10 - 0.102.
    assert quorum.valid_until(100.0, 10.0, 0.01) == pytest.approx(109.898)


def counted(yes: int, no: int, errors: int, masters: int) -> Count:
    """A running count that has read ``yes`` grants, ``no`` refusals and ``errors`` errors."""
    outcomes = [Outcome.YES] * yes + [Outcome.NO] * no + [Outcome.ERROR] * errors
    return Count([Vote(f"m{i}", o) for i, o in enumerate(outcomes)], masters)


def verdicts_to_come(yes: int, no: int, errors: int, pending: int) -> set[Verdict]:
    """Every verdict the round can still reach, however its ``pending`` masters answer:
    a brute force over their answers, independent of the counter's own rule."""
    masters = yes + no + errors + pending
    return {
        counted(yes + y, no + (pending - y - e), errors + e, masters).verdict()
        for y in range(pending + 1)
        for e in range(pending - y + 1)
    }


@given(
    yes=st.integers(0, 7),
    no=st.integers(0, 7),
    errors=st.integers(0, 7),
    pending=st.integers(0, 7),
)
def test_decided_never_stops_while_the_verdict_could_change(
    yes: int, no: int, errors: int, pending: int
) -> None:
    n = yes + no + errors + pending
    if n == 0:
        return
    if not counted(yes, no, errors, n).decided(pending):
        return
    # However the pending masters would have answered, the verdict is the same.
    assert len(verdicts_to_come(yes, no, errors, pending)) == 1


def test_acquire_wins_on_a_quorum_and_reports_votes() -> None:
    sim = SimCluster(5)
    lease = sim.run(quorum.acquire(request(), sim.policy(), sim.context()))
    assert lease is not None
    assert lease.token == "t1"
    assert len(lease.votes) == 5
    assert all(m.live("k:res", sim.now) == "t1" for m in sim.masters)


def test_acquire_with_a_minority_down_still_wins() -> None:
    sim = SimCluster(5)
    sim.masters[0].up = sim.masters[1].up = False
    lease = sim.run(quorum.acquire(request(), sim.policy(), sim.context()))
    assert lease is not None
    assert sum(v.outcome is Outcome.ERROR for v in lease.votes) == 2


def test_held_resource_ends_a_non_blocking_call_at_once() -> None:
    sim = SimCluster(3)
    first = sim.run(quorum.acquire(request(), sim.policy(), sim.context()))
    assert first is not None
    second = sim.run(quorum.acquire(request(), sim.policy(), sim.context()))
    assert second is None
    assert sim.waits == []  # no retries against a clear holder


def test_majority_down_raises_outage_after_retries_and_leaves_no_keys() -> None:
    sim = SimCluster(5)
    for m in sim.masters[:3]:
        m.up = False
    with pytest.raises(QuorumUnavailable) as err:
        sim.run(quorum.acquire(request(), sim.policy(retry_count=2), sim.context()))
    assert err.value.resource == "res"
    assert len(err.value.votes) == 5
    acquires = [r for r in sim.rounds if r.call.verb is Verb.ACQUIRE]
    assert len(acquires) == 3
    assert all(m.live("k:res", sim.now) is None for m in sim.masters[3:])


def test_split_vote_releases_its_minority_and_retries_with_jitter() -> None:
    sim = SimCluster(3)
    # One master held by a stranger, one down, one free: nobody can show a quorum.
    sim.masters[0].keys["k:res"] = ("a", 10.0)
    sim.masters[1].up = False
    result = sim.run(quorum.acquire(request(), sim.policy(retry_count=2), sim.context()))
    assert result is None
    assert len(sim.waits) == 2
    assert all(0 <= w <= 0.2 for w in sim.waits)
    assert sim.masters[2].live("k:res", sim.now) is None  # our minority key was undone


def test_expired_round_is_not_a_win() -> None:
    sim = SimCluster(3, latency=11.0)  # the round outlives the 10 s TTL
    result = sim.run(quorum.acquire(request(), sim.policy(retry_count=0), sim.context()))
    assert result is None


def test_blocking_acquire_listens_then_waits_for_the_holders_expiry() -> None:
    sim = SimCluster(3)
    for m in sim.masters:
        m.keys["k:res"] = ("other", 0.5)
    lease = sim.run(quorum.acquire(request(blocking=True, timeout=5), sim.policy(), sim.context()))
    assert lease is not None
    assert sim.listens == 1
    # It waited about until the holder's keys expired, not a fixed poll interval.
    assert sim.waits
    assert sim.waits[0] == pytest.approx(0.5 - 0.002, abs=0.01)


def test_blocking_acquire_gives_up_at_its_timeout() -> None:
    sim = SimCluster(3)
    for m in sim.masters:
        m.keys["k:res"] = ("other", 100.0)
    lease = sim.run(
        quorum.acquire(request(blocking=True, timeout=2.5), sim.policy(), sim.context())
    )
    assert lease is None
    assert sim.now == pytest.approx(2.5, abs=0.05)


def test_free_in_counts_the_quorum_th_expiry() -> None:
    votes = [
        Vote("a", Outcome.NO, 300),
        Vote("b", Outcome.NO, 100),
        Vote("c", Outcome.YES),
        Vote("d", Outcome.NO, 200),
        Vote("e", Outcome.ERROR, error="x"),
    ]
    # One free now; two more needed: the second-soonest expiry, 200 ms.
    assert quorum.free_in(votes, 3) == pytest.approx(0.202)
    assert quorum.free_in([Vote("a", Outcome.NO, -1)], 1) == quorum.FALLBACK_POLL


def test_extend_renews_and_fails_cleanly_once_lost() -> None:
    sim = SimCluster(3)
    policy, ctx = sim.policy(), sim.context()
    lease = sim.run(quorum.acquire(request(), policy, ctx))
    renewed = sim.run(quorum.extend(lease, 20.0, policy, ctx))
    assert renewed.error is None
    assert renewed.lease.valid_until > lease.valid_until
    for m in sim.masters[:2]:
        m.keys.clear()
    lost = sim.run(quorum.extend(renewed.lease, 20.0, policy, ctx))
    assert isinstance(lost.error, LockLost)
    assert lost.lease.valid_until <= sim.now  # a lost lock is believed by nobody


def test_extend_after_expiry_fails_without_a_round() -> None:
    sim = SimCluster(3)
    policy, ctx = sim.policy(), sim.context()
    lease = sim.run(quorum.acquire(request(), policy, ctx))
    sim.now += 11
    rounds = len(sim.rounds)
    extension = sim.run(quorum.extend(lease, 10.0, policy, ctx))
    assert isinstance(extension.error, LockLost)
    assert "expired" in str(extension.error)
    assert len(sim.rounds) == rounds


def test_extend_never_resurrects_an_expired_key() -> None:
    sim = SimCluster(3)
    policy, ctx = sim.policy(), sim.context()
    lease = sim.run(quorum.acquire(request(), policy, ctx))
    sim.masters[0].keys.clear()  # one master lost it
    renewed = sim.run(quorum.extend(lease, 10.0, policy, ctx))
    assert renewed.error is None
    assert sim.masters[0].live("k:res", sim.now) is None


def test_extend_with_masters_down_is_an_outage_not_a_loss() -> None:
    sim = SimCluster(3)
    policy, ctx = sim.policy(), sim.context()
    lease = sim.run(quorum.acquire(request(), policy, ctx))
    sim.masters[0].up = sim.masters[1].up = False
    extension = sim.run(quorum.extend(lease, 10.0, policy, ctx))
    assert isinstance(extension.error, QuorumUnavailable)
    assert extension.lease == lease  # nothing was applied: the old validity stands


def test_a_shortened_extend_answered_late_leaves_only_the_shorter_validity() -> None:
    """The masters applied the shorter TTL but their replies came too late: the holder
    must stop believing before their keys expire and another client can take the lock."""
    sim = SimCluster(3)
    policy, ctx = sim.policy(), sim.context()
    lease = sim.run(quorum.acquire(request(), policy, ctx))  # ttl 10
    for m in sim.masters:
        m.late = True
    start = sim.now
    extension = sim.run(quorum.extend(lease, 1.0, policy, ctx))
    assert isinstance(extension.error, QuorumUnavailable)
    assert extension.lease.valid_until == quorum.valid_until(start, 1.0, policy.drift_factor)
    for m in sim.masters:
        m.late = False
    sim.now = extension.lease.valid_until  # the holder's belief ends while...
    assert sim.run(quorum.acquire(request(), policy, ctx)) is None  # ...the keys still live
    sim.now = start + 1.0 + 0.01  # once they expired, another client takes the lock
    assert sim.run(quorum.acquire(request(), policy, ctx)) is not None


def test_a_longer_extend_that_fails_keeps_the_old_validity() -> None:
    sim = SimCluster(3)
    policy, ctx = sim.policy(), sim.context()
    lease = sim.run(quorum.acquire(request(), policy, ctx))
    for m in sim.masters:
        m.late = True
    extension = sim.run(quorum.extend(lease, 20.0, policy, ctx))
    assert isinstance(extension.error, QuorumUnavailable)
    assert extension.lease.valid_until == lease.valid_until


def test_release_never_deletes_another_holders_key() -> None:
    sim = SimCluster(3)
    policy, ctx = sim.policy(), sim.context()
    lease = sim.run(quorum.acquire(request(), policy, ctx))
    sim.masters[0].keys["k:res"] = ("intruder", 99.0)
    released, votes = sim.run(quorum.release(lease.key, lease.token, policy))
    assert released  # two of three held our token
    assert sim.masters[0].live("k:res", sim.now) == "intruder"
    assert [v.outcome for v in votes] == [Outcome.NO, Outcome.YES, Outcome.YES]


def test_inspect_reports_a_quorum_view() -> None:
    sim = SimCluster(3)
    policy = sim.policy()
    assert sim.run(quorum.inspect("res", "k:res", policy))[0] is False
    sim.masters[0].keys["k:res"] = ("x", 9.0)
    assert sim.run(quorum.inspect("res", "k:res", policy))[0] is False
    sim.masters[1].keys["k:res"] = ("x", 9.0)
    assert sim.run(quorum.inspect("res", "k:res", policy))[0] is True


def test_ttl_goes_on_the_wire_rounded_up() -> None:
    assert quorum.ttl_ms(0.0001) == 1
    assert quorum.ttl_ms(1.0001) == 1001
    assert quorum.ttl_ms(2) == 2000


def test_the_running_count_settles_exactly_on_a_certain_win_refusal_or_outage() -> None:
    """Count.decided (the drivers' per-reply check) stops a round exactly when every way
    its pending masters could answer gives one verdict, and that verdict is a win, a
    refusal or an outage, for every split of up to nine masters. A split foreseen before
    the end is read to the end: ``decided`` only looks for a quorum or a certain outage."""
    for masters in range(1, 10):
        for yes in range(masters + 1):
            for no in range(masters + 1 - yes):
                for errors in range(masters + 1 - yes - no):
                    pending = masters - yes - no - errors
                    to_come = verdicts_to_come(yes, no, errors, pending)
                    settled = not pending or (len(to_come) == 1 and Verdict.SPLIT not in to_come)
                    count = counted(yes, no, errors, masters)
                    assert count.decided(pending) == settled, (masters, yes, no, errors)
                    assert (count.yes, count.no, count.errors) == (yes, no, errors)


def test_a_round_with_an_abstention_is_read_to_its_end() -> None:
    """Abstentions alone would settle it (an outage), but the masters still to answer may
    report a longer restart guard, which the client must hear."""
    count = Count([Vote("m0", Outcome.ABSTAIN, 100), Vote("m1", Outcome.ABSTAIN, 100)], 3)
    assert not count.decided(1)
    assert count.decided(0)
    assert Count([Vote("m0", Outcome.ERROR), Vote("m1", Outcome.ERROR)], 3).decided(1)


def test_a_grant_from_a_master_with_a_shorter_guard_than_another_reported_is_not_counted() -> None:
    """Two grants from masters that know a 2 s guard and a refusal from one that knows
    60 s: the grants may come from masters that restarted empty and forgot the 60 s, so
    they count as abstentions (their keys are undone), and 60 s is declared from then on."""
    policy = LockSettings(retry_count=1, retry_delay=0.0).policy(3)
    ctx = quorum.Context(lambda: 0.0, random.Random(0), lambda: "t")
    req = AcquireRequest("res", "k:res", 2.0, restart_guard=2.0)
    algorithm = quorum.acquire(req, policy, ctx)
    first = next(algorithm)
    assert isinstance(first, quorum.Round)
    assert first.call.guard_ms == 2_000
    votes = [
        Vote("m0", Outcome.YES),
        Vote("m1", Outcome.YES),
        Vote("m2", Outcome.NO, 45_000, guard_ms=60_000),
    ]
    undo = algorithm.send(votes)
    assert isinstance(undo, quorum.Round)
    assert undo.call.verb is Verb.UNDO
    assert undo.targets == (0, 1)
    assert ctx.guards.ms == 60_000
    assert isinstance(algorithm.send(None), quorum.Wait)  # an outage: retried
    again = algorithm.send(None)
    assert isinstance(again, quorum.Round)
    assert again.call.guard_ms == 60_000
    abstaining = [Vote(f"m{i}", Outcome.ABSTAIN, 58_000, guard_ms=60_000) for i in range(2)]
    with pytest.raises(QuorumUnavailable) as err:
        algorithm.send([*abstaining, votes[2]])
    assert "abstains after a restart (58000 ms of guard left)" in str(err.value)


def test_grants_from_masters_that_all_know_the_longest_guard_count() -> None:
    policy = LockSettings().policy(3)
    ctx = quorum.Context(lambda: 0.0, random.Random(0), lambda: "t")
    algorithm = quorum.acquire(AcquireRequest("res", "k:res", 2.0, restart_guard=2.0), policy, ctx)
    next(algorithm)
    votes = [
        Vote("m0", Outcome.YES, guard_ms=60_000),
        Vote("m1", Outcome.YES, guard_ms=60_000),
        Vote("m2", Outcome.NO, 45_000, guard_ms=60_000),
    ]
    with pytest.raises(StopIteration) as won:
        algorithm.send(votes)
    assert isinstance(won.value.value, quorum.Lease)
    assert ctx.guards.ms == 60_000  # declared from now on, though every grant counted
