"""The checkers shared by the simulator and the chaos suite: no overlap, fences that rise.

A lock's promise is about *validity windows*: from the moment ``acquire`` handed the lease
to the caller until the earlier of the lease's ``valid_until`` and the moment the caller
started to release it. Two windows on one key that intersect are two holders at once
(:func:`find_overlaps`). (A holder frozen past its validity and still working is
Kleppmann's hazard; its window honestly ends at ``valid_until``, and the fence answers it.)

A fence's promise is an order (:func:`find_fence_regressions`): of two fenced leases of
one key, the one handed over later has the strictly larger fence, so a resource that
keeps the highest fence it saw rejects every write of an earlier holder, frozen or not.

A semaphore's promise is a count (:func:`find_crowds`): at no moment are more than its
limit of validity windows open on its slot keys (``<key>:permit:<i>``) together. Each
slot is also a lock, checked as one by :func:`find_overlaps`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Window:
    """One holder's validity window on one key, in one shared time base."""

    key: str
    holder: str
    token: str
    start: float
    end: float

    def __str__(self) -> str:
        return f"{self.holder} [{self.token}] {self.start:.6f} .. {self.end:.6f}"


@dataclass(frozen=True, slots=True)
class Overlap:
    """Two windows on one key that intersect, and by how many seconds."""

    first: Window
    second: Window

    @property
    def seconds(self) -> float:
        return min(self.first.end, self.second.end) - self.second.start

    def __str__(self) -> str:
        return (
            f"{self.first.key}: {self.first} overlaps {self.second} by {self.seconds * 1000:.3f} ms"
        )


def find_overlaps(windows: Iterable[Window]) -> list[Overlap]:
    """Every pair of windows on the same key that intersect (touching ends do not).

    A sweep in start order keeps the windows still open; each new window overlaps every one
    of them whose end lies after its start. Empty windows (a lease handed over already
    expired, as to a holder frozen before it could use it) hold nothing and are skipped.
    """
    by_key: dict[str, list[Window]] = defaultdict(list)
    for window in windows:
        if window.end > window.start:
            by_key[window.key].append(window)
    found: list[Overlap] = []
    for key in sorted(by_key):
        open_: list[Window] = []
        for window in sorted(by_key[key], key=lambda w: (w.start, w.end)):
            open_ = [w for w in open_ if w.end > window.start]
            found.extend(Overlap(w, window) for w in open_)
            open_.append(window)
    return found


@dataclass(frozen=True, slots=True)
class Grant:
    """One fenced lease as handed over: its fence and two times in the shared time base.

    ``handed`` is when ``acquire`` returned it (no earlier than the moment its fence stood
    on a quorum); ``asked`` is no later than the first grant its fence was counted from
    (the start of its winning round). Where the time base is exact (the simulator's true
    time), both are the moment of hand-over.
    """

    key: str
    holder: str
    token: str
    fence: int
    handed: float
    asked: float

    def __str__(self) -> str:
        return f"{self.holder} [{self.token}] fence {self.fence} at {self.handed:.6f}"


@dataclass(frozen=True, slots=True)
class Regression:
    """A lease whose fence is not above that of one handed out before it began."""

    earlier: Grant
    later: Grant

    def __str__(self) -> str:
        return f"{self.earlier.key}: {self.later} is not above {self.earlier}"


def find_fence_regressions(grants: Iterable[Grant]) -> list[Regression]:
    """Every fenced lease whose fence is not strictly above the highest fence among the
    leases of its key handed over before it was asked for, paired with the lease that
    had that fence; and every lease whose fence another lease of its key has too.

    This is the fence's promise: a later holder's fence is larger, so that a resource can
    reject every write of an earlier one. "Later" is ``earlier.handed < later.asked``:
    with an exact time base (the simulator's true time, where ``asked`` is ``handed``),
    hand-over order itself; with one read by the processes (chaos), the later lease's
    winning round began after the earlier one was handed over, so a hand-over written
    down late (its process stopped first) is never mistaken for a later one. Two leases
    with one fence break the promise whichever came first. Each lease is reported once.
    """
    by_key: dict[str, list[Grant]] = defaultdict(list)
    for grant in grants:
        by_key[grant.key].append(grant)
    found: list[Regression] = []
    for key in sorted(by_key):
        found.extend(_regressions(by_key[key]))
    return found


def _regressions(grants: list[Grant]) -> Iterator[Regression]:
    """One key's: a sweep in ``asked`` order, with a pointer into ``handed`` order that
    keeps the highest fence handed over strictly before; then equal fences."""
    handed = sorted(grants, key=lambda g: g.handed)
    best: Grant | None = None
    reported: set[str] = set()
    i = 0
    for grant in sorted(grants, key=lambda g: g.asked):
        while i < len(handed) and handed[i].handed < grant.asked:
            if best is None or handed[i].fence > best.fence:
                best = handed[i]
            i += 1
        if best is not None and grant.fence <= best.fence:
            reported.add(grant.token)
            yield Regression(best, grant)
    first: dict[int, Grant] = {}
    for grant in handed:
        twin = first.setdefault(grant.fence, grant)
        if twin is not grant and grant.token not in reported:
            yield Regression(twin, grant)


@dataclass(frozen=True, slots=True)
class Crowd:
    """More than ``limit`` permits of one semaphore valid at once: the windows open at the
    moment the ``limit + 1``-th began."""

    semaphore: str
    limit: int
    windows: tuple[Window, ...]

    def __str__(self) -> str:
        held = "; ".join(map(str, self.windows))
        return f"{self.semaphore}: {len(self.windows)} permits of {self.limit} at once: {held}"


def semaphore_of(key: str) -> str | None:
    """The semaphore whose slot ``key`` is (``protocol.permit_key``), or None for a lock."""
    base, sep, slot = key.rpartition(":permit:")
    return base if sep and slot.isdigit() else None


def find_crowds(windows: Iterable[Window], limit: int) -> list[Crowd]:
    """Every moment a window opened on a semaphore's slots while ``limit`` others were
    open on them already (touching ends do not count; empty windows held nothing).

    Per semaphore, a sweep in start order keeps the windows still open, as
    :func:`find_overlaps` does per key, but across all of its slots.
    """
    by_semaphore: dict[str, list[Window]] = defaultdict(list)
    for window in windows:
        semaphore = semaphore_of(window.key)
        if semaphore is not None and window.end > window.start:
            by_semaphore[semaphore].append(window)
    found: list[Crowd] = []
    for semaphore in sorted(by_semaphore):
        open_: list[Window] = []
        for window in sorted(by_semaphore[semaphore], key=lambda w: (w.start, w.end)):
            open_ = [w for w in open_ if w.end > window.start]
            open_.append(window)
            if len(open_) > limit:
                found.append(Crowd(semaphore, limit, tuple(open_)))
    return found
