"""What each master is and how it has been doing: the facts that decide whether it may vote
(:class:`Identities`) and the circuit breaker that skips it after a failure (:class:`Health`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from celery_redlock._core.server import ServerFacts

logger = logging.getLogger("celery_redlock")

#: A master that failed is skipped for this long at first, doubling per failure up to the cap.
COOLDOWN_START = 0.1


COOLDOWN_CAP = 2.0


class Identities:
    """What each master's server said it is (``INFO``, read on every new connection), and
    so which masters may not vote: a server that evicts keys, or one whose ``run_id``
    another master also reported (one server under two spellings).

    ``problems[i]`` is why master ``i``'s votes must not count, or None; drivers turn its
    every reply into an ERROR vote with that text while it stands (the list is updated
    in place, so a driver may keep a reference to it). Both aliases of one
    server lose their votes: whichever connection opens second sees the first, so within
    a round at most one of them is counted, and from then on neither (the configuration
    is wrong, and we cannot tell which spelling was meant). Facts are per connection: a
    restarted server has a new ``run_id`` and a ``CONFIG SET`` shows on the next
    connection. A master whose INFO is refused (an ACL without it) stays unchecked, with a
    WARNING: refusing its votes would stop every lock of such a deployment.
    """

    __slots__ = ("_facts", "_lock", "_names", "_refused", "_warned", "problems")

    def __init__(self, names: Sequence[str]) -> None:
        self._names = tuple(names)
        self._facts: list[ServerFacts | None] = [None] * len(self._names)
        self._warned: list[str | None] = [None] * len(self._names)
        self._refused: list[str | None] = [None] * len(self._names)
        self._lock = threading.Lock()
        self.problems: list[str | None] = [None] * len(self._names)

    def record(self, i: int, facts: ServerFacts | str) -> None:
        """Master ``i``'s new connection reported ``facts``, or why it reported none."""
        with self._lock:
            self._facts[i] = None if isinstance(facts, str) else facts
            self._refused[i] = facts if isinstance(facts, str) else None
            self.problems[:] = [self._problem(k) for k in range(len(self._names))]
            for k, name in enumerate(self._names):
                refused = self._refused[k]
                warning = self.problems[k] or (
                    refused and f"INFO refused ({refused}): identity and eviction unchecked"
                )
                if warning != self._warned[k]:  # once per master and problem
                    self._warned[k] = warning
                    if warning:
                        logger.warning("master %s: %s", name, warning)

    def _problem(self, k: int) -> str | None:
        facts = self._facts[k]
        if facts is None:
            return None
        for j, other in enumerate(self._facts):
            if j != k and other is not None and facts.run_id and other.run_id == facts.run_id:
                return (
                    f"same server as {self._names[j]} (run_id {facts.run_id[:12]}):"
                    " one server must not vote twice; list each server once"
                )
        return facts.eviction_problem


class Health:
    """A master's recent failures: after one, it is skipped until ``down_until``.

    Shared by every thread and task of one lock manager; skipping costs nothing to safety
    (a skipped master is simply a vote we do not have), and saves each round the full
    per-master timeout while a master is hung.
    """

    __slots__ = ("_lock", "down_until", "failures", "last_error")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.down_until = 0.0
        self.failures = 0
        self.last_error = ""

    def skip_reason(self, now: float) -> str | None:
        if now >= self.down_until:
            return None
        return f"skipped for {self.down_until - now:.2f} s after: {self.last_error}"

    def failed(self, now: float, error: str) -> None:
        with self._lock:
            self.failures += 1
            self.last_error = error
            self.down_until = now + min(COOLDOWN_START * 2 ** (self.failures - 1), COOLDOWN_CAP)

    def succeeded(self) -> None:
        if self.failures:
            with self._lock:
                self.failures = 0
                self.down_until = 0.0
