"""The demo's summary: what was asked, what ran, and the checks that decide the exit code.

Nothing here trusts the lock to report on itself where it matters: overlaps come from the
run log (the bodies' own start and end times), beat sends from Celery's
``before_task_publish`` in the beat processes, outcomes from the calls' results. The lock's
signals only supply timings and the counts shown beside them.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from celery_redlock import is_skipped
from example_project.demo.scenario import IMPORT_SOURCE, KILLED, Call, Scenario
from example_project.monitoring import Metrics
from example_project.runlog import Run, overlaps

__all__ = ["BeatFacts", "Row", "Summary", "outcome_of", "percentile", "summarize"]

TASKS = "example_project.tasks."
WIDTH = 100


@dataclass(frozen=True)
class Row:
    """One line of the table: ``check`` is True (held), False (failed) or None (a fact)."""

    measure: str
    result: str
    check: bool | None = None


@dataclass
class Summary:
    """The table's rows in order; the demo fails if any check in it did not hold."""

    rows: list[Row] = field(default_factory=list)

    def add(self, measure: str, result: str, check: bool | None = None) -> None:
        self.rows.append(Row(measure, result, check))

    @property
    def failed(self) -> list[Row]:
        return [row for row in self.rows if row.check is False]

    def render(self) -> str:
        width = max(len(row.measure) for row in self.rows)
        lines = [
            f"{'check':<5}  {'measure':<{width}}  result",
            f"{'-' * 5}  {'-' * width}  {'-' * 40}",
        ]
        for row in self.rows:
            mark = {True: "ok", False: "FAIL", None: ""}[row.check]
            indent = " " * (5 + 2 + width + 2)
            text = textwrap.fill(
                row.result,
                WIDTH,
                initial_indent=f"{mark:<5}  {row.measure:<{width}}  ",
                subsequent_indent=indent,
            )
            lines.append(text)
        return "\n".join(lines)


@dataclass(frozen=True)
class BeatFacts:
    """What the demo knows about its beats: who is who, the interval, when they ran."""

    names_by_pid: dict[int, str]
    every: float
    started: float
    stopped: float


def outcome_of(value: Any, state: str) -> str:
    """``ran``, ``skipped`` (the key was held: the body did not run) or ``failed``."""
    if state != "SUCCESS":
        return "failed"
    return "skipped" if is_skipped(value) else "ran"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: a value that was actually measured."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(
    scenario: Scenario, outcomes: list[tuple[Call, str]], beat: BeatFacts, guard_left: float | None
) -> Summary:
    """Every row of the table, each with its check where there is one."""
    summary = Summary()
    runlog, metrics = scenario.runlog, scenario.metrics
    runs = runlog.runs()
    _calls(summary, outcomes, runs)
    _overlaps(summary, runs, runlog.live_overlaps())
    _beat(summary, runs, metrics, beat)
    _import(summary, scenario, outcomes, runs)
    _latency(summary, metrics, scenario.killed_at)
    _master(summary, scenario, runs, guard_left)
    return summary


def _calls(summary: Summary, outcomes: list[tuple[Call, str]], runs: list[Run]) -> None:
    by_task = Counter(call.task for call, _ in outcomes)
    states = Counter(state for _, state in outcomes)
    ran_by_task = Counter(call.task for call, state in outcomes if state == "ran")
    customers = len({call.key for call, _ in outcomes if call.task == "sync_customer"})
    reports = sum(run.task == "nightly_report" for run in runs)
    logged = sum(run.task != "nightly_report" for run in runs)
    summary.add(
        "calls submitted",
        f"{len(outcomes)}: sync_customer {by_task['sync_customer']} over {customers}"
        f" customers, import_catalog {by_task['import_catalog']}",
    )
    summary.add(
        "runs executed",
        f"{states['ran']}: sync_customer {ran_by_task['sync_customer']}, import_catalog"
        f" {ran_by_task['import_catalog']} (and {reports} nightly_report from beat);"
        f" the run log holds {logged}",
        states["ran"] == logged,
    )
    summary.add(
        "duplicates skipped",
        f"{states['skipped']}: found their key held by a running call, ended without running",
    )
    summary.add(
        "every call accounted for",
        f"{len(outcomes)} = {states['ran']} ran + {states['skipped']} skipped;"
        f" {states['failed']} failed",
        states["failed"] == 0 and states["ran"] + states["skipped"] == len(outcomes),
    )


def _overlaps(summary: Summary, runs: list[Run], live: list[str]) -> None:
    found = overlaps(runs)
    keys = len({(run.task, run.key) for run in runs})
    detail = f"; e.g. {found[0][0]} and {found[0][1]}" if found else ""
    summary.add(
        "overlapping runs",
        f"{len(found)} (independent check: the start/end times {len(runs)} runs on {keys} keys"
        f" wrote to the run log; {len(live)} seen live by the per-key counters){detail}",
        not found and not live,
    )


def _beat(summary: Summary, runs: list[Run], metrics: Metrics, beat: BeatFacts) -> None:
    name = f"{TASKS}nightly_report"
    sends = metrics.samples(f"published:{name}")
    senders = Counter(_beat_name(who, beat.names_by_pid) for _, who in sends)
    times = sorted(t for t, _ in sends)
    twice = sum(b - a < beat.every / 2 for a, b in itertools.pairwise(times))
    executed = sum(run.task == "nightly_report" for run in runs)
    skipped = metrics.total("duplicate-run", name)
    due = int((beat.stopped - beat.started) // beat.every)
    by = ", ".join(f"{who} {n}" for who, n in sorted(senders.items())) or "nobody"
    standby = sorted(set(beat.names_by_pid.values()) - set(senders))
    summary.add(
        "beat ticks vs executions",
        f"every {beat.every:g} s for {beat.stopped - beat.started:.0f} s: {due} ticks due,"
        f" {len(sends)} sent ({by}{'; ' + ', '.join(standby) + ' stood by' if standby else ''}),"
        f" {executed} executed, {skipped} skipped, {twice} sent twice",
        twice == 0 and executed + skipped == len(sends) and 0.6 * due - 1 <= len(sends) <= due + 1,
    )


def _beat_name(who: str, names_by_pid: dict[int, str]) -> str:
    pid = who.rpartition(":")[2]
    return names_by_pid.get(int(pid), who) if pid.isdigit() else who


@dataclass(frozen=True)
class _ImportFacts:
    run: Run
    notes: list[dict[str, Any]]
    again: list[str]  # outcomes of the calls made while it ran
    lost: int
    lease: float

    @property
    def held(self) -> bool:
        """Ran past two leases, its lock valid at every check, never reported lost."""
        valid = bool(self.notes) and all(n["validity"] > 0 for n in self.notes)
        return self.run.seconds > 2 * self.lease and valid and self.lost == 0


def _import(
    summary: Summary, scenario: Scenario, outcomes: list[tuple[Call, str]], runs: list[Run]
) -> None:
    first = next((run for run in runs if run.task_id == scenario.import_id), None)
    if first is None:
        summary.add("long import (renewal)", "the import never ran", False)
        return
    facts = _ImportFacts(
        first,
        scenario.runlog.notes(f"import:{first.task_id}"),
        [state for call, state in outcomes if call.task == "import_catalog"][1:],
        scenario.metrics.total("lost", f"{TASKS}import_catalog"),
        scenario.tasks.IMPORT_LEASE,
    )
    left = facts.notes[-1]["validity"] if facts.notes else 0.0
    summary.add(
        "long import (renewal)",
        f"import_catalog({IMPORT_SOURCE!r}) ran {first.seconds:.1f} s on a {facts.lease:g} s"
        f" lease; its lock was valid at all {len(facts.notes)} checks ({left:.1f} s left at"
        f" the last), never lost; asked again {len(facts.again)} times while it ran:"
        f" {facts.again.count('skipped')} skipped",
        facts.held and facts.again.count("skipped") >= 1,
    )


def _latency(summary: Summary, metrics: Metrics, killed_at: float | None) -> None:
    """Rounds before and after the kill, with each pool process's first lock apart: that
    one also opens the process's connections to the masters."""
    kinds = {kind: metrics.samples(kind) for kind in ("acquire_ms", "refuse_ms")}
    first, warm = _first_per_process(kinds)
    split = killed_at if killed_at is not None else math.inf
    before = [ms for t, ms in warm["acquire_ms"] if t < split]
    after = [ms for t, ms in warm["acquire_ms"] if t >= split]
    parts = [_stats(before, "all masters up"), _stats(after, "one master down")]
    summary.add("lock acquire latency", "; ".join(p for p in parts if p) or "none measured")
    refused = [ms for _, ms in warm["refuse_ms"]]
    summary.add("'key is held' answer", _stats(refused, "duplicates") or "none measured")
    if first:
        summary.add(
            "first lock per process",
            f"{min(first):.0f} to {max(first):.0f} ms in each of {len(first)} pool processes"
            " (it connects to every master first)",
        )


def _first_per_process(
    kinds: dict[str, list[tuple[float, Any]]],
) -> tuple[list[float], dict[str, list[tuple[float, float]]]]:
    """Each process's first sample (any kind), and the others as (time, ms) by kind."""
    tagged = sorted(
        (t, kind, float(v["ms"]), int(v["pid"])) for kind, got in kinds.items() for t, v in got
    )
    seen: set[int] = set()
    first: list[float] = []
    warm: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    for t, kind, ms, pid in tagged:
        if pid in seen:
            warm[kind].append((t, ms))
        else:
            seen.add(pid)
            first.append(ms)
    return first, warm


def _stats(values: list[float], label: str) -> str:
    if not values:
        return ""
    p50, p99 = percentile(values, 50), percentile(values, 99)
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({label}, n={len(values)})"


def _master(
    summary: Summary, scenario: Scenario, runs: list[Run], guard_left: float | None
) -> None:
    killed_at = scenario.killed_at
    if killed_at is None:
        summary.add("when a master died", "not tried: the demo only kills servers it started")
        return
    after = [run for run in runs if run.start > killed_at]
    across = [run for run in runs if run.start < killed_at < run.end]
    metrics = scenario.metrics
    outages = metrics.total("outage-retry") + metrics.total("outage-raise")
    failed = metrics.total("failed")
    summary.add(
        "when a master died",
        f"master {KILLED + 1} of {len(scenario.servers.master_urls)} SIGKILLed at"
        f" {killed_at - scenario.started:.1f} s. {_across(across, scenario, killed_at)}"
        f" {len(after)} runs started after it, on the 2 masters left; {outages} outages,"
        f" {failed} failures",
        bool(after) and failed == 0,
    )
    if scenario.restarted_at is not None:
        _restart(summary, scenario.restarted_at - scenario.started, guard_left)


def _restart(summary: Summary, back: float, guard_left: float | None) -> None:
    if not guard_left:
        summary.add("when it came back empty", f"at {back:.1f} s, but it did not abstain", False)
        return
    summary.add(
        "when it came back empty",
        f"restarted at {back:.1f} s with no data: it abstains from every vote for its restart"
        f" guard ({guard_left:.0f} s left at the end), so it cannot grant a lock that the"
        " others hold; the quorum went on with 2 of 3",
        True,
    )


def _across(across: list[Run], scenario: Scenario, killed_at: float) -> str:
    """The runs in flight when the master died, and how the import's renewals voted."""
    if not across:
        return "No run was in flight across it."
    notes = scenario.runlog.notes(f"import:{scenario.import_id}")
    before = " ".join(str(n["yes"]) for n in notes if n["t"] < killed_at)
    after = " ".join(str(n["yes"]) for n in notes if n["t"] >= killed_at)
    return (
        f"{len(across)} run(s) in flight across it went on: the import kept its lock; yes"
        f" votes in its latest renewal at each check: {before} | {after} (| marks the kill;"
        " 2 of 3 is a majority)."
    )
