"""The deterministic simulation: the real algorithm under every fault, checked for overlaps
and for fences that do not rise.

Thousands of seeded schedules per run; a failure names its seed and the command that
replays it. Set ``REDLOCK_SIM_SOAK=1`` for ten times as many, each four times longer.
The hazard tests are as important as the safety ones: a checker that never finds
anything proves nothing, so schedules that break the algorithm's assumptions (clocks
far apart, masters restarting empty with no guard, masters' wall clocks days apart) must
be caught, and so must a naive way of minting fences, and the naive semaphore (a count
of holders per master) that the slots design replaces.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celery_redlock._core import quorum
from celery_redlock._core.protocol import Call, Outcome, Verb
from celery_redlock._core.quorum import Vote
from celery_redlock.testing import RedisServer
from tests.history import Grant, Window, find_crowds, find_fence_regressions, find_overlaps
from tests.simulation.__main__ import SCHEDULES
from tests.simulation.engine import Clock
from tests.simulation.explore import explore
from tests.simulation.master import SimMaster
from tests.simulation.scenarios import BOUNDED_SPREAD, CI, SOAK, draw, run

SOAK_MODE = os.environ.get("REDLOCK_SIM_SOAK") == "1"
BUDGET = SOAK if SOAK_MODE else CI


def seeds(scenario: str) -> range:
    return range(SCHEDULES[scenario] * (10 if SOAK_MODE else 1))


# --- the promise holds where the assumptions do -------------------------------------------


@pytest.mark.parametrize(
    "scenario",
    [
        "safe",
        "drift-bounded",
        "restart-guarded",
        "restart-delayed",
        "restart-persistent",
        "restart-mixed-guards",
        "restart-short-guard",
    ],
)
def test_no_two_holders_and_rising_fences_where_the_assumptions_hold(scenario: str) -> None:
    summary = explore(scenario, seeds(scenario), BUDGET)
    assert not summary.failing, summary.explain()
    assert summary.windows > summary.schedules  # the schedules did hand out locks
    assert summary.grants == summary.windows  # every one of them fenced


# --- and the checker catches it where they do not -----------------------------------------


@pytest.mark.parametrize("scenario", ["drift", "restart"])
def test_schedules_that_break_the_assumptions_are_caught(scenario: str) -> None:
    summary = explore(scenario, seeds(scenario), BUDGET)
    assert summary.failing, f"the {scenario} hazard went unnoticed: the checker is blind"
    assert "replay: python -m tests.simulation" in summary.explain()


def test_the_guard_closes_exactly_the_schedules_that_broke_without_it() -> None:
    """Same seeds, same crashes; only the restart guard differs."""
    broken = [r.seed for r in explore("restart", range(30), BUDGET).failing]
    assert len(broken) > 20
    assert not explore("restart-guarded", broken, BUDGET).failing


def test_an_unknown_extend_believed_in_full_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Holders that keep their old validity after a shortened extend that timed out (the
    masters applied it unseen) overlap with the next holder, and the checker sees it;
    the same seeds are safe with the rule (``quorum.unsure``) in force."""
    monkeypatch.setattr(quorum, "unsure", lambda lease, *_args: lease)
    broken = [r.seed for r in explore("safe", seeds("safe"), BUDGET).failing]
    assert broken, "believing a timed-out shortened extend went unnoticed: the checker is blind"
    monkeypatch.undo()
    assert not explore("safe", broken, BUDGET).failing


def test_fences_seeded_from_wall_clocks_days_apart_are_caught() -> None:
    """Counters re-seeded (after a restart, or their expiry) on masters whose wall clocks
    are far apart start below fences already handed out: the checker sees it, and the
    same schedules on clocks that agree are fine. The lock itself stays safe."""
    summary = explore("clocks-apart", seeds("clocks-apart"), BUDGET)
    assert summary.regressing, "fences from clocks days apart rose anyway: the checker is blind"
    assert not summary.overlapping, summary.explain()
    assert "replay: python -m tests.simulation --scenario clocks-apart" in summary.explain()
    broken = [r.seed for r in summary.regressing]
    assert not explore("restart-delayed", broken, BUDGET).failing


def test_seeds_in_whole_seconds_after_a_short_restart_guard_are_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restart guard under a second (0.3 s here, which the settings accept) keeps the
    lock safe; a counter lost in the restart, re-seeded from whole seconds, would start
    where it did before the restart, and fences repeat. The checker sees it when the seed
    loses its microseconds after the guard too, and the same seeds rise with the rule."""
    monkeypatch.setattr(SimMaster, "PRECISE_SEED_MS", 0)
    summary = explore("restart-short-guard", seeds("restart-short-guard"), BUDGET)
    assert summary.regressing, "fences re-seeded in the same second rose: the checker is blind"
    assert not summary.overlapping, summary.explain()
    broken = [r.seed for r in summary.regressing]
    monkeypatch.undo()
    assert not explore("restart-short-guard", broken, BUDGET).failing


def _highest_grant(
    _call: Call, _votes: Sequence[Vote], fence: int, _agreed: int, _need: int
) -> quorum.Algorithm:
    """The naive rule: the highest counter among the granting masters, never written
    back where they disagree (a generator, as ``quorum._fence`` is, that sends nothing)."""
    return fence, ()
    yield  # pragma: no cover


def test_the_highest_grant_alone_as_the_fence_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counters drift apart (a master misses grants while down or cut off, a lost round
    counts on a minority), so a later quorum can miss the master that counted highest:
    without the write-back the checker sees fences go backwards, and the same seeds
    rise with the rule (``quorum._fence``) in force."""
    monkeypatch.setattr(quorum, "_fence", _highest_grant)
    broken = [r.seed for r in explore("safe", range(300), BUDGET).regressing]
    assert broken, "the naive fence went unnoticed: the checker is blind"
    monkeypatch.undo()
    assert not explore("safe", broken, BUDGET).failing


def test_never_more_permits_than_the_limit_under_every_fault() -> None:
    """Semaphores of 1 to 3 permits under ``safe``'s faults, more clients than permits:
    never more than the limit valid at once, every permit fenced on its slot."""
    summary = explore("permits", seeds("permits"), BUDGET)
    assert not summary.failing, summary.explain()
    assert summary.windows > 2 * summary.schedules  # permits were handed out, and often
    assert summary.grants == summary.windows


def test_the_naive_per_master_count_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Masters that admit while fewer than ``limit`` holders are on them, a quorum of
    admissions winning (``SimMaster.NAIVE_PERMITS``), hand out more permits than the
    limit, and the checker sees it; the same seeds keep to the limit with the slots."""
    monkeypatch.setattr(SimMaster, "NAIVE_PERMITS", True)
    summary = explore("permits", seeds("permits"), BUDGET)
    crowded = [r.seed for r in summary.crowded]
    assert crowded, "the naive semaphore went unnoticed: the checker is blind"
    assert " permits of " in summary.explain()
    # where the theory says a count per master fails: several permits, several masters
    drawn = [draw("permits", seed)[0] for seed in crowded]
    assert all(p.habits.limit >= 2 and p.masters >= 3 for p in drawn)
    monkeypatch.undo()
    assert not explore("permits", crowded, BUDGET).failing


# --- replay ---------------------------------------------------------------------------------


def test_a_seed_replays_exactly() -> None:
    first = run("safe", 11, trace=True)
    second = run("safe", 11, trace=True)
    assert first.log
    assert first.log == second.log
    assert first.events == second.events


def test_a_failing_schedule_names_its_seed_and_its_overlap() -> None:
    summary = explore("restart", range(5))
    text = summary.explain()
    seed = summary.failing[0].seed
    assert f"--scenario restart --seed {seed}" in text
    assert " overlaps " in text


# --- the checker ----------------------------------------------------------------------------


def test_the_checker_finds_intersections_per_key_only() -> None:
    windows = [
        Window("k", "a", "t1", 0.0, 1.0),
        Window("k", "b", "t2", 1.0, 2.0),  # touches: fine
        Window("k", "c", "t3", 1.5, 1.6),  # inside b
        Window("j", "d", "t4", 0.5, 1.5),  # another key
        Window("k", "e", "t5", 3.0, 3.0),  # empty: held nothing
    ]
    found = find_overlaps(windows)
    assert [(o.first.token, o.second.token) for o in found] == [("t2", "t3")]
    assert found[0].seconds == pytest.approx(0.1)


def test_the_fence_checker_compares_each_lease_with_those_handed_over_before_it_began() -> None:
    grants = [
        Grant("k", "a", "t1", 10, handed=1.0, asked=0.5),
        Grant("k", "b", "t2", 20, handed=2.0, asked=1.5),
        Grant("k", "c", "t3", 15, handed=3.0, asked=2.5),  # below t2, handed before: caught
        Grant("k", "d", "t4", 12, handed=3.2, asked=1.8),  # began before t2 was handed: fine
        Grant("k", "e", "t5", 30, handed=4.0, asked=3.5),
        Grant("k", "f", "t6", 30, handed=4.1, asked=3.9),  # t5's fence: caught either way
        Grant("k", "g", "t7", 25, handed=5.0, asked=5.0),  # exact times (the simulator's)
        Grant("j", "h", "t8", 1, handed=6.0, asked=6.0),  # another key
    ]
    found = [(r.earlier.token, r.later.token) for r in find_fence_regressions(grants)]
    assert sorted(found) == [("t2", "t3"), ("t5", "t6"), ("t5", "t7")]
    assert "fence 15" in str(find_fence_regressions(grants)[0])


def test_the_crowd_checker_counts_open_permits_per_semaphore() -> None:
    windows = [
        Window("s:permit:0", "a", "t1", 0.0, 2.0),
        Window("s:permit:1", "b", "t2", 0.5, 1.0),
        Window("s:permit:1", "c", "t3", 1.0, 3.0),  # touches b's end: two at once, fine
        Window("s:permit:2", "d", "t4", 1.5, 2.5),  # with a and c: three of two
        Window("u:permit:0", "e", "t5", 1.5, 2.5),  # another semaphore
        Window("s", "f", "t6", 0.0, 9.0),  # a lock on the same resource: not a permit
        Window("s:permit:3", "g", "t7", 1.2, 1.2),  # empty: held nothing
    ]
    found = find_crowds(windows, 2)
    assert [[w.token for w in c.windows] for c in found] == [["t1", "t3", "t4"]]
    assert "3 permits of 2 at once" in str(found[0])


# --- the simulated master is the real scripts ----------------------------------------------


def test_the_simulated_master_answers_as_a_real_one() -> None:
    """The same calls, including the restart guard after a FLUSHALL, on both."""
    calls = [
        Call(Verb.ACQUIRE, "k", "t1", 10_000, 0),
        Call(Verb.ACQUIRE, "k", "t2", 10_000, 0),
        Call(Verb.ACQUIRE, "k", "t1", 20_000, 20_000),  # armed master: the guard passes
        Call(Verb.INSPECT, "k"),
        Call(Verb.EXTEND, "k", "t2", 10_000),
        Call(Verb.EXTEND, "k", "t1", 10_000),
        Call(Verb.RELEASE, "k", "t2"),
        Call(Verb.RELEASE, "k", "t1"),
        Call(Verb.INSPECT, "k"),
        None,  # FLUSHALL: the data and the boot marker are gone
        Call(Verb.ACQUIRE, "k", "t3", 10_000, 0),  # guard off: granted
        Call(Verb.RELEASE, "k", "t3"),
        Call(Verb.ACQUIRE, "k", "t4", 10_000, 30_000),  # guard on: abstains
        Call(Verb.ACQUIRE, "k", "t5", 10_000, 5_000),  # the master's 30 s, reported
        Call(Verb.ACQUIRE, "k", "t4", 10_000, 0),
    ]
    sim = SimMaster(0, Clock(1.0, time.time()))  # the epoch, as Redis's TIME
    with RedisServer() as server, server.client() as client:
        for call in calls:
            if call is None:
                client.flushall()
                sim.crash()
                sim.restart()
                continue
            wire = call.command() if call.verb is Verb.INSPECT else call.fallback()
            real = call.parse(client.execute_command(*wire))
            modelled = call.parse(sim.execute(call, 0.0)[0])
            assert real.outcome == modelled.outcome, call
            assert real.guard_ms == modelled.guard_ms, call
            if real.pttl_ms is not None and modelled.pttl_ms is not None:
                assert abs(real.pttl_ms - modelled.pttl_ms) < 5_000, call
    assert modelled.outcome is Outcome.YES


def test_the_simulated_fence_counters_count_as_the_scripts_do() -> None:
    """Fenced grants count one up (a re-armed one not), a write-back raises the counter
    only while the key is ours, a FLUSHALL re-seeds it: the same fences on both, relative
    to each one's first seed (whole seconds of its own clock, times a million)."""
    calls = [
        Call(Verb.ACQUIRE, "k", "t1", 10_000, 0, fencing=True),
        Call(Verb.ACQUIRE, "k", "t1", 10_000, 0, fencing=True),  # re-armed: not counted
        Call(Verb.ACQUIRE, "k", "t2", 10_000, 0, fencing=True),  # refused: no fence
        Call(Verb.FENCE, "k", "t1", fence=5),  # lower than the counter: kept
        Call(Verb.RELEASE, "k", "t1"),
        Call(Verb.FENCE, "k", "t1", fence=10**15),  # not ours: refused
        Call(Verb.ACQUIRE, "k", "t3", 10_000, 0, fencing=True),
        Call(Verb.ACQUIRE, "k", "t4", 10_000, 0, fencing=False),  # refused: no fence
        Call(Verb.RELEASE, "k", "t3"),
        Call(Verb.ACQUIRE, "k", "t5", 10_000, 0),  # unfenced grant: the counter untouched
        Call(Verb.RELEASE, "k", "t5"),
        Call(Verb.ACQUIRE, "k", "t6", 10_000, 0, fencing=True),
    ]
    sim = SimMaster(0, Clock(1.0, time.time()))
    with RedisServer() as server, server.client() as client:
        seen: list[tuple[list[int | None], list[int | None]]] = []
        for _ in range(2):
            real_fences: list[int | None] = []
            sim_fences: list[int | None] = []
            for call in calls:
                real = call.parse(client.execute_command(*call.fallback()))
                modelled = call.parse(sim.execute(call, 0.0)[0])
                assert real.outcome == modelled.outcome, call
                real_fences.append(real.fence)
                sim_fences.append(modelled.fence)
            seen.append((real_fences, sim_fences))
            client.flushall()  # the counters go with the data: the second pass re-seeds
            sim.crash()
            sim.restart()
    for real_fences, sim_fences in seen:
        for fences in (real_fences, sim_fences):
            seed = fences[0]
            assert seed is not None
            assert seed % 1_000_000 == 0
            assert abs(seed / 1_000_000 - time.time()) < 60
            relative = [None if f is None else f - seed for f in fences]
            assert relative == [0, 0, None, 0, None, None, 1, None, None, None, None, 2]


def test_the_simulated_permits_answer_as_the_real_script() -> None:
    """PERMIT on both: the first free slot in the order given, a re-arm of our own slot
    (however the order changed), refusals with the soonest expiry, the restart guard;
    a semaphore's UNDO frees only our token's slots, and its RELEASE wakes its line."""
    a, b, c = ("s:permit:0", "s:permit:1", "s:permit:2")

    def permit(token: str, *slots: str, guard: int = 0) -> Call:
        return Call(Verb.PERMIT, "s:permits", token, 10_000, guard, "", True, 0, slots)

    calls = [
        permit("t1", b, c, a),  # b
        permit("t2", b, c, a),  # c
        permit("t1", a, b, c),  # ours already: b re-armed, not a
        permit("t3", a, b, c),  # a
        permit("t4", c, a, b),  # all held
        Call(Verb.UNDO, "s:permits", "t2", slots=(a, b, c)),  # frees c only
        permit("t4", a, b, c),  # c
        Call(Verb.RELEASE, b, "t1", line="s:permits"),
        permit("t5", a, b, c),  # b
        None,  # FLUSHALL: the marker is gone
        permit("t6", a, b, c, guard=30_000),  # abstains
    ]
    sim = SimMaster(0, Clock(1.0, time.time()))
    granted: list[str | None] = []
    with RedisServer() as server, server.client() as client:
        for call in calls:
            if call is None:
                client.flushall()
                sim.crash()
                sim.restart()
                continue
            real = call.parse(client.execute_command(*call.fallback()))
            modelled = call.parse(sim.execute(call, 0.0)[0])
            assert (real.outcome, real.slot) == (modelled.outcome, modelled.slot), call
            assert (real.fence is None) == (modelled.fence is None), call
            if real.pttl_ms is not None and modelled.pttl_ms is not None:
                assert abs(real.pttl_ms - modelled.pttl_ms) < 5_000, call
            if call.verb is Verb.PERMIT:
                granted.append(real.slot if real.outcome is Outcome.YES else real.outcome.value)
    assert granted == [b, c, b, a, "no", c, b, "abstain"]


# --- the arithmetic the simulation relies on -----------------------------------------------


def test_the_bounded_spread_is_within_the_drift_allowance() -> None:
    ttl = 1.0
    allowance = ttl / (ttl - quorum.drift(ttl, 0.01))
    assert allowance > (1 + BOUNDED_SPREAD) / (1 - BOUNDED_SPREAD)


@given(
    ttl=st.floats(0.05, 3600),
    factor=st.floats(0.0, 0.49),
    client_rate=st.floats(0.5, 2.0),
    ratio=st.floats(0.5, 1.0),
    start=st.floats(0, 1e5),
    landed=st.floats(0, 1.0),
    origin=st.floats(0, 1e6),
)
def test_a_lease_never_outlives_its_key_when_drift_is_within_the_factor(
    *,
    ttl: float,
    factor: float,
    client_rate: float,
    ratio: float,
    start: float,
    landed: float,
    origin: float,
) -> None:
    """valid_until (client clock) comes before the key's expiry (master clock, whole ms),
    whenever the master's clock runs at most ``1 / (1 - factor)`` times the client's."""
    client = Clock(client_rate, 0.0)
    master_rate = client_rate * (1 + ratio * (1 / (1 - factor) - 1))
    master = SimMaster(0, Clock(master_rate, origin))
    until = quorum.valid_until(client.read(start), ttl, factor)
    set_at = start + landed * (client.true_at(until) - start)  # the key landed in time
    master.execute(Call(Verb.ACQUIRE, "k", "t", quorum.ttl_ms(ttl)), set_at)
    end = client.true_at(until)
    assert math.isfinite(end)
    alive = master.execute(Call(Verb.INSPECT, "k"), end)[0]
    assert alive >= 0, "the master let the key go while the client still counted on it"
