"""``celery redlock ...`` against real masters, through click's runner."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib.metadata import entry_points
from typing import Any

from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from celery_redlock._appstate import state_of
from celery_redlock.cli import EXIT_CONFIG, EXIT_PROBLEM, redlock
from celery_redlock.testing import RedisGroup


def app_for(masters: list[str], **conf: Any) -> Celery:
    app = Celery("cli_test", set_as_current=False)
    app.conf.update(redlock_masters=masters, **conf)
    return app


def run(app: Celery, *args: str, stdin: str | None = None) -> Result:
    obj = CLIContext(app=app, no_color=True, workdir=None)
    return CliRunner().invoke(redlock, list(args), obj=obj, input=stdin)


def test_the_command_is_registered_with_celery() -> None:
    names = [e.name for e in entry_points(group="celery.commands")]
    assert "redlock" in names
    out = subprocess.run(
        [sys.executable, "-m", "celery", "redlock", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    for command in ("status", "list", "release", "check", "arm"):
        assert command in out.stdout


def test_status_shows_each_master_and_whether_a_quorum_can_vote(fresh3: RedisGroup) -> None:
    app = app_for(fresh3.urls)
    result = run(app, "status")
    assert result.exit_code == 0, result.output
    assert "3 of 3 masters can vote, 2 needed: quorum reachable" in result.output
    for url in fresh3.urls:
        assert url in result.output
    fresh3[0].kill()
    fresh3[1].kill()
    result = run(app, "status", "--json")
    assert result.exit_code == EXIT_PROBLEM
    data = json.loads(result.output)
    assert data["ok"] is False
    assert data["voting"] == 1
    assert [m["reachable"] for m in data["masters"]] == [False, False, True]


def test_list_shows_holders_and_filters_by_task(fresh3: RedisGroup) -> None:
    app = app_for(fresh3.urls)
    dlm = state_of(app).manager
    assert dlm.acquire("proj.tasks.sync:abc", 30, owner="task-1@web-1") is not None
    assert dlm.acquire("proj.tasks.report", 30, owner="task-2@web-2") is not None
    result = run(app, "list")
    assert result.exit_code == 0, result.output
    assert "task-1@web-1" in result.output
    assert "task-2@web-2" in result.output
    only = json.loads(run(app, "list", "--task", "proj.tasks.sync", "--json").output)
    assert [i["holder"] for i in only] == ["task-1@web-1"]
    assert only[0]["held_by_quorum"] is True


def test_release_asks_first_then_frees_the_key(fresh3: RedisGroup) -> None:
    app = app_for(fresh3.urls)
    dlm = state_of(app).manager
    assert dlm.acquire("stuck", 30) is not None
    declined = run(app, "release", "stuck", stdin="n\n")
    assert declined.exit_code == EXIT_PROBLEM
    assert dlm.locked("stuck")
    done = run(app, "release", "stuck", "--yes")
    assert done.exit_code == 0, done.output
    # A lock is only promised on a quorum: the third master may not have set it yet.
    assert re.search(r"on [23] of 3 masters", done.output), done.output
    assert not dlm.locked("stuck")
    assert run(app, "release", "stuck", "--yes").exit_code == EXIT_PROBLEM


def test_check_passes_a_good_setup_and_flags_problems(fresh3: RedisGroup) -> None:
    assert run(app_for(fresh3.urls), "check").exit_code == 0
    even = run(app_for([*fresh3.urls, "redis://127.0.0.1:1/0"]), "check", "--json")
    assert even.exit_code == EXIT_PROBLEM
    problems = json.loads(even.output)["problems"]
    assert any("odd number" in p for p in problems)
    assert any("unreachable" in p for p in problems)


def test_a_bad_configuration_exits_with_its_own_code() -> None:
    result = run(app_for(["http://nope"]), "status")
    assert result.exit_code == EXIT_CONFIG
    assert "redlock_masters" in result.output
