"""Operator views of a set of masters: health, held locks, forced release, arming.

Not the hot path: these use plain redis-py clients, one master after another, and are
what ``celery redlock status|list|release|arm`` print. They import nothing from Celery.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from celery_redlock._base import ManagerBase
from celery_redlock._masters import MasterSpec
from celery_redlock._scripts import BOOT_KEY, parse_marker

__all__ = ["LockInfo", "MasterStatus", "arm", "force_release", "list_locks", "master_status"]


@dataclass(frozen=True, slots=True)
class MasterStatus:
    """What one master says about itself, and what in it weakens the lock's guarantees."""

    name: str
    reachable: bool
    error: str | None = None
    latency_ms: float | None = None
    version: str | None = None
    role: str | None = None
    clock_offset_ms: float | None = None
    appendonly: bool | None = None
    appendfsync: str | None = None
    boot_ms: int | None = None
    guard_left: float | None = None  # seconds this master still abstains (restart guard)
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LockInfo:
    """A key held on at least one master: its owner text and time left per master (ms)."""

    key: str
    owner: str
    pttl_ms: dict[str, int] = field(default_factory=dict)

    def held_by_quorum(self, quorum: int) -> bool:
        return len(self.pttl_ms) >= quorum


def _client(spec: MasterSpec, timeout: float) -> redis.Redis:
    pool = redis.ConnectionPool(
        connection_class=spec.connection_class, **spec.connect_kwargs(timeout)
    )
    return redis.Redis(connection_pool=pool)


def _clients(manager: ManagerBase, timeout: float) -> Iterator[tuple[MasterSpec, redis.Redis]]:
    for spec in manager._specs:
        client = _client(spec, timeout)
        try:
            yield spec, client
        finally:
            client.close()


def master_status(manager: ManagerBase, *, timeout: float = 1.0) -> list[MasterStatus]:
    """Each master's reachability, latency, version, clock offset, persistence and guard."""
    return [_status(spec, client, manager) for spec, client in _clients(manager, timeout)]


def _status(spec: MasterSpec, client: redis.Redis, manager: ManagerBase) -> MasterStatus:
    try:
        start = time.perf_counter()
        client.ping()
        latency = (time.perf_counter() - start) * 1000
        info: dict[str, Any] = client.info("server") | client.info("replication")
        sent = time.time()
        seconds, micros = client.time()
        received = time.time()
        config = _config(client)
        boot = client.get(BOOT_KEY)
    except redis.RedisError as exc:
        return MasterStatus(spec.name, False, error=f"{type(exc).__name__}: {exc}")
    master_ms = seconds * 1000 + micros / 1000
    offset = master_ms - (sent + received) * 500  # against the midpoint of our round trip
    marker = parse_marker(boot)
    boot_ms = None if marker is None else marker.boot_ms
    guard = manager.settings.restart_guard
    guard_left = None
    if guard and boot_ms is not None:
        guard_left = max(0.0, (boot_ms + guard * 1000 - master_ms) / 1000)
    status = MasterStatus(
        spec.name,
        True,
        latency_ms=latency,
        version=str(info.get("redis_version")),
        role=str(info.get("role")),
        clock_offset_ms=offset,
        appendonly=config.get("appendonly") == "yes",
        appendfsync=config.get("appendfsync"),
        boot_ms=boot_ms,
        guard_left=guard_left,
    )
    return _with_warnings(status, guard)


def _config(client: redis.Redis) -> dict[str, str]:
    """CONFIG GET where allowed (managed services often forbid it): empty otherwise."""
    try:
        raw = client.config_get("append*")
    except redis.ResponseError:
        return {}
    return {str(k): str(v) for k, v in raw.items()}


def _with_warnings(status: MasterStatus, guard: float) -> MasterStatus:
    notes = []
    if status.role not in (None, "master"):
        notes.append(f"role is {status.role}: writes will fail (READONLY)")
    if status.clock_offset_ms is not None and abs(status.clock_offset_ms) > 1000:
        notes.append(f"clock is {status.clock_offset_ms:+.0f} ms off ours")
    if not guard and not (status.appendonly and status.appendfsync == "always"):
        notes.append(
            "no AOF with fsync always and restart_guard off: a restart can grant a"
            " held lock twice unless restarts are delayed by the longest TTL"
        )
    if guard and status.boot_ms is None:
        notes.append("no boot marker: the next acquire starts its restart guard")
    elif status.guard_left:
        notes.append(f"abstaining after a restart for {status.guard_left:.1f} s more")
    return replace(status, warnings=tuple(notes))


def list_locks(manager: ManagerBase, *, match: str = "*", timeout: float = 1.0) -> list[LockInfo]:
    """Keys under the manager's prefix on any master, with owner and time left per master.

    The token's random part is never shown: it is what a release needs.
    """
    pattern = manager.settings.key_prefix + match
    found: dict[str, LockInfo] = {}
    for spec, client in _clients(manager, timeout):
        # An unreachable master shows as missing from pttl_ms.
        with contextlib.suppress(redis.RedisError):
            for raw in client.scan_iter(match=pattern, count=500):
                _record(found, spec.name, client, raw)
    return sorted(found.values(), key=lambda info: info.key)


def _record(found: dict[str, LockInfo], name: str, client: redis.Redis, raw: bytes) -> None:
    key = raw.decode(errors="replace")
    if key == BOOT_KEY:
        return
    pipe = client.pipeline()
    pipe.get(raw)
    pipe.pttl(raw)
    value, pttl = pipe.execute()
    if value is None:
        return  # expired between SCAN and GET
    owner = bytes(value).decode(errors="replace").partition(":")[2]
    info = found.setdefault(key, LockInfo(key, owner))
    info.pttl_ms[name] = int(pttl)


def force_release(manager: ManagerBase, resource: str, *, timeout: float = 1.0) -> int:
    """Delete ``resource``'s key on every master whoever holds it; returns how many had it.

    For operators only (a crashed holder with a long TTL): it bypasses the token check
    that protects every other release, so the holder, if alive, is not told.
    """
    key = manager.settings.key(resource)
    deleted = 0
    for _spec, client in _clients(manager, timeout):
        with contextlib.suppress(redis.RedisError):
            deleted += int(client.delete(key))
            client.publish(key, "forced")
    return deleted


def arm(manager: ManagerBase, *, timeout: float = 1.0) -> list[str]:
    """Declare brand-new masters as never having served locks, skipping their guard.

    Only for masters provisioned empty: arming a master that restarted after losing data
    would let it grant locks that are still held elsewhere. Masters that already have a
    boot marker are left alone. Returns the names of the masters armed now.
    """
    armed = []
    for spec, client in _clients(manager, timeout):
        with contextlib.suppress(redis.RedisError):  # unreachable: not armed, not listed
            if client.set(BOOT_KEY, "0", nx=True):
                armed.append(spec.name)
    return armed
