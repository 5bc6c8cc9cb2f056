"""CPU instructions per task call, counted by valgrind: a plain task, SingletonTask and its
peers, as one markdown table. The steady companion of :mod:`benchmarks.bench_tasks`.

``python -m benchmarks.bench_instructions`` (``make bench`` runs it in ``.venv-bench-tasks``,
which holds the peers); ``--calls N`` changes the count (default 500). Needs valgrind.

Why: on a shared machine a throughput ratio swings by fifteen points between runs of the
same code, while callgrind's instruction count is the same to a fraction of a percent
whatever else runs. It counts user space only: the kernel's side of each send and receive
is not in it (SingletonTask on three masters makes six of those per call, the peers two),
so it measures the Python each library runs, not the whole cost.

Each row, in a process of its own under callgrind: the row's task (defined as in
bench_tasks) on an app with an in-memory broker, each call published with ``apply_async``
(where the peers and ``lock_dedup`` take their locks) and then run by Celery's own tracer
in-process (where SingletonTask takes and frees its lock, and the peers free theirs).
Every call has a distinct argument. The row's figure is the difference between a run of
N calls and a run of none, divided by N, so start-up and imports cancel out. Locks are
taken on real redis-servers started here, three masters (the peers and the one-master
row use the first). The ``ours-child`` row, counted here only, runs as a prefork pool
child does, recording each lock for the reaper (``CHILD_ROWS``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks._common import available, host_line, version
from benchmarks.bench_tasks import MASTERS, ROWS, TASK, Row, Servers, _ours

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 100  # calls before counting starts in both runs: connections, scripts, caches
_COLLECTED = re.compile(r"Collected : (\d+)")

#: Rows counted here only. In-process, the other rows' runs record nothing for the prefork
#: reaper; this one runs as a pool child of a prefork worker does (the reaper enabled in
#: its main process, then the child's at-fork hook), so each run records its lock.
CHILD_ROWS = {
    "ours-child": Row(
        f"SingletonTask, {MASTERS} masters, as a prefork pool child (records each lock)",
        _ours(MASTERS),
    ),
}
ALL_ROWS = {**ROWS, **CHILD_ROWS}


def _noop(n: int) -> None:
    """The task body of every row (Celery needs a named function to build its signature)."""


def child(row: str, calls: int, masters: Sequence[str]) -> None:
    """Run in the measured process: warm up, then ``calls`` calls published and run."""
    from celery import Celery
    from celery.app.trace import build_tracer

    app = Celery("bench_instr", broker="memory://", set_as_current=False)
    app.conf.update(task_ignore_result=True, worker_hijack_root_logger=False)
    servers = Servers("memory://", tuple(masters))
    task = ALL_ROWS[row].define(app, _noop, servers)
    app.finalize()
    if row in CHILD_ROWS:
        from celery_redlock._celery.reaper import reaper

        reaper.enable()
        reaper._after_fork()  # what os.fork() runs in a new pool child
    trace = build_tracer(TASK, task, app=app, eager=False, propagate=False)

    def run(count: int, first: int) -> None:
        for n in range(first, first + count):
            task_id = f"{n:032x}"
            task.apply_async((n,), task_id=task_id)
            trace(task_id, (n,), {}, {"id": task_id, "delivery_info": {}, "headers": {}})

    run(WARMUP, 0)
    run(calls, 10**9)


def count(row: str, calls: int, masters: Sequence[str]) -> int:
    """Instructions callgrind counted in a child process running ``calls`` calls."""
    out = subprocess.run(
        [
            *("valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"),
            *(sys.executable, "-m", "benchmarks.bench_instructions", "--child", row),
            *("--calls", str(calls), "--masters", ",".join(masters)),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    found = _COLLECTED.search(out.stderr)
    if out.returncode or not found:
        raise RuntimeError(f"row {row}: callgrind run failed:\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=500, help="calls per measured run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--masters", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.calls, args.masters.split(","))
        return
    if shutil.which("valgrind") is None:
        sys.exit("bench_instructions needs valgrind (Debian: apt install valgrind)")
    from celery_redlock.testing import RedisGroup

    rows = available(list(ALL_ROWS), ALL_ROWS)
    per_call: dict[str, float] = {}
    with RedisGroup(MASTERS) as masters:
        for row in rows:
            base = count(row, 0, masters.urls)
            per_call[row] = (count(row, args.calls, masters.urls) - base) / args.calls
            print(f"{row}: {per_call[row] / 1000:.0f}k instructions per call", file=sys.stderr)
    plain = per_call.get("plain")
    print(
        f"{host_line()}; Celery {version('celery')}; redis-py {version('redis')};"
        f" valgrind callgrind, user-space instructions, {args.calls} calls per row after"
        f" {WARMUP} warm-up calls, each published (memory broker) and run in-process.\n"
    )
    print("| task | instructions per call (publish + run) | vs plain |")
    print("|---|---|---|")
    for row in rows:
        ratio = f"{per_call[row] / plain:.2f}x" if plain else "—"
        print(f"| {ALL_ROWS[row].label} | {per_call[row] / 1000:.0f}k | {ratio} |")


if __name__ == "__main__":
    main()
