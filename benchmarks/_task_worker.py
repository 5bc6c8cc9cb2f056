"""The app of a ``celery worker`` subprocess started by :mod:`benchmarks.bench_tasks`.

Everything comes from the environment the benchmark sets, so that the worker and the
benchmark (which publishes) build the same app for the same row: same queue, same task,
same lock servers.
"""

from __future__ import annotations

from benchmarks.bench_tasks import app_from_env

app = app_from_env()
