"""Embedded Redis servers and a fault-injecting proxy for tests, the demo and the benchmarks.

Nothing here imports Celery. ``RedisServer`` runs a real, private ``redis-server`` process;
``RedisGroup`` runs N of them as independent masters; ``FaultProxy`` sits between a client
and a server and adds latency, hangs or resets on demand (``ProxyError`` if its loop fails).
"""

from celery_redlock.testing.proxy import FaultProxy, ProxyError
from celery_redlock.testing.servers import (
    BINARY_ENV,
    RedisGroup,
    RedisServer,
    RedisServerError,
    free_port,
    redis_server_binary,
    start_masters,
)

__all__ = [
    "BINARY_ENV",
    "FaultProxy",
    "ProxyError",
    "RedisGroup",
    "RedisServer",
    "RedisServerError",
    "free_port",
    "redis_server_binary",
    "start_masters",
]
