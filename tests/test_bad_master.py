"""A master that answers malformed replies is one ERROR vote, never an exception out of
the round: a real misbehaving TCP server (tests/bad_master.py) beside a real master and a
dead one, both drivers, with hiredis's reader and without it.

With one master granting and one refusing connections, the round can neither win nor give
up until the bad master's vote is in, so the test reads that vote without timing it
(before 2026-12 two slow healthy masters raced the bad one: a loaded machine could settle
the round on their two yes first)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from celery_redlock import QuorumUnavailable, Redlock
from celery_redlock._core import replies, resp
from celery_redlock._core.protocol import Call, Outcome, Verb
from celery_redlock.testing import RedisGroup
from tests.bad_master import REPLIES, WITHOUT_HIREDIS, BadMaster, async_votes

ROOT = Path(__file__).resolve().parent.parent

#: What the bad master's vote says, by reply: the reply was read and judged, not waited
#: out (but a bulk string announced too long for hiredis to refuse, which it awaits).
SAYS = {
    "deep": ("nest", "unexpected reply"),
    "wrong-type": ("unexpected reply b'OK'",),
    "wrong-shape": ("unexpected reply",),
    "garbage": ("rotocol",),
    "bad-number": ("rotocol", "integer"),
    "huge-bulk": ("",),
    "truncated": ("closed",),
}


@pytest.fixture(scope="module")
def healthy() -> Iterator[list[str]]:
    """A real master, and a dead one: a port bound but not listening, so a connection to
    it is refused at once (and no other process can take the port meanwhile)."""
    with RedisGroup(1) as group, socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        yield [group[0].url, f"redis://127.0.0.1:{dead.getsockname()[1]}/0"]


def check(votes: list[list[str]], reply: str) -> None:
    (granted, unread), (outcome, error), (refused, _) = votes
    assert refused == Outcome.ERROR.value, votes
    # the round may settle on the two errors before the live master's yes is read
    assert granted == "yes" or unread == replies.SETTLED_WITHOUT, votes
    assert outcome == Outcome.ERROR.value
    assert error
    assert any(text in error for text in SAYS[reply]), error


def sync_votes(urls: list[str]) -> list[list[str]]:
    with Redlock(urls, master_timeout=2.0, retry_count=0) as dlm:
        with pytest.raises(QuorumUnavailable) as outage:
            dlm.acquire("r", 5)
        granted = redis.Redis.from_url(urls[0])
        assert not granted.exists(dlm.settings.key("r")), "the lone grant was not undone"
        granted.close()
        return [[v.outcome.value, v.error or ""] for v in outage.value.votes]


@pytest.mark.parametrize("hiredis", [True, False])
@pytest.mark.parametrize("reply", list(REPLIES))
def test_the_sync_driver_counts_a_malformed_reply_as_an_error_vote(
    healthy: list[str], reply: str, hiredis: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resp, "HIREDIS", hiredis)
    with BadMaster(reply) as bad:
        check(sync_votes([healthy[0], bad.url, healthy[1]]), reply)


@pytest.mark.parametrize("hiredis", [True, False])
@pytest.mark.parametrize("reply", list(REPLIES))
def test_the_asyncio_driver_counts_a_malformed_reply_as_an_error_vote(
    healthy: list[str], reply: str, hiredis: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The asyncio driver reads with the sync driver's reader, so ``resp.HIREDIS`` picks
    the reader for it too (the same words: see tests/test_driver_parity.py)."""
    monkeypatch.setattr(resp, "HIREDIS", hiredis)
    with BadMaster(reply) as bad:
        check(asyncio.run(async_votes([healthy[0], bad.url, healthy[1]])), reply)


def test_the_asyncio_driver_where_hiredis_is_not_installed(healthy: list[str]) -> None:
    """In a Python without hiredis (a subprocess, as where it is not installed: redis-py
    imports without it too), the driver reads with ``resp.PyReader``, and a reply nested
    too deep is an ERROR vote (redis-py's own pure-Python reader recursed on it)."""
    with BadMaster("deep") as bad:
        urls = [healthy[0], bad.url, healthy[1]]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", WITHOUT_HIREDIS, *urls],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        votes = json.loads(done.stdout)
        check(votes, "deep")
        assert "nested deeper than" in votes[1][1]


@pytest.mark.parametrize("reply", [10**10, [b"a"], 1.5])
def test_a_peek_answered_with_anything_but_a_string_is_malformed(reply: object) -> None:
    """GET's reply is a string or nil; an integer once went through ``bytes(n)``, which
    allocates n bytes (a master answering ``:10000000000`` cost 10 GB)."""
    with pytest.raises(TypeError, match="not a string"):
        Call(Verb.PEEK, "redlock:k").parse(reply)
