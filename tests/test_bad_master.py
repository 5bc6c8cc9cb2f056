"""A master that answers malformed replies is one ERROR vote, never an exception out of
the round: a real misbehaving TCP server (tests/bad_master.py) beside two real masters,
both drivers, with hiredis's reader and without it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from celery_redlock import Redlock
from celery_redlock._core import resp
from celery_redlock._core.protocol import Call, Outcome, Verb
from celery_redlock.testing import FaultProxy, RedisGroup
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
    """Two real masters, each answering 500 ms late so that the bad one's reply is read
    in the round (a round settles as soon as two masters said yes)."""
    with RedisGroup(2) as group:
        proxies = [FaultProxy(("127.0.0.1", s.port), delay=0.25) for s in group]
        with proxies[0], proxies[1]:
            yield [p.url for p in proxies]


def check(votes: list[list[str]], reply: str) -> None:
    (yes0, _), (outcome, error), (yes1, _) = votes
    assert (yes0, yes1) == ("yes", "yes")
    assert outcome == Outcome.ERROR.value
    assert error
    assert any(text in error for text in SAYS[reply]), error


def sync_votes(urls: list[str]) -> list[list[str]]:
    with Redlock(urls, master_timeout=2.0, retry_count=0) as dlm:
        lock = dlm.acquire("r", 5)
        assert lock is not None
        votes = [[v.outcome.value, v.error or ""] for v in lock.votes]
        assert lock.release()
        return votes


@pytest.mark.parametrize("hiredis", [True, False])
@pytest.mark.parametrize("reply", list(REPLIES))
def test_the_sync_driver_counts_a_malformed_reply_as_an_error_vote(
    healthy: list[str], reply: str, hiredis: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(resp, "HIREDIS", hiredis)
    with BadMaster(reply) as bad:
        check(sync_votes([healthy[0], bad.url, healthy[1]]), reply)


@pytest.mark.parametrize("reply", list(REPLIES))
def test_the_asyncio_driver_counts_a_malformed_reply_as_an_error_vote(
    healthy: list[str], reply: str
) -> None:
    with BadMaster(reply) as bad:
        check(asyncio.run(async_votes([healthy[0], bad.url, healthy[1]])), reply)


@pytest.mark.parametrize("reply", list(REPLIES))
def test_the_asyncio_driver_without_hiredis_too(healthy: list[str], reply: str) -> None:
    """redis-py's pure-Python reader recurses per nesting level and raises ValueError on
    bad numbers: a subprocess without hiredis, as where it is not installed."""
    with BadMaster(reply) as bad:
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
        check(json.loads(done.stdout), reply)


def test_the_drivers_agree_on_the_words(healthy: list[str]) -> None:
    """The same malformed reply reads the same in both drivers (same reader: hiredis)."""
    with BadMaster("wrong-type") as bad:
        urls = [healthy[0], bad.url, healthy[1]]
        assert sync_votes(urls)[1] == asyncio.run(async_votes(urls))[1]


@pytest.mark.parametrize("reply", [10**10, [b"a"], 1.5])
def test_a_peek_answered_with_anything_but_a_string_is_malformed(reply: object) -> None:
    """GET's reply is a string or nil; an integer once went through ``bytes(n)``, which
    allocates n bytes (a master answering ``:10000000000`` cost 10 GB)."""
    with pytest.raises(TypeError, match="not a string"):
        Call(Verb.PEEK, "redlock:k").parse(reply)
