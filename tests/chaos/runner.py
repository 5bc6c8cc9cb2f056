"""One chaos phase: real masters, client processes, faults, and the history checked.

The runner starts the masters (and a fault proxy in front of each when the phase needs
network faults), spawns the client processes, waits until every one has imported and is
ready, then gives them one common start and stop time on CLOCK_MONOTONIC while the
injector runs the phase's fault plan. Afterwards every fault is undone, the clients
finish their last hold, and their histories become validity windows and fences for the
checkers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import random
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from celery_redlock.testing import FaultProxy, RedisGroup
from tests.chaos.faults import FaultEvent, FaultPlan, Injector, signal_client
from tests.chaos.worker import ClientPlan, main
from tests.history import (
    Grant,
    Overlap,
    Regression,
    Window,
    find_fence_regressions,
    find_overlaps,
)

#: How long clients may take to import and get ready on a loaded machine.
READY_TIMEOUT = 60.0
#: How long after the stop time a client may take to finish its last hold.
FINISH_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Phase:
    """A run: what the clients do, how the masters are set up, and which faults hit them."""

    name: str
    title: str
    duration: float
    clients: ClientPlan
    faults: FaultPlan
    #: whether the algorithm's assumptions hold here, so that overlaps are failures
    assumptions_hold: bool = True
    masters: int = 5
    processes: int = 3
    proxied: bool = False
    appendonly: bool = False


@dataclass(slots=True)
class PhaseResult:
    """What a phase did, from the clients' histories and the injector's log."""

    phase: Phase
    seconds: float
    windows: list[Window]
    overlaps: list[Overlap]
    faults: Counter[str]
    fault_events: list[FaultEvent]
    tallies: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    grants: list[Grant] = field(default_factory=list)
    regressions: list[Regression] = field(default_factory=list)

    @property
    def acquisitions(self) -> int:
        return len(self.windows)

    @property
    def rate(self) -> float:
        return self.acquisitions / self.seconds if self.seconds else 0.0

    def total(self, name: str) -> int:
        return sum(int(t[name]) for t in self.tallies)

    @property
    def errors(self) -> list[str]:
        """Exceptions clients did not expect, and clients that never reported."""
        return [e for t in self.tallies for e in t["errors"]] + self.missing

    @property
    def holders_paused(self) -> int:
        """Client SIGSTOPs that froze a holder and outlasted its validity."""
        count = 0
        for event in self.fault_events:
            if event.kind != "client SIGSTOP":
                continue
            prefix = f"{self.phase.name}.p{event.target}."
            count += any(
                w.holder.startswith(prefix) and w.start <= event.start < w.end < event.end
                for w in self.windows
            )
        return count


def run_phase(phase: Phase, seed: int = 0) -> PhaseResult:
    """Run ``phase`` against fresh masters; returns its checked history."""
    rng = random.Random(f"{phase.name}:{seed}")
    with (
        tempfile.TemporaryDirectory(prefix="redlock-chaos-") as directory,
        RedisGroup(phase.masters, appendonly=phase.appendonly) as group,
        _proxies(group, phase.proxied) as proxies,
    ):
        urls = tuple(p.url for p in proxies) if proxies else tuple(group.urls)
        plans = [
            replace(
                phase.clients,
                name=f"{phase.name}.p{i}",
                urls=urls,
                directory=directory,
                seed=rng.getrandbits(32),
            )
            for i in range(phase.processes)
        ]
        with _clients(plans, Path(directory), phase.duration) as (pids, start, until):
            holding = functools.partial(holding_now, Path(directory), phase.name)
            injector = Injector(phase.faults, list(group), proxies, pids, rng, holding)
            time.sleep(max(0.0, start - time.monotonic()))
            faults = injector.run(until)
        windows, tallies, grants = read_history(Path(directory))
    reported = {t["holder"] for t in tallies}
    expected = [f"{p.name}.t{i}" for p in plans for i in range(p.threads)]
    missing = [f"{h} never reported" for h in expected if h not in reported]
    return PhaseResult(
        phase,
        until - start,
        windows,
        find_overlaps(windows),
        faults,
        injector.events,
        tallies,
        missing,
        grants,
        find_fence_regressions(grants),
    )


@contextlib.contextmanager
def _proxies(group: RedisGroup, wanted: bool) -> Iterator[list[FaultProxy]]:
    with contextlib.ExitStack() as stack:
        yield (
            [stack.enter_context(FaultProxy(("127.0.0.1", server.port))) for server in group]
            if wanted
            else []
        )


@contextlib.contextmanager
def _clients(
    plans: Sequence[ClientPlan], directory: Path, duration: float
) -> Iterator[tuple[list[int], float, float]]:
    """Spawn the clients, wait until all are ready, then tell them when to start and stop.

    Yields (pids, start, stop); on the way out every client is woken (SIGCONT) and given
    time to finish, and any that still runs is killed.
    """
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=main, args=(plan,), name=plan.name) for plan in plans]
    for proc in procs:
        proc.start()
    try:
        _await_ready(directory, procs)
        start = time.monotonic() + 0.2
        until = start + duration
        staged = directory / "go.staged"
        staged.write_text(json.dumps({"start": start, "until": until}))
        staged.replace(directory / "go.json")  # atomic: a client never reads half of it
        yield [proc.pid for proc in procs if proc.pid is not None], start, until
    finally:
        _finish(procs)


def _await_ready(directory: Path, procs: Sequence[multiprocessing.process.BaseProcess]) -> None:
    """Until every client has imported and connected; fail fast if one died trying."""
    deadline = time.monotonic() + READY_TIMEOUT
    while len(list(directory.glob("*.ready"))) < len(procs):
        dead = [p for p in procs if p.exitcode is not None]
        if dead:
            raise RuntimeError(f"chaos client {dead[0].name} exited with {dead[0].exitcode}")
        if time.monotonic() > deadline:
            raise RuntimeError("chaos clients did not start in time")
        time.sleep(0.02)


def _finish(procs: Sequence[multiprocessing.process.BaseProcess]) -> None:
    deadline = time.monotonic() + FINISH_TIMEOUT
    for proc in procs:
        if proc.pid is not None:
            signal_client(proc.pid, signal.SIGCONT)
    for proc in procs:
        proc.join(max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def read_history(directory: Path) -> tuple[list[Window], list[dict[str, Any]], list[Grant]]:
    """Windows, tallies and fences from every thread's log; a lease never ended counts
    until its valid_until."""
    acquired: dict[str, dict[str, Any]] = {}
    ended: dict[str, dict[str, Any]] = {}
    tallies: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.jsonl")):
        for record in _records(path):
            if record["e"] == "acq":
                acquired[record["token"]] = record
            elif record["e"] == "end":
                ended[record["token"]] = record
            else:
                tallies.append(record)
    windows, grants = [], []
    for token, a in acquired.items():
        e = ended.get(token)
        end = a["until"] if e is None else min(e["until"], e["end"])
        windows.append(Window(a["key"], a["holder"], token, a["start"], end))
        if a.get("fence") is not None:
            grants.append(Grant(a["key"], a["holder"], token, a["fence"], a["start"], a["asked"]))
    return windows, tallies, grants


def holding_now(directory: Path, phase: str) -> list[int]:
    """Indices of the client processes with a lease handed over, not yet ended, and
    still valid (read from the histories as they are being written)."""
    windows, _, _ = read_history(directory)
    now = time.monotonic()
    prefix = f"{phase}.p"
    return sorted(
        {int(w.holder[len(prefix) :].split(".")[0]) for w in windows if w.start <= now < w.end}
    )


def _records(path: Path) -> Iterator[dict[str, Any]]:
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a kill
            yield json.loads(line)
