"""``celery redlock ...`` against real masters, through click's runner."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from importlib.metadata import entry_points
from typing import Any, cast

from celery import Celery
from celery.bin.base import CLIContext
from click.testing import CliRunner, Result

from celery_redlock import SingletonTask
from celery_redlock._celery.appstate import state_of
from celery_redlock._celery.run import window_of
from celery_redlock._core.protocol import BOOT_KEY, queue_key
from celery_redlock._core.sync import Redlock
from celery_redlock.cli import EXIT_CONFIG, EXIT_PROBLEM, redlock
from celery_redlock.testing import RedisGroup
from tests.celery_tasks import task_decorator


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


def singleton_tasks(app: Celery) -> tuple[Any, Any]:
    """``proj.sync(x)`` keyed on its argument and ``proj.sync_all()`` on its name alone."""

    @task_decorator(app)(base=SingletonTask, name="proj.sync")
    def sync(x: int) -> None:
        """Keyed on x."""

    @task_decorator(app)(base=SingletonTask, name="proj.sync_all", lock_key=[])
    def sync_all() -> None:
        """Keyed on its name."""

    app.finalize()
    return app.tasks["proj.sync"], app.tasks["proj.sync_all"]


def test_list_shows_holders_and_filters_by_task(fresh3: RedisGroup) -> None:
    app = app_for(fresh3.urls)
    sync, sync_all = singleton_tasks(app)
    dlm = state_of(app).manager
    assert dlm.acquire(sync.lock_resource(1), 30, owner="task-1@web-1") is not None
    assert dlm.acquire(window_of(sync.lock_resource(2)), 30, owner="task-3@web-1") is not None
    assert dlm.acquire(sync_all.lock_resource(), 30, owner="task-2@web-2") is not None
    result = run(app, "list")
    assert result.exit_code == 0, result.output
    assert "task-1@web-1" in result.output
    assert "task-2@web-2" in result.output
    only = json.loads(run(app, "list", "--task", "proj.sync", "--json").output)
    # proj.sync_all starts like proj.sync but is another task: not listed.
    assert sorted(i["holder"] for i in only) == ["task-1@web-1", "task-3@web-1"]
    assert only[0]["held_by_quorum"] is True
    whole = json.loads(run(app, "list", "--task", "proj.sync_all", "--json").output)
    assert [i["holder"] for i in whole] == ["task-2@web-2"]


def test_list_skips_keys_that_are_not_locks_and_goes_on(fresh3: RedisGroup) -> None:
    app = app_for(fresh3.urls)
    dlm = state_of(app).manager
    names = [f"job-{i}" for i in range(30)]
    for name in names:
        assert dlm.acquire(name, 30) is not None
    for client in (server.client() for server in fresh3):
        client.hset("redlock:a-hash", "f", "v")
        client.rpush("redlock:a-list", "v")
        client.sadd("redlock:a-set", "v")
        client.set("redlock:a-string", "not a lock value")
    listed = json.loads(run(app, "list", "--json").output)
    assert sorted(i["resource"] for i in listed) == sorted(names)
    assert all(i["held_by_quorum"] for i in listed)


def test_list_escapes_glob_characters_of_the_prefix(fresh3: RedisGroup) -> None:
    mine = app_for(fresh3.urls, redlock_key_prefix="app[1]:")
    other = app_for(fresh3.urls, redlock_key_prefix="app1:")
    assert state_of(mine).manager.acquire("ours", 30) is not None
    assert state_of(other).manager.acquire("theirs", 30) is not None
    listed = json.loads(run(mine, "list", "--json").output)
    assert [i["key"] for i in listed] == ["app[1]:ours"]
    starred = app_for(fresh3.urls, redlock_key_prefix="a*")
    assert json.loads(run(starred, "list", "--json").output) == []


def test_a_resource_with_a_newline_cannot_forge_table_rows(fresh3: RedisGroup) -> None:
    app = app_for(fresh3.urls)
    forged = "real\nredlock:forged  nobody  3/3  yes  9.9-9.9"
    assert state_of(app).manager.acquire(forged, 30, owner="task-1@web-1") is not None
    result = run(app, "list")
    assert result.exit_code == 0, result.output
    rows = result.output.splitlines()
    assert len(rows) == 3, result.output  # header, rule, one lock
    assert "redlock:real\\nredlock:forged" in rows[2]
    assert [i["resource"] for i in json.loads(run(app, "list", "--json").output)] == [forged]


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


def test_release_takes_the_key_as_list_shows_it(fresh3: RedisGroup) -> None:
    app = app_for(fresh3.urls)
    dlm = state_of(app).manager
    assert dlm.acquire("stuck", 30) is not None
    (listed,) = json.loads(run(app, "list", "--json").output)
    done = run(app, "release", listed["key"], "--yes")
    assert done.exit_code == 0, done.output
    assert "redlock:stuck starts with the key prefix: resource 'stuck'" in done.output
    assert not dlm.locked("stuck")


def test_release_leaves_keys_that_are_not_locks_alone(fresh3: RedisGroup) -> None:
    app = app_for(fresh3.urls)
    clients = [server.client() for server in fresh3]
    for client in clients:
        client.set("redlock:config", "not a lock value")
        client.set("redlock:almost", "0123456789abcdef0123456789ABCDEF")  # upper case
        client.hset("redlock:a-hash", "f", "v")
    for key in ("config", "almost", "redlock:a-hash"):
        result = run(app, "release", key, "--yes")
        assert result.exit_code == EXIT_PROBLEM, result.output
        assert "released redlock:" in result.output
        assert "on 0 of 3 masters" in result.output
        assert result.output.count(": not a lock") == 3, result.output
    for client in clients:
        assert client.exists("redlock:config", "redlock:almost", "redlock:a-hash") == 3


def test_release_refuses_the_boot_marker_and_bad_keys_without_a_traceback(
    fresh3: RedisGroup,
) -> None:
    bare = app_for(fresh3.urls, redlock_key_prefix="")
    clients = [server.client() for server in fresh3]
    for client in clients:
        client.set("user:1", "alice")
    marker = run(bare, "release", BOOT_KEY, "--yes")
    assert marker.exit_code == EXIT_CONFIG, marker.output
    assert "is the boot marker, not a lock" in marker.output
    other = run(bare, "release", "user:1", "--yes")
    assert other.exit_code == EXIT_PROBLEM, other.output
    for client in clients:
        assert client.get(BOOT_KEY) is not None
        assert client.get("user:1") == b"alice"
    app = app_for(fresh3.urls)
    for key, reason in [
        ("", "resource must not be empty"),
        ("redlock:", "resource must not be empty"),
        ("x" * 5000, "resource is 5000 characters; at most 1024"),
        ("bad\udcff", "resource has no UTF-8 form: surrogates not allowed"),
    ]:
        result = run(app, "release", key, "--yes")
        assert result.exit_code == EXIT_CONFIG, result.output
        assert isinstance(result.exception, SystemExit), result.exception
        assert reason in result.output
        assert len(result.output) < 300  # a long key is not echoed whole


def test_a_forced_release_wakes_a_blocked_waiter(fresh3: RedisGroup) -> None:
    app = app_for(fresh3.urls)
    dlm = state_of(app).manager
    assert dlm.acquire("stuck", 30) is not None
    clients = [server.client() for server in fresh3]
    spy = cast(Any, clients[0]).pubsub()  # typed from redis-py 8.2 on, untyped before
    spy.psubscribe("redlock:stuck:waiter:*")  # hears what is published to any waiter
    assert spy.get_message(timeout=5)["type"] == "psubscribe"
    got: list[object] = []
    with Redlock(fresh3.urls) as waiter:
        thread = threading.Thread(
            target=lambda: got.append(waiter.acquire("stuck", 30, blocking=True, timeout=20))
        )
        thread.start()
        while not all(c.zcard(queue_key("redlock:stuck")) for c in clients):
            time.sleep(0.01)  # until the waiter stands in line on every master
        assert run(app, "release", "stuck", "--yes").exit_code == 0
        thread.join()
    woken = spy.get_message(timeout=5)
    spy.close()
    for client in clients:
        client.close()
    (lock,) = got
    assert lock is not None  # it got the lock long before the 30 s TTL ran out
    assert woken is not None  # and was woken for it, not left to its timed poll
    assert woken["type"] == "pmessage"
    assert woken["data"].startswith(b"forced:")


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
