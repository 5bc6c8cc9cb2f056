"""The Redlock algorithm, sans I/O: it decides, drivers do the talking.

Each public operation is a generator. It yields *effects* (:class:`Round`: send one call to
these masters and give me their votes; :class:`Listen`: subscribe to our wake-up channel;
:class:`Wait`: sleep, waking early on news) and receives their results. The sync driver
(``sync.py``), the asyncio driver (``aio.py``) and the simulator in the tests are loops of
a dozen lines around the same generators, so the three can never drift apart. Time comes
from an injected clock and chance from an injected ``random.Random``, which is what lets
the simulator replay any schedule from its seed.

The arithmetic follows the reference description (redis.io, "Distributed locks with
Redis"): quorum is a strict majority; a lock won at ``start`` is good until
``start + ttl - drift``, where drift covers clock-rate differences between us and the
masters (1% of the TTL) plus 2 ms for Redis's own expiry precision.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NamedTuple, TypeAlias

from celery_redlock._core.protocol import (
    Call,
    Outcome,
    Verb,
    permit_key,
    permit_line,
    waiter_channel,
)
from celery_redlock._core.protocol import Vote as Vote  # noqa: PLC0414 - re-exported
from celery_redlock.exceptions import LockLost, QuorumUnavailable

#: Added to every drift estimate: Redis expires keys with up to 1 ms of slack, and our
#: own clock reading adds up to another (antirez's reference and node-redlock use 2 ms).
CLOCK_PRECISION = 0.002

#: A blocked waiter never sleeps longer than this without asking again, even when it
#: expects a release message: the message could be lost with a dropped connection.
FALLBACK_POLL = 1.0

#: How long a woken waiter waits for the other masters' wake-ups before it asks anyway.
#: Each master wakes it once its own DEL is done, and the release reached them all at
#: once, so the copies come within moments of each other; asking on the first copy would
#: often find the key still held on the masters the release had not reached yet, lose,
#: and leave a round to undo. A master that cannot wake us (an ACL, a line in another
#: order) costs each hand-off this much, no more.
STRAGGLERS = 0.005


def quorum(n: int) -> int:
    """Votes needed out of ``n`` masters: a strict majority, so two quorums always share a
    master, and one master can never grant the same key to two tokens at once."""
    return n // 2 + 1


def drift(ttl: float, drift_factor: float) -> float:
    """How much of a TTL we must not count on, for clock drift and expiry precision: the
    one drift formula (validity here, the shortest TTL ``LockSettings.ttl`` accepts)."""
    return ttl * drift_factor + CLOCK_PRECISION


def valid_until(start: float, ttl: float, drift_factor: float) -> float:
    """When a lock whose round began at ``start`` stops being safely ours.

    Counting from the moment *before* the first command went out is what makes this safe:
    every master's key was set after ``start``, so none expires before ``start + ttl``
    by its own clock, and drift covers the difference between its clock and ours.
    """
    return start + ttl - drift(ttl, drift_factor)


class Verdict(Enum):
    """What a round of acquire votes says about the resource."""

    WON = "won"  # a quorum said yes, in time
    HELD = "held"  # a quorum is held by others: contention
    SPLIT = "split"  # enough masters answered, but nobody has a quorum (a race)
    OUTAGE = "outage"  # too few masters answered to decide either way


# --- effects -----------------------------------------------------------------------------


class Round(NamedTuple):
    """Send ``call`` to ``targets`` (indices; None means every master) at once and return
    their votes in target order, stopping early once :meth:`Count.decided` says the rest cannot
    change the outcome; replies not in by then are ERROR votes. ``wait=False`` sends
    without reading anything (clean-ups whose answer changes nothing), so drivers send it
    with the script's source, which a master that lost its script cache still runs."""

    call: Call
    wait: bool = True
    targets: tuple[int, ...] | None = None


class Count:
    """The one vote counter: a round's votes against the quorum of ``masters``, counted as
    they arrive (the drivers :meth:`add` each reply and ask :meth:`decided`) or all at once
    (the algorithm reads a finished round's counts and :meth:`verdict`).

    A round in which a master abstains is read to its end (every reply, or the deadline):
    it fails anyway, and the masters that did not restart report the longest restart
    guard in their replies, which a client with a shorter one must hear to declare it
    (see ``_within_longest_guard``). Settling on the abstentions alone could leave them
    unread, every time.
    """

    __slots__ = ("abstained", "errors", "masters", "need", "no", "yes")

    def __init__(self, votes: Sequence[Vote | None], masters: int) -> None:
        self.masters = masters
        self.need = quorum(masters)
        # As add() counts, in one loop without a call per vote: every round is counted.
        yes = no = errors = 0
        abstained = False
        for vote in votes:
            if vote is None:
                continue
            outcome = vote.outcome
            if outcome is Outcome.YES:
                yes += 1
            elif outcome is Outcome.NO:
                no += 1
            else:
                errors += 1
                abstained = abstained or outcome is Outcome.ABSTAIN
        self.yes, self.no, self.errors, self.abstained = yes, no, errors, abstained

    def add(self, vote: Vote) -> None:
        outcome = vote.outcome
        if outcome is Outcome.YES:
            self.yes += 1
        elif outcome is Outcome.NO:
            self.no += 1
        else:
            self.errors += 1
            if outcome is Outcome.ABSTAIN:
                self.abstained = True

    def decided(self, pending: int) -> bool:
        """Whether the round is settled with ``pending`` masters still to answer.

        Settled when a quorum said yes, a quorum said no, or so many failed that the
        others cannot make a quorum of answers any more (an outage). Stopping on "yes is
        impossible" alone would be wrong: two refusals and one timeout out of five could
        still become a quorum of refusals, and contention must not be reported as an
        outage. Drivers ask after every reply, so it stays a few comparisons.
        """
        need = self.need
        if self.abstained:
            return not pending
        return (
            not pending or self.yes >= need or self.no >= need or self.errors > self.masters - need
        )

    def verdict(self, in_time: bool = True) -> Verdict:
        """What a finished round decided (masters that did not answer count as neither
        yes nor no); ``in_time``: the lease is still valid, which a win needs."""
        need = self.need
        if self.yes >= need and in_time:
            return Verdict.WON
        if self.no >= need:
            return Verdict.HELD
        if self.yes + self.no < need:
            return Verdict.OUTAGE
        return Verdict.SPLIT


@dataclass(frozen=True, slots=True)
class Listen:
    """Subscribe to ``channel`` on every master; returns once subscribed (or the per-master
    timeout passed), so that a release waking us after this point cannot be missed.

    The channel is one waiter's own (``protocol.waiter_channel``): a release wakes only the
    oldest waiter in line on each master. A master that refuses the subscription (an ACL
    without the channel) is left out: waits there end by their timed poll alone."""

    channel: str


@dataclass(frozen=True, slots=True)
class Wait:
    """Sleep up to ``seconds``; a wake-up on the listened channel ends it early. Returns
    how many wake-ups came (each master sends its own): the first, and those already in
    when it ended; 0 when it timed out, or nothing is listened to."""

    seconds: float


Effect: TypeAlias = Round | Listen | Wait
Algorithm: TypeAlias = Generator[Effect, Any, Any]


# --- requests and results ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    """The settings the algorithm itself consults (the rest belong to the drivers); made
    by :meth:`LockSettings.policy`, whose defaults are the only ones."""

    masters: int
    drift_factor: float
    retry_count: int
    retry_delay: float

    @property
    def quorum(self) -> int:
        return quorum(self.masters)


class Guards:
    """The longest restart guard (ms) any master has reported to this lock manager.

    Declared with every acquire from then on (when the client's own guard is on), so that
    masters that restarted empty, and forgot the longer guard with their data, apply it
    too (see ``protocol.ACQUIRE``). Only ever raised; two rounds racing may store the
    shorter of their two findings, which the next round that meets the longer corrects.
    """

    __slots__ = ("ms",)

    def __init__(self) -> None:
        self.ms = 0


@dataclass(frozen=True, slots=True)
class Context:
    """Injected time and chance: the clock (monotonic seconds), jitter, and token source;
    and what the masters taught this manager about their restart guard."""

    clock: Callable[[], float]
    rng: random.Random
    new_token: Callable[[], str]
    guards: Guards = field(default_factory=Guards)


class Lease(NamedTuple):
    """What a won round proves: ``token`` holds ``key`` on a quorum until ``valid_until``
    (on the context's clock), and, when fenced, that no earlier lease of ``key`` had a
    fence as high as ``fence``. A permit's ``key`` is its slot's, and ``line`` names the
    semaphore's waiters, whom its release wakes. A named tuple, as the per-round values
    are (see ``Call``)."""

    resource: str
    key: str
    token: str
    ttl: float
    valid_until: float
    votes: tuple[Vote, ...] = ()
    fence: int | None = None
    line: str = ""  # a permit's: whose waiters its release wakes (``permit_line``)


class AcquireRequest(NamedTuple):
    resource: str
    key: str
    ttl: float
    blocking: bool = False
    timeout: float | None = None
    restart_guard: float = 0.0
    owner: str = ""  # appended to the random token, for operators listing who holds what
    fencing: bool = False  # mint a fence with the lease (see _fence)
    limit: int = 0  # a semaphore's number of permits (0: a lock; see _best_slot)


def ttl_ms(ttl: float) -> int:
    """TTL in whole milliseconds for the wire, rounded up so keys never live shorter."""
    return max(1, math.ceil(ttl * 1000))


# --- the decision step -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Retry:
    after: float


@dataclass(frozen=True, slots=True)
class AwaitRelease:
    up_to: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    outage: bool


Step: TypeAlias = Retry | AwaitRelease | GiveUp


@dataclass(slots=True)
class _Attempts:
    """What one acquisition has seen so far: counts of inconclusive and outage rounds, and
    once it waits, the channel it listens on (it then stands in line: see ``acquire``)."""

    splits: int = 0
    outages: int = 0
    waiter: str = ""


def next_step(
    req: AcquireRequest,
    policy: Policy,
    seen: _Attempts,
    *,
    verdict: Verdict,
    won_some: bool = False,
    votes: Sequence[Vote],
    left: float | None,
    rng: random.Random,
) -> Step:
    """After a lost round: give up, retry after jitter, or wait for the holder's release.

    ``left`` is the time until the caller's deadline (None: no deadline). Contention ends a
    non-blocking call at once; a race (split vote) or an outage is retried ``retry_count``
    times after a random delay, so that racing clients fall out of step. An outage is never
    waited out past ``retry_count`` rounds, blocking or not: a caller waiting on a dead
    cluster must be told, not left hanging.
    """
    if verdict is Verdict.OUTAGE:
        seen.outages += 1
        if seen.outages > policy.retry_count:
            return GiveUp(outage=True)
        return _bounded(Retry(rng.uniform(0, policy.retry_delay * 2 ** (seen.outages - 1))), left)
    seen.outages = 0
    # A split vote, or (when waiting) a refusal while we won some masters: the others may
    # be held by fellow waiters racing us after the same release rather than by a
    # holder, and nobody announces a lost round. Retry after jitter, a few times.
    racing = verdict is Verdict.SPLIT or (req.blocking and won_some)
    if racing and (req.blocking or seen.splits < policy.retry_count):
        seen.splits += 1
        if verdict is Verdict.SPLIT or seen.splits <= policy.retry_count:
            return _bounded(Retry(rng.uniform(0, policy.retry_delay)), left)
    if not req.blocking:
        return GiveUp(outage=False)
    wait = min(free_in(votes, policy.quorum), FALLBACK_POLL)
    return _bounded(AwaitRelease(wait), left)


def _bounded(step: Retry | AwaitRelease, left: float | None) -> Step:
    """Keep a step within the caller's deadline; past it, give up."""
    if left is None:
        return step
    if left <= 0:
        return GiveUp(outage=False)
    if isinstance(step, Retry):
        return Retry(min(step.after, left))
    return AwaitRelease(min(step.up_to, left))


def free_in(votes: Sequence[Vote], need: int) -> float:
    """Seconds until enough holders' keys expire for a quorum to be free again.

    Masters that did not refuse us are free now; of the refusals, the ``k``-th soonest
    expiry frees the ``k``-th more master. A key with no expiry (pttl -1) never frees.
    """
    free_now = sum(v.outcome is Outcome.YES for v in votes)
    pttls = sorted(v.pttl_ms for v in votes if v.outcome is Outcome.NO and v.pttl_ms is not None)
    pttls = [p for p in pttls if p >= 0]
    missing = need - free_now
    if missing <= 0:
        return 0.0
    if missing > len(pttls):
        return FALLBACK_POLL
    return pttls[missing - 1] / 1000 + CLOCK_PRECISION


# --- the operations ----------------------------------------------------------------------


def acquire(req: AcquireRequest, policy: Policy, ctx: Context) -> Algorithm:
    """Win ``req.key`` on a quorum; returns a :class:`Lease`, or None when it stays held.

    With ``req.limit`` set, a semaphore's permit: each round asks for the first free one of
    ``limit`` slot keys, and the lease is on the slot a quorum granted (``_best_slot``);
    the rest (verdicts, fences, undo, retries, waiting) is the lock's, slot for key.

    Raises :class:`QuorumUnavailable` when rounds keep failing for want of answers.
    """
    deadline = None if req.timeout is None else ctx.clock() + req.timeout
    seen = _Attempts()
    wire_ttl = ttl_ms(req.ttl)
    own_guard = ttl_ms(req.restart_guard) if req.restart_guard > 0 else 0
    while True:
        token = f"{ctx.new_token()}:{req.owner}" if req.owner else ctx.new_token()
        guard = max(own_guard, ctx.guards.ms) if own_guard else 0
        start = ctx.clock()
        call = _acquire_call(req, token, wire_ttl, guard, waiter=seen.waiter, rng=ctx.rng)
        sent = yield Round(call)
        votes = _within_longest_guard(sent, guard, ctx.guards) if guard else sent
        until = valid_until(start, req.ttl, policy.drift_factor)
        count = Count(votes, policy.masters)
        verdict = count.verdict(in_time=ctx.clock() < until)
        key, granted = (req.key, votes) if not req.limit else _best_slot(req.key, votes)
        verdict = _slot_verdict(verdict, granted, policy) if req.limit else verdict
        unfenced: Sequence[Vote] = ()
        if verdict is Verdict.WON:
            if req.limit:
                yield from _undo(key, token, sent, _others(call.slots, key), lost=False)
            fence: int | None = None
            if req.fencing:
                fence, agreed = highest_fence(granted)
                if agreed < policy.quorum:
                    on_key = call._replace(key=key) if req.limit else call
                    need = policy.quorum
                    fence, unfenced = yield from _fence(on_key, granted, fence, agreed, need)
            if fence is None or (fence and ctx.clock() < until):
                return Lease(
                    req.resource, key, token, req.ttl, until, tuple(granted), fence, call.line
                )
            verdict = Verdict.OUTAGE  # too few masters took the fence in time: ask again
            unfenced = unfenced or granted
        yield from _undo(req.key, token, sent, call.slots)
        left = None if deadline is None else deadline - ctx.clock()
        step = next_step(
            req,
            policy,
            seen,
            verdict=verdict,
            won_some=count.yes > 0,
            votes=votes,
            left=left,
            rng=ctx.rng,
        )
        if isinstance(step, GiveUp):
            if unfenced:
                raise QuorumUnavailable(
                    f"too few masters took the fence of {req.resource!r} in time:"
                    f" {policy.quorum} needed",
                    resource=req.resource,
                    votes=unfenced,
                )
            if step.outage or verdict is Verdict.OUTAGE:
                raise QuorumUnavailable(
                    f"too few masters answered to lock {req.resource!r}: {count.yes + count.no}"
                    f" of {policy.masters} in time, {policy.quorum} needed",
                    resource=req.resource,
                    votes=votes,
                )
            return None
        if isinstance(step, Retry):
            yield Wait(step.after)
            continue
        if not seen.waiter:
            # Subscribe, then ask again at once, in line: a release between our round and
            # the subscription would otherwise go unheard until the fallback poll.
            seen.waiter = waiter_channel(req.key, ctx.new_token())
            yield Listen(seen.waiter)
            continue
        woken = yield Wait(step.up_to)
        yield from _hear_quorum(woken, policy.quorum)


def _hear_quorum(woken: int, need: int) -> Algorithm:
    """Once woken, wait for wake-ups from ``need`` masters (see STRAGGLERS), up to
    STRAGGLERS after each; nothing when not woken (the timed poll asks at once)."""
    while 0 < woken < need:
        more = yield Wait(STRAGGLERS)
        if not more:
            return
        woken += more


def _acquire_call(
    req: AcquireRequest, token: str, ttl: int, guard: int, *, waiter: str, rng: random.Random
) -> Call:
    """An acquire; a waiter's also stands in line on every master that refuses it, so that
    a release there wakes the oldest waiter alone, and leaves the line when granted.

    The line is only a hint: masters may order it differently, a woken waiter may be
    beaten by another client, and one that died is skipped (nobody hears its channel).
    The lock key alone decides who holds the lock; the timed poll bounds every wait.

    A semaphore's (``req.limit`` slots) asks every master for the first free slot in one
    order, a random rotation of the slots drawn per attempt: every master of the round
    tries them in the same order, so they tend to grant the same slot, and clients spread
    out over the slots instead of all contending for slot 0. Its waiters stand in one
    line for all the slots (``permit_line``), woken by the release of any of them."""
    if req.limit:
        first = rng.randrange(req.limit)
        slots = tuple(permit_key(req.key, (first + i) % req.limit) for i in range(req.limit))
        line = permit_line(req.key)
        return Call(Verb.PERMIT, line, token, ttl, guard, waiter, req.fencing, 0, slots, line)
    verb = Verb.QUEUED if waiter else Verb.ACQUIRE
    return Call(verb, req.key, token, ttl, guard, waiter, req.fencing)


def _best_slot(key: str, votes: Sequence[Vote]) -> tuple[str, list[Vote]]:
    """The slot that most masters granted in a semaphore's round, and the round's votes as
    votes on that slot alone: a grant of another slot is no vote for it (a refusal).

    This is what makes a semaphore safe on a quorum: a permit is a lease on one slot key,
    won by a quorum of grants of that key, so two permits of one slot always share a
    master that granted both, which SET NX forbids while either lives; at most ``limit``
    slots means at most ``limit`` permits. Counting holders per master instead would not
    do: with 3 masters and 2 permits, masters admitting {A, B}, {B, C} and {A, C} give
    each of three clients a majority. Two slots cannot both have a quorum (each master
    grants one slot per call), so the most granted one is the only one that can win.
    """
    slots = Counter(v.slot for v in votes if v.outcome is Outcome.YES)
    if not slots:
        return permit_key(key, 0), list(votes)
    slot = slots.most_common(1)[0][0] or ""
    return slot, [
        v if v.outcome is not Outcome.YES or v.slot == slot else v._replace(outcome=Outcome.NO)
        for v in votes
    ]


def _slot_verdict(verdict: Verdict, granted: Sequence[Vote], policy: Policy) -> Verdict:
    """A semaphore round's verdict: its votes' (a grant of any slot is a yes, a refusal
    says every slot is held there), except that a win needs a quorum of one slot: a
    quorum of grants spread over several slots is a race (split), retried as one."""
    if verdict is Verdict.WON and Count(granted, policy.masters).yes < policy.quorum:
        return Verdict.SPLIT
    return verdict


def _others(slots: tuple[str, ...], slot: str) -> tuple[str, ...]:
    return tuple(s for s in slots if s != slot)


def highest_fence(votes: Sequence[Vote]) -> tuple[int, int]:
    """The highest fence counter a round's grants reached (0: none), and how many of the
    grants reached it."""
    fence = agreed = 0
    for vote in votes:
        counted = vote.fence
        if counted is None or vote.outcome is not Outcome.YES:
            continue
        if counted > fence:
            fence, agreed = counted, 1
        elif counted == fence:
            agreed += 1
    return fence, agreed


def _fence(call: Call, votes: Sequence[Vote], fence: int, agreed: int, need: int) -> Algorithm:
    """The fence of a won round whose grants do not agree on it (``agreed`` of them
    reached the highest, ``fence``, fewer than the quorum ``need``): written back, it is
    the lease's once a quorum of the granting masters holds at least that much.

    Any later lease's quorum shares a master with that quorum, where it is granted only
    after this lease's key is gone, so its grant counts past this fence there: later
    fences are higher. The highest grant alone would not do, since counters drift apart
    (a master misses grants while down; a lost round counts on some masters only): a
    later quorum could miss the master that counted highest. When a quorum of grants
    already agrees on the highest, as when every master saw every grant, ``acquire`` sends
    nothing more; here the fence goes in one round to the masters that may hold less
    (those that granted lower, and those whose grant went unheard), each only while our
    token still holds the key there (``protocol.FENCE``). Returns the fence and no votes,
    or 0 and the votes of each master that was counted on (its grant, or its write-back's
    answer) when a quorum did not take it.
    """
    behind = tuple(
        i
        for i, v in enumerate(votes)
        if v.outcome is Outcome.ERROR or (v.outcome is Outcome.YES and v.fence != fence)
    )
    if not fence or not behind:
        return 0, votes
    told = yield Round(Call(Verb.FENCE, call.key, call.token, fence=fence), targets=behind)
    agreed += sum(v.outcome is Outcome.YES for v in told)
    if agreed >= need:
        return fence, ()
    answers = list(votes)
    for i, vote in zip(behind, told, strict=True):
        answers[i] = vote
    return 0, answers


def _within_longest_guard(votes: list[Vote], declared: int, guards: Guards) -> list[Vote]:
    """The round's votes with each grant from a master that knew only a shorter restart
    guard than another master reported turned into an abstention (and the longest guard
    remembered, to be declared from the next round on).

    Such a master may have restarted empty since a client with the longer guard locked
    the key, and forgotten that guard with its data: its grant is trusted again once it
    has applied the longer guard (the next round declares it, and the script abstains or
    grants by it). Its key is undone like any lost round's.
    """
    for vote in votes:
        if vote.guard_ms is not None:
            break
    else:
        return votes  # the usual case: every master's guard is the one declared
    longest = max(v.guard_ms or 0 for v in votes)
    guards.ms = max(guards.ms, longest)
    why = f"its restart guard is shorter than another master's ({longest} ms)"
    return [
        v._replace(outcome=Outcome.ABSTAIN, error=why)
        if v.outcome is Outcome.YES and (v.guard_ms or declared) < longest
        else v
        for v in votes
    ]


def _undo(
    key: str, token: str, votes: Sequence[Vote], slots: tuple[str, ...] = (), lost: bool = True
) -> Algorithm:
    """Delete a lost round's keys wherever our token may have landed (a yes, or no
    answer), without waiting (the keys expire anyway, and waiting would slow every
    refusal) and without announcing it (see ``protocol.UNDO``).

    A semaphore's round undoes its ``slots`` (all of them when ``lost``; when won, those
    not won, on the masters that granted one of them or did not answer): a grant is of
    one slot per master, whichever the script found free, and our token is unique to the
    round, so deleting it from any slot but the won one can only free a slot we took."""
    if lost:
        maybe = tuple(
            i for i, v in enumerate(votes) if v.outcome not in (Outcome.NO, Outcome.ABSTAIN)
        )
    else:
        maybe = tuple(
            i
            for i, v in enumerate(votes)
            if v.outcome is Outcome.ERROR or (v.outcome is Outcome.YES and v.slot != key)
        )
    if maybe and slots:
        yield Round(Call(Verb.UNDO, key, token, slots=slots), wait=False, targets=maybe)
    elif maybe and lost:
        yield Round(Call(Verb.UNDO, key, token), wait=False, targets=maybe)


class Extension(NamedTuple):
    """What an extend leaves its holder with: ``lease`` is all the holder may now believe,
    and ``error`` says why it was not renewed (None when it was).

    Renewed: the new lease. Outcome unknown (:class:`QuorumUnavailable`): see
    :func:`unsure`. Lost (:class:`LockLost`): a lease with no validity left.
    """

    lease: Lease
    error: LockLost | QuorumUnavailable | None = None


def unsure(lease: Lease, start: float, ttl: float, drift_factor: float) -> Lease:
    """The lease to believe after an extend to ``ttl``, begun at ``start``, whose outcome
    is unknown: the shorter of the old validity and the one asked for.

    Masters that answered late (or not at all) may still have applied it: re-armed to a
    shorter TTL, their keys expire before the old validity ends, and another client can
    take the lock while the holder would otherwise still believe it valid. Counting from
    ``start`` (before the round) is what makes the new bound safe, as in
    :func:`valid_until`. A longer TTL applied unseen changes nothing: the old validity,
    which the shorter bound then is, still holds.
    """
    until = min(lease.valid_until, valid_until(start, ttl, drift_factor))
    return lease._replace(valid_until=until)


def extend(lease: Lease, ttl: float, policy: Policy, ctx: Context) -> Algorithm:
    """Re-arm our key to ``ttl`` on a quorum; returns an :class:`Extension`, never raises.

    Its error is :class:`LockLost` when the lease already expired or too many masters no
    longer hold our token for a quorum ever to vouch for it again, and
    :class:`QuorumUnavailable` when too few answered to tell (then only the shorter of the
    old and the new validity stands: :func:`unsure`).
    """
    start = ctx.clock()
    if start >= lease.valid_until:
        return Extension(
            lease,
            LockLost(
                f"lock on {lease.resource!r} expired before it was extended",
                resource=lease.resource,
            ),
        )
    votes = yield Round(Call(Verb.EXTEND, lease.key, lease.token, ttl_ms(ttl)))
    count = Count(votes, policy.masters)
    until = valid_until(start, ttl, policy.drift_factor)
    now = ctx.clock()
    if count.yes >= policy.quorum and now < until:
        return Extension(lease._replace(ttl=ttl, valid_until=until, votes=tuple(votes)))
    if count.no > policy.masters - policy.quorum or now >= lease.valid_until:
        lost = LockLost(
            f"lock on {lease.resource!r} is lost: {count.no} of {policy.masters} masters"
            " no longer hold it",
            resource=lease.resource,
            votes=votes,
        )
        return Extension(lease._replace(valid_until=min(lease.valid_until, start)), lost)
    unknown = QuorumUnavailable(
        f"too few masters answered to extend {lease.resource!r}"
        f" ({count.yes} yes of {policy.quorum} needed)",
        resource=lease.resource,
        votes=votes,
    )
    return Extension(unsure(lease, start, ttl, policy.drift_factor), unknown)


def release(key: str, token: str, policy: Policy, line: str = "") -> Algorithm:
    """Delete our key wherever it holds our token; returns (quorum released?, votes).

    Masters whose key holds another token say no and keep it: release can never free a
    lock that is not ours. ``line``: a permit's (``Lease.line``), whose waiters it wakes.
    """
    votes = yield Round(Call(Verb.RELEASE, key, token, line=line))
    return Count(votes, policy.masters).yes >= policy.quorum, tuple(votes)


def inspect(resource: str, key: str, policy: Policy) -> Algorithm:
    """Whether a quorum of masters holds ``key`` now; returns (locked?, votes)."""
    votes = yield Round(Call(Verb.INSPECT, key))
    count = Count(votes, policy.masters)
    if count.yes + count.no < policy.quorum:
        raise QuorumUnavailable(
            f"too few masters answered to tell whether {resource!r} is locked",
            resource=resource,
            votes=votes,
        )
    return count.yes >= policy.quorum, tuple(votes)


def holder(key: str) -> Algorithm:
    """The owner text of the lock on ``key`` that a quorum of masters agrees on; returns
    it, or None when the key is free, unowned, or no quorum agrees (a race, an outage)."""
    votes = yield Round(Call(Verb.PEEK, key))
    owners = Counter(v.owner for v in votes if v.outcome is Outcome.YES)
    if not owners:
        return None
    owner, count = owners.most_common(1)[0]
    return owner if owner and count >= quorum(len(votes)) else None
