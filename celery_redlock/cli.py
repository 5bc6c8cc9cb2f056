"""``celery -A proj redlock ...``: look at and operate the app's Redlock masters.

Installed through Celery's ``celery.commands`` entry point. Commands read the app's
``redlock_*`` settings exactly as its workers do, print tables (``--json`` for scripts),
and exit with:

- 0: all good (``status``: a quorum can vote; ``release``: a key was deleted);
- 1: a problem found (``check``), no quorum (``status``), nothing to release, or a
  release not confirmed;
- 3: the configuration itself is invalid (the message names the setting).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import click

from celery_redlock._appstate import state_of
from celery_redlock.admin import (
    LockInfo,
    MasterStatus,
    arm,
    force_release,
    list_locks,
    master_status,
)
from celery_redlock.exceptions import ConfigurationError
from celery_redlock.lock import Redlock

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


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers], *[[str(c) for c in row] for row in rows]]
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
    """Each master's health, clock, persistence and restart guard; is a quorum reachable?"""
    dlm = _manager(ctx)
    statuses = master_status(dlm)
    voting = sum(_votes(s) for s in statuses)
    ok = voting >= dlm.quorum
    if as_json:
        click.echo(
            json.dumps(
                {
                    "quorum": dlm.quorum,
                    "voting": voting,
                    "ok": ok,
                    "masters": [asdict(s) for s in statuses],
                },
                indent=2,
            )
        )
    else:
        click.echo(_status_table(statuses))
        for s in statuses:
            for warning in s.warnings:
                click.echo(f"warning: {s.name}: {warning}")
        verdict = "quorum reachable" if ok else "NO QUORUM"
        click.echo(f"{voting} of {len(statuses)} masters can vote, {dlm.quorum} needed: {verdict}")
    if not ok:
        sys.exit(EXIT_PROBLEM)


def _votes(s: MasterStatus) -> bool:
    return s.reachable and s.role == "master" and not s.guard_left


def _status_table(statuses: Sequence[MasterStatus]) -> str:
    rows = [
        (
            s.name,
            "up" if s.reachable else f"DOWN ({s.error})",
            _ms(s.latency_ms),
            s.version or "-",
            s.role or "-",
            _ms(s.clock_offset_ms),
            "-"
            if s.appendonly is None
            else f"{'aof' if s.appendonly else 'none'}"
            + (f"/{s.appendfsync}" if s.appendonly else ""),
            "-" if s.guard_left is None else f"{s.guard_left:.1f} s",
        )
        for s in statuses
    ]
    headers = ("master", "state", "rtt ms", "version", "role", "clock ms", "persistence", "guard")
    return _table(headers, rows)


@redlock.command(name="list")
@click.option("--task", "task", default=None, help="Only locks of this task name.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def list_(ctx: click.Context, task: str | None, as_json: bool) -> None:
    """The locks held now: key, holder, and time left on each master."""
    dlm = _manager(ctx)
    infos = list_locks(dlm, match=f"{task}*" if task else "*")
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


def _lock_json(info: LockInfo, quorum: int) -> dict[str, Any]:
    return {
        "key": info.key,
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
@click.argument("resource")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def release(ctx: click.Context, resource: str, yes: bool) -> None:
    """Force-release RESOURCE (the key without its prefix), whoever holds it.

    For operators: a live holder is not told, and may go on believing it holds the lock.
    """
    dlm = _manager(ctx)
    key = dlm.settings.key_prefix + resource
    if not yes and not click.confirm(f"Force-release {key} on every master?"):
        sys.exit(EXIT_PROBLEM)
    deleted = force_release(dlm, resource)
    logger.warning("operator force-released %r (present on %d masters)", key, deleted)
    click.echo(f"released {key} on {deleted} of {len(dlm.masters)} masters")
    if not deleted:
        sys.exit(EXIT_PROBLEM)


@redlock.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Validate the configuration for a deploy pipeline; non-zero exit on any problem."""
    dlm = _manager(ctx)
    problems = _problems(dlm, master_status(dlm))
    if as_json:
        click.echo(json.dumps({"ok": not problems, "problems": problems}, indent=2))
    else:
        for problem in problems:
            click.echo(f"problem: {problem}")
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
    hosts = [s.name.split("://", 1)[1].rsplit(":", 1)[0] for s in statuses]
    shared = sorted({h for h in hosts if hosts.count(h) > 1 and h != "127.0.0.1"})
    if shared:
        problems.append(f"several masters on one host ({', '.join(shared)}): they fail together")
    problems += [f"{s.name} unreachable: {s.error}" for s in statuses if not s.reachable]
    problems += [f"{s.name}: {w}" for s in statuses for w in s.warnings if "role" in w]
    if sum(_votes(s) for s in statuses) < dlm.quorum:
        problems.append(f"fewer than {dlm.quorum} masters can vote: no lock can be taken")
    return problems


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
