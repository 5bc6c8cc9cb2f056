"""Running many schedules of one scenario and summing up what they found."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tests.simulation.scenarios import CI, SCENARIOS, Budget, Result, run


@dataclass(slots=True)
class Summary:
    """Totals over the schedules of one scenario; ``failing`` keeps those that broke a
    promise (an overlap, a fence regression, or more permits at once than the limit)."""

    scenario: str
    schedules: int = 0
    windows: int = 0
    overlaps: int = 0
    grants: int = 0
    regressions: int = 0
    crowds: int = 0
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
        """Safe scenarios broke no promise; hazard scenarios broke at least one."""
        return not self.failing if self.must_be_safe else bool(self.failing)

    def add(self, result: Result) -> None:
        self.schedules += 1
        self.windows += result.windows
        self.overlaps += len(result.overlaps)
        self.grants += result.grants
        self.regressions += len(result.regressions)
        self.crowds += len(result.crowds)
        self.outages += result.outages
        self.events += result.events
        self.faults.update(result.faults)
        if result.overlaps or result.regressions or result.crowds:
            self.failing.append(result)

    @property
    def overlapping(self) -> list[Result]:
        return [r for r in self.failing if r.overlaps]

    @property
    def regressing(self) -> list[Result]:
        return [r for r in self.failing if r.regressions]

    @property
    def crowded(self) -> list[Result]:
        return [r for r in self.failing if r.crowds]

    def explain(self) -> str:
        """The first failing schedule of each kind: its seed, its first finding, and how
        to replay it."""
        if not self.failing:
            return (
                f"{self.scenario}: no overlap, no fence regression, no crowd in"
                f" {self.schedules} schedules"
            )
        lines = []
        found: list[tuple[str, list[Result], Callable[[Result], object]]] = [
            ("overlapped", self.overlapping, lambda r: r.overlaps[0]),
            ("regressed", self.regressing, lambda r: r.regressions[0]),
            ("held too many permits", self.crowded, lambda r: r.crowds[0]),
        ]
        for kind, results, finding in found:
            if results:
                first = results[0]
                lines.append(
                    f"{self.scenario}: {len(results)} of {self.schedules} schedules {kind};"
                    f" first: seed {first.seed}: {finding(first)}\n  replay: {first.replay()}"
                )
        return "\n".join(lines)


def explore(scenario: str, seeds: Iterable[int], budget: Budget = CI) -> Summary:
    summary = Summary(scenario)
    started = time.perf_counter()
    for seed in seeds:
        summary.add(run(scenario, seed, budget))
    summary.seconds = time.perf_counter() - started
    return summary


HEADER = (
    f"{'scenario':<20} {'must be':<8} {'schedules':>9} {'windows':>8} {'faults':>7}"
    f" {'outages':>8} {'overlapping':>11} {'fences':>7} {'regressing':>10} {'crowded':>7}"
    f" {'seconds':>8}"
)


def row(s: Summary) -> str:
    expect = "safe" if s.must_be_safe else "unsafe"
    return (
        f"{s.scenario:<20} {expect:<8} {s.schedules:>9} {s.windows:>8} {s.faults.total():>7}"
        f" {s.outages:>8} {len(s.overlapping):>11} {s.grants:>7} {len(s.regressing):>10}"
        f" {len(s.crowded):>7} {s.seconds:>8.1f}"
    )
