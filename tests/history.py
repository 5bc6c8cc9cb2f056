"""The no-overlap checker shared by the simulator and the chaos suite.

A lock's promise is about *validity windows*: from the moment ``acquire`` handed the lease
to the caller until the earlier of the lease's ``valid_until`` and the moment the caller
started to release it. Two windows on one key that intersect are two holders at once; that
is the only thing checked, because it is the only thing the algorithm promises. (A holder
frozen past its validity and still working is Kleppmann's hazard; fencing, not Redlock,
answers it, so its window honestly ends at ``valid_until``.)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
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
