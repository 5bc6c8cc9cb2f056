"""The chaos summary: one row per phase, faults by kind, and the closing line.

Overlaps and fence regressions count toward the closing ``chaos:`` line only in phases
where the algorithm's assumptions hold; the hazard phase (guard off, empty restarts) is
reported on its own line above it, where overlaps are the expected finding, not a
failure (and fences re-seeded within the second of an empty restart may go backwards).
"""

from __future__ import annotations

from collections.abc import Sequence

from tests.chaos.faults import KINDS
from tests.chaos.runner import PhaseResult


def phase_table(results: Sequence[PhaseResult]) -> list[str]:
    lines = [
        f"{'phase':<18} {'setting':<38} {'secs':>5} {'acq':>5} {'acq/s':>6} {'refused':>7}"
        f" {'outage':>6} {'lost':>4} {'errors':>6} {'overlaps':>8} {'worst ms':>8}"
        f" {'fenced':>6} {'fence<=':>7}"
    ]
    for r in results:
        worst = max((o.seconds * 1000 for o in r.overlaps), default=0.0)
        lines.append(
            f"{r.phase.name:<18} {r.phase.title:<38} {r.seconds:>5.0f} {r.acquisitions:>5}"
            f" {r.rate:>6.1f} {r.total('refused'):>7} {r.total('outages'):>6}"
            f" {r.total('lost'):>4} {len(r.errors):>6} {len(r.overlaps):>8} {worst:>8.1f}"
            f" {len(r.grants):>6} {len(r.regressions):>7}"
        )
    return lines


def fault_table(results: Sequence[PhaseResult]) -> list[str]:
    names = [r.phase.name for r in results]
    width = max(len(n) for n in names)
    lines = [f"{'faults injected':<24}" + "".join(f" {n:>{width}}" for n in names) + "  total"]
    for kind in KINDS:
        counts = [r.faults.get(kind, 0) for r in results]
        row = "".join(f" {c:>{width}}" for c in counts)
        lines.append(f"{kind:<24}{row}  {sum(counts):>5}")
    paused = [r.holders_paused for r in results]
    row = "".join(f" {c:>{width}}" for c in paused)
    lines.append(f"{'  ...froze a holder':<24}{row}  {sum(paused):>5}")
    return lines


def closing(results: Sequence[PhaseResult]) -> list[str]:
    """The hazard line(s), then exactly one ``chaos:`` line for the safe phases."""
    lines = [
        f"hazard {r.phase.name} ({r.phase.title}): acquisitions={r.acquisitions}"
        f" faults={r.faults.total()} overlaps={len(r.overlaps)} (expected > 0)"
        f" fence_regressions={len(r.regressions)}"
        for r in results
        if not r.phase.assumptions_hold
    ]
    safe = [r for r in results if r.phase.assumptions_hold]
    acquisitions = sum(r.acquisitions for r in safe)
    faults = sum(r.faults.total() for r in safe)
    overlaps = sum(len(r.overlaps) for r in safe)
    regressions = sum(len(r.regressions) for r in safe)
    lines.append(
        f"chaos: acquisitions={acquisitions} faults={faults} overlaps={overlaps}"
        f" fence_regressions={regressions}"
    )
    return lines


def render(results: Sequence[PhaseResult]) -> str:
    examples = [f"  {r.phase.name}: {o}" for r in results for o in r.overlaps[:3]]
    behind = [f"  {r.phase.name}: {g}" for r in results for g in r.regressions[:3]]
    errors = [f"  {r.phase.name}: {e}" for r in results for e in r.errors[:5]]
    parts = [*phase_table(results), "", *fault_table(results)]
    if examples:
        parts += ["", "overlaps (first of each phase):", *examples]
    if behind:
        parts += ["", "fence regressions (first of each phase):", *behind]
    if errors:
        parts += ["", "client errors:", *errors]
    return "\n".join([*parts, "", *closing(results)])
