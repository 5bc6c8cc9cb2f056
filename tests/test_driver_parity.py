"""Both drivers give the same vote, in the same words, for the same reply or failure.

Each case is a misbehaving master (tests/bad_master.py) between a real master and a dead
port, with hiredis's reader and with ours (``resp.HIREDIS``, which both drivers read). The
round cannot settle without the misbehaving master's vote: the live master's yes and the
dead port's error are one each, so the vote compared is always the one read, never one
that timing left unread (see tests/test_bad_master.py). The dead port's vote is compared
too: a refused connection, worded by two different openers.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from celery_redlock import AsyncRedlock, QuorumUnavailable, Redlock
from celery_redlock._core import replies, resp
from celery_redlock._core.protocol import Outcome
from celery_redlock.testing import RedisGroup
from tests.bad_master import ERROR, REPLIES, BadMaster

#: Per-master timeout: long enough for a loaded machine's live master, short enough for
#: the silent master's case to be quick.
TIMEOUT = 1.0

#: The cases beside the bad replies: BadMaster's options, and words the vote must hold
#: (so that two drivers agreeing on a wrong vote fail too).
CASES: dict[str, tuple[dict[str, Any], str]] = {
    "error-reply": ({"reply": ERROR}, "ResponseError: out of luck"),
    "silent": ({"reply": b"", "silent": True}, replies.timed_out(TIMEOUT)),
    "noscript": ({"reply": "wrong-type", "noscript": True}, "unexpected reply b'OK'"),
    "wrongpass": ({"reply": "wrong-type", "wrongpass": True}, "AUTH refused by"),
    "closed-mid-reply": ({"reply": "truncated"}, "closed by the master"),
    **{f"reply-{name}": ({"reply": name}, "") for name in REPLIES},
}


@pytest.fixture(scope="module")
def healthy() -> Iterator[tuple[str, int]]:
    """A real master, and a dead port: bound but not listening, so a connection to it is
    refused at once (and no other process can take the port meanwhile)."""
    with RedisGroup(1) as group, socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        yield group[0].url, dead.getsockname()[1]


def _urls(healthy: tuple[str, int], bad: BadMaster, password: bool) -> list[str]:
    live, dead = healthy
    auth = ":s3cret-pass@" if password else ""
    return [live, f"redis://{auth}127.0.0.1:{bad.port}/0", f"redis://127.0.0.1:{dead}/0"]


def _shown(votes: Any) -> list[tuple[str, str]]:
    return [(v.outcome.value, v.error or "") for v in votes]


def sync_votes(urls: list[str]) -> list[tuple[str, str]]:
    with Redlock(urls, master_timeout=TIMEOUT, retry_count=0) as dlm:
        with pytest.raises(QuorumUnavailable) as outage:
            dlm.acquire("r", 5)
        return _shown(outage.value.votes)


def async_votes(urls: list[str]) -> list[tuple[str, str]]:
    async def main() -> list[tuple[str, str]]:
        async with AsyncRedlock(urls, master_timeout=TIMEOUT, retry_count=0) as dlm:
            with pytest.raises(QuorumUnavailable) as outage:
                await dlm.acquire("r", 5)
            return _shown(outage.value.votes)

    return asyncio.run(main())


@pytest.mark.parametrize("hiredis", [True, False], ids=["hiredis", "pyreader"])
@pytest.mark.parametrize("case", list(CASES))
def test_both_drivers_vote_alike(
    healthy: tuple[str, int], case: str, hiredis: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if hiredis and not resp.HIREDIS:
        pytest.skip("hiredis is not installed")
    monkeypatch.setattr(resp, "HIREDIS", hiredis)
    options, says = CASES[case]
    with BadMaster(**options) as bad:
        urls = _urls(healthy, bad, password=bool(options.get("wrongpass")))
        sync = sync_votes(urls)
        seen_by_sync = list(bad.seen)
        aio = async_votes(urls)
        seen_by_aio = bad.seen[len(seen_by_sync) :]
    (_live, sync_bad, sync_dead), (_, aio_bad, aio_dead) = sync, aio
    assert aio_bad == sync_bad
    assert aio_dead == sync_dead
    outcome, error = sync_bad
    assert outcome == Outcome.ERROR.value
    assert error
    assert error != replies.SETTLED_WITHOUT
    assert says in error
    assert "s3cret" not in error
    assert sync_dead[0] == Outcome.ERROR.value
    assert "Connection refused" in sync_dead[1], sync_dead
    if options.get("noscript"):  # the script's source went out after the NOSCRIPT
        assert b"EVAL" in seen_by_sync
        assert b"EVAL" in seen_by_aio
