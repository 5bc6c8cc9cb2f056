"""Hung masters for tests that claim a call does not wait for them.

Such a claim is an ordering, not a speed: every call in the block returned while the
masters were still hung. Asserting a duration instead fails whenever a loaded machine
stalls the test for that long, and proves no more.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

from celery_redlock.testing import RedisServer

#: Seconds after which a block still running is taken to be stalled on the hung masters:
#: far above any load, it only turns a hang into a failure (resuming them) instead of a
#: pytest-timeout.
LIVENESS = 30.0


@contextlib.contextmanager
def hung(servers: Sequence[RedisServer]) -> Iterator[threading.Event]:
    """Pause ``servers`` (SIGSTOP) for the block and resume them after it. A block still
    running after ``LIVENESS`` seconds gets them resumed early, and the event yielded is
    set: ``assert not stalled.is_set()`` after the block."""
    stalled = threading.Event()

    def resume() -> None:
        for server in servers:
            server.resume()

    def rescue() -> None:
        stalled.set()
        resume()

    for server in servers:
        server.pause()
    watchdog = threading.Timer(LIVENESS, rescue)
    watchdog.start()
    try:
        yield stalled
    finally:
        watchdog.cancel()
        watchdog.join()  # so only this thread resumes them now
        resume()
