"""``python -m tests.simulation``: explore schedules, or replay one.

    python -m tests.simulation                       # every scenario, CI-sized
    python -m tests.simulation --soak                # 10x the schedules, each 4x longer
    python -m tests.simulation --scenario restart --seed 7 --trace   # replay one schedule

Exit status 1 when a scenario that must be safe overlapped, or a hazard went unnoticed.
"""

from __future__ import annotations

import argparse
import sys

from tests.simulation.explore import HEADER, explore, row
from tests.simulation.scenarios import CI, SCENARIOS, SOAK, Budget, run

#: Schedules per scenario in one CI-sized exploration.
SCHEDULES = {
    "safe": 1000,
    "drift": 150,
    "drift-bounded": 300,
    "restart": 60,
    "restart-guarded": 250,
    "restart-delayed": 250,
    "restart-persistent": 250,
    "restart-mixed-guards": 250,
    "restart-short-guard": 60,
    "clocks-apart": 120,
    "permits": 300,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation", description=__doc__)
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--seed", type=int, help="replay this one seed")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--schedules", type=int, help="per scenario (default: CI sizes)")
    parser.add_argument("--soak", action="store_true", help="10x schedules, longer each")
    parser.add_argument("--trace", action="store_true", help="print every event (with --seed)")
    args = parser.parse_args(argv)
    budget = SOAK if args.soak else CI
    if args.seed is not None:
        return replay(args.scenario or ["safe"], args.seed, args.trace, budget)
    print(HEADER)
    ok = True
    for scenario in args.scenario or list(SCENARIOS):
        count = args.schedules or SCHEDULES[scenario] * (10 if args.soak else 1)
        summary = explore(scenario, range(args.first_seed, args.first_seed + count), budget)
        print(row(summary), flush=True)
        if not summary.as_expected or not summary.must_be_safe:
            print("  " + summary.explain())
        ok &= summary.as_expected
    return 0 if ok else 1


def replay(scenarios: list[str], seed: int, trace: bool, budget: Budget) -> int:
    bad = 0
    for scenario in scenarios:
        result = run(scenario, seed, budget, trace=trace)
        for line in result.log or ():
            print(line)
        print(f"{scenario} seed {seed}: {result.windows} windows, {result.events} events,")
        print(f"  faults {dict(result.faults)}, {len(result.overlaps)} overlaps,")
        print(f"  {result.grants} fences, {len(result.regressions)} regressions")
        for finding in [*result.overlaps, *result.regressions]:
            print(f"  {finding}")
        bad += bool(result.overlaps or result.regressions)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
