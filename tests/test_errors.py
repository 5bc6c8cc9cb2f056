"""Every error the core raises for bad input, with its exact message (docs/errors.md).

``test_config.py`` covers the common cases by substring; this table adds every other
configuration and argument error, asserting the whole message, so that the table in
``docs/errors.md`` is exactly what users will read. Then the errors that come from the
masters: outages, losses, and masters that are not what we were told (a read-only
replica, a password we do not have, something that is not Redis); none may leave a
lock behind.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from celery_redlock import (
    AsyncRedlock,
    ConfigurationError,
    Lock,
    LockLost,
    LockSettings,
    QuorumUnavailable,
    Redlock,
)
from celery_redlock.testing import RedisGroup, RedisServer

M3 = ["redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0", "redis://127.0.0.1:3/0"]
DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def dlm() -> Redlock:
    return Redlock(M3)


#: (input as the docs show it, what raises it, the exact message)
CASES: list[tuple[str, Callable[[], object], str]] = [
    # masters
    (
        "Redlock(None)",
        lambda: Redlock(None),  # type: ignore[arg-type]
        "masters must be a list of URLs, dicts or clients, not NoneType",
    ),
    (
        'Redlock(b"redis://h")',
        lambda: Redlock(b"redis://h"),
        "masters must be a list of URLs, dicts or clients, not bytes",
    ),
    (
        "Redlock([None])",
        lambda: Redlock([None]),
        "a master must be a URL, a dict of redis-py"
        " arguments or a redis.Redis client, not NoneType",
    ),
    (
        'Redlock(["   "])',
        lambda: Redlock(["   "]),
        "master URL must be a non-empty string, got '   '",
    ),
    (
        'Redlock(["redis://u:pw@h:notaport/0"])',
        lambda: Redlock(["redis://u:pw@127.0.0.1:notaport/0"]),
        "master URL 'redis://***@127.0.0.1:***/0' cannot be parsed: its port is not a number",
    ),
    (
        'Redlock(["redis://:p#ss@h/0"])',
        lambda: Redlock(["redis://:p#ss@h/0"]),
        "master URL 'redis://***@h/0' cannot be parsed: its user name or password holds"
        " '/', '?', '#' or '@' unencoded (or a unix:// URL names a host): percent-encode"
        " them, urllib.parse.quote(password, safe='')",
    ),
    (
        'Redlock(["redis:/:pw@h"])',
        lambda: Redlock(["redis:/:pw@h"]),
        "master URL 'redis:/***@h' must start with redis://, rediss:// or unix://",
    ),
    # options
    (
        "LockSettings(master_timeout=-1)",
        lambda: LockSettings(master_timeout=-1),
        "master_timeout must be finite and more than 0 seconds, got -1",
    ),
    (
        "LockSettings(master_timeout=timedelta(0))",
        lambda: LockSettings(master_timeout=timedelta(0)),
        "master_timeout must be finite and more than 0 seconds, got datetime.timedelta(0)",
    ),
    (
        "LockSettings(master_timeout=True)",
        lambda: LockSettings(master_timeout=True),
        "master_timeout must be a number of seconds or a timedelta, not bool",
    ),
    (
        "LockSettings(retry_count=True)",
        lambda: LockSettings(retry_count=True),
        "retry_count must be an int, got True",
    ),
    (
        "LockSettings(retry_count=1001)",
        lambda: LockSettings(retry_count=1001),
        "retry_count must be 0 to 1000, got 1001",
    ),
    (
        "LockSettings(retry_delay=-1)",
        lambda: LockSettings(retry_delay=-1),
        "retry_delay must be finite and at least 0 seconds, got -1",
    ),
    (
        "LockSettings(drift_factor=0.5)",
        lambda: LockSettings(drift_factor=0.5),
        "drift_factor must be a number from 0 to below 0.5, got 0.5",
    ),
    (
        "LockSettings(drift_factor=-0.1)",
        lambda: LockSettings(drift_factor=-0.1),
        "drift_factor must be a number from 0 to below 0.5, got -0.1",
    ),
    (
        "LockSettings(drift_factor=math.nan)",
        lambda: LockSettings(drift_factor=math.nan),
        "drift_factor must be a number from 0 to below 0.5, got nan",
    ),
    (
        'LockSettings(drift_factor="0.01")',
        lambda: LockSettings(drift_factor="0.01"),  # type: ignore[arg-type]
        "drift_factor must be a number from 0 to below 0.5, got '0.01'",
    ),
    (
        "LockSettings(drift_factor=True)",
        lambda: LockSettings(drift_factor=True),
        "drift_factor must be a number from 0 to below 0.5, got True",
    ),
    (
        "LockSettings(restart_guard=-1)",
        lambda: LockSettings(restart_guard=-1),
        "restart_guard must be finite and at least 0 seconds, got -1",
    ),
    (
        "LockSettings(restart_guard=math.nan)",
        lambda: LockSettings(restart_guard=math.nan),
        "restart_guard must be finite and at least 0 seconds, got nan",
    ),
    (
        'LockSettings(restart_guard="60")',
        lambda: LockSettings(restart_guard="60"),  # type: ignore[arg-type]
        "restart_guard must be a number of seconds or a timedelta, not str",
    ),
    (
        "Redlock(masters, settings=LockSettings(), retry_count=1)",
        lambda: Redlock(M3, settings=LockSettings(), retry_count=1),
        "give either settings or individual options, not both",
    ),
    (
        "AsyncRedlock(masters, settings=LockSettings(), retry_count=1)",
        lambda: AsyncRedlock(M3, settings=LockSettings(), retry_count=1),
        "give either settings or individual options, not both",
    ),
    # per-call arguments
    (
        "acquire(r, 61) (restart_guard 60, the default)",
        lambda: dlm().acquire("r", 61),
        "ttl 61.0 s exceeds restart_guard (60.0 s): a master that restarted empty could rejoin"
        " while this lock is still held elsewhere; use auto_renew with a shorter ttl,"
        " or raise restart_guard",
    ),
    (
        "acquire(r, 0.1) (master_timeout 0.1)",
        lambda: dlm().acquire("r", 0.1),
        "ttl 0.1 s leaves no validity: it must exceed master_timeout (0.1 s) plus the drift"
        " allowance",
    ),
    (
        'acquire("x" * 1025, 10)',
        lambda: dlm().acquire("x" * 1025, 10),
        "resource is 1025 characters; at most 1024",
    ),
    (
        'acquire(r, 10, blocking=True, timeout="5")',
        lambda: dlm().acquire("r", 10, blocking=True, timeout="5"),  # type: ignore[arg-type]
        "timeout must be a number of seconds or a timedelta, not str",
    ),
    (
        "acquire(r, 10, renew_every=1)",
        lambda: dlm().acquire("r", 10, renew_every=1),
        "renew_every and max_hold need auto_renew=True",
    ),
    (
        "acquire(r, 10, auto_renew=True, renew_every=0)",
        lambda: dlm().acquire("r", 10, auto_renew=True, renew_every=0),
        "renew_every must be finite and more than 0 seconds, got 0",
    ),
    (
        "acquire(r, 10, auto_renew=True, max_hold=-1)",
        lambda: dlm().acquire("r", 10, auto_renew=True, max_hold=-1),
        "max_hold must be finite and more than 0 seconds, got -1",
    ),
    ('release(r, "")', lambda: dlm().release("r", ""), "token must be a non-empty string"),
    (
        "release(r, None)",
        lambda: dlm().release("r", None),  # type: ignore[arg-type]
        "token must be a non-empty string",
    ),
    ('release("", token)', lambda: dlm().release("", "t"), "resource must not be empty"),
    (
        "locked(None)",
        lambda: dlm().locked(None),  # type: ignore[arg-type]
        "resource must be a string, not NoneType",
    ),
    (
        "semaphore(r, 10, limit=0)",
        lambda: dlm().semaphore("r", 10, limit=0),
        "limit must be an integer from 1 to 1000, not 0",
    ),
    (
        "semaphore(r, 10, limit=True)",
        lambda: dlm().semaphore("r", 10, limit=True),
        "limit must be an integer from 1 to 1000, not True",
    ),
    (
        "semaphore(r, 10, limit=1001)",
        lambda: dlm().semaphore("r", 10, limit=1001),
        "limit must be an integer from 1 to 1000, not 1001",
    ),
    (
        "permit(r, 10, limit=0)",
        lambda: dlm().permit("r", 10, limit=0).__enter__(),
        "limit must be an integer from 1 to 1000, not 0",
    ),
    (
        "AsyncRedlock(masters).semaphore(r, 10, limit=0)",
        lambda: asyncio.run(AsyncRedlock(M3).semaphore("r", 10, limit=0)),
        "limit must be an integer from 1 to 1000, not 0",
    ),
    (
        'AsyncRedlock(masters).release(r, "")',
        lambda: asyncio.run(AsyncRedlock(M3).release("r", "")),
        "token must be a non-empty string",
    ),
]


@pytest.mark.parametrize(("given", "call", "message"), CASES, ids=[c[0] for c in CASES])
def test_each_bad_input_fails_with_its_message(
    given: str, call: Callable[[], object], message: str
) -> None:
    with pytest.raises(ConfigurationError) as err:
        call()
    assert str(err.value) == message, given
    assert isinstance(err.value, ValueError)  # so plain ValueError handlers catch it too


def test_the_docs_table_shows_every_message_asserted_here() -> None:
    doc = DOC.read_text()
    missing = [message for _given, _call, message in CASES if message not in doc]
    assert not missing, f"docs/errors.md lacks: {missing}"


def test_the_boundaries_themselves_are_accepted() -> None:
    settings = LockSettings(
        retry_count=1000, retry_delay=0, drift_factor=0.49, restart_guard=0, key_prefix=""
    )
    assert settings.key("x" * 1024) == "x" * 1024
    assert Redlock(M3).settings.ttl(60) == 60.0  # exactly the default guard


# --- errors from the masters ----------------------------------------------------------------


def test_extend_and_inspect_outages_and_losses_say_what_happened(fresh3: RedisGroup) -> None:
    with Redlock(fresh3.urls, retry_count=0) as dlm:
        lock = dlm.acquire("r", 5)
        assert lock is not None
        fresh3[0].kill()
        fresh3[1].kill()
        with pytest.raises(QuorumUnavailable) as outage:
            lock.extend()
        assert re.match(
            r"too few masters answered to extend 'r' \(\d yes of 2 needed\)", str(outage.value)
        )
        with pytest.raises(
            QuorumUnavailable, match=r"^too few masters answered to tell whether 'r'"
        ):
            dlm.locked("r")
        fresh3[0].start()
        fresh3[1].start()  # both came back empty (no persistence): the lock is gone
        lost = _extend_until_lost(lock)
        assert str(lost).startswith("lock on 'r' is lost: 2 of 3 masters no longer hold it")


def _extend_until_lost(lock: Lock) -> LockLost:
    """Extend until the loss is reported; masters that just failed are skipped for a short
    cool-down first, which is an outage (QuorumUnavailable), not yet a verdict."""
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        lost = _extend_once(lock)
        if lost is not None:
            return lost
        time.sleep(0.05)
    raise AssertionError("the loss was never reported")


def _extend_once(lock: Lock) -> LockLost | None:
    try:
        lock.extend()
    except LockLost as lost:
        return lost
    except QuorumUnavailable:
        return None
    raise AssertionError("a lock whose keys are gone was extended")


def test_extend_after_expiry_says_so(fresh3: RedisGroup) -> None:
    with Redlock(fresh3.urls) as dlm:
        lock = dlm.acquire("r", 0.2)
        assert lock is not None
        time.sleep(0.25)
        with pytest.raises(LockLost) as err:
            lock.extend()
        assert str(err.value) == "lock on 'r' expired before it was extended"


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a hung host, a firewall)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[1]


def bad_master_url(kind: str, stack: list[Any], silent_port: int) -> str:
    if kind == "replica":
        replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", "1"]).start()
        stack.append(replica)
        return replica.url
    if kind in ("wrong password", "no password"):
        guarded = RedisServer(password="right").start()
        stack.append(guarded)
        return guarded.url.replace(":right@", ":wrong@" if kind == "wrong password" else "")
    return f"redis://127.0.0.1:{silent_port}/0"


#: What the vote of each kind of unusable master says. (A port that answers but is not
#: Redis: see tests/test_regressions.py.)
VOTE_ERRORS = {
    "replica": r"READONLY You can't write against a read only replica",
    "wrong password": r"AuthenticationError: AUTH refused by \S+: invalid username-password pair",
    "no password": r"AuthenticationError: SCRIPT LOAD refused by \S+: Authentication required",
    "silent port": r"TimeoutError",
}


@pytest.mark.parametrize("kind", list(VOTE_ERRORS))
def test_a_master_that_is_not_usable_is_an_error_vote_and_leaves_no_lock(
    kind: str, fresh3: RedisGroup, silent_port: int
) -> None:
    """Two good masters and one bad one: the lock is still won (2 of 3). With one good
    master gone it is an outage whose message gives the bad master's cause, and the
    remaining good master keeps no key."""
    started: list[Any] = []
    try:
        bad = bad_master_url(kind, started, silent_port)
        good = fresh3.urls[:2]
        with Redlock([*good, bad], retry_count=0) as dlm:
            lock = dlm.acquire("r", 5)
            assert lock is not None  # the good two are a quorum
            assert lock.release()
            fresh3[1].kill()
            with pytest.raises(QuorumUnavailable) as err:
                dlm.acquire("r", 5)
            assert re.search(VOTE_ERRORS[kind], str(err.value)), str(err.value)
            assert "right" not in str(err.value)  # the password is never shown
        with fresh3[0].client() as client:
            assert _eventually(lambda: client.get("redlock:r") is None)
    finally:
        for server in started:
            server.close()


def _eventually(predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_a_refused_log_in_command_fails_the_connection_and_names_the_command(
    fresh3: RedisGroup,
) -> None:
    """A database the master does not have (SELECT), and a user whose ACL refuses CLIENT
    SETNAME: the connection fails with the command's name and the master's refusal, and
    the master cools down like one that is down. Beside one good master and one dead one,
    so that the round cannot settle before the bad master's vote is in."""
    bad = fresh3[2]
    with bad.client() as client:
        client.acl_setuser(
            "nameless", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-client"]
        )
    urls = {
        "SELECT": re.sub(r"/0$", "/99", bad.url),
        "CLIENT SETNAME": bad.url.replace("//", "//nameless:pw@") + "?client_name=me",
    }
    says = {
        "SELECT": r"ConnectionError: SELECT refused by \S+/99: ResponseError: DB index",
        "CLIENT SETNAME": r"ConnectionError: CLIENT SETNAME refused by \S+: NoPermissionError",
    }
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        down = f"redis://127.0.0.1:{dead.getsockname()[1]}/0"
        for command, url in urls.items():
            with Redlock([fresh3.urls[0], down, url], retry_count=0) as dlm:
                with pytest.raises(QuorumUnavailable) as err:
                    dlm.acquire("r", 5)
                vote = str(err.value.votes[2])
                assert re.search(says[command], vote), vote
                with pytest.raises(QuorumUnavailable) as err:
                    dlm.acquire("r", 5)  # at once: the master is in its cool-down
                vote = str(err.value.votes[2])
                assert "skipped for" in vote, vote
                assert "pw" not in vote
