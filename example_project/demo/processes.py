"""The demo's Celery processes: one prefork worker and two beats, each in its own session.

Each runs ``python -m celery -A example_project ...`` as a user would, with its output in
a log file of the demo's work dir, and in a session of its own so that a Ctrl-C meant for
the demo reaches the demo alone, which then stops them in order: beats first (no new
sends), the worker last (warm, so runs end and release their locks; cold if interrupted).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Processes"]

ROOT = Path(__file__).resolve().parents[2]
SCHEDULER = "celery_redlock.beat:RedlockScheduler"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None


class Processes:
    """Starts and stops the worker and beats; never leaves one running."""

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        self.workdir = workdir
        path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self.env = {**env, "PYTHONPATH": path}
        self.procs: dict[str, Proc] = {}

    def start(self, name: str, *args: str) -> Proc:
        log = self.workdir / f"{name}.log"
        argv = [sys.executable, "-m", "celery", "-A", "example_project", *args]
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs[name] = proc = Proc(name, popen, log)
        return proc

    def start_worker(self, name: str, concurrency: int) -> Proc:
        return self.start(
            name,
            "worker",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            "--loglevel=INFO",
            f"--hostname={name}@%h",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        )

    def start_beat(self, name: str) -> Proc:
        schedule = self.workdir / f"{name}-schedule"
        return self.start(
            name, "beat", f"--scheduler={SCHEDULER}", f"--schedule={schedule}", "--loglevel=INFO"
        )

    def names_by_pid(self) -> dict[int, str]:
        return {proc.popen.pid: name for name, proc in self.procs.items()}

    def dead(self) -> list[str]:
        """Names of the processes that exited by themselves (a crash, a bad setting)."""
        return [name for name, proc in self.procs.items() if not proc.alive]

    def tail(self, name: str, lines: int = 25) -> str:
        text = self.procs[name].log.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, *names: str, hurry: bool = False) -> None:
        """SIGTERM (a worker finishes its runs: warm shutdown), or for a hurried worker
        SIGQUIT (cold: runs are cut short, their locks released by the worker); SIGKILL
        for the whole session if it does not end in time. All are signalled before any
        is waited for: two beats stopped one after the other would hand the lead over
        (and a tick with it) on the way out. Idempotent."""
        with contextlib.ExitStack() as stack:
            for name in names:
                self._signal(name, hurry=hurry)
                stack.callback(self._reap, name, hurry=hurry)

    def _signal(self, name: str, *, hurry: bool) -> None:
        proc = self.procs[name]
        cold = hurry and not name.startswith("beat")  # beat has no SIGQUIT handler
        if proc.alive:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGQUIT if cold else signal.SIGTERM)

    def _reap(self, name: str, *, hurry: bool) -> None:
        proc = self.procs[name]
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(5 if hurry else 20)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGKILL)  # pool children left behind, if any
        proc.popen.wait()

    def stop_all(self, *, hurry: bool = False) -> None:
        """Beats first, so that nothing new is sent while the worker drains."""
        try:
            self.stop(*(n for n in self.procs if n.startswith("beat")), hurry=hurry)
        finally:
            self.stop(*(n for n in self.procs if not n.startswith("beat")), hurry=hurry)
