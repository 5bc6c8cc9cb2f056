"""Running many schedules of one scenario and summing up what they found."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from tests.simulation.scenarios import CI, SCENARIOS, Budget, Result, run


@dataclass(slots=True)
class Summary:
    """Totals over the schedules of one scenario; ``failing`` keeps those with overlaps."""

    scenario: str
    schedules: int = 0
    windows: int = 0
    overlaps: int = 0
    outages: int = 0
    events: int = 0
    seconds: float = 0.0
    faults: Counter[str] = field(default_factory=Counter)
    failing: list[Result] = field(default_factory=list)

    @property
    def must_be_safe(self) -> bool:
        return SCENARIOS[self.scenario][2]

    @property
    def as_expected(self) -> bool:
        """Safe scenarios found no overlap; hazard scenarios found at least one."""
        return not self.failing if self.must_be_safe else bool(self.failing)

    def add(self, result: Result) -> None:
        self.schedules += 1
        self.windows += result.windows
        self.overlaps += len(result.overlaps)
        self.outages += result.outages
        self.events += result.events
        self.faults.update(result.faults)
        if result.overlaps:
            self.failing.append(result)

    def explain(self) -> str:
        """The first failing schedule: its seed, how to replay it, its first overlap."""
        if not self.failing:
            return f"{self.scenario}: no overlap in {self.schedules} schedules"
        first = self.failing[0]
        return (
            f"{self.scenario}: {len(self.failing)} of {self.schedules} schedules overlapped;"
            f" first: seed {first.seed}: {first.overlaps[0]}\n  replay: {first.replay()}"
        )


def explore(scenario: str, seeds: Iterable[int], budget: Budget = CI) -> Summary:
    summary = Summary(scenario)
    started = time.perf_counter()
    for seed in seeds:
        summary.add(run(scenario, seed, budget))
    summary.seconds = time.perf_counter() - started
    return summary


HEADER = (
    f"{'scenario':<20} {'must be':<8} {'schedules':>9} {'windows':>8} {'faults':>7}"
    f" {'outages':>8} {'overlapping':>11} {'seconds':>8}"
)


def row(s: Summary) -> str:
    expect = "safe" if s.must_be_safe else "unsafe"
    bad = len(s.failing)
    return (
        f"{s.scenario:<20} {expect:<8} {s.schedules:>9} {s.windows:>8} {s.faults.total():>7}"
        f" {s.outages:>8} {bad:>11} {s.seconds:>8.1f}"
    )
