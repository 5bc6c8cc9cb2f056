"""What the demo does, on a timeline scaled to its duration ``D`` (seconds):

- bursts of ``sync_customer`` calls every ``D/9`` s: a few customers, each asked for
  three to five times in a row, in every calling style (``delay(7)``,
  ``delay(customer_id=7)``, ``apply_async((7,))``): one key per customer whatever the style;
- ``import_catalog("acme")`` at ``0.35 D``: 8 s of work on a 3 s lease, and the same import
  asked for again 4 and 6 s into its run, after its first lease would have run out;
- one master SIGKILLed 2.5 s after the import is sent (embedded servers only), restarted empty
  at ``0.75 D``, when it must sit out its restart guard;
- the nightly report every 2 s from beat, with two beats running throughout.

Bursts leave the import's window alone, so its duplicates find a free pool process at
once rather than queueing behind a burst until the import is over.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from example_project.demo.servers import Servers
from example_project.monitoring import Metrics
from example_project.runlog import RunLog

__all__ = ["Call", "Scenario"]

CUSTOMERS = range(1, 13)
IMPORT_SOURCE = "acme"
IMPORT_SECONDS = 8.0
#: Seconds into the import's run at which it is asked for again: past its 3 s lease.
IMPORT_DUPLICATES_AT = (4.0, 6.0)
KILLED = 1  # index of the master killed midway
MIN_DURATION = 20.0


@dataclass(frozen=True)
class Call:
    """One call the demo submitted, and its result handle."""

    task: str
    key: str
    result: Any  # celery.result.AsyncResult
    at: float  # wall time


@dataclass
class Scenario:
    """Runs the timeline; records every call and what happened to the masters."""

    tasks: Any  # the example_project.tasks module
    servers: Servers
    runlog: RunLog
    metrics: Metrics
    duration: float
    say: Callable[[str], None]
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    calls: list[Call] = field(default_factory=list)
    started: float = 0.0
    import_id: str | None = None
    import_began: float | None = None  # wall time the import's body started
    killed_at: float | None = None
    restarted_at: float | None = None
    phase: str = "starting"

    @property
    def import_at(self) -> float:
        return 0.35 * self.duration

    def burst_times(self) -> list[float]:
        period = self.duration / 9
        quiet = (self.import_at - 1.5, self.import_at + IMPORT_SECONDS + 1.0)
        times = [i * period for i in range(9) if i * period < 0.85 * self.duration]
        return [t for t in times if not quiet[0] <= t <= quiet[1]]

    def plan(self) -> list[tuple[float, Callable[[], None]]]:
        steps: list[tuple[float, Callable[[], None]]] = [
            (t, self.burst) for t in self.burst_times()
        ]
        steps.append((self.import_at, self.start_import))
        if self.servers.embedded:
            steps.append((self.import_at + 2.5, self.kill_master))
            steps.append((0.75 * self.duration, self.restart_master))
        return sorted(steps, key=lambda step: step[0])

    def run(self, tick: Callable[[], None]) -> None:
        """Carry out the plan, calling ``tick`` about four times a second."""
        self.started = time.time()
        pending = self.plan()
        duplicates = list(IMPORT_DUPLICATES_AT)
        while (now := self.elapsed()) < self.duration:
            while pending and pending[0][0] <= now:
                pending.pop(0)[1]()
            if duplicates and self._import_running_for() >= duplicates[0]:
                duplicates.pop(0)
                self.duplicate_import()
            tick()
            time.sleep(0.25)
        self.phase = "draining"

    def elapsed(self) -> float:
        return time.time() - self.started

    def submit(self, task: str, key: str, send: Callable[[], Any]) -> None:
        self.calls.append(Call(task, key, send(), time.time()))

    def burst(self) -> None:
        """A few customers, each asked for several times in a row: duplicates galore."""
        self.phase = "bursts of sync_customer"
        sync = self.tasks.sync_customer
        styles: list[Callable[[int], Any]] = [
            sync.delay,
            lambda c: sync.delay(customer_id=c),
            lambda c: sync.apply_async((c,)),
        ]
        for customer in self.rng.sample(list(CUSTOMERS), 4):
            for n in range(self.rng.randint(3, 5)):
                style = styles[n % len(styles)]
                self.submit("sync_customer", str(customer), functools.partial(style, customer))

    def start_import(self) -> None:
        lease = self.tasks.IMPORT_LEASE
        self.phase = f"long import on a {lease:g} s lease"
        self.say(
            f"import_catalog({IMPORT_SOURCE!r}): {IMPORT_SECONDS:g} s of work, {lease:g} s lease"
        )
        self.submit("import_catalog", IMPORT_SOURCE, self._send_import)
        self.import_id = self.calls[-1].result.id

    def _send_import(self) -> Any:
        return self.tasks.import_catalog.delay(IMPORT_SOURCE, IMPORT_SECONDS)

    def duplicate_import(self) -> None:
        running = self._import_running_for()
        self.say(f"import_catalog({IMPORT_SOURCE!r}) asked again, {running:.1f} s into its run")
        self.submit("import_catalog", IMPORT_SOURCE, self._send_import)

    def _import_running_for(self) -> float:
        """Seconds since the import's body started (its first progress note tells), or -1."""
        if self.import_id is None:
            return -1.0
        if self.import_began is None:
            notes = self.runlog.notes(f"import:{self.import_id}")
            if not notes:
                return -1.0
            self.import_began = float(notes[0]["t"]) - 1.0  # the first chunk is 1 s
        return time.time() - self.import_began

    def kill_master(self) -> None:
        self.phase = "a master killed"
        self.servers.kill(KILLED)
        self.killed_at = time.time()
        self.say(f"SIGKILL to master {KILLED + 1} of {len(self.servers.master_urls)}")

    def restart_master(self) -> None:
        self.phase = "the master back, empty"
        self.servers.restart(KILLED)
        self.restarted_at = time.time()
        self.say(f"master {KILLED + 1} restarted, empty: it must sit out its restart guard")
