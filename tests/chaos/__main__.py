"""``python -m tests.chaos --duration 120``: every chaos phase, the table, one closing line.

Exit status 0 when no phase whose assumptions hold saw an overlap or a fence regression,
the hazard phase was caught (the checker can see), and no client hit an unexpected error;
1 otherwise.
"""

from __future__ import annotations

import argparse
import sys

from tests.chaos.phases import standard
from tests.chaos.report import render
from tests.chaos.runner import run_phase


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds, all phases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phase", action="append", help="run only these phases")
    args = parser.parse_args(argv)
    phases = [p for p in standard(args.duration) if not args.phase or p.name in args.phase]
    results = []
    for phase in phases:
        print(f"running {phase.name} ({phase.title}) for {phase.duration:.0f} s...", flush=True)
        results.append(run_phase(phase, args.seed))
    print(render(results))
    unsafe = any(r.overlaps or r.regressions for r in results if r.phase.assumptions_hold)
    blind = any(not r.overlaps for r in results if not r.phase.assumptions_hold)
    broken = any(r.errors for r in results)
    return 1 if unsafe or blind or broken else 0


if __name__ == "__main__":
    sys.exit(main())
