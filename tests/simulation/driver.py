"""A simulated client: the real drivers' loop around the real ``_quorum`` generators.

Its round semantics are the sync driver's (``_core/sync.py``): scatter the call to the targets,
read votes as they arrive until :func:`~celery_redlock._core.quorum.Count.decided` or the
per-master deadline on the client's own clock; a master not in by a timeout is an ERROR
vote and its connection is replaced, one not in when the round settled early is an ERROR
vote too (its reply is drained later). ``wait=False`` rounds send and return at once.
``Listen`` subscribes on every master and returns once all confirmed or the per-master
timeout passed; ``Wait`` sleeps, but a release message, even one that arrived during an
earlier round (buffered, as in a socket), ends it; it returns how many messages it read.
When the operation ends, its subscriptions are closed (the masters hear of it over the
network, as of a closed socket).

What the client *does* is a workload generator yielding :class:`Run` (drive one
operation, as ``driver.run`` does, with its own listener), :class:`Sleep` and
:class:`Freeze` (the whole process stops: every event for it waits until it thaws).

Left out on purpose, as they only ever withhold votes (which the faults already do):
the drivers' per-master cool-down after a failure, the sync driver's one resend on a
connection that died with its master, and the NOSCRIPT fallback (simulated masters
always know the scripts).
"""

from __future__ import annotations

import functools
import itertools
import random
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from celery_redlock._core import quorum, replies
from celery_redlock._core.protocol import Call, Outcome
from celery_redlock._core.quorum import Count, Listen, Round, Vote, Wait
from celery_redlock.exceptions import LockError
from tests.simulation.engine import Action, Clock
from tests.simulation.world import World


@dataclass(frozen=True, slots=True)
class Run:
    """Drive one ``_quorum`` operation to its end; its result (or error) comes back."""

    algorithm: quorum.Algorithm


@dataclass(frozen=True, slots=True)
class Sleep:
    """Sleep this many seconds of the client's own clock."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Freeze:
    """The process stops (SIGSTOP) for this many true seconds, whatever it was doing."""

    seconds: float


Op: TypeAlias = Run | Sleep | Freeze
Workload: TypeAlias = Generator[Op, Any, None]


@dataclass(slots=True)
class _Round:
    call: Call
    targets: tuple[int, ...]
    votes: list[Vote | None]
    count: Count
    pending: set[int]


@dataclass(slots=True)
class _Listener:
    id: int
    channel: str
    pending: set[int]
    news: int = 0
    done: bool = False


@dataclass(slots=True)
class Stats:
    acquired: int = 0
    refused: int = 0
    outages: int = 0
    lost: int = 0


@dataclass(eq=False)
class SimClient:
    """One client process; ``epochs[i]`` numbers its current connection to master ``i``."""

    world: World
    id: int
    clock: Clock
    rng: random.Random
    name: str = ""
    epochs: list[int] = field(default_factory=list)
    frozen_until: float = 0.0
    stats: Stats = field(default_factory=Stats)
    #: what the masters taught this client about their restart guard (a manager's memory)
    guards: quorum.Guards = field(default_factory=quorum.Guards)
    _tokens: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _workload: Workload | None = None
    _algorithm: quorum.Algorithm | None = None
    _round: _Round | None = None
    _listener: _Listener | None = None
    _listeners: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiting: int | None = None
    _waits: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self.name = self.name or f"c{self.id}"
        self.epochs = [0] * len(self.world.masters)
        self.world.clients[self.id] = self

    @property
    def context(self) -> quorum.Context:
        return quorum.Context(self.now, self.rng, self.new_token, self.guards)

    def now(self) -> float:
        """The client's clock (what ``ctx.clock`` returns to the algorithm)."""
        return self.clock.read(self.world.loop.now)

    def new_token(self) -> str:
        return f"{self.name}.{next(self._tokens)}"

    # --- process control -----------------------------------------------------------------

    def post(self, action: Action) -> None:
        """Run ``action`` now, or when the process thaws if it is frozen."""
        loop = self.world.loop
        if loop.now < self.frozen_until:
            loop.at(self.frozen_until, functools.partial(self.post, action))
        else:
            action()

    def freeze(self, seconds: float) -> None:
        self.world.trace(f"{self.name} frozen for {seconds:.3f} s")
        self.frozen_until = max(self.frozen_until, self.world.loop.now + seconds)

    def after(self, local_seconds: float, action: Action) -> None:
        """Run ``action`` once the client's own clock has advanced by ``local_seconds``."""
        due = self.world.loop.now + max(local_seconds, 0.0) / self.clock.rate
        self.world.loop.at(due, functools.partial(self.post, action))

    def start(self, workload: Workload) -> None:
        self._workload = workload
        self.world.loop.soon(functools.partial(self.post, functools.partial(self._resume, None)))

    # --- the workload --------------------------------------------------------------------

    def _resume(self, value: Any, error: LockError | None = None) -> None:
        assert self._workload is not None
        try:
            op = self._workload.throw(error) if error else self._workload.send(value)
        except StopIteration:
            return
        if isinstance(op, Run):
            self._algorithm = op.algorithm
            self._step(None)
        elif isinstance(op, Sleep):
            self.after(op.seconds, functools.partial(self._resume, None))
        else:
            self.freeze(op.seconds)
            self.world.loop.soon(
                functools.partial(self.post, functools.partial(self._resume, None))
            )

    # --- the driver loop (sync.py's _Driver.run) -----------------------------------------

    def _step(self, result: Any) -> None:
        assert self._algorithm is not None
        try:
            effect = self._algorithm.send(result)
        except StopIteration as stop:
            self._finish(stop.value, None)
            return
        except LockError as exc:
            self._finish(None, exc)
            return
        if isinstance(effect, Round):
            self._scatter(effect)
        elif isinstance(effect, Listen):
            self._listen(effect.channel)
        else:
            self._wait(effect)

    def _finish(self, value: Any, error: LockError | None) -> None:
        self._algorithm = None
        if self._listener is not None:  # the driver closes its subscriptions when run() ends
            for i in range(len(self.world.masters)):
                self.world.unsubscribe(self, i, self._listener.channel)
        self._listener = None
        self._waiting = None
        self._resume(value, error)

    # --- rounds --------------------------------------------------------------------------

    def _scatter(self, rnd: Round) -> None:
        n = len(self.world.masters)
        targets = tuple(rnd.targets) if rnd.targets is not None else tuple(range(n))
        state = _Round(
            rnd.call, targets, [None] * len(targets), Count([], n), set(range(len(targets)))
        )
        self._round = state if rnd.wait else None
        for pos, i in enumerate(targets):
            on_vote = functools.partial(self._on_vote, state, pos) if rnd.wait else None
            self.world.send_call(self, i, rnd.call, on_vote)
        if not rnd.wait:
            names = [self.world.masters[i].name for i in targets]
            votes = [Vote(name, Outcome.ERROR, error=replies.NOT_AWAITED) for name in names]
            self.world.loop.soon(functools.partial(self.post, functools.partial(self._step, votes)))
            return
        self.after(self.world.master_timeout, functools.partial(self._settle, state, True))

    def _on_vote(self, state: _Round, pos: int, vote: Vote) -> None:
        self.post(functools.partial(self._count, state, pos, vote))

    def _count(self, state: _Round, pos: int, vote: Vote) -> None:
        if self._round is not state or state.votes[pos] is not None:
            return  # a late reply to a settled round: drained and ignored
        if vote.outcome is Outcome.ERROR:
            self.epochs[state.targets[pos]] += 1  # a failed connection is replaced
        state.votes[pos] = vote
        state.count.add(vote)
        state.pending.discard(pos)
        if state.count.decided(len(state.pending)):
            self._settle(state, False)

    def _settle(self, state: _Round, timed_out: bool) -> None:
        if self._round is not state:
            return
        self._round = None
        for pos in sorted(state.pending):
            i = state.targets[pos]
            name = self.world.masters[i].name
            if timed_out:
                self.epochs[i] += 1
                state.votes[pos] = Vote(name, Outcome.ERROR, error="TimeoutError")
            else:
                state.votes[pos] = Vote(name, Outcome.ERROR, error=replies.SETTLED_WITHOUT)
        self._step([v for v in state.votes if v is not None])

    # --- listening and waiting -----------------------------------------------------------

    def _listen(self, channel: str) -> None:
        n = len(self.world.masters)
        state = _Listener(next(self._listeners), channel, set(range(n)))
        self._listener = state
        for i in range(n):
            done = functools.partial(self.post, functools.partial(self._confirmed, state, i))
            self.world.subscribe(self, i, channel, state.id, done)
        self.after(self.world.master_timeout, functools.partial(self._listening, state))

    def _confirmed(self, state: _Listener, i: int) -> None:
        state.pending.discard(i)
        if not state.pending:
            self._listening(state)

    def _listening(self, state: _Listener) -> None:
        if state.done or state is not self._listener:
            return
        state.done = True
        self._step(None)

    def _wait(self, wait: Wait) -> None:
        listener = self._listener
        if listener is not None and listener.news:
            # Messages already buffered: the poll returns at once, with all of them.
            heard, listener.news = listener.news, 0
            self.world.loop.soon(functools.partial(self.post, functools.partial(self._step, heard)))
            return
        self._waiting = ticket = next(self._waits)
        self.after(wait.seconds, functools.partial(self._woken, ticket))

    def _woken(self, ticket: int) -> None:
        if self._waiting == ticket:
            self._waiting = None
            self._step(0)

    def news(self, listener: int) -> None:
        """A release message from some master, for listener ``listener``."""
        self.post(functools.partial(self._news, listener))

    def _news(self, listener: int) -> None:
        state = self._listener
        if state is None or state.id != listener:
            return
        if self._waiting is not None and state.done:
            self._waiting = None
            self._step(1)
        else:
            state.news += 1
