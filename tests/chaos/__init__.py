"""The chaos suite: the real lock, real masters, real processes, real faults.

Five ``redis-server`` masters; client processes (spawned) with several threads each,
contending for a few resources through the real :class:`~celery_redlock.Redlock`; every
acquisition recorded with CLOCK_MONOTONIC times; faults injected while it runs; then the
shared checker (``tests.history``) looks for two validity windows on one key that overlap.

``python -m tests.chaos --duration 120`` runs the long mode; ``tests/test_chaos.py`` runs
a short one in CI. Modules: ``worker`` (the client process), ``faults`` (the injector),
``runner`` (one phase), ``phases`` (the standard set), ``report`` (the summary).
"""
