"""Operator views of a set of masters: health, held locks, forced release, arming, probing.

Not the hot path: these use plain redis-py clients, one master after another, and are
what ``celery redlock status|list|release|check|arm`` print. They import nothing from
Celery. Masters are named only by their redacted names (:attr:`MasterSpec.name`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from celery_redlock._core import quorum
from celery_redlock._core.manager import ManagerBase, new_token
from celery_redlock._core.masters import MasterSpec
from celery_redlock._core.protocol import BOOT_KEY, FORCE_RELEASE, parse_marker, queue_key
from celery_redlock._core.server import INFO_SECTIONS, ServerFacts
from celery_redlock._core.settings import LockSettings
from celery_redlock._core.sync import Redlock
from celery_redlock.exceptions import ConfigurationError, LockError

__all__ = [
    "ForcedRelease",
    "LockInfo",
    "MasterStatus",
    "arm",
    "force_release",
    "glob_escape",
    "is_lock_value",
    "list_locks",
    "master_status",
    "probe",
]


@dataclass(frozen=True, slots=True)
class MasterStatus:
    """What one master says about itself, and what in it weakens the lock's guarantees.

    ``problems`` are why it cannot vote now, or must not (a replica, cluster mode, a
    policy that evicts, not armed, abstaining, another entry's server): ``check`` fails on
    each. ``warnings`` weaken guarantees without stopping the lock.
    """

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
    stored_guard: float | None = None  # the longest restart guard declared to it (s)
    guard_left: float | None = None  # seconds this master still abstains (restart guard)
    run_id: str | None = None
    mode: str | None = None
    maxmemory: int | None = None
    maxmemory_policy: str | None = None
    problems: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def can_vote(self) -> bool:
        return self.reachable and not self.problems


@dataclass(frozen=True, slots=True)
class LockInfo:
    """A key held on at least one master: its owner text and time left per master (ms)."""

    key: str
    resource: str
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
    for spec in manager.roster.specs:
        client = _client(spec, timeout)
        try:
            yield spec, client
        finally:
            client.close()


# --- status ---


def master_status(manager: ManagerBase, *, timeout: float = 1.0) -> list[MasterStatus]:
    """Each master's reachability, latency, version, clock offset, persistence, guard and
    server facts; a later entry that is the same server as an earlier one says so."""
    statuses = [_status(spec, client, manager) for spec, client in _clients(manager, timeout)]
    return _mark_aliases(statuses)


def _status(spec: MasterSpec, client: redis.Redis, manager: ManagerBase) -> MasterStatus:
    try:
        start = time.perf_counter()
        client.ping()
        latency = (time.perf_counter() - start) * 1000
        info: dict[str, Any] = {}
        for section in (*INFO_SECTIONS, "replication"):  # one section per call (Redis 6.2)
            info |= client.info(section)
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
    stored_guard = None if marker is None else marker.guard_ms / 1000
    guard = manager.settings.restart_guard
    guard_left = None
    if guard and marker is not None:  # the master enforces the longer of ours and its own
        longest = max(guard * 1000, marker.guard_ms)
        guard_left = max(0.0, (marker.boot_ms + longest - master_ms) / 1000)
    facts = ServerFacts.from_info(info)
    status = MasterStatus(
        spec.name,
        True,
        latency_ms=latency,
        version=facts.version,
        role=str(info.get("role")),
        clock_offset_ms=offset,
        appendonly=config.get("appendonly") == "yes",
        appendfsync=config.get("appendfsync"),
        boot_ms=boot_ms,
        stored_guard=stored_guard,
        guard_left=guard_left,
        run_id=facts.run_id,
        mode=facts.mode,
        maxmemory=facts.maxmemory,
        maxmemory_policy=facts.maxmemory_policy,
    )
    return replace(
        status, problems=_problems(status, facts, guard), warnings=_warnings(status, guard)
    )


def _config(client: redis.Redis) -> dict[str, str]:
    """CONFIG GET where allowed (managed services often forbid it): empty otherwise."""
    try:
        raw = client.config_get("append*")
    except redis.ResponseError:
        return {}
    return {str(k): str(v) for k, v in raw.items()}


def _problems(status: MasterStatus, facts: ServerFacts, guard: float) -> tuple[str, ...]:
    notes = []
    if status.role not in (None, "master"):
        notes.append(f"role is {status.role}: writes will fail (READONLY)")
    if facts.mode == "cluster":
        notes.append(
            "runs in cluster mode: the lock's script uses two keys, which a cluster node"
            " refuses (CROSSSLOT); lock masters must be standalone servers"
        )
    if facts.eviction_problem:
        notes.append(facts.eviction_problem)
    if guard and status.boot_ms is None:
        notes.append(
            "no boot marker (not armed): the first lock starts its restart guard, and it"
            f" votes no lock for {guard:g} s; run celery redlock arm if it is brand-new"
        )
    elif status.guard_left:
        notes.append(f"abstaining after a restart for {status.guard_left:.1f} s more")
    return tuple(notes)


def _warnings(status: MasterStatus, guard: float) -> tuple[str, ...]:
    notes = []
    if status.clock_offset_ms is not None and abs(status.clock_offset_ms) > 1000:
        notes.append(f"clock is {status.clock_offset_ms:+.0f} ms off ours")
    if not guard and not (status.appendonly and status.appendfsync == "always"):
        notes.append(
            "no AOF with fsync always and restart_guard off: a restart can grant a"
            " held lock twice unless restarts are delayed by the longest TTL"
        )
    if status.stored_guard is not None and status.stored_guard > guard:
        notes.append(
            f"a client declared a restart guard of {status.stored_guard:g} s, longer than"
            f" ours ({guard:g} s): the master applies the longer one; give every client"
            " the same restart_guard"
        )
    return tuple(notes)


def _mark_aliases(statuses: list[MasterStatus]) -> list[MasterStatus]:
    """A second entry with an earlier one's ``run_id`` is that server again, however its
    address is spelled (a unix socket and its TCP port, ``localhost.``): it must not vote."""
    first: dict[str, str] = {}
    marked = []
    for status in statuses:
        seen = first.setdefault(status.run_id, status.name) if status.run_id else status.name
        if seen != status.name:
            alias = (
                f"the same server as {seen} (run_id {status.run_id}): listing it twice"
                " would count one server's vote twice"
            )
            status = replace(status, problems=(*status.problems, alias))  # noqa: PLW2901
        marked.append(status)
    return marked


# --- held locks ---

#: A lock's value: the token (``manager.new_token``: lowercase hex) and, after a colon, the
#: owner text. Anything else under the prefix is not ours to list or release.
_TOKEN_CHARS = len(new_token())
_LOCK_VALUE = re.compile(rb"[0-9a-f]{%d}(?::.*)?" % _TOKEN_CHARS, re.DOTALL)


def is_lock_value(value: bytes) -> bool:
    """Whether ``value`` has the form of a lock's value (``token`` or ``token:owner``)."""
    return _LOCK_VALUE.fullmatch(value) is not None


def glob_escape(text: str) -> str:
    """``text`` matched literally by SCAN MATCH (``* ? [ ] \\`` escaped)."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def list_locks(
    manager: ManagerBase,
    *,
    starting: str = "",
    keep: Callable[[str], bool] | None = None,
    timeout: float = 1.0,
) -> list[LockInfo]:
    """Locks on any master whose resource starts with ``starting`` (and passes ``keep``),
    with owner and time left per master.

    Only keys under the prefix whose value is a lock's are listed: another type of key, or
    a string that is not a lock value, is skipped and the scan goes on. The token's
    random part is never shown: it is what a release needs.
    """
    prefix = manager.settings.key_prefix
    pattern = glob_escape(prefix + starting) + "*"
    found: dict[str, LockInfo] = {}
    for spec, client in _clients(manager, timeout):
        # A master that fails (unreachable, mid-scan) shows as missing from pttl_ms.
        with contextlib.suppress(redis.RedisError):
            for raw in client.scan_iter(match=pattern, count=500):
                resource = raw.decode(errors="replace")[len(prefix) :]
                if raw != BOOT_KEY.encode() and (keep is None or keep(resource)):
                    _record(found, spec.name, client, raw, resource)
    return sorted(found.values(), key=lambda info: info.key)


def _record(
    found: dict[str, LockInfo], name: str, client: redis.Redis, raw: bytes, resource: str
) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.get(raw)
    pipe.pttl(raw)
    value, pttl = pipe.execute(raise_on_error=False)
    if not isinstance(value, bytes) or not is_lock_value(value):
        return  # expired since the SCAN, another type (WRONGTYPE), or not a lock's value
    owner = value.decode(errors="replace").partition(":")[2]
    key = raw.decode(errors="replace")
    info = found.setdefault(key, LockInfo(key, resource, owner))
    info.pttl_ms[name] = int(pttl) if isinstance(pttl, int) else -1


# --- forced release ---

#: Results of :data:`FORCE_RELEASE` by master.
RELEASED, ABSENT, NOT_A_LOCK = "released", "absent", "not a lock"

_RESULTS = {1: RELEASED, 0: ABSENT, -1: NOT_A_LOCK}


@dataclass(frozen=True, slots=True)
class ForcedRelease:
    """What each master did with a forced release of ``key``: :data:`RELEASED`,
    :data:`ABSENT`, :data:`NOT_A_LOCK` (left alone), or the error it answered."""

    key: str
    outcomes: dict[str, str] = field(default_factory=dict)

    @property
    def released(self) -> int:
        return sum(outcome == RELEASED for outcome in self.outcomes.values())


def lock_key(settings: LockSettings, resource: str) -> str:
    """The key a forced release may touch: a valid resource's, never the boot marker."""
    key = settings.key(resource)  # refuses text with no UTF-8 form, among others
    if key == BOOT_KEY:
        raise ConfigurationError(
            f"{BOOT_KEY} is the boot marker, not a lock: deleting it would let a master"
            " that lost its locks vote again at once"
        )
    return key


def force_release(manager: ManagerBase, resource: str, *, timeout: float = 1.0) -> ForcedRelease:
    """Delete ``resource``'s lock on every master whoever holds it, announcing it to waiters.

    For operators only (a crashed holder with a long TTL): it bypasses the token check
    that protects every other release, so the holder, if alive, is not told. Only a key
    whose value is a lock's is deleted, checked and deleted in one script per master.
    """
    key = lock_key(manager.settings, resource)
    message = f"forced:{new_token()}"  # one per release: waiters hear each release once
    result = ForcedRelease(key)
    for spec, client in _clients(manager, timeout):
        result.outcomes[spec.name] = _force(client, key, message)
    return result


def _force(client: redis.Redis, key: str, message: str) -> str:
    try:
        reply = client.eval(FORCE_RELEASE.source, 2, key, queue_key(key), message, _TOKEN_CHARS)
    except redis.RedisError as exc:
        return f"error ({type(exc).__name__}: {exc})"
    return _RESULTS.get(int(reply), f"unexpected reply {reply!r}")


# --- arming and probing ---


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


#: The resource a probe locks (under the app's prefix, so key ACLs apply), made unique.
PROBE_RESOURCE = "celery_redlock:probe"


def probe(
    manager: ManagerBase, names: Sequence[str] | None = None, *, timeout: float = 1.0
) -> dict[str, str | None]:
    """Take and release a lock on each master alone (or those in ``names``), through the
    lock core with the manager's settings: what a lock does, so permissions (EVAL, key
    patterns), cluster mode or anything else that stops a lock shows as the lock's own
    error. Returns each master's problem, or None where it locked and released.

    One try per master (``retry_count=0``). A master without a boot marker starts its
    restart guard on a probe: callers skip those (``arm`` must still find them empty).
    """
    settings = dataclasses.replace(manager.settings, retry_count=0)
    results: dict[str, str | None] = {}
    for spec, client in _clients(manager, timeout):
        if names is None or spec.name in names:
            results[spec.name] = _probe(client, settings)
    return results


def _probe(client: redis.Redis, settings: LockSettings) -> str | None:
    resource = f"{PROBE_RESOURCE}:{new_token()}"
    try:
        ttl = settings.ttl(min(10.0, settings.restart_guard or 10.0))
        with Redlock([client], settings=settings) as dlm:
            lock = dlm.acquire(resource, ttl)
            if lock is None:
                return "a probe lock was refused: its key is held"
            # Lock.release's own round, kept for its votes: they say why it failed.
            released, votes = dlm.run(quorum.release(lock.key, lock.token, dlm.policy))
    except LockError as exc:
        return f"no lock can be taken there: {_why(exc)}"
    if not released:
        return f"a lock taken there was not released: {'; '.join(map(str, votes))}"
    return None


def _why(exc: LockError) -> str:
    errors = [vote.error or str(vote) for vote in exc.votes]
    return "; ".join(errors) if errors else str(exc)
