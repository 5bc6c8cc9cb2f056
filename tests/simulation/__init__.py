"""A deterministic discrete-event simulation of Redlock under faults.

Several clients run the real ``celery_redlock._core.quorum`` generators (the very code the sync
and asyncio drivers run) against simulated masters, over a simulated network, on clocks
that drift, while masters crash, restart, pause and get partitioned and clients freeze.
Everything is drawn from one seed, so a schedule that breaks the no-overlap invariant, or
hands out a fence not above an earlier one, replays exactly:
``python -m tests.simulation --scenario NAME --seed N --trace``.

Modules: ``engine`` (true time, clocks, network), ``master`` (the scripts' semantics),
``world`` (routing and the history), ``driver`` (the drivers' round semantics),
``workload`` (what clients do), ``scenarios`` (what a seed draws, and running it).
"""

from tests.simulation.scenarios import SCENARIOS, Result, run

__all__ = ["SCENARIOS", "Result", "run"]
