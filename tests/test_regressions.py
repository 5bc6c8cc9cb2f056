"""Regressions: core bugs the simulator and the chaos suite found, reproduced minimally.

None of them broke mutual exclusion; all cost availability. Each test states the
behaviour the core has had since its fix.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from celery_redlock import QuorumUnavailable, Redlock
from celery_redlock.testing import RedisGroup, RedisServer
from tests.fakes import not_redis


def acquire_rounds(server: RedisServer) -> int:
    """EVALSHA calls a master has served (on a master that votes no, one per round)."""
    with server.client() as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def test_a_blocked_waiter_does_not_wake_itself_with_its_own_undo(fresh3: RedisGroup) -> None:
    """The holder holds two of three masters; the third lost its key (it restarted, or its
    key expired a little early). A waiter's round wins that master and loses the vote.
    Its undo used to be the RELEASE script, whose PUBLISH woke the waiter's own
    subscription at once, about 1,900 rounds a second; undos now announce nothing."""
    with Redlock(fresh3.urls, restart_guard=0) as dlm:
        warm = dlm.acquire("warm-up", 5)  # load the RELEASE script everywhere, as in
        assert warm is not None  # any cluster that has served a release before
        warm.release()
        holder = dlm.acquire("job", 10)
        assert holder is not None
        with fresh3[2].client() as client:
            client.delete(dlm.settings.key("job"))
        before = acquire_rounds(fresh3[0])
        assert dlm.acquire("job", 10, blocking=True, timeout=1.5) is None
        rounds = acquire_rounds(fresh3[0]) - before
    # A waiter should ask at the start, once more after subscribing, then at most about
    # once per FALLBACK_POLL (1 s) until its timeout: a handful, not thousands.
    assert rounds < 50, f"a blocked waiter ran {rounds} rounds in 1.5 s"


def test_an_undo_reaches_a_master_that_lost_its_scripts(fresh3: RedisGroup) -> None:
    """Master 0 is held by a stranger, master 1 is down, master 2 lost its script cache
    (a restart, or SCRIPT FLUSH). The round is a split vote (one yes, one no), so it must
    be undone on master 2. The undo, sent without waiting, used to go by EVALSHA, and
    its NOSCRIPT reply was drained unread; it now carries the script's source."""
    key = "redlock:job"
    with fresh3[0].client() as client:
        client.set(key, "stranger", px=10_000)
    fresh3[1].kill()
    with fresh3[2].client() as client:
        client.script_flush()
    with Redlock(fresh3.urls, restart_guard=0, retry_count=0) as dlm:
        assert dlm.acquire("job", 10) is None  # a split vote, given up at once
    deadline = time.monotonic() + 2.0
    with fresh3[2].client() as client:
        while client.get(key) is not None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert client.get(key) is None, "the lost round's key is still on master 2"


def test_a_port_that_answers_but_is_not_redis_is_one_error_vote(fresh3: RedisGroup) -> None:
    fresh3[1].kill()  # one good, one dead: the round must wait for the odd one's answer
    urls = [*fresh3.urls[:2], "redis://127.0.0.1:{port}/0"]
    with not_redis() as port, Redlock([u.format(port=port) for u in urls], retry_count=0) as dlm:
        with pytest.raises(QuorumUnavailable) as err:
            dlm.acquire("job", 10)
        assert "Protocol error" in str(err.value.votes[2])


def test_the_asyncio_driver_takes_a_non_redis_port_as_one_error_vote(
    fresh3: RedisGroup,
) -> None:
    """Run in a child interpreter: the bug abandons connections and tasks, whose warnings
    would otherwise surface in whichever later test happens to collect them."""
    with not_redis() as port:
        fresh3[1].kill()  # one good, one dead: the round must wait for the odd one's answer
        urls = [*fresh3.urls[:2], f"redis://127.0.0.1:{port}/0"]
        child = subprocess.run(
            [sys.executable, "-c", ASYNC_SCENARIO, json.dumps(urls)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert child.returncode == 0, child.stderr[-2000:]
    assert "Protocol error" in child.stdout


ASYNC_SCENARIO = """
import asyncio, json, sys
from celery_redlock import AsyncRedlock, QuorumUnavailable

async def main():
    async with AsyncRedlock(json.loads(sys.argv[1]), retry_count=0) as dlm:
        try:
            await dlm.acquire("job", 10)
        except QuorumUnavailable as err:
            print(err.votes[2])

asyncio.run(main())
"""
