"""The demo's driver: set up, run the scenario, drain, stop everything, summarize.

Exit codes: 0 every check held; 1 a check failed; 2 the demo could not set up (a process
that would not start, masters that cannot vote); 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from celery_redlock import Redlock
from celery_redlock.admin import arm, master_status
from example_project.demo.processes import Processes
from example_project.demo.progress import Progress
from example_project.demo.report import BeatFacts, Summary, outcome_of, summarize
from example_project.demo.scenario import KILLED, MIN_DURATION, Call, Scenario
from example_project.demo.servers import Servers, embedded, from_env
from example_project.monitoring import Metrics
from example_project.runlog import RunLog

__all__ = ["main"]

CONCURRENCY = 4
BEATS = ("beat-a", "beat-b")
REPORT_EVERY = 2.0
WORKER_START_TIMEOUT = 90.0
DRAIN_TIMEOUT = 45.0

EXIT_OK, EXIT_CHECKS, EXIT_SETUP, EXIT_INTERRUPTED = 0, 1, 2, 130


class SetupFailed(Exception):
    """The demo could not get its servers or processes going (exit 2)."""


@dataclass
class Project:
    """The example project's modules, imported once the environment points at the servers."""

    app: Any  # celery.Celery
    tasks: Any  # the example_project.tasks module
    runlog: RunLog
    metrics: Metrics


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    _stop_on_signals()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="celery-redlock-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    code = EXIT_INTERRUPTED
    try:
        code = _run(args, workdir)
    except KeyboardInterrupt:
        print("\ninterrupted: every process the demo started is stopped", file=sys.stderr)
    except SetupFailed as exc:
        print(f"\nthe demo could not start: {exc}", file=sys.stderr)
        code = EXIT_SETUP
    finally:
        _keep_or_remove(workdir, keep=code != EXIT_OK or args.workdir is not None)
    return code


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m example_project.demo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--duration", type=float, default=45.0, help="scenario seconds (45)")
    parser.add_argument("--workdir", help="logs and beat schedules (default: a temp dir)")
    parser.add_argument(
        "--arm", action="store_true", help="arm your brand-new masters (celery redlock arm)"
    )
    args = parser.parse_args(argv)
    if args.duration < MIN_DURATION:
        parser.error(f"--duration must be at least {MIN_DURATION:g} s")
    return args


_stopping = False


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both unwind through the clean-up; a second one during the
    clean-up is ignored, so that it finishes (it is bounded: about 20 s at worst)."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        global _stopping  # noqa: PLW0603
        if _stopping:
            return
        _stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)


def _cleaning_up() -> None:
    global _stopping  # noqa: PLW0603
    _stopping = True


def _keep_or_remove(workdir: Path, *, keep: bool) -> None:
    if keep and any(workdir.iterdir()):
        print(f"logs of the worker and the beats: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(args: argparse.Namespace, workdir: Path) -> int:
    out = Progress(sys.stdout, tty=sys.stdout.isatty())
    with contextlib.ExitStack() as stack:  # its callbacks run last-in, first-out
        servers = _servers(stack)
        os.environ.update(_environment(servers))  # the demo's own app reads them too
        project = _import_project()
        if not servers.embedded:
            stack.callback(project.runlog.clear)
        _preflight(servers, arm_them=args.arm)
        demo = Demo(args, out, servers, Processes(workdir, dict(os.environ)), project)
        stack.callback(demo.procs.stop_all, hurry=True)
        stack.callback(demo.forget_results)
        stack.callback(_cleaning_up)
        _banner(out, servers, args.duration, workdir)
        return demo.play()
    return EXIT_INTERRUPTED  # unreachable: the with block returns or raises


def _servers(stack: contextlib.ExitStack) -> Servers:
    servers = from_env(os.environ)
    if servers is None:
        servers = embedded()
    stack.callback(servers.close)
    return servers


def _environment(servers: Servers) -> dict[str, str]:
    """What the worker, the beats and the demo's own app are configured with."""
    return {
        "EXAMPLE_BROKER_URL": servers.broker_url,
        "EXAMPLE_REDLOCK_MASTERS": ",".join(servers.master_urls),
        "EXAMPLE_REPORT_EVERY": str(REPORT_EVERY),
        "EXAMPLE_NAMESPACE": f"demo-{secrets.token_hex(4)}",
    }


def _import_project() -> Project:
    from example_project import tasks
    from example_project.celery import app, metrics, runlog

    return Project(app, tasks, runlog, metrics)


def _preflight(servers: Servers, *, arm_them: bool) -> None:
    """Your masters must be able to vote now; brand-new ones sit out their restart guard."""
    with Redlock(list(servers.master_urls)) as dlm:
        if arm_them:
            arm(dlm)
        statuses = master_status(dlm)
        voting = [s for s in statuses if s.reachable and s.boot_ms is not None and not s.guard_left]
        if len(voting) >= dlm.quorum:
            return
        problems = "; ".join(
            f"{s.name}: {', '.join(s.problems + s.warnings) or s.error}" for s in statuses
        )
        raise SetupFailed(
            f"only {len(voting)} of {len(statuses)} masters can vote, {dlm.quorum} needed"
            f" ({problems}). Masters provisioned empty and never used: add --arm."
        )


def _banner(out: Progress, servers: Servers, duration: float, workdir: Path) -> None:
    out.stream.write(
        f"celery_redlock demo: the example project end to end, {duration:.0f} s of scenario\n"
        f"  servers:   {servers.describe()}\n"
        f"  processes: a prefork worker ({CONCURRENCY} processes) and {len(BEATS)} beats"
        " (RedlockScheduler),\n             each a `celery -A example_project ...` process\n"
        f"  logs:      {workdir} (removed after a run whose checks all held)\n"
    )
    out.stream.flush()


@dataclass
class Demo:
    """One run of the demo: what it prints to, talks to and started."""

    args: argparse.Namespace
    out: Progress
    servers: Servers
    procs: Processes
    project: Project
    calls: list[Call] = field(default_factory=list)

    def play(self) -> int:
        """Start the processes, run the scenario, drain, stop, summarize."""
        began = time.monotonic()
        self.procs.start_worker("worker", CONCURRENCY)
        _await_worker(self.project.app, self.procs, self.out)
        for name in BEATS:
            self.procs.start_beat(name)
        self.out.say(f"{' and '.join(BEATS)} started: the scenario begins")
        self.out.restart_clock()
        scenario = self.scenario()
        beats_started = time.time()
        scenario.run(lambda: self.out.update(self.status(scenario)))
        outcomes = _drain(scenario.calls, lambda: self.out.update(self.status(scenario)))
        beats_stopped = time.time()
        _stop_beats(self.procs, self.project, self.out)
        guard_left = _guard_left(self.servers)
        _cleaning_up()
        self.procs.stop_all()
        self.out.done()
        beat = BeatFacts(self.beat_pids(), REPORT_EVERY, beats_started, beats_stopped)
        summary = summarize(scenario, outcomes, beat, guard_left)
        return _print_summary(self.out, summary, time.monotonic() - began)

    def scenario(self) -> Scenario:
        return Scenario(
            tasks=self.project.tasks,
            servers=self.servers,
            runlog=self.project.runlog,
            metrics=self.project.metrics,
            duration=self.args.duration,
            say=self.out.say,
            calls=self.calls,
        )

    def beat_pids(self) -> dict[int, str]:
        return {pid: name for pid, name in self.procs.names_by_pid().items() if name in BEATS}

    def status(self, scenario: Scenario) -> str:
        """The progress line: time, phase, and what the run log and signals counted."""
        up = self.servers.masters_up()
        masters = f"masters {up}/{len(self.servers.master_urls)}" if up is not None else ""
        runlog, metrics = self.project.runlog, self.project.metrics
        return (
            f"{scenario.elapsed():4.0f}/{scenario.duration:.0f} s  {scenario.phase:<26}"
            f" calls {len(scenario.calls):3}  runs {runlog.count():3}"
            f"  skipped {metrics.total('duplicate-run'):3}"
            f"  overlaps {len(runlog.live_overlaps())}  {masters}"
        ).rstrip()

    def forget_results(self) -> None:
        """Drop the result handles while the broker still runs: a handle collected after
        the broker stopped would retry its unsubscribe for 20 s at interpreter exit. On
        your broker, the stored results go too."""
        if not self.servers.embedded:
            for call in self.calls:
                with contextlib.suppress(Exception):
                    call.result.forget()
        self.calls.clear()
        gc.collect()
        self.project.app.close()


def _await_worker(app: Any, procs: Processes, out: Progress) -> None:
    """Until the worker answers a ping (its pool is up by then)."""
    out.say(f"starting the worker ({CONCURRENCY} pool processes)")
    deadline = time.monotonic() + WORKER_START_TIMEOUT
    while not app.control.ping(timeout=0.5):
        if procs.dead() or time.monotonic() > deadline:
            log = procs.tail("worker")
            raise SetupFailed(f"the worker did not start; its log ends with:\n{log}")
    out.say("worker ready")


def _drain(calls: list[Call], tick: Callable[[], None]) -> list[tuple[Call, str]]:
    """Every call's outcome, waiting for the last runs to end (failed if they never do)."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    outcomes = []
    for call in calls:
        tick()
        left = max(0.1, deadline - time.monotonic())
        with contextlib.suppress(Exception):  # a timeout leaves the call not SUCCESS: failed
            call.result.get(timeout=left, propagate=False)
        outcomes.append((call, outcome_of(call.result.result, call.result.state)))
    return outcomes


def _stop_beats(procs: Processes, project: Project, out: Progress) -> None:
    """Stop sending, then wait until the worker has dealt with every report sent."""
    procs.stop(*BEATS)
    name = "example_project.tasks.nightly_report"
    deadline = time.monotonic() + 15
    while (left := _reports_pending(project, name)) and time.monotonic() < deadline:
        time.sleep(0.2)
    out.say(f"beats stopped; reports sent but not yet run: {left}")


def _reports_pending(project: Project, name: str) -> int:
    """Reports beat sent that the worker has neither run nor skipped yet."""
    sent = project.metrics.total("published", name)
    done = sum(run.task == "nightly_report" for run in project.runlog.runs())
    return max(0, sent - done - project.metrics.total("duplicate-run", name))


def _guard_left(servers: Servers) -> float | None:
    """Seconds of restart guard left on the master that was killed and restarted."""
    if not servers.embedded or KILLED in servers.stopped:
        return None
    with Redlock(list(servers.master_urls)) as dlm:
        return master_status(dlm)[KILLED].guard_left


def _print_summary(out: Progress, summary: Summary, elapsed: float) -> int:
    out.stream.write(f"\nsummary ({elapsed:.0f} s from the worker's start to its stop)\n\n")
    out.stream.write(summary.render() + "\n\n")
    out.stream.write(
        "latency is measured in the worker, from Celery's task_prerun to celery_redlock's\n"
        "lock_acquired (or lock_duplicate) signal for the same task id: the quorum round and\n"
        "what the library does around it (for a duplicate, also asking the masters who holds\n"
        "the key). Each pool process's first lock is shown apart: it connects first.\n\n"
    )
    failed = summary.failed
    if failed:
        names = ", ".join(row.measure for row in failed)
        out.stream.write(f"FAILED: {len(failed)} check(s) did not hold: {names}\n")
        return EXIT_CHECKS
    out.stream.write("all checks held\n")
    return EXIT_OK
