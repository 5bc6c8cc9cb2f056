"""``celery -A proj redlock ...``: look at and operate the app's Redlock masters.

Installed through Celery's ``celery.commands`` entry point. Commands read the app's
``redlock_*`` settings exactly as its workers do, print tables (``--json`` for scripts),
and exit with:

- 0: all good (``status``: a quorum can vote; ``release``: a lock was deleted);
- 1: a problem found (``check``), no quorum (``status``), nothing to release, or a
  release not confirmed;
- 3: the configuration itself is invalid, or a key given to ``release`` cannot be a lock
  (the message says which).

Masters are named by their redacted names only; text that comes from the masters (keys,
owners, errors) is escaped in tables, so a key holding a newline cannot forge a row.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

import click

from celery_redlock._celery.appstate import state_of
from celery_redlock._celery.run import window_of
from celery_redlock._core.sync import Redlock
from celery_redlock.admin import (
    RELEASED,
    LockInfo,
    MasterStatus,
    arm,
    force_release,
    list_locks,
    lock_key,
    master_status,
    probe,
)
from celery_redlock.exceptions import ConfigurationError
from celery_redlock.keys import DIGEST_CHARS

__all__ = ["redlock"]

logger = logging.getLogger("celery_redlock.cli")

EXIT_PROBLEM = 1
EXIT_CONFIG = 3


def _manager(ctx: click.Context) -> Redlock:
    try:
        return state_of(ctx.obj.app).manager
    except ConfigurationError as exc:
        click.echo(f"configuration error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


def _safe(value: object) -> str:
    """``value`` as one line of printable text: control characters (and backslashes, so
    the escapes are unambiguous) are written as Python escapes."""
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in str(value))


def _short(text: str, keep: int = 60) -> str:
    """``text`` made safe, cut to its first ``keep`` characters when longer."""
    if len(text) <= keep:
        return _safe(text)
    return f"{_safe(text[:keep])}… ({len(text)} characters)"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_safe(c) for c in headers], *[[_safe(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


@click.group(name="redlock")
def redlock() -> None:
    """Inspect and operate this app's Redlock masters and locks."""


@redlock.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Each master's health, clock, persistence, memory policy and restart guard, and
    whether a quorum can vote."""
    dlm = _manager(ctx)
    statuses = master_status(dlm)
    voting = sum(s.can_vote for s in statuses)
    ok = voting >= dlm.quorum
    if as_json:
        masters = [asdict(s) | {"can_vote": s.can_vote} for s in statuses]
        data = {"quorum": dlm.quorum, "voting": voting, "ok": ok, "masters": masters}
        click.echo(json.dumps(data, indent=2))
    else:
        click.echo(_status_table(statuses))
        for s in statuses:
            for problem in s.problems:
                click.echo(f"problem: {s.name}: {_safe(problem)}")
            for warning in s.warnings:
                click.echo(f"warning: {s.name}: {_safe(warning)}")
        verdict = "quorum reachable" if ok else "NO QUORUM"
        click.echo(f"{voting} of {len(statuses)} masters can vote, {dlm.quorum} needed: {verdict}")
    if not ok:
        sys.exit(EXIT_PROBLEM)


def _status_table(statuses: Sequence[MasterStatus]) -> str:
    rows = [
        (
            s.name,
            "up" if s.reachable else f"DOWN ({s.error})",
            _ms(s.latency_ms),
            s.version or "-",
            s.role or "-",
            _ms(s.clock_offset_ms),
            _persistence(s),
            _memory(s),
            "-" if s.guard_left is None else f"{s.guard_left:.1f} s",
        )
        for s in statuses
    ]
    headers = (
        "master",
        "state",
        "rtt ms",
        "version",
        "role",
        "clock ms",
        "persistence",
        "memory",
        "guard",
    )
    return _table(headers, rows)


def _persistence(s: MasterStatus) -> str:
    if s.appendonly is None:
        return "-"
    return f"aof/{s.appendfsync}" if s.appendonly else "none"


def _memory(s: MasterStatus) -> str:
    if s.maxmemory is None:
        return "-"
    return "no limit" if not s.maxmemory else f"{s.maxmemory_policy} at {s.maxmemory} B"


@redlock.command(name="list")
@click.option("--task", "task", default=None, help="Only the locks of this task name.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_(ctx: click.Context, task: str | None, as_json: bool) -> None:
    """The locks held now: key, holder, and time left on each master.

    ``--task NAME`` lists the keys SingletonTask forms for that task: the task name alone,
    ``NAME:<digest of the arguments>``, and their throttle windows; not another task
    whose name merely starts the same (nor a ``lock_key`` function's own resources).
    """
    dlm = _manager(ctx)
    infos = list_locks(dlm, starting=task or "", keep=_of_task(task) if task else None)
    if as_json:
        click.echo(json.dumps([_lock_json(i, dlm.quorum) for i in infos], indent=2))
        return
    if not infos:
        click.echo("no locks held")
        return
    rows = [
        (
            i.key,
            i.owner or "-",
            f"{len(i.pttl_ms)}/{len(dlm.masters)}",
            "yes" if i.held_by_quorum(dlm.quorum) else "no",
            _left(i),
        )
        for i in infos
    ]
    click.echo(_table(("key", "holder", "masters", "quorum", "left (s, min-max)"), rows))


def _of_task(task: str) -> Callable[[str], bool]:
    """Whether a resource is one of ``task``'s, as ``KeySpec.resource`` and ``window_of``
    form them: the name, or the name and the arguments' digest; either with its window."""
    call = rf"{re.escape(task)}(?::[0-9a-f]{{{DIGEST_CHARS}}})?"
    pattern = re.compile(rf"{call}(?:{re.escape(window_of(''))})?", re.DOTALL)
    return lambda resource: pattern.fullmatch(resource) is not None


def _lock_json(info: LockInfo, quorum: int) -> dict[str, Any]:
    return {
        "key": info.key,
        "resource": info.resource,
        "holder": info.owner,
        "held_by_quorum": info.held_by_quorum(quorum),
        "pttl_ms": info.pttl_ms,
    }


def _left(info: LockInfo) -> str:
    values = [ms / 1000 for ms in info.pttl_ms.values() if ms >= 0]
    if not values:
        return "no expiry"
    return f"{min(values):.1f}-{max(values):.1f}"


@redlock.command()
@click.argument("key")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def release(ctx: click.Context, key: str, yes: bool) -> None:
    """Force-release the lock KEY, whoever holds it: a resource, or the full key as
    ``list`` shows it (with the key prefix).

    Only a key that holds a lock's value is deleted (checked and deleted in one step on
    each master); the boot marker and other keys are refused. For operators: a live
    holder is not told, and may go on believing it holds the lock.
    """
    dlm = _manager(ctx)
    resource, reading = _resource_of(dlm.settings.key_prefix, key)
    try:
        full = lock_key(dlm.settings, resource)
    except ConfigurationError as exc:
        click.echo(f"cannot release '{_short(key)}': {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    click.echo(reading)
    if not yes and not click.confirm(f"Force-release {_safe(full)} on every master?"):
        sys.exit(EXIT_PROBLEM)
    result = force_release(dlm, resource)
    logger.warning("operator force-released %r: %s", full, result.outcomes)
    click.echo(f"released {_safe(full)} on {result.released} of {len(dlm.masters)} masters")
    for name, outcome in result.outcomes.items():
        if outcome != RELEASED:
            click.echo(f"  {name}: {_safe(outcome)}")
    if not result.released:
        sys.exit(EXIT_PROBLEM)


def _resource_of(prefix: str, key: str) -> tuple[str, str]:
    """The resource KEY names, and a sentence saying how it was read: a KEY that starts
    with the prefix is a full key (as ``list`` shows it), anything else a resource."""
    if prefix and key.startswith(prefix):
        resource = key[len(prefix) :]
        return resource, f"{_safe(key)} starts with the key prefix: resource '{_safe(resource)}'"
    return key, f"resource '{_safe(key)}': key {_safe(prefix + key)}"


@redlock.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Validate the setup for a deploy pipeline; non-zero exit on any problem.

    Besides each master's facts (reachable, a master, standalone, no eviction, armed,
    not listed twice), it takes and releases a lock on each master alone, through the
    lock core with the app's settings: what stops that stops every lock.
    """
    dlm = _manager(ctx)
    statuses = master_status(dlm)
    problems = _problems(dlm, statuses)
    if as_json:
        click.echo(json.dumps({"ok": not problems, "problems": problems}, indent=2))
    else:
        for problem in problems:
            click.echo(f"problem: {_safe(problem)}")
        click.echo("configuration OK" if not problems else f"{len(problems)} problem(s)")
    if problems:
        sys.exit(EXIT_PROBLEM)


def _problems(dlm: Redlock, statuses: Sequence[MasterStatus]) -> list[str]:
    problems = []
    if len(statuses) % 2 == 0:
        problems.append(
            f"{len(statuses)} masters: use an odd number (an even one tolerates"
            " no more failures than one fewer)"
        )
    hosts = [urlsplit(s.name).hostname for s in statuses]
    shared = sorted({h for h in hosts if h and hosts.count(h) > 1 and h != "127.0.0.1"})
    if shared:
        problems.append(f"several masters on one host ({', '.join(shared)}): they fail together")
    problems += [f"{s.name} unreachable: {s.error}" for s in statuses if not s.reachable]
    problems += [f"{s.name}: {p}" for s in statuses for p in s.problems]
    probed = [s.name for s in statuses if _probe_it(dlm, s)]
    problems += [f"{name}: {p}" for name, p in probe(dlm, probed).items() if p]
    if sum(s.can_vote for s in statuses) < dlm.quorum:
        problems.append(f"fewer than {dlm.quorum} masters can vote: no lock can be taken")
    return problems


def _probe_it(dlm: Redlock, status: MasterStatus) -> bool:
    """Whether to try a lock there: not where it is down or abstains (reported above),
    nor without a boot marker, where the probe would start its restart guard (and
    ``arm`` would then leave it alone)."""
    unarmed = bool(dlm.settings.restart_guard) and status.boot_ms is None
    return status.reachable and not unarmed and not status.guard_left


@redlock.command(name="arm")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def arm_(ctx: click.Context, yes: bool) -> None:
    """Declare brand-new, empty masters armed, so they skip their first restart guard.

    Never for a master that restarted after losing data: it would grant locks that are
    still held elsewhere. Masters that already carry a boot marker are left alone.
    """
    dlm = _manager(ctx)
    if not yes and not click.confirm("Are these masters newly provisioned and never used?"):
        sys.exit(EXIT_PROBLEM)
    armed = arm(dlm)
    logger.warning("operator armed %d masters: %s", len(armed), ", ".join(armed) or "none")
    click.echo(f"armed {len(armed)} master(s): {', '.join(armed) or 'none needed it'}")
