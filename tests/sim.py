"""Simulated masters and a virtual clock that run the shared algorithm without I/O.

The same generators that the sync and asyncio drivers run are driven here by a loop of a
few lines, against in-memory masters that obey the scripts' contract. A master can be
down (its votes are errors), and every round advances the virtual clock by a latency,
so validity arithmetic and retry decisions are checked exactly, without sleeping.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from celery_redlock._core import quorum
from celery_redlock._core.protocol import Call, Outcome, Verb
from celery_redlock._core.quorum import Listen, Round, Vote, Wait
from celery_redlock._core.settings import LockSettings


@dataclass
class SimMaster:
    """One master's keys: key -> (token, expiry on the virtual clock). A ``late`` master
    applies every call but answers after the round gave up on it (an ERROR vote)."""

    name: str
    up: bool = True
    late: bool = False
    keys: dict[str, tuple[str, float]] = field(default_factory=dict)

    def live(self, key: str, now: float) -> str | None:
        entry = self.keys.get(key)
        if entry is None or entry[1] <= now:
            self.keys.pop(key, None)
            return None
        return entry[0]

    def apply(self, call: Call, now: float) -> Vote:
        if not self.up:
            return Vote(self.name, Outcome.ERROR, error="down")
        vote = self._apply(call, now)
        return Vote(self.name, Outcome.ERROR, error="no reply in time") if self.late else vote

    def _apply(self, call: Call, now: float) -> Vote:
        holder = self.live(call.key, now)
        ttl = call.ttl_ms / 1000
        if call.verb in (Verb.ACQUIRE, Verb.QUEUED):  # the line of waiters is not modelled
            if holder is None or holder == call.token:
                self.keys[call.key] = (call.token, now + ttl)
                return Vote(self.name, Outcome.YES)
            pttl = round((self.keys[call.key][1] - now) * 1000)
            return Vote(self.name, Outcome.NO, pttl)
        if call.verb is Verb.EXTEND:
            if holder == call.token:
                self.keys[call.key] = (call.token, now + ttl)
                return Vote(self.name, Outcome.YES)
            return Vote(self.name, Outcome.NO)
        if call.verb in (Verb.RELEASE, Verb.UNDO):
            if holder == call.token:
                del self.keys[call.key]
                return Vote(self.name, Outcome.YES)
            return Vote(self.name, Outcome.NO)
        return Vote(self.name, Outcome.YES if holder else Outcome.NO)


class SimCluster:
    """N simulated masters behind a virtual clock; each round costs ``latency`` seconds."""

    def __init__(self, n: int, *, latency: float = 0.001, seed: int = 0) -> None:
        self.masters = [SimMaster(f"sim{i}") for i in range(n)]
        self.now = 0.0
        self.latency = latency
        self.rounds: list[Round] = []
        self.waits: list[float] = []
        self.listens = 0
        self.rng = random.Random(seed)
        self._tokens = 0

    def clock(self) -> float:
        return self.now

    def token(self) -> str:
        self._tokens += 1
        return f"t{self._tokens}"

    def context(self) -> quorum.Context:
        return quorum.Context(self.clock, self.rng, self.token)

    def policy(self, **kwargs: Any) -> quorum.Policy:
        return LockSettings(**kwargs).policy(len(self.masters))

    def run(self, algorithm: quorum.Algorithm) -> Any:
        """The same loop as the real drivers, with simulated effects."""
        result: Any = None
        try:
            while True:
                effect = algorithm.send(result)
                result = self._do(effect)
        except StopIteration as stop:
            return stop.value

    def _do(self, effect: quorum.Effect) -> Any:
        if isinstance(effect, Round):
            self.rounds.append(effect)
            targets = effect.targets or range(len(self.masters))
            votes = [self.masters[i].apply(effect.call, self.now) for i in targets]
            self.now += self.latency
            return votes
        if isinstance(effect, Listen):
            self.listens += 1
            return None
        assert isinstance(effect, Wait)
        self.waits.append(effect.seconds)
        self.now += effect.seconds
        return 0  # nobody releases here: every wait runs out
