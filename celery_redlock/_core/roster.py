"""The masters as a driver sees them: what it is handed instead of the lock manager.

A driver needs the masters' names and endpoints, their health and identities, a clock and
the per-master timeout, and somewhere to report a master that cannot wake blocked waiters;
it needs nothing else of the manager, so it is given only this. Turning a master's reply
or failure into its vote is here too, so that both drivers say the same in the same case.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from celery_redlock._core.connect import Endpoint
from celery_redlock._core.health import Health, Identities
from celery_redlock._core.masters import MasterSpec
from celery_redlock._core.protocol import Call, Outcome
from celery_redlock._core.quorum import Vote
from celery_redlock._core.replies import vote_of

__all__ = ["Roster", "describe"]


def describe(exc: BaseException) -> str:
    """A failure as a vote's error text, the same in both drivers."""
    return f"{type(exc).__name__}: {exc}"


class Roster:
    """One lock manager's masters, in order, with everything a driver may touch of them.

    ``health[i]`` and ``identities`` are shared by every operation of the manager (threads,
    tasks): a master that failed is skipped by all of them, and one server reached under
    two names loses both votes (see :class:`Identities`).
    """

    __slots__ = (
        "_cannot_wake",
        "_granted",
        "clock",
        "endpoints",
        "health",
        "identities",
        "names",
        "specs",
        "timeout",
    )

    def __init__(
        self,
        specs: Sequence[MasterSpec],
        timeout: float,
        clock: Callable[[], float],
        cannot_wake: Callable[[str, str], None],
    ) -> None:
        self.specs = tuple(specs)
        self.names = tuple(spec.name for spec in self.specs)
        self.endpoints: tuple[Endpoint, ...] = tuple(spec.endpoint for spec in self.specs)
        self.health = [Health() for _ in self.specs]
        self.identities = Identities(self.names)
        #: Monotonic seconds; the simulator injects its own.
        self.clock = clock
        #: The per-master timeout, in seconds.
        self.timeout = timeout
        self._cannot_wake = cannot_wake
        self._granted = [Vote(name, Outcome.YES) for name in self.names]

    def __len__(self) -> int:
        return len(self.specs)

    def skipped(self, i: int, now: float) -> Vote | None:
        """Master ``i``'s ERROR vote while it cools down after a failure, else None."""
        reason = self.health[i].skip_reason(now)
        return None if reason is None else self.error(i, reason)

    def error(self, i: int, text: str) -> Vote:
        """An ERROR vote of master ``i`` that says ``text`` (its health unchanged)."""
        return Vote(self.names[i], Outcome.ERROR, error=text)

    def failed(self, i: int, exc: BaseException | str) -> Vote:
        """Master ``i`` did not answer (``exc``): it cools down, and its vote says why."""
        text = exc if isinstance(exc, str) else describe(exc)
        self.health[i].failed(self.clock(), text)
        return self.error(i, text)

    def answered(self, i: int, call: Call, reply: Any) -> Vote:
        """Master ``i``'s reply to ``call`` (well-formed or not) as its vote."""
        health = self.health[i]
        if health.failures:  # on every reply: the call is only made when there is news
            health.succeeded()
        return vote_of(self.names[i], call, reply, self.identities.problems[i], self._granted[i])

    def subscription_refused(self, i: int, error: Exception) -> None:
        """Master ``i`` refused a waiter's SUBSCRIBE with an error reply (an ACL)."""
        self._cannot_wake(self.names[i], f"subscribe refused: {describe(error)}")
